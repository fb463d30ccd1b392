// Elementwise ops: unary maps and their derivatives, broadcast binary ops, axpy.
// Unary op codes (must match UnaryOp in src/ops/elementwise.rs):
//   0 scale a*x + b   1 silu   2 softplus_beta   3 sigmoid   4 abs   5 sign   6 exp   7 square
//   8 step: b if x > a else 0 (dropout masks)

struct Params {
    n: u32,        // number of output elements
    op: u32,       // unary or binary op code
    alpha: f32,    // scale a / softplus beta / axpy alpha
    beta: f32,     // shift b
    shape: vec4<u32>,   // output shape, left-padded to 4D
    sa: vec4<u32>,      // element strides of a over the output index (0 = broadcast)
    sb: vec4<u32>,      // element strides of b over the output index (0 = broadcast)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;        // (n) or broadcastable
@group(0) @binding(2) var<storage, read> b: array<f32>;        // (n) or broadcastable
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // (n)

fn sigmoid(x: f32) -> f32 {
    // Both branches avoid exp overflow.
    if (x >= 0.0) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

fn softplus(x: f32, beta: f32) -> f32 {
    let z = beta * x;
    if (z > 20.0) {
        return x;
    }
    // log1p(exp(z)) for z <= 20, stable for very negative z.
    return (max(z, 0.0) + log(1.0 + exp(-abs(z)))) / beta;
}

fn unary_f(x: f32) -> f32 {
    switch p.op {
        case 0u: { return p.alpha * x + p.beta; }
        case 1u: { return x * sigmoid(x); }
        case 2u: { return softplus(x, p.alpha); }
        case 3u: { return sigmoid(x); }
        case 4u: { return abs(x); }
        case 5u: { return sign(x); }
        case 6u: { return exp(x); }
        case 7u: { return x * x; }
        case 8u: { return select(0.0, p.beta, x > p.alpha); }
        case 9u: { return max(x, 0.0); }
        default: { return 0.0; }
    }
}

// d f / d x
fn unary_df(x: f32) -> f32 {
    switch p.op {
        case 0u: { return p.alpha; }
        case 1u: { let s = sigmoid(x); return s * (1.0 + x * (1.0 - s)); }
        case 2u: { return sigmoid(p.alpha * x); }
        case 3u: { let s = sigmoid(x); return s * (1.0 - s); }
        case 4u: { return sign(x); }
        case 5u: { return 0.0; }
        case 6u: { return exp(x); }
        case 7u: { return 2.0 * x; }
        case 9u: { return select(0.0, 1.0, x > 0.0); }
        default: { return 0.0; }
    }
}

// d² f / d x² (for second-order gradients)
fn unary_d2f(x: f32) -> f32 {
    switch p.op {
        case 1u: { let s = sigmoid(x); return s * (1.0 - s) * (2.0 + x * (1.0 - 2.0 * s)); }
        case 2u: { let s = sigmoid(p.alpha * x); return p.alpha * s * (1.0 - s); }
        case 3u: { let s = sigmoid(x); return s * (1.0 - s) * (1.0 - 2.0 * s); }
        case 6u: { return exp(x); }
        case 7u: { return 2.0; }
        default: { return 0.0; }
    }
}

// out = f(a)
@compute @workgroup_size(256)
fn unary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    if (i >= p.n) { return; }
    out[i] = unary_f(a[i]);
}

// dx = dy * f'(x); a = x, b = dy
@compute @workgroup_size(256)
fn unary_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    if (i >= p.n) { return; }
    out[i] = b[i] * unary_df(a[i]);
}

// dx = g * f''(x); a = x, b = g
@compute @workgroup_size(256)
fn unary_backward2(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    if (i >= p.n) { return; }
    out[i] = b[i] * unary_d2f(a[i]);
}

// out = a (op) b with broadcasting; op 0 add, 1 sub, 2 mul. Axes are merged on the host so
// the innermost one is long; an invocation covers a run of up to RUN elements of it, with the
// divisions of the index done once per run. p.n counts runs.
const RUN: u32 = 32u;

@compute @workgroup_size(64)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg, 64u);
    if (c >= p.n) { return; }
    let w = p.shape.w;
    let runs = (w + RUN - 1u) / RUN;
    let row = c / runs;
    let j0 = (c - row * runs) * RUN;
    let i2 = row % p.shape.z;
    let r = row / p.shape.z;
    let idx = vec4<u32>(r / p.shape.y, r % p.shape.y, i2, 0u);
    let ab = dot(idx, p.sa);
    let bb = dot(idx, p.sb);
    let ob = row * w;
    let j1 = min(j0 + RUN, w);
    for (var j = j0; j < j1; j++) {
        let x = a[ab + j * p.sa.w];
        let y = b[bb + j * p.sb.w];
        var v: f32;
        switch p.op {
            case 0u: { v = x + y; }
            case 1u: { v = x - y; }
            default: { v = x * y; }
        }
        out[ob + j] = v;
    }
}

// out = alpha * a + beta * out (in place on out)
@compute @workgroup_size(256)
fn axpby(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    if (i >= p.n) { return; }
    out[i] = p.alpha * a[i] + p.beta * out[i];
}
