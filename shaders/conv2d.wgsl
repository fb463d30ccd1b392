// 2D convolution (cross-correlation, as PyTorch), zero padding, any kernel size and stride.
// forward: one invocation per (n, 4 output channels, output pixel).
// backward_input / backward_weight: one invocation per element of dx / dweight (gather form).

struct Params {
    n: u32, cin: u32, h: u32, w: u32,
    cout: u32, kh: u32, kw: u32, stride: u32,
    pad: u32, ho: u32, wo: u32, has_bias: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;        // (N, Cin, H, W)
@group(0) @binding(2) var<storage, read> weight: array<f32>;   // (Cout, Cin, KH, KW)
@group(0) @binding(3) var<storage, read> bias: array<f32>;     // (Cout) (ignored if has_bias = 0)
@group(0) @binding(4) var<storage, read> dy: array<f32>;       // (N, Cout, Ho, Wo)
@group(0) @binding(5) var<storage, read_write> y: array<f32>;  // (N, Cout, Ho, Wo)
@group(0) @binding(6) var<storage, read_write> dx: array<f32>; // (N, Cin, H, W)
@group(0) @binding(7) var<storage, read_write> dweight: array<f32>; // (Cout, Cin, KH, KW)

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 64u);
    let hw = p.ho * p.wo;
    let cblocks = (p.cout + 3u) / 4u;
    if (i >= p.n * cblocks * hw) { return; }
    let pix = i % hw;
    let cb = (i / hw) % cblocks;
    let n = i / (hw * cblocks);
    let oy = pix / p.wo;
    let ox = pix % p.wo;
    let co0 = cb * 4u;
    let ksz = p.kh * p.kw;
    let wstride = p.cin * ksz; // elements between output channels in weight
    // Clamp the channel block to valid rows of weight; extra lanes are not stored.
    let c1 = min(co0 + 1u, p.cout - 1u);
    let c2 = min(co0 + 2u, p.cout - 1u);
    let c3 = min(co0 + 3u, p.cout - 1u);
    var acc = vec4<f32>(0.0);
    for (var ci = 0u; ci < p.cin; ci++) {
        let xbase = (n * p.cin + ci) * p.h * p.w;
        let wbase = ci * ksz;
        for (var ky = 0u; ky < p.kh; ky++) {
            let iy = i32(oy * p.stride + ky) - i32(p.pad);
            if (iy < 0 || iy >= i32(p.h)) { continue; }
            for (var kx = 0u; kx < p.kw; kx++) {
                let ix = i32(ox * p.stride + kx) - i32(p.pad);
                if (ix < 0 || ix >= i32(p.w)) { continue; }
                let v = x[xbase + u32(iy) * p.w + u32(ix)];
                let k = wbase + ky * p.kw + kx;
                acc += v * vec4<f32>(weight[co0 * wstride + k], weight[c1 * wstride + k],
                                     weight[c2 * wstride + k], weight[c3 * wstride + k]);
            }
        }
    }
    for (var t = 0u; t < 4u; t++) {
        let co = co0 + t;
        if (co >= p.cout) { break; }
        var v = acc[t];
        if (p.has_bias == 1u) { v += bias[co]; }
        y[((n * p.cout + co) * p.ho + oy) * p.wo + ox] = v;
    }
}

// dx[n,ci,iy,ix] = Σ_{co,ky,kx} dy[n,co,oy,ox] w[co,ci,ky,kx] where iy = oy*s - pad + ky
@compute @workgroup_size(64)
fn backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 64u);
    if (i >= p.n * p.cin * p.h * p.w) { return; }
    let ix = i % p.w;
    let iy = (i / p.w) % p.h;
    let ci = (i / (p.w * p.h)) % p.cin;
    let n = i / (p.w * p.h * p.cin);
    var s = 0.0;
    for (var ky = 0u; ky < p.kh; ky++) {
        let ty = i32(iy + p.pad) - i32(ky);
        if (ty < 0 || ty % i32(p.stride) != 0) { continue; }
        let oy = u32(ty) / p.stride;
        if (oy >= p.ho) { continue; }
        for (var kx = 0u; kx < p.kw; kx++) {
            let tx = i32(ix + p.pad) - i32(kx);
            if (tx < 0 || tx % i32(p.stride) != 0) { continue; }
            let ox = u32(tx) / p.stride;
            if (ox >= p.wo) { continue; }
            for (var co = 0u; co < p.cout; co++) {
                s += dy[((n * p.cout + co) * p.ho + oy) * p.wo + ox]
                   * weight[((co * p.cin + ci) * p.kh + ky) * p.kw + kx];
            }
        }
    }
    dx[i] = s;
}

// dweight[co,ci,ky,kx] = Σ_{n,oy,ox} dy[n,co,oy,ox] x[n,ci,oy*s-pad+ky,ox*s-pad+kx]
@compute @workgroup_size(64)
fn backward_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 64u);
    if (i >= p.cout * p.cin * p.kh * p.kw) { return; }
    let kx = i % p.kw;
    let ky = (i / p.kw) % p.kh;
    let ci = (i / (p.kw * p.kh)) % p.cin;
    let co = i / (p.kw * p.kh * p.cin);
    var s = 0.0;
    for (var n = 0u; n < p.n; n++) {
        let xbase = (n * p.cin + ci) * p.h * p.w;
        let ybase = (n * p.cout + co) * p.ho * p.wo;
        for (var oy = 0u; oy < p.ho; oy++) {
            let iy = i32(oy * p.stride + ky) - i32(p.pad);
            if (iy < 0 || iy >= i32(p.h)) { continue; }
            for (var ox = 0u; ox < p.wo; ox++) {
                let ix = i32(ox * p.stride + kx) - i32(p.pad);
                if (ix < 0 || ix >= i32(p.w)) { continue; }
                s += dy[ybase + oy * p.wo + ox] * x[xbase + u32(iy) * p.w + u32(ix)];
            }
        }
    }
    dweight[i] = s;
}
