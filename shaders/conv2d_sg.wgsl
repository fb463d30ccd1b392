// Variant of conv2d.wgsl for 8-lane subgroups (see sg_common.wgsl). Same params and bindings.
// Each entry is an implicit matrix product: rows are 16 channels per workgroup (one weight or
// dy value per lane, shared by broadcast), columns are 4 pixels (or weight taps) per lane, and
// the reduction runs over the third index set. `STRIDE` is a specialisation constant (defs).

struct Params {
    n: u32, cin: u32, h: u32, w: u32,
    cout: u32, kh: u32, kw: u32, stride: u32,
    pad: u32, ho: u32, wo: u32, has_bias: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;        // (N, Cin, H, W)
@group(0) @binding(2) var<storage, read> weight: array<f32>;   // (Cout, Cin, KH, KW)
@group(0) @binding(3) var<storage, read> bias: array<f32>;     // (Cout)
@group(0) @binding(4) var<storage, read> dy: array<f32>;       // (N, Cout, Ho, Wo)
@group(0) @binding(5) var<storage, read_write> y: array<f32>;  // (N, Cout, Ho, Wo)
@group(0) @binding(6) var<storage, read_write> dx: array<f32>; // (N, Cin, H, W)
@group(0) @binding(7) var<storage, read_write> dweight: array<f32>; // (Cout, Cin, KH, KW)

// Indices base + clamp(iy)·width + clamp(ix) of 4 taps, and which of them lie inside.
struct Taps {
    idx: vec4<u32>,
    oky: vec4<bool>,
    okx: vec4<bool>,
}

fn taps(base: vec4<u32>, iy: vec4<i32>, ix: vec4<i32>, height: u32, width: u32) -> Taps {
    // A negative coordinate wraps to a huge unsigned one: one comparison per axis. The axes
    // stay apart (combined by two selects on load): a vector `&` of bools does not survive
    // every back end.
    let oky = vec4<u32>(iy) < vec4<u32>(height);
    let okx = vec4<u32>(ix) < vec4<u32>(width);
    let cy = vec4<u32>(clamp(iy, vec4<i32>(0), vec4<i32>(i32(height) - 1)));
    let cx = vec4<u32>(clamp(ix, vec4<i32>(0), vec4<i32>(i32(width) - 1)));
    return Taps(base + cy * width + cx, oky, okx);
}

// Four consecutive outputs (the pixels of one lane) at o.
fn store4_y(o: u32, v: vec4<f32>) {
    y[o] = v.x;
    y[o + 1u] = v.y;
    y[o + 2u] = v.z;
    y[o + 3u] = v.w;
}

fn store4_dx(o: u32, v: vec4<f32>) {
    dx[o] = v.x;
    dx[o + 1u] = v.y;
    dx[o + 2u] = v.z;
    dx[o + 3u] = v.w;
}

// x at 4 taps, 0 outside (zero padding).
fn load_x(t: Taps) -> vec4<f32> {
    let v = vec4<f32>(x[t.idx.x], x[t.idx.y], x[t.idx.z], x[t.idx.w]);
    return select(vec4<f32>(0.0), select(vec4<f32>(0.0), v, t.okx), t.oky);
}

// dy at 4 taps, 0 outside.
fn load_dy(t: Taps) -> vec4<f32> {
    let v = vec4<f32>(dy[t.idx.x], dy[t.idx.y], dy[t.idx.z], dy[t.idx.w]);
    return select(vec4<f32>(0.0), select(vec4<f32>(0.0), v, t.okx), t.oky);
}

// y[n, co, oy, ox] = b[co] + Σ_{ci,ky,kx} w[co,ci,ky,kx] x[n, ci, oy*s - pad + ky, ox*s - pad + kx]
@compute @workgroup_size(64)
fn forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(subgroup_invocation_id) sl: u32,
) {
    let hw = p.ho * p.wo;
    let npix = p.n * hw;
    let co0 = wid.y * 16u;
    let pix0 = (wid.x * 64u + lid.x) * 4u;
    var xb: vec4<u32>;
    var yb: vec4<u32>;
    var iy0: vec4<i32>;
    var ix0: vec4<i32>;
    for (var j = 0u; j < 4u; j++) {
        let q = min(pix0 + j, npix - 1u);
        let nn = q / hw;
        let r = q - nn * hw;
        let oy = r / p.wo;
        xb[j] = nn * p.cin * p.h * p.w;
        yb[j] = nn * p.cout * hw + r;
        iy0[j] = i32(oy * p.stride) - i32(p.pad);
        ix0[j] = i32((r - oy * p.wo) * p.stride) - i32(p.pad);
    }
    let ksz = p.kh * p.kw;
    let w0 = min(co0 + sl, p.cout - 1u) * p.cin * ksz;
    let w1 = min(co0 + 8u + sl, p.cout - 1u) * p.cin * ksz;
    var acc = acc_zero();
    for (var ci = 0u; ci < p.cin; ci++) {
        let base = xb + vec4<u32>(ci * p.h * p.w);
        for (var ky = 0u; ky < p.kh; ky++) {
            let iy = iy0 + vec4<i32>(i32(ky));
            for (var kx = 0u; kx < p.kw; kx++) {
                let xv = load_x(taps(base, iy, ix0 + vec4<i32>(i32(kx)), p.h, p.w));
                let k = (ci * p.kh + ky) * p.kw + kx;
                acc_step(&acc, weight[w0 + k], weight[w1 + k], xv);
            }
        }
    }
    for (var t = 0u; t < 16u; t++) {
        let co = co0 + t;
        if (co >= p.cout) { break; }
        var v = acc_row(&acc, t);
        if (p.has_bias == 1u) { v += vec4<f32>(bias[co]); }
        for (var j = 0u; j < 4u; j++) {
            if (pix0 + j < npix) { y[yb[j] + co * hw] = v[j]; }
        }
    }
}

