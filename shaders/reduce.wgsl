// Reductions over any subset of the axes of a (left-padded) 4D tensor, and their backward.
// Op codes (ReduceOp in src/ops/reduce.rs): 0 sum, 1 mean, 2 sum of squares, 3 L2 norm.

struct Params {
    n: u32,          // output elements
    op: u32,
    count: u32,      // input elements reduced into each output
    scale: f32,      // 1/count for mean
    strides: vec4<u32>,   // input element strides
    red: vec4<u32>,       // extent of each reduced axis (1 if kept)
    kept: vec4<u32>,      // extent of each kept axis (1 if reduced) = output shape
    // forward only: axes merged on the host leave at most two kept and two reduced ones.
    // Output o of part q reads base(o) + outer·so + inner·si over its share of the
    // (outer, inner) pairs; base(o) = (o / ki)·ko + (o % ki)·kis.
    ki: u32, ko: u32, kis: u32, parts: u32,
    ri: u32, so: u32, si: u32, per_part: u32,
    square: u32,      // accumulate x² instead of x
    finish: u32,      // 0 none, 1 multiply by scale, 2 square root
    _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;        // input (N0,N1,N2,N3)
@group(0) @binding(2) var<storage, read> y: array<f32>;        // forward output (kept)
@group(0) @binding(3) var<storage, read> dy: array<f32>;       // gradient of output (kept)
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // output or dx

fn unflatten(i: u32, s: vec4<u32>) -> vec4<u32> {
    return vec4<u32>(i / (s.y * s.z * s.w), (i / (s.z * s.w)) % s.y, (i / s.w) % s.z, i % s.w);
}

// out[o·parts + q] = the share q of output o's reduction (all of it when parts = 1). The
// share is a run of the flattened (outer, inner) index; the pair is advanced by counting,
// so the loop has no division.
@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 64u);
    if (i >= p.n * p.parts) { return; }
    let o = i / p.parts;
    let q = i - o * p.parts;
    let ko = o / p.ki;
    let base = ko * p.ko + (o - ko * p.ki) * p.kis;
    let r0 = q * p.per_part;
    let r1 = min(r0 + p.per_part, p.count);
    var outer = r0 / p.ri;
    var inner = r0 - outer * p.ri;
    var at = base + outer * p.so + inner * p.si;
    var s = 0.0;
    for (var r = r0; r < r1; r++) {
        let v = x[at];
        s += select(v, v * v, p.square == 1u);
        inner += 1u;
        at += p.si;
        if (inner == p.ri) {
            inner = 0u;
            outer += 1u;
            at = base + outer * p.so;
        }
    }
    if (p.finish == 1u) { s = s * p.scale; }
    if (p.finish == 2u) { s = sqrt(s); }
    out[i] = s;
}

// dx[i] = dy[o(i)] * d out[o(i)] / d x[i]
@compute @workgroup_size(256)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    let shape = p.kept * p.red;
    let total = shape.x * shape.y * shape.z * shape.w;
    if (i >= total) { return; }
    let idx = unflatten(i, shape);
    // Reduced coordinates collapse to 0 in the output.
    let oi = select(idx, vec4<u32>(0u), p.red > vec4<u32>(1u));
    let k = p.kept;
    let o = ((oi.x * k.y + oi.y) * k.z + oi.z) * k.w + oi.w;
    let g = dy[o];
    var d: f32;
    switch p.op {
        case 0u: { d = g; }
        case 1u: { d = g * p.scale; }
        case 2u: { d = 2.0 * x[i] * g; }
        default: {
            let nrm = y[o];
            d = select(0.0, g * x[i] / nrm, nrm > 0.0);
        }
    }
    out[i] = d;
}
