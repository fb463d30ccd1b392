// Nearest-neighbour upsampling by 2 in H and W, and its backward (sum over each 2x2 block).

struct Params {
    n: u32,   // N*C planes
    h: u32,   // input height
    w: u32,   // input width
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;        // forward: x (N,C,H,W); backward: dy (N,C,2H,2W)
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;  // forward: y (N,C,2H,2W); backward: dx (N,C,H,W)

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    let w2 = 2u * p.w;
    let h2 = 2u * p.h;
    if (i >= p.n * h2 * w2) { return; }
    let ox = i % w2;
    let oy = (i / w2) % h2;
    let plane = i / (w2 * h2);
    dst[i] = src[(plane * p.h + oy / 2u) * p.w + ox / 2u];
}

// dx[y, x] = Σ_{a,b ∈ {0,1}} dy[2y + a, 2x + b]
@compute @workgroup_size(256)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    if (i >= p.n * p.h * p.w) { return; }
    let x = i % p.w;
    let y = (i / p.w) % p.h;
    let plane = i / (p.w * p.h);
    let w2 = 2u * p.w;
    let base = (plane * 2u * p.h + 2u * y) * w2 + 2u * x;
    dst[i] = src[base] + src[base + 1u] + src[base + w2] + src[base + w2 + 1u];
}