// t / s where s divides t, else -1 (a tap off the stride grid reads outside and gives 0).
// t > -(kh + kw), so it is shifted by a multiple of s to divide unsigned (signed vector
// division needs a helper that not every back end round-trips).
fn on_grid(t: vec4<i32>, s: i32) -> vec4<i32> {
    let shift = i32(p.kh + p.kw);
    let q = vec4<i32>(vec4<u32>(t + vec4<i32>(shift * s)) / vec4<u32>(u32(s))) - vec4<i32>(shift);
    return select(vec4<i32>(-1), q, q * vec4<i32>(s) == t);
}

// 3x3, stride 1, and Wo a multiple of 4: a lane's 4 pixels are neighbours in one row, so the
// 6 inputs of a kernel row serve all three kx taps (12 loads per kernel row instead of 18).
// Computes what `forward` does.
@compute @workgroup_size(64)
fn forward3(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(subgroup_invocation_id) sl: u32,
) {
    let hw = p.ho * p.wo;
    let npix = p.n * hw;
    let co0 = wid.y * 16u;
    let pix0 = (wid.x * 64u + lid.x) * 4u;
    let q = min(pix0, npix - 4u);
    let nn = q / hw;
    let r = q - nn * hw;
    let oy = r / p.wo;
    let xb = nn * p.cin * p.h * p.w;
    let iy0 = i32(oy) - i32(p.pad);
    let ix0 = i32(r - oy * p.wo) - i32(p.pad);
    let w0 = min(co0 + sl, p.cout - 1u) * p.cin * 9u;
    let w1 = min(co0 + 8u + sl, p.cout - 1u) * p.cin * 9u;
    // Columns ix0 .. ix0 + 5, clamped, and which are inside.
    let ixa = vec4<i32>(ix0) + vec4<i32>(0, 1, 2, 3);
    let ixb = vec2<i32>(ix0 + 4, ix0 + 5);
    let oka = vec4<u32>(ixa) < vec4<u32>(p.w);
    let okb = vec2<u32>(ixb) < vec2<u32>(p.w);
    let ca = vec4<u32>(clamp(ixa, vec4<i32>(0), vec4<i32>(i32(p.w) - 1)));
    let cb = vec2<u32>(clamp(ixb, vec2<i32>(0), vec2<i32>(i32(p.w) - 1)));
    var acc = acc_zero();
    for (var ci = 0u; ci < p.cin; ci++) {
        let plane = xb + ci * p.h * p.w;
        for (var ky = 0u; ky < 3u; ky++) {
            let iy = iy0 + i32(ky);
            let rowok = u32(iy) < p.h;
            let row = plane + u32(clamp(iy, 0, i32(p.h) - 1)) * p.w;
            // Nested selects, not a vector `&` of bools (see taps).
            let va = select(vec4<f32>(0.0), select(
                vec4<f32>(0.0),
                vec4<f32>(x[row + ca.x], x[row + ca.y], x[row + ca.z], x[row + ca.w]),
                oka,
            ), rowok);
            let vb = select(
                vec2<f32>(0.0),
                select(vec2<f32>(0.0), vec2<f32>(x[row + cb.x], x[row + cb.y]), okb),
                rowok,
            );
            let k = ci * 9u + ky * 3u;
            acc_step(&acc, weight[w0 + k], weight[w1 + k], va);
            acc_step(&acc, weight[w0 + k + 1u], weight[w1 + k + 1u], vec4<f32>(va.yzw, vb.x));
            acc_step(&acc, weight[w0 + k + 2u], weight[w1 + k + 2u], vec4<f32>(va.zw, vb));
        }
    }
    if (pix0 >= npix) { return; }
    let yb = nn * p.cout * hw + r;
    for (var t = 0u; t < 16u; t++) {
        let co = co0 + t;
        if (co >= p.cout) { break; }
        var v = acc_row(&acc, t);
        if (p.has_bias == 1u) { v += vec4<f32>(bias[co]); }
        let o = yb + co * hw;
        store4_y(o, v);
    }
}

