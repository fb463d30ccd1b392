// Group normalisation over (C/G channels x H*W) per sample and group, with affine gamma/beta,
// optionally followed by SiLU in the same pass (p.silu = 1: y = v·σ(v) with v the normalised
// value; the backward recomputes v and applies SiLU's derivative to dy first).
// One workgroup of 64 invocations per (n, g) for statistics and dx; one invocation per
// channel for dgamma/dbeta.

struct Params {
    n: u32,
    c: u32,
    hw: u32,
    groups: u32,
    eps: f32,
    silu: u32,
    _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (N, C, H, W)
@group(0) @binding(2) var<storage, read> gamma: array<f32>;      // (C)
@group(0) @binding(3) var<storage, read> beta: array<f32>;       // (C)
@group(0) @binding(4) var<storage, read> dy: array<f32>;         // (N, C, H, W)
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;  // (N, G, 2): mean, rstd
@group(0) @binding(6) var<storage, read_write> y: array<f32>;      // (N, C, H, W): y or dx
@group(0) @binding(7) var<storage, read_write> dgamma: array<f32>; // (C)
@group(0) @binding(8) var<storage, read_write> dbeta: array<f32>;  // (C)

const WG: u32 = 8u;
var<workgroup> red_a: array<f32, 64>;
var<workgroup> red_b: array<f32, 64>;

fn act(v: f32) -> f32 {
    if (p.silu == 1u) { return v / (1.0 + exp(-v)); }
    return v;
}

// dy through the activation at pre-activation v.
fn act_back(dy: f32, v: f32) -> f32 {
    if (p.silu == 1u) {
        let s = 1.0 / (1.0 + exp(-v));
        return dy * s * (1.0 + v * (1.0 - s));
    }
    return dy;
}

// Tree sum of (a, b) over the workgroup; every invocation gets the totals.
fn wg_sum2(lid: u32, a: f32, b: f32) -> vec2<f32> {
    red_a[lid] = a;
    red_b[lid] = b;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red_a[lid] += red_a[lid + s];
            red_b[lid] += red_b[lid + s];
        }
        workgroupBarrier();
    }
    let r = vec2<f32>(red_a[0], red_b[0]);
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(8)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let ng = wid.x + wid.y * 65535u;
    if (ng >= p.n * p.groups) { return; }   // uniform per workgroup: barriers stay uniform
    let cpg = p.c / p.groups;
    let m = cpg * p.hw;
    let base = ng * m;  // groups are contiguous in NCHW
    var s = 0.0;
    for (var i = lid; i < m; i += WG) { s += x[base + i]; }
    let mean = wg_sum2(lid, s, 0.0).x / f32(m);
    // Second pass on centred values: no catastrophic cancellation in the variance.
    var v = 0.0;
    for (var i = lid; i < m; i += WG) { let d = x[base + i] - mean; v += d * d; }
    let var_ = wg_sum2(lid, v, 0.0).x / f32(m);
    let rstd = inverseSqrt(var_ + p.eps);
    if (lid == 0u) {
        stats[2u * ng] = mean;
        stats[2u * ng + 1u] = rstd;
    }
    let g0 = (ng % p.groups) * cpg;
    // Channel by channel: no division per element (costly where lanes are SIMD lanes).
    for (var cc = 0u; cc < cpg; cc++) {
        let ch = g0 + cc;
        let scale = rstd * gamma[ch];
        let shift = beta[ch] - mean * scale;
        let cb = base + cc * p.hw;
        for (var q = lid; q < p.hw; q += WG) {
            y[cb + q] = act(x[cb + q] * scale + shift);
        }
    }
}

// With x̂ = (x - μ) r and ĝ = dy·γ: dx = r (ĝ - mean(ĝ) - x̂ mean(ĝ x̂)) over the group.
@compute @workgroup_size(8)
fn backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let ng = wid.x + wid.y * 65535u;
    if (ng >= p.n * p.groups) { return; }
    let cpg = p.c / p.groups;
    let m = cpg * p.hw;
    let base = ng * m;
    let g0 = (ng % p.groups) * cpg;
    let mean = stats[2u * ng];
    let rstd = stats[2u * ng + 1u];
    var sa = 0.0;
    var sb = 0.0;
    for (var cc = 0u; cc < cpg; cc++) {
        let gm = gamma[g0 + cc];
        let bt = beta[g0 + cc];
        let cb = base + cc * p.hw;
        for (var q = lid; q < p.hw; q += WG) {
            let xh = (x[cb + q] - mean) * rstd;
            let gh = act_back(dy[cb + q], xh * gm + bt) * gm;
            sa += gh;
            sb += gh * xh;
        }
    }
    let sums = wg_sum2(lid, sa, sb) / f32(m);
    for (var cc = 0u; cc < cpg; cc++) {
        let gm = gamma[g0 + cc];
        let bt = beta[g0 + cc];
        let cb = base + cc * p.hw;
        for (var q = lid; q < p.hw; q += WG) {
            let xh = (x[cb + q] - mean) * rstd;
            let gh = act_back(dy[cb + q], xh * gm + bt) * gm;
            y[cb + q] = rstd * (gh - sums.x - xh * sums.y);
        }
    }
}

// dgamma[c] = Σ_{n,hw} dy x̂,  dbeta[c] = Σ_{n,hw} dy
@compute @workgroup_size(64)
fn backward_affine(@builtin(global_invocation_id) gid: vec3<u32>) {
    let ch = gid.x;
    if (ch >= p.c) { return; }
    let cpg = p.c / p.groups;
    let g = ch / cpg;
    let gm = gamma[ch];
    let bt = beta[ch];
    var sg = 0.0;
    var sbt = 0.0;
    for (var n = 0u; n < p.n; n++) {
        let ng = n * p.groups + g;
        let mean = stats[2u * ng];
        let rstd = stats[2u * ng + 1u];
        let base = (n * p.c + ch) * p.hw;
        for (var q = 0u; q < p.hw; q++) {
            let xh = (x[base + q] - mean) * rstd;
            let d = act_back(dy[base + q], xh * gm + bt);
            sg += d * xh;
            sbt += d;
        }
    }
    dgamma[ch] = sg;
    dbeta[ch] = sbt;
}
