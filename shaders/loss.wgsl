// Per-sample losses between a prediction and a tgt of shape (B, D), averaged over the batch:
//   kind 0 L1:   m_b = mean_d |a - t|,  loss = mean_b m_b
//   kind 1 MSE:  m_b = mean_d (a - t)², loss = mean_b m_b
//   kind 2 proximal matching: m_b = mean_d (a - t)², loss = mean_b (1 - exp(-m_b / ζ²))
//   kind 3 cross-entropy of logits a against class probabilities t (one-hot labels):
//          m_b = logsumexp_d(a) - Σ_d t a,     loss = mean_b m_b
//
// Kinds 0-2 are the expectations of those losses when the target is tgt + w with
// w ~ N(0, v_b I) independent of the prediction (`var` holds v_b ≥ 0; all zero: the plain losses).
// With e = a - t, s_b = ζ² + 2v_b/D and K_b = (1 + 2v_b/(Dζ²))^(-D/2):
//   L1:  mean_d [σ√(2/π) exp(-e²/2v) + e·erf(e/(σ√2))], σ = √v_b (|e| when v_b = 0)
//   MSE: m_b + v_b
//   PM:  1 - K_b exp(-m_b / s_b)

struct Params {
    b: u32,
    d: u32,
    kind: u32,
    zeta: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pred: array<f32>;          // (B, D)
@group(0) @binding(2) var<storage, read> tgt: array<f32>;           // (B, D)
@group(0) @binding(3) var<storage, read> dloss: array<f32>;         // (1) upstream gradient
@group(0) @binding(4) var<storage, read_write> per_sample: array<f32>; // (B) m_b
@group(0) @binding(5) var<storage, read> var_b: array<f32>;         // (B) v_b
@group(0) @binding(6) var<storage, read_write> out: array<f32>;     // forward: (1) loss; backward: (B, D) dpred

// log Σ_d exp(pred[r, d]), shifted by the row's maximum.
fn logsumexp(r: u32) -> f32 {
    var mx = pred[r * p.d];
    for (var j = 1u; j < p.d; j++) { mx = max(mx, pred[r * p.d + j]); }
    var s = 0.0;
    for (var j = 0u; j < p.d; j++) { s += exp(pred[r * p.d + j] - mx); }
    return mx + log(s);
}

// Abramowitz–Stegun 7.1.26, |error| < 1.5e-7.
fn erf_approx(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(x));
    let poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t
        + 0.254829592) * t;
    return sign(x) * (1.0 - poly * exp(-x * x));
}

// E|e + w|, w ~ N(0, v).
fn expected_abs(e: f32, v: f32) -> f32 {
    if (v <= 0.0) { return abs(e); }
    let s = sqrt(v);
    return s * 0.7978845608 * exp(-0.5 * e * e / v) + e * erf_approx(e / (s * 1.4142135624));
}

// ln(1 + x) for x ≥ 0, accurate where x is tiny (2v/(Dζ²) is ~1e-3 for an image).
fn ln1p(x: f32) -> f32 {
    if (x < 1e-2) { return x * (1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))); }
    return log(1.0 + x);
}

// Proximal matching's (width s_b, scale K_b) for sample r.
fn pm_width(r: u32) -> vec2<f32> {
    let z2 = p.zeta * p.zeta;
    let v = var_b[r];
    let d = f32(p.d);
    return vec2(z2 + 2.0 * v / d, exp(-0.5 * d * ln1p(2.0 * v / (d * z2))));
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
    let v = var_b[r];
    var s = 0.0;
    for (var j = 0u; j < p.d; j++) {
        let e = pred[r * p.d + j] - tgt[r * p.d + j];
        s += select(e * e, expected_abs(e, v), p.kind == 0u);
    }
    per_sample[r] = s / f32(p.d);
}

@compute @workgroup_size(1)
fn finish(@builtin(global_invocation_id) gid: vec3<u32>) {
    var s = 0.0;
    for (var r = 0u; r < p.b; r++) {
        let m = per_sample[r];
        switch p.kind {
            case 1u: { s += m + var_b[r]; }
            case 2u: {
                let w = pm_width(r);
                s += 1.0 - w.y * exp(-m / w.x);
            }
            default: { s += m; }
        }
    }
    out[0] = s / f32(p.b);
}

// L1: erf(e/(σ√2))/(BD) (sign(e) at v = 0);  MSE: 2e/(BD);  PM: K exp(-m_b/s_b)/s_b · 2e/(BD);
// CE: (softmax - t)/B
@compute @workgroup_size(256)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    if (i >= p.b * p.d) { return; }
    let e = pred[i] - tgt[i];
    let r = i / p.d;
    let scale = dloss[0] / f32(p.b * p.d);
    var g: f32;
    switch p.kind {
        case 0u: {
            let v = var_b[r];
            g = select(sign(e), erf_approx(e / sqrt(2.0 * v)), v > 0.0);
        }
        case 1u: { g = 2.0 * e; }
        case 3u: { g = f32(p.d) * (exp(pred[i] - logsumexp(r)) - tgt[i]); }
        default: {
            let w = pm_width(r);
            g = w.y * exp(-per_sample[r] / w.x) / w.x * 2.0 * e;
        }
    }
    out[i] = scale * g;
}