// 1x1, stride 1, no padding, H·W a multiple of 4 (a matrix product per sample): the 4 pixels
// of a lane are neighbours in one plane, read without bounds checks.
struct Pointwise {
    src: u32,   // first of the lane's 4 pixels in the reduced operand's sample
    dst: u32,   // the same in the output's sample
    wa: u32,    // weight offsets of the lane's two rows
    wb: u32,
    wk: u32,    // weight stride along the reduced channels
    valid: bool,
}

// rows: output channels; red: reduced channels; `transposed` reads the weight (Cout, Cin) as
// (Cin, Cout) (the input gradient).
fn pointwise(wid: vec3<u32>, lid: vec3<u32>, sl: u32, rows: u32, red: u32, transposed: bool) -> Pointwise {
    let hw = p.h * p.w;
    let npix = p.n * hw;
    let pix0 = (wid.x * 64u + lid.x) * 4u;
    let q = min(pix0, npix - 4u);
    let nn = q / hw;
    let r = q - nn * hw;
    let wr = select(p.cin, 1u, transposed);
    let ra = min(wid.y * 16u + sl, rows - 1u);
    let rb = min(wid.y * 16u + 8u + sl, rows - 1u);
    return Pointwise(
        nn * red * hw + r,
        nn * rows * hw + r,
        ra * wr,
        rb * wr,
        select(1u, p.cin, transposed),
        pix0 < npix,
    );
}

// `forward` for 1x1 stride 1.
@compute @workgroup_size(64)
fn forward1(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(subgroup_invocation_id) sl: u32,
) {
    let hw = p.h * p.w;
    let pw = pointwise(wid, lid, sl, p.cout, p.cin, false);
    var acc = acc_zero();
    for (var k = 0u; k < p.cin; k++) {
        let o = pw.src + k * hw;
        let v = vec4<f32>(x[o], x[o + 1u], x[o + 2u], x[o + 3u]);
        acc_step(&acc, weight[pw.wa + k * pw.wk], weight[pw.wb + k * pw.wk], v);
    }
    if (!pw.valid) { return; }
    for (var t = 0u; t < 16u; t++) {
        let c = wid.y * 16u + t;
        if (c >= p.cout) { break; }
        var v = acc_row(&acc, t);
        if (p.has_bias == 1u) { v += vec4<f32>(bias[c]); }
        let o = pw.dst + c * hw;
        store4_y(o, v);
    }
}

