// Counter-based Gaussian noise (Philox4x32-10 and Box-Muller in the prelude, common.wgsl):
// key = seed, counter = (element/4, 0, stream, 0). Element i of stream s under seed k is the same on every run and back end.

struct Params {
    n: u32,
    key_lo: u32,     // seed bits 0..32
    key_hi: u32,     // seed bits 32..64
    stream: u32,
    offset: u32,     // first element index (so a tensor can continue a sequence)
    mean: f32,
    stddev: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;  // (n)

@compute @workgroup_size(64)
fn gaussian(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = flat_index(gid, nwg, 64u);      // this invocation writes elements 4q .. 4q+3
    let first = 4u * q;
    if (first >= p.n) { return; }
    let e0 = p.offset + first;
    let block = e0 / 4u;                      // Philox counter block of element e0
    let key = vec2<u32>(p.key_lo, p.key_hi);
    let g0 = gaussian4(key, p.stream, block);
    let g1 = gaussian4(key, p.stream, block + 1u);
    let z = array<f32, 8>(g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w);
    let shift = e0 % 4u;  // offset need not be a multiple of 4
    for (var t = 0u; t < 4u; t++) {
        let i = first + t;
        if (i < p.n) { out[i] = p.mean + p.stddev * z[shift + t]; }
    }
}

// Uniform draws in (0, 1]: element i uses word (i % 4) of Philox block i / 4 (streams are shared
// with `gaussian`, so use a different stream for each purpose).
@compute @workgroup_size(64)
fn uniform_fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 64u);
    if (i >= p.n) { return; }
    let e = p.offset + i;
    let r = philox(vec4<u32>(e / 4u, 0u, p.stream, 0u), vec2<u32>(p.key_lo, p.key_hi));
    out[i] = uniform01(r[e % 4u]);
}
