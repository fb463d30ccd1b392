// Optimiser updates over one flat parameter buffer: AdamW (decoupled weight decay) and EMA.

struct Params {
    n: u32,
    step: u32,        // 1-based step count, for bias correction
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    decay: f32,       // EMA decay
    nonneg: u32,      // 1: project the new weights onto θ ≥ 0 (an LPN's constrained weights)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;          // (n)
@group(0) @binding(2) var<storage, read_write> param: array<f32>;   // (n)
@group(0) @binding(3) var<storage, read_write> m: array<f32>;       // (n) first moment
@group(0) @binding(4) var<storage, read_write> v: array<f32>;       // (n) second moment
@group(0) @binding(5) var<storage, read> src: array<f32>;           // (n) EMA source (live weights)
@group(0) @binding(6) var<storage, read_write> ema: array<f32>;     // (n) EMA weights

// Updates the moments of element i and returns the new θ = θ - lr (m̂ / (√v̂ + ε) + wd θ),
// projected onto θ ≥ 0 when asked (so the EMA below only ever sees feasible weights).
fn adamw_at(i: u32) -> f32 {
    let g = grad[i];
    let mi = p.beta1 * m[i] + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    let t = f32(p.step);
    let mh = mi / (1.0 - pow(p.beta1, t));
    let vh = vi / (1.0 - pow(p.beta2, t));
    let w = param[i];
    let next = w - p.lr * (mh / (sqrt(vh) + p.eps) + p.weight_decay * w);
    if (p.nonneg != 0u) { return max(next, 0.0); }
    return next;
}

@compute @workgroup_size(256)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    if (i >= p.n) { return; }
    param[i] = adamw_at(i);
}

// AdamW then the EMA of the new weights, in one pass: e ← d e + (1 - d) θ.
@compute @workgroup_size(256)
fn adamw_ema(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    if (i >= p.n) { return; }
    let w = adamw_at(i);
    param[i] = w;
    ema[i] = p.decay * ema[i] + (1.0 - p.decay) * w;
}

// e ← d e + (1 - d) θ
@compute @workgroup_size(256)
fn ema_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    if (i >= p.n) { return; }
    ema[i] = p.decay * ema[i] + (1.0 - p.decay) * src[i];
}
