// Counter-based Gaussian noise: Philox4x32-10 keyed by the seed, counter (element/4, stream),
// then Box-Muller. Element i of stream s under seed k is the same on every run and back end.

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

// 32x32 -> 64-bit product as (hi, lo).
fn mulhilo(a: u32, b: u32) -> vec2<u32> {
    let a_lo = a & 0xffffu;
    let a_hi = a >> 16u;
    let b_lo = b & 0xffffu;
    let b_hi = b >> 16u;
    let ll = a_lo * b_lo;
    let lh = a_lo * b_hi;
    let hl = a_hi * b_lo;
    let hh = a_hi * b_hi;
    let mid = (ll >> 16u) + (lh & 0xffffu) + (hl & 0xffffu);
    let hi = hh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
    let lo = (mid << 16u) | (ll & 0xffffu);
    return vec2<u32>(hi, lo);
}

fn philox(ctr_in: vec4<u32>, key_in: vec2<u32>) -> vec4<u32> {
    var c = ctr_in;
    var k = key_in;
    for (var r = 0u; r < 10u; r++) {
        let p0 = mulhilo(0xD2511F53u, c.x);
        let p1 = mulhilo(0xCD9E8D57u, c.z);
        c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
        k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
    }
    return c;
}

// u32 -> (0, 1], never 0 so log is finite.
fn uniform01(x: u32) -> f32 {
    return (f32(x >> 8u) + 1.0) * (1.0 / 16777216.0);
}

@compute @workgroup_size(64)
fn gaussian(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = flat_index(gid, nwg, 64u);      // this invocation writes elements 4q .. 4q+3
    let first = 4u * q;
    if (first >= p.n) { return; }
    let e0 = p.offset + first;
    let block = e0 / 4u;                      // Philox counter block of element e0
    let r = philox(vec4<u32>(block, 0u, p.stream, 0u), vec2<u32>(p.key_lo, p.key_hi));
    let r2 = philox(vec4<u32>(block + 1u, 0u, p.stream, 0u), vec2<u32>(p.key_lo, p.key_hi));
    var z: array<f32, 8>;
    let tau = 6.283185307179586;
    let m0 = sqrt(-2.0 * log(uniform01(r.x)));
    let m1 = sqrt(-2.0 * log(uniform01(r.z)));
    let m2 = sqrt(-2.0 * log(uniform01(r2.x)));
    let m3 = sqrt(-2.0 * log(uniform01(r2.z)));
    z[0] = m0 * cos(tau * uniform01(r.y));
    z[1] = m0 * sin(tau * uniform01(r.y));
    z[2] = m1 * cos(tau * uniform01(r.w));
    z[3] = m1 * sin(tau * uniform01(r.w));
    z[4] = m2 * cos(tau * uniform01(r2.y));
    z[5] = m2 * sin(tau * uniform01(r2.y));
    z[6] = m3 * cos(tau * uniform01(r2.w));
    z[7] = m3 * sin(tau * uniform01(r2.w));
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