// `backward_input` for 1x1 stride 1.
@compute @workgroup_size(64)
fn backward_input1(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(subgroup_invocation_id) sl: u32,
) {
    let hw = p.h * p.w;
    let pw = pointwise(wid, lid, sl, p.cin, p.cout, true);
    var acc = acc_zero();
    for (var k = 0u; k < p.cout; k++) {
        let o = pw.src + k * hw;
        let v = vec4<f32>(dy[o], dy[o + 1u], dy[o + 2u], dy[o + 3u]);
        acc_step(&acc, weight[pw.wa + k * pw.wk], weight[pw.wb + k * pw.wk], v);
    }
    if (!pw.valid) { return; }
    for (var t = 0u; t < 16u; t++) {
        let c = wid.y * 16u + t;
        if (c >= p.cin) { break; }
        let v = acc_row(&acc, t);
        let o = pw.dst + c * hw;
        store4_dx(o, v);
    }
}

// dx[n, ci, iy, ix] = Σ_{co,ky,kx} dy[n, co, oy, ox] w[co, ci, ky, kx], iy = oy*s - pad + ky
@compute @workgroup_size(64)
fn backward_input(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(subgroup_invocation_id) sl: u32,
) {
    let hw = p.h * p.w;
    let npix = p.n * hw;
    let ohw = p.ho * p.wo;
    let ci0 = wid.y * 16u;
    let pix0 = (wid.x * 64u + lid.x) * 4u;
    var db: vec4<u32>;
    var xo: vec4<u32>;
    var ty0: vec4<i32>;
    var tx0: vec4<i32>;
    for (var j = 0u; j < 4u; j++) {
        let q = min(pix0 + j, npix - 1u);
        let nn = q / hw;
        let r = q - nn * hw;
        let iy = r / p.w;
        db[j] = nn * p.cout * ohw;
        xo[j] = nn * p.cin * hw + r;
        ty0[j] = i32(iy + p.pad);
        tx0[j] = i32(r - iy * p.w + p.pad);
    }
    let ksz = p.kh * p.kw;
    let w0 = min(ci0 + sl, p.cin - 1u) * ksz;
    let w1 = min(ci0 + 8u + sl, p.cin - 1u) * ksz;
    let s = i32(STRIDE);
    var acc = acc_zero();
    for (var co = 0u; co < p.cout; co++) {
        let base = db + vec4<u32>(co * ohw);
        let wco = co * p.cin * ksz;
        for (var ky = 0u; ky < p.kh; ky++) {
            let ty = ty0 - vec4<i32>(i32(ky));
            let oy = on_grid(ty, s);
            for (var kx = 0u; kx < p.kw; kx++) {
                let tx = tx0 - vec4<i32>(i32(kx));
                let ox = on_grid(tx, s);
                let dv = load_dy(taps(base, oy, ox, p.ho, p.wo));
                let k = wco + ky * p.kw + kx;
                acc_step(&acc, weight[w0 + k], weight[w1 + k], dv);
            }
        }
    }
    for (var t = 0u; t < 16u; t++) {
        let ci = ci0 + t;
        if (ci >= p.cin) { break; }
        let v = acc_row(&acc, t);
        for (var j = 0u; j < 4u; j++) {
            if (pix0 + j < npix) { dx[xo[j] + ci * hw] = v[j]; }
        }
    }
}

