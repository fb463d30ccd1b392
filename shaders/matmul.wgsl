// Batched matrix product C[b] = alpha * op(A[b]) * op(B[b]), op = optional transpose.
// Each invocation computes a 4x4 block of C in registers; a workgroup covers 32x32.

struct Params {
    m: u32, n: u32, k: u32, batch: u32,
    trans_a: u32, trans_b: u32, alpha: f32, _pad0: u32,
    stride_a: u32, stride_b: u32, stride_c: u32, _pad1: u32,  // per-batch element strides (0 = shared)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;        // (batch, M, K) or (batch, K, M)
@group(0) @binding(2) var<storage, read> b: array<f32>;        // (batch, K, N) or (batch, N, K)
@group(0) @binding(3) var<storage, read_write> c: array<f32>;  // (batch, M, N)

@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    let bi = gid.z;
    if (row0 >= p.m || col0 >= p.n) { return; }
    // Element (i, kk) of op(A) lives at i*ra + kk*ka; (kk, j) of op(B) at kk*kb + j*cb.
    let ra = select(p.k, 1u, p.trans_a == 1u);
    let ka = select(1u, p.m, p.trans_a == 1u);
    let kb = select(p.n, 1u, p.trans_b == 1u);
    let cb = select(1u, p.k, p.trans_b == 1u);
    let oa = bi * p.stride_a;
    let ob = bi * p.stride_b;
    // Clamp out-of-range rows/cols to a valid one; their results are never stored.
    var ia: vec4<u32>;
    var jb: vec4<u32>;
    for (var t = 0u; t < 4u; t++) {
        ia[t] = oa + min(row0 + t, p.m - 1u) * ra;
        jb[t] = ob + min(col0 + t, p.n - 1u) * cb;
    }
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk++) {
        let av = vec4<f32>(a[ia.x + kk * ka], a[ia.y + kk * ka], a[ia.z + kk * ka], a[ia.w + kk * ka]);
        let bv = vec4<f32>(b[jb.x + kk * kb], b[jb.y + kk * kb], b[jb.z + kk * kb], b[jb.w + kk * kb]);
        acc0 += av.x * bv;
        acc1 += av.y * bv;
        acc2 += av.z * bv;
        acc3 += av.w * bv;
    }
    let oc = bi * p.stride_c;
    var rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var t = 0u; t < 4u; t++) {
        let r = row0 + t;
        if (r >= p.m) { break; }
        for (var u = 0u; u < 4u; u++) {
            let cc = col0 + u;
            if (cc < p.n) {
                c[oc + r * p.n + cc] = p.alpha * rows[t][u];
            }
        }
    }
}
