// Per-sample losses between a prediction and a tgt of shape (B, D), averaged over the batch:
//   kind 0 L1:   m_b = mean_d |a - t|,  loss = mean_b m_b
//   kind 1 MSE:  m_b = mean_d (a - t)², loss = mean_b m_b
//   kind 2 proximal matching: m_b = mean_d (a - t)², loss = mean_b (1 - exp(-m_b / ζ²))
//   kind 3 cross-entropy of logits a against class probabilities t (one-hot labels):
//          m_b = logsumexp_d(a) - Σ_d t a,     loss = mean_b m_b

struct Params {
    b: u32,
    d: u32,
    kind: u32,
    zeta: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pred: array<f32>;          // (B, D)
@group(0) @binding(2) var<storage, read> tgt: array<f32>;        // (B, D)
@group(0) @binding(3) var<storage, read> dloss: array<f32>;         // (1) upstream gradient
@group(0) @binding(4) var<storage, read_write> per_sample: array<f32>; // (B) m_b
@group(0) @binding(5) var<storage, read_write> out: array<f32>;     // forward: (1) loss; backward: (B, D) dpred

// log Σ_d exp(pred[r, d]), shifted by the row's maximum.
fn logsumexp(r: u32) -> f32 {
    var mx = pred[r * p.d];
    for (var j = 1u; j < p.d; j++) { mx = max(mx, pred[r * p.d + j]); }
    var s = 0.0;
    for (var j = 0u; j < p.d; j++) { s += exp(pred[r * p.d + j] - mx); }
    return mx + log(s);
}

@compute @workgroup_size(64)
fn per_sample_stat(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= p.b) { return; }
    if (p.kind == 3u) {
        var dot = 0.0;
        for (var j = 0u; j < p.d; j++) { dot += tgt[r * p.d + j] * pred[r * p.d + j]; }
        per_sample[r] = logsumexp(r) - dot;
        return;
    }
    var s = 0.0;
    for (var j = 0u; j < p.d; j++) {
        let e = pred[r * p.d + j] - tgt[r * p.d + j];
        s += select(e * e, abs(e), p.kind == 0u);
    }
    per_sample[r] = s / f32(p.d);
}

@compute @workgroup_size(1)
fn finish(@builtin(global_invocation_id) gid: vec3<u32>) {
    var s = 0.0;
    for (var r = 0u; r < p.b; r++) {
        let m = per_sample[r];
        s += select(m, 1.0 - exp(-m / (p.zeta * p.zeta)), p.kind == 2u);
    }
    out[0] = s / f32(p.b);
}

// L1: sign(e)/(BD);  MSE: 2e/(BD);  PM: exp(-m_b/ζ²)/ζ² · 2e/(BD);  CE: (softmax - t)/B
@compute @workgroup_size(256)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    if (i >= p.b * p.d) { return; }
    let e = pred[i] - tgt[i];
    let scale = dloss[0] / f32(p.b * p.d);
    var g: f32;
    switch p.kind {
        case 0u: { g = sign(e); }
        case 1u: { g = 2.0 * e; }
        case 3u: { g = f32(p.d) * (exp(pred[i] - logsumexp(i / p.d)) - tgt[i]); }
        default: {
            let z2 = p.zeta * p.zeta;
            g = exp(-per_sample[i / p.d] / z2) / z2 * 2.0 * e;
        }
    }
    out[i] = scale * g;
}
