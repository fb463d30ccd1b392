// The fused update of one sampling step: out = a·x + b·s + c·z, with z the Philox Gaussian
// draw of (seed, stream = step, element) generated in place (see common.wgsl). Covers
//   Euler–Maruyama        a = 1 + γ/2, b = γ,   c = √γ (0 on a noise-free last step)
//   probability-flow ODE  a = 1 + γ/2, b = γ/2, c = 0
//   ProxDM hybrid input   a = 1 + γ/2, b = 0,   c = √γ
//   ProxDM backward input a = 1/(1-γ/2), b = 0, c = √γ/(1-γ/2)

struct Params {
    n: u32,
    key_lo: u32,
    key_hi: u32,
    stream: u32,
    a: f32,
    b: f32,
    c: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (n) current state
@group(0) @binding(2) var<storage, read> s: array<f32>;          // (n) score (ignored when b = 0)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // (n) next state / prox input

@compute @workgroup_size(64)
fn step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = flat_index(gid, nwg, 64u);  // elements 4q .. 4q+3 share one Philox block
    let first = 4u * q;
    if (first >= p.n) { return; }
    var z = vec4<f32>(0.0);
    if (p.c != 0.0) {
        z = gaussian4(vec2<u32>(p.key_lo, p.key_hi), p.stream, q);
    }
    for (var t = 0u; t < 4u; t++) {
        let i = first + t;
        if (i < p.n) {
            var v = p.a * x[i] + p.c * z[t];
            if (p.b != 0.0) { v += p.b * s[i]; }
            out[i] = v;
        }
    }
}
