// Shared prelude, prepended to every shader in shaders/ (see src/engine/shader.rs).

// Flat invocation index over a grid whose workgroups spill from x into y (Engine::grid).
fn flat_index(gid: vec3<u32>, nwg: vec3<u32>, wg: u32) -> u32 {
    return gid.x + gid.y * nwg.x * wg;
}

// ---- Philox4x32-10 counter-based random numbers (Random123), shared by noise and samplers ----

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

// Four standard normals (Box-Muller on both word pairs) for counter block `block` of `stream`.
fn gaussian4(key: vec2<u32>, stream: u32, block: u32) -> vec4<f32> {
    let r = philox(vec4<u32>(block, 0u, stream, 0u), key);
    let tau = 6.283185307179586;
    let m0 = sqrt(-2.0 * log(uniform01(r.x)));
    let m1 = sqrt(-2.0 * log(uniform01(r.z)));
    return vec4<f32>(m0 * cos(tau * uniform01(r.y)), m0 * sin(tau * uniform01(r.y)),
                     m1 * cos(tau * uniform01(r.w)), m1 * sin(tau * uniform01(r.w)));
}
