//! Kernels: one module per op family, each with its WGSL file in `shaders/` of the same name,
//! a `#[repr(C)]` params struct mirroring the WGSL one, forward and backward dispatch, a CPU
//! reference (f64) and tests against it and against finite differences.
//!
//! `attention` is a composite (matmul + softmax) and has no shader of its own.

pub mod attention;
pub mod channel;
pub mod conv2d;
pub mod elementwise;
pub mod embedding;
pub mod gmm;
pub mod group_norm;
pub mod loss;
pub mod matmul;
pub mod noise;
pub mod optim;
pub mod reduce;
pub mod sampler;
pub mod softmax;
pub mod upsample;

#[cfg(test)]
pub(crate) mod testing;

use crate::engine::Shader;

/// Every shader proxdm compiles; the portability test translates each to SPIR-V, MSL, HLSL, GLSL.
pub fn all_shaders() -> Vec<&'static Shader> {
    vec![
        &channel::SHADER,
        &conv2d::SHADER,
        &conv2d::SHADER_SG8,
        &elementwise::SHADER,
        &embedding::SHADER,
        &gmm::SHADER,
        &group_norm::SHADER,
        &loss::SHADER,
        &matmul::SHADER,
        &matmul::SHADER_SG8,
        &noise::SHADER,
        &optim::SHADER,
        &reduce::SHADER,
        &sampler::SHADER,
        &softmax::SHADER,
        &upsample::SHADER,
    ]
}

/// Left-pads a shape of rank ≤ 4 to 4D (`op` names the caller in the error).
pub fn pad4(op: &'static str, shape: &[usize]) -> crate::Result<[usize; 4]> {
    if shape.len() > 4 {
        return Err(crate::Error::shape(
            op,
            format!("rank {} > 4 in shape {shape:?}", shape.len()),
        ));
    }
    let mut s = [1usize; 4];
    s[4 - shape.len()..].copy_from_slice(shape);
    Ok(s)
}

/// Row-major element strides of a 4D shape.
pub(crate) fn strides4(s: [usize; 4]) -> [usize; 4] {
    [s[1] * s[2] * s[3], s[2] * s[3], s[3], 1]
}

/// Merges adjacent axes of a 4D iteration `shape` wherever every operand's strides let them be
/// walked as one (stride[d] = stride[d+1] · shape[d+1]; broadcast 0 strides merge with 0), so
/// kernels index with fewer divisions and longer contiguous runs. Extent-1 axes are dropped
/// first. Returns the merged shape and strides, left-padded with extent-1 axes.
pub(crate) fn coalesce<const K: usize>(
    shape: [usize; 4],
    strides: [[usize; 4]; K],
) -> ([usize; 4], [[usize; 4]; K]) {
    let mut dims: Vec<(usize, [usize; K])> = (0..4)
        .filter(|&d| shape[d] != 1)
        .map(|d| (shape[d], std::array::from_fn(|k| strides[k][d])))
        .collect();
    let mut i = dims.len().saturating_sub(1);
    while i > 0 {
        let (outer, inner) = (dims[i - 1], dims[i]);
        if (0..K).all(|k| outer.1[k] == inner.1[k] * inner.0) {
            dims[i - 1] = (outer.0 * inner.0, inner.1);
            dims.remove(i);
        }
        i -= 1;
    }
    let mut out_shape = [1usize; 4];
    let mut out_strides = [[0usize; 4]; K];
    let off = 4 - dims.len();
    for (j, (n, st)) in dims.into_iter().enumerate() {
        out_shape[off + j] = n;
        for k in 0..K {
            out_strides[k][off + j] = st[k];
        }
    }
    (out_shape, out_strides)
}

pub(crate) fn u32x4(v: [usize; 4]) -> [u32; 4] {
    v.map(|x| x as u32)
}

#[cfg(test)]
mod coalesce_tests {
    use super::coalesce;

    #[test]
    fn merges_contiguous_axes_and_keeps_broadcast_ones_apart() {
        // Same-shape operands: one run of 120.
        let c = [60, 20, 5, 1];
        assert_eq!(
            coalesce([2, 3, 4, 5], [c, c]),
            ([1, 1, 1, 120], [[0, 0, 0, 1]; 2])
        );
        // Per-channel bias (1, C, 1, 1) over (N, C, H, W): N, C and H·W stay three axes.
        let (s, st) = coalesce([2, 3, 4, 5], [c, [0, 1, 0, 0]]);
        assert_eq!(s, [1, 2, 3, 20]);
        assert_eq!(st, [[0, 60, 20, 1], [0, 0, 1, 0]]);
        // Extent-1 axes vanish; a fully broadcast operand merges to one 0-stride axis.
        let (s, st) = coalesce([1, 6, 1, 7], [[42, 7, 7, 1], [0, 0, 0, 0]]);
        assert_eq!(s, [1, 1, 1, 42]);
        assert_eq!(st, [[0, 0, 0, 1], [0, 0, 0, 0]]);
    }
}
