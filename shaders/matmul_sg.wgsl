// Variant of matmul.wgsl for 8-lane subgroups (see sg_common.wgsl). Same params and bindings.
// A workgroup of 64 lanes covers 16 rows x 256 columns of C; lane l of a subgroup loads row
// row0 + l (and row0 + 8 + l) of op(A), and 4 consecutive columns of op(B).

struct Params {
    m: u32, n: u32, k: u32, batch: u32,
    trans_a: u32, trans_b: u32, alpha: f32, _pad0: u32,
    stride_a: u32, stride_b: u32, stride_c: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
// The same operands seen as vec4 rows, for `main4` (an entry uses one view or the other).
@group(0) @binding(4) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> c4: array<vec4<f32>>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(subgroup_invocation_id) sl: u32,
) {
    let bi = wid.z;
    let row0 = wid.y * 16u;
    let col0 = (wid.x * 64u + lid.x) * 4u;
    let ra = select(p.k, 1u, p.trans_a == 1u);
    let ka = select(1u, p.m, p.trans_a == 1u);
    let kb = select(p.n, 1u, p.trans_b == 1u);
    let cb = select(1u, p.k, p.trans_b == 1u);
    // Out-of-range rows/columns are clamped to valid ones and never stored.
    let ia0 = bi * p.stride_a + min(row0 + sl, p.m - 1u) * ra;
    let ia1 = bi * p.stride_a + min(row0 + 8u + sl, p.m - 1u) * ra;
    let ob = bi * p.stride_b;
    let jb = vec4<u32>(
        ob + min(col0, p.n - 1u) * cb,
        ob + min(col0 + 1u, p.n - 1u) * cb,
        ob + min(col0 + 2u, p.n - 1u) * cb,
        ob + min(col0 + 3u, p.n - 1u) * cb,
    );
    var acc = acc_zero();
    for (var kk = 0u; kk < p.k; kk++) {
        let o = kk * kb;
        let bv = vec4<f32>(b[jb.x + o], b[jb.y + o], b[jb.z + o], b[jb.w + o]);
        acc_step(&acc, a[ia0 + kk * ka], a[ia1 + kk * ka], bv);
    }
    if (col0 >= p.n) { return; }
    let oc = bi * p.stride_c;
    for (var t = 0u; t < 16u; t++) {
        let r = row0 + t;
        if (r >= p.m) { break; }
        let v = p.alpha * acc_row(&acc, t);
        for (var u = 0u; u < 4u; u++) {
            if (col0 + u < p.n) { c[oc + r * p.n + col0 + u] = v[u]; }
        }
    }
}

// `main` without transposes and with K, N and the batch strides multiples of 4: a lane loads
// 4 consecutive k of each of its two A rows and the 4 B rows of those k as vec4s (a vec4 load
// costs less per element than 4 scalar ones), then stores its 16 x 4 block as vec4s.
@compute @workgroup_size(64)
fn main4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(subgroup_invocation_id) sl: u32,
) {
    let bi = wid.z;
    let row0 = wid.y * 16u;
    let k4 = p.k / 4u;
    let n4 = p.n / 4u;
    let cq = wid.x * 64u + lid.x;            // this lane's vec4 column
    let cqc = min(cq, n4 - 1u);
    let ia0 = (bi * p.stride_a) / 4u + min(row0 + sl, p.m - 1u) * k4;
    let ia1 = (bi * p.stride_a) / 4u + min(row0 + 8u + sl, p.m - 1u) * k4;
    let ob = (bi * p.stride_b) / 4u + cqc;
    var acc = acc_zero();
    for (var kq = 0u; kq < k4; kq++) {
        let kb = ob + kq * 4u * n4;
        let b0 = b4[kb];
        let b1 = b4[kb + n4];
        let b2 = b4[kb + 2u * n4];
        let b3 = b4[kb + 3u * n4];
        let av0 = a4[ia0 + kq];
        let av1 = a4[ia1 + kq];
        acc_step(&acc, av0.x, av1.x, b0);
        acc_step(&acc, av0.y, av1.y, b1);
        acc_step(&acc, av0.z, av1.z, b2);
        acc_step(&acc, av0.w, av1.w, b3);
    }
    if (cq >= n4) { return; }
    let oc = (bi * p.stride_c) / 4u;
    for (var t = 0u; t < 16u; t++) {
        let r = row0 + t;
        if (r >= p.m) { break; }
        c4[oc + r * n4 + cq] = p.alpha * acc_row(&acc, t);
    }
}