// 3x3, stride 1, and W a multiple of 4: the sliding-window form of `backward_input` (the
// input gradient is the convolution of dy with the flipped kernel).
@compute @workgroup_size(64)
fn backward_input3(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(subgroup_invocation_id) sl: u32,
) {
    let hw = p.h * p.w;
    let npix = p.n * hw;
    let ohw = p.ho * p.wo;
    let ci0 = wid.y * 16u;
    let pix0 = (wid.x * 64u + lid.x) * 4u;
    let q = min(pix0, npix - 4u);
    let nn = q / hw;
    let r = q - nn * hw;
    let iy = r / p.w;
    let db = nn * p.cout * ohw;
    // dy columns ix + pad - 2 .. ix + pad + 3 feed the 4 pixels through kx = 2, 1, 0.
    let c0 = i32(r - iy * p.w + p.pad) - 2;
    let ca_i = vec4<i32>(c0) + vec4<i32>(0, 1, 2, 3);
    let cb_i = vec2<i32>(c0 + 4, c0 + 5);
    let oka = vec4<u32>(ca_i) < vec4<u32>(p.wo);
    let okb = vec2<u32>(cb_i) < vec2<u32>(p.wo);
    let ca = vec4<u32>(clamp(ca_i, vec4<i32>(0), vec4<i32>(i32(p.wo) - 1)));
    let cb = vec2<u32>(clamp(cb_i, vec2<i32>(0), vec2<i32>(i32(p.wo) - 1)));
    let w0 = min(ci0 + sl, p.cin - 1u) * 9u;
    let w1 = min(ci0 + 8u + sl, p.cin - 1u) * 9u;
    var acc = acc_zero();
    for (var co = 0u; co < p.cout; co++) {
        let plane = db + co * ohw;
        let wco = co * p.cin * 9u;
        for (var ky = 0u; ky < 3u; ky++) {
            let oy = i32(iy + p.pad) - i32(ky);
            let rowok = u32(oy) < p.ho;
            let row = plane + u32(clamp(oy, 0, i32(p.ho) - 1)) * p.wo;
            let va = select(vec4<f32>(0.0), select(
                vec4<f32>(0.0),
                vec4<f32>(dy[row + ca.x], dy[row + ca.y], dy[row + ca.z], dy[row + ca.w]),
                oka,
            ), rowok);
            let vb = select(
                vec2<f32>(0.0),
                select(vec2<f32>(0.0), vec2<f32>(dy[row + cb.x], dy[row + cb.y]), okb),
                rowok,
            );
            let k = wco + ky * 3u;
            acc_step(&acc, weight[w0 + k], weight[w1 + k], vec4<f32>(va.zw, vb));
            acc_step(&acc, weight[w0 + k + 1u], weight[w1 + k + 1u], vec4<f32>(va.yzw, vb.x));
            acc_step(&acc, weight[w0 + k + 2u], weight[w1 + k + 2u], va);
        }
    }
    if (pix0 >= npix) { return; }
    let xo = nn * p.cin * hw + r;
    for (var t = 0u; t < 16u; t++) {
        let ci = ci0 + t;
        if (ci >= p.cin) { break; }
        let v = acc_row(&acc, t);
        let o = xo + ci * hw;
        store4_dx(o, v);
    }
}

