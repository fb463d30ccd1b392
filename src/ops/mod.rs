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

pub(crate) fn u32x4(v: [usize; 4]) -> [u32; 4] {
    v.map(|x| x as u32)
}
