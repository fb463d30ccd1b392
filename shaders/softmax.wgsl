// Softmax over the last axis (rows of length len), and its backward dx = y (dy - Σ dy y).

struct Params {
    rows: u32,
    len: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // forward: logits; backward: y
@group(0) @binding(2) var<storage, read> dy: array<f32>;        // (rows, len)
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // y or dx

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_index(gid, nwg, 64u);
    if (r >= p.rows) { return; }
    let base = r * p.len;
    var m = x[base];
    for (var j = 1u; j < p.len; j++) { m = max(m, x[base + j]); }
    var s = 0.0;
    for (var j = 0u; j < p.len; j++) {
        let e = exp(x[base + j] - m);
        out[base + j] = e;
        s += e;
    }
    let inv = 1.0 / s;
    for (var j = 0u; j < p.len; j++) { out[base + j] *= inv; }
}

@compute @workgroup_size(64)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_index(gid, nwg, 64u);
    if (r >= p.rows) { return; }
    let base = r * p.len;
    var s = 0.0;
    for (var j = 0u; j < p.len; j++) { s += dy[base + j] * x[base + j]; }
    for (var j = 0u; j < p.len; j++) { out[base + j] = x[base + j] * (dy[base + j] - s); }
}