// dweight[co, ci, ky, kx] = Σ_{n,oy,ox} dy[n, co, oy, ox] x[n, ci, oy*s - pad + ky, ox*s - pad + kx]
// 16 lanes (64 columns) per workgroup: weight gradients have few columns (Cin·9), and
// wider workgroups would leave lanes idle.
@compute @workgroup_size(16)
fn backward_weight(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(subgroup_invocation_id) sl: u32,
) {
    let ksz = p.kh * p.kw;
    let ncol = p.cin * ksz;
    let ohw = p.ho * p.wo;
    let co0 = wid.y * 16u;
    let col0 = (wid.x * 16u + lid.x) * 4u;
    var xc: vec4<u32>;
    var offy: vec4<i32>;
    var offx: vec4<i32>;
    for (var j = 0u; j < 4u; j++) {
        let q = min(col0 + j, ncol - 1u);
        let ci = q / ksz;
        let t = q - ci * ksz;
        let ky = t / p.kw;
        xc[j] = ci * p.h * p.w;
        offy[j] = i32(ky) - i32(p.pad);
        offx[j] = i32(t - ky * p.kw) - i32(p.pad);
    }
    let d0 = min(co0 + sl, p.cout - 1u) * ohw;
    let d1 = min(co0 + 8u + sl, p.cout - 1u) * ohw;
    var acc = acc_zero();
    for (var nn = 0u; nn < p.n; nn++) {
        let base = xc + vec4<u32>(nn * p.cin * p.h * p.w);
        let dn = nn * p.cout * ohw;
        for (var oy = 0u; oy < p.ho; oy++) {
            let iy = offy + vec4<i32>(i32(oy * p.stride));
            let drow = dn + oy * p.wo;
            for (var ox = 0u; ox < p.wo; ox++) {
                let xv = load_x(taps(base, iy, offx + vec4<i32>(i32(ox * p.stride)), p.h, p.w));
                acc_step(&acc, dy[drow + d0 + ox], dy[drow + d1 + ox], xv);
            }
        }
    }
    for (var t = 0u; t < 16u; t++) {
        let co = co0 + t;
        if (co >= p.cout) { break; }
        let v = acc_row(&acc, t);
        for (var j = 0u; j < 4u; j++) {
            if (col0 + j < ncol) { dweight[co * ncol + col0 + j] = v[j]; }
        }
    }
}

// A 16 x 3 accumulator block (the three kx taps of one kernel row), as `Acc` is 16 x 4.
struct Acc3 {
    r0: vec3<f32>,
    r1: vec3<f32>,
    r2: vec3<f32>,
    r3: vec3<f32>,
    r4: vec3<f32>,
    r5: vec3<f32>,
    r6: vec3<f32>,
    r7: vec3<f32>,
    r8: vec3<f32>,
    r9: vec3<f32>,
    r10: vec3<f32>,
    r11: vec3<f32>,
    r12: vec3<f32>,
    r13: vec3<f32>,
    r14: vec3<f32>,
    r15: vec3<f32>,
}

fn acc3_zero() -> Acc3 {
    let z = vec3<f32>(0.0);
    return Acc3(z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z);
}

// As `acc_step` for a 16 x 3 block.
fn acc3_step(acc: ptr<function, Acc3>, a0: f32, a1: f32, v: vec3<f32>) {
    (*acc).r0 += subgroupBroadcast(a0, 0u) * v;
    (*acc).r1 += subgroupBroadcast(a0, 1u) * v;
    (*acc).r2 += subgroupBroadcast(a0, 2u) * v;
    (*acc).r3 += subgroupBroadcast(a0, 3u) * v;
    (*acc).r4 += subgroupBroadcast(a0, 4u) * v;
    (*acc).r5 += subgroupBroadcast(a0, 5u) * v;
    (*acc).r6 += subgroupBroadcast(a0, 6u) * v;
    (*acc).r7 += subgroupBroadcast(a0, 7u) * v;
    (*acc).r8 += subgroupBroadcast(a1, 0u) * v;
    (*acc).r9 += subgroupBroadcast(a1, 1u) * v;
    (*acc).r10 += subgroupBroadcast(a1, 2u) * v;
    (*acc).r11 += subgroupBroadcast(a1, 3u) * v;
    (*acc).r12 += subgroupBroadcast(a1, 4u) * v;
    (*acc).r13 += subgroupBroadcast(a1, 5u) * v;
    (*acc).r14 += subgroupBroadcast(a1, 6u) * v;
    (*acc).r15 += subgroupBroadcast(a1, 7u) * v;
}

fn acc3_row(acc: ptr<function, Acc3>, t: u32) -> vec3<f32> {
    switch t {
        case 0u: { return (*acc).r0; }
        case 1u: { return (*acc).r1; }
        case 2u: { return (*acc).r2; }
        case 3u: { return (*acc).r3; }
        case 4u: { return (*acc).r4; }
        case 5u: { return (*acc).r5; }
        case 6u: { return (*acc).r6; }
        case 7u: { return (*acc).r7; }
        case 8u: { return (*acc).r8; }
        case 9u: { return (*acc).r9; }
        case 10u: { return (*acc).r10; }
        case 11u: { return (*acc).r11; }
        case 12u: { return (*acc).r12; }
        case 13u: { return (*acc).r13; }
        case 14u: { return (*acc).r14; }
        case 15u: { return (*acc).r15; }
        default: { return vec3<f32>(0.0); }
    }
}

