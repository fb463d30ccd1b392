// Sinusoidal embedding of a scalar s in [0, 1] (time t or lambda): with u = 1000 s and
// f_k = exp(-k ln(10000) / (half - 1)), emb = [sin(u f_0..), cos(u f_0..)].

struct Params {
    n: u32,      // scalars
    dim: u32,    // embedding width (even)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> s: array<f32>;          // (N)
@group(0) @binding(2) var<storage, read> demb: array<f32>;       // (N, dim)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // forward: (N, dim); backward: ds (N)

fn freq(k: u32) -> f32 {
    let half = p.dim / 2u;
    return exp(-f32(k) * log(10000.0) / f32(max(half, 2u) - 1u));
}

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    if (i >= p.n * p.dim) { return; }
    let half = p.dim / 2u;
    let j = i % p.dim;
    let u = 1000.0 * s[i / p.dim] * freq(j % half);
    out[i] = select(sin(u), cos(u), j >= half);
}

// ds = Σ_k 1000 f_k (cos(u f_k) demb_k - sin(u f_k) demb_{half+k})
@compute @workgroup_size(64)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_index(gid, nwg, 64u);
    if (r >= p.n) { return; }
    let half = p.dim / 2u;
    var acc = 0.0;
    for (var k = 0u; k < half; k++) {
        let f = 1000.0 * freq(k);
        let u = s[r] * f;
        acc += f * (cos(u) * demb[r * p.dim + k] - sin(u) * demb[r * p.dim + half + k]);
    }
    out[r] = acc;
}
