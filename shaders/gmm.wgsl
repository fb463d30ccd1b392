// The exact score and the oracle prox of p_t for a uniform mixture of Diracs at m points in 2D,
// perturbed by the VP SDE: p_t = (1/m) Σ_k N(√α μ_k, (1−α) I). With d_k = √α μ_k, v = 1−α and
// w_k(x) = softmax_k(−|x − d_k|² / 2v) (log-sum-exp stable), the posterior mean is
// m(x) = Σ w_k d_k and the score (m(x) − x)/v.
//
// prox_{−λ ln p_t}(y) = argmin_u ½|u − y|² − λ ln p_t(u), by Newton's method from u = y on the
// f32-safe scaled gradient F(u) = (v + λ)u − v·y − λ·m(u) (= v·∇ of the objective) with Jacobian
// J = (v + λ)I − (λ/v)·Cov_w(d), backtracking until Φ = v·objective (Armijo) or |F| decreases,
// and a fixed-point step when J is not positive definite. Converged when |F|/(v + λ) < tol. At v = 0 the prox is
// the nearest point.

struct Params {
    n: u32,          // points to evaluate
    m: u32,          // mixture components
    max_iter: u32,
    _pad: u32,
    sa: f32,         // √α(t)
    variance: f32,   // 1 − α(t)
    lambda: f32,
    tol: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> mu: array<vec2<f32>>;        // (m) target points
@group(0) @binding(2) var<storage, read> x: array<vec2<f32>>;         // (n) inputs
@group(0) @binding(3) var<storage, read_write> out: array<vec2<f32>>;  // (n) score or prox
@group(0) @binding(4) var<storage, read_write> status: array<f32>;    // (n) max residual so far

struct Stats {
    mean: vec2<f32>,   // m(u)
    cov: vec3<f32>,    // Cov_w(d): xx, xy, yy
    lse: f32,          // log Σ_k exp(−|u − d_k|²/2v)
}

fn stats(u: vec2<f32>) -> Stats {
    var mx = -3.4e38;
    for (var k = 0u; k < p.m; k++) {
        let d = u - p.sa * mu[k];
        mx = max(mx, -dot(d, d) / (2.0 * p.variance));
    }
    var s = 0.0;
    var mean = vec2<f32>(0.0);
    for (var k = 0u; k < p.m; k++) {
        let dk = p.sa * mu[k];
        let d = u - dk;
        let w = exp(-dot(d, d) / (2.0 * p.variance) - mx);
        s += w;
        mean += w * dk;
    }
    mean /= s;
    var cov = vec3<f32>(0.0);
    for (var k = 0u; k < p.m; k++) {
        let dk = p.sa * mu[k];
        let d = u - dk;
        let w = exp(-dot(d, d) / (2.0 * p.variance) - mx) / s;
        let c = dk - mean;
        cov += w * vec3<f32>(c.x * c.x, c.x * c.y, c.y * c.y);
    }
    return Stats(mean, cov, mx + log(s));
}

@compute @workgroup_size(64)
fn score(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 64u);
    if (i >= p.n) { return; }
    let st = stats(x[i]);
    out[i] = (st.mean - x[i]) / p.variance;
}

// Φ(u) = v·(½|u − y|² − λ ln p_t(u)) up to a constant.
fn phi(u: vec2<f32>, y: vec2<f32>, lse: f32) -> f32 {
    let d = u - y;
    return 0.5 * p.variance * dot(d, d) - p.lambda * p.variance * lse;
}

@compute @workgroup_size(64)
fn prox(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 64u);
    if (i >= p.n) { return; }
    let y = x[i];
    if (p.variance <= 0.0) {
        // t = 0: the nearest point.
        var best = mu[0];
        for (var k = 1u; k < p.m; k++) {
            if (distance(y, mu[k]) < distance(y, best)) { best = mu[k]; }
        }
        out[i] = best;
        return;
    }
    let c = p.variance + p.lambda;
    var u = y;
    var st = stats(u);
    var res = 3.4e38;
    for (var it = 0u; it < p.max_iter; it++) {
        let f = c * u - p.variance * y - p.lambda * st.mean;
        res = length(f) / c;
        if (res < p.tol) { break; }
        // J = cI − (λ/v)Cov; Newton direction when J is positive definite.
        let k = p.lambda / p.variance;
        let jxx = c - k * st.cov.x;
        let jxy = -k * st.cov.y;
        let jyy = c - k * st.cov.z;
        let det = jxx * jyy - jxy * jxy;
        var dir = -f / c;
        if (det > 1e-12 * c * c && jxx > 0.0) {
            dir = -vec2<f32>(jyy * f.x - jxy * f.y, -jxy * f.x + jxx * f.y) / det;
        }
        // Armijo backtracking on Φ (F is its gradient).
        let phi0 = phi(u, y, st.lse);
        let slope = dot(f, dir);
        var step = 1.0;
        var un = u + dir;
        var sn = stats(un);
        for (var b = 0u; b < 30u; b++) {
            // Φ's decrease stops being measurable in f32 near the solution; there the drop of
            // the residual |F| decides (Newton converges quadratically in it).
            let fn_ = c * un - p.variance * y - p.lambda * sn.mean;
            if (phi(un, y, sn.lse) <= phi0 + 1e-4 * step * slope
                || length(fn_) <= (1.0 - 1e-4 * step) * length(f)) { break; }
            step *= 0.5;
            un = u + step * dir;
            sn = stats(un);
        }
        u = un;
        st = sn;
    }
    let f = c * u - p.variance * y - p.lambda * st.mean;
    res = length(f) / c;
    out[i] = u;
    status[i] = max(status[i], res);
}