// 3x3, stride 1, and Wo a multiple of 4: the sliding-window form of `backward_weight`. A lane's
// columns are the three kx taps of one (ci, ky); along an output row, the 6 inputs
// x[ox - pad .. ox - pad + 5] serve 4 pixels × 3 taps, so a lane loads 6 + 8 values per 192
// multiply-adds (against 6 per 64, each with its own tap bounds, in `backward_weight`).
@compute @workgroup_size(16)
fn backward_weight3(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(subgroup_invocation_id) sl: u32,
) {
    let ohw = p.ho * p.wo;
    let ncol = p.cin * 3u;
    let co0 = wid.y * 16u;
    let col = wid.x * 16u + lid.x;
    let cc = min(col, ncol - 1u);
    let ci = cc / 3u;
    let ky = cc - ci * 3u;
    let d0 = min(co0 + sl, p.cout - 1u) * ohw;
    let d1 = min(co0 + 8u + sl, p.cout - 1u) * ohw;
    let off = vec4<i32>(0, 1, 2, 3) - vec4<i32>(i32(p.pad));
    var acc = acc3_zero();
    for (var nn = 0u; nn < p.n; nn++) {
        let plane = (nn * p.cin + ci) * p.h * p.w;
        let dn = nn * p.cout * ohw;
        for (var oy = 0u; oy < p.ho; oy++) {
            let iy = i32(oy + ky) - i32(p.pad);
            let rowok = u32(iy) < p.h;
            let row = plane + u32(clamp(iy, 0, i32(p.h) - 1)) * p.w;
            let drow = dn + oy * p.wo;
            for (var ox = 0u; ox < p.wo; ox += 4u) {
                // Columns ox - pad .. ox - pad + 5, zero outside (nested selects, see taps).
                let ixa = vec4<i32>(i32(ox)) + off;
                let ixb = vec2<i32>(ixa.w + 1, ixa.w + 2);
                let oka = vec4<u32>(ixa) < vec4<u32>(p.w);
                let okb = vec2<u32>(ixb) < vec2<u32>(p.w);
                let ca = vec4<u32>(clamp(ixa, vec4<i32>(0), vec4<i32>(i32(p.w) - 1)));
                let cb = vec2<u32>(clamp(ixb, vec2<i32>(0), vec2<i32>(i32(p.w) - 1)));
                let va = select(vec4<f32>(0.0), select(
                    vec4<f32>(0.0),
                    vec4<f32>(x[row + ca.x], x[row + ca.y], x[row + ca.z], x[row + ca.w]),
                    oka,
                ), rowok);
                let vb = select(
                    vec2<f32>(0.0),
                    select(vec2<f32>(0.0), vec2<f32>(x[row + cb.x], x[row + cb.y]), okb),
                    rowok,
                );
                let o0 = drow + d0 + ox;
                let o1 = drow + d1 + ox;
                acc3_step(&acc, dy[o0], dy[o1], va.xyz);
                acc3_step(&acc, dy[o0 + 1u], dy[o1 + 1u], vec3<f32>(va.yzw));
                acc3_step(&acc, dy[o0 + 2u], dy[o1 + 2u], vec3<f32>(va.zw, vb.x));
                acc3_step(&acc, dy[o0 + 3u], dy[o1 + 3u], vec3<f32>(va.w, vb));
            }
        }
    }
    if (col >= ncol) { return; }
    let k = ci * 9u + ky * 3u;
    for (var t = 0u; t < 16u; t++) {
        let co = co0 + t;
        if (co >= p.cout) { break; }
        let v = acc3_row(&acc, t);
        let o = co * p.cin * 9u + k;
        dweight[o] = v.x;
        dweight[o + 1u] = v.y;
        dweight[o + 2u] = v.z;
    }
}
