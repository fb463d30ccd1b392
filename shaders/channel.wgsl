// Copies a block of channels between two NCHW tensors: the kernel behind concat and split.

struct Params {
    n: u32,        // batch
    c: u32,        // channels copied
    hw: u32,       // H*W
    c_src: u32,    // channels of src
    c_dst: u32,    // channels of dst
    src_off: u32,  // first channel read in src
    dst_off: u32,  // first channel written in dst
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;        // (N, c_src, H, W)
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;  // (N, c_dst, H, W)

@compute @workgroup_size(256)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    if (i >= p.n * p.c * p.hw) { return; }
    let q = i % p.hw;
    let ch = (i / p.hw) % p.c;
    let n = i / (p.hw * p.c);
    dst[(n * p.c_dst + p.dst_off + ch) * p.hw + q] = src[(n * p.c_src + p.src_off + ch) * p.hw + q];
}
