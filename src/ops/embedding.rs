//! Sinusoidal embedding of a scalar in [0, 1] (time t or λ), as the reference UNet: the scalar is
//! scaled by 1000, frequencies f_k = 10000^(-k/(half-1)), output [sin(u f), cos(u f)].

use bytemuck::{Pod, Zeroable};

use crate::engine::{Kernel, Shader};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub static SHADER: Shader = Shader::new("embedding", include_str!("../../shaders/embedding.wgsl"));
const FORWARD: Kernel = Kernel::new(&SHADER, "forward");
const BACKWARD: Kernel = Kernel::new(&SHADER, "backward");

/// Mirrors `Params` in embedding.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    n: u32,
    dim: u32,
    _pad: [u32; 2],
}

fn params(s: &Tensor, dim: usize) -> Result<Params> {
    if s.shape().len() != 1 || dim < 4 || !dim.is_multiple_of(2) {
        return Err(Error::shape(
            "sinusoidal_embedding",
            format!(
                "scalars {:?} must be (N) and the width {dim} even and ≥ 4",
                s.shape()
            ),
        ));
    }
    Ok(Params {
        n: s.shape()[0] as u32,
        dim: dim as u32,
        _pad: [0; 2],
    })
}

/// (N) scalars → (N, dim) embedding.
pub fn sinusoidal_embedding(s: &Tensor, dim: usize) -> Result<Tensor> {
    let p = params(s, dim)?;
    let e = s.engine();
    let out = Tensor::uninit(e, &[p.n as usize, dim])?;
    e.dispatch(FORWARD, &p, &[s, &out], e.grid(out.numel(), 256))?;
    Ok(out)
}

/// ds (N) from demb (N, dim).
pub fn sinusoidal_embedding_backward(s: &Tensor, demb: &Tensor) -> Result<Tensor> {
    let dim = demb.shape().get(1).copied().unwrap_or(0);
    let p = params(s, dim)?;
    if demb.shape() != [p.n as usize, dim] {
        return Err(Error::shape(
            "sinusoidal_embedding_backward",
            format!("demb {:?} must be ({}, dim)", demb.shape(), p.n),
        ));
    }
    let e = s.engine();
    let ds = Tensor::uninit(e, s.shape())?;
    e.dispatch(BACKWARD, &p, &[s, demb, &ds], e.grid(p.n as usize, 64))?;
    Ok(ds)
}

/// CPU references in f64.
pub mod cpu {
    pub fn freqs(dim: usize) -> Vec<f64> {
        let half = dim / 2;
        (0..half)
            .map(|k| (-(k as f64) * 10000f64.ln() / (half as f64 - 1.0)).exp())
            .collect()
    }

    pub fn embedding(s: &[f64], dim: usize) -> Vec<f64> {
        let f = freqs(dim);
        s.iter()
            .flat_map(|&v| {
                let u: Vec<f64> = f.iter().map(|fk| 1000.0 * v * fk).collect();
                u.iter()
                    .map(|x| x.sin())
                    .chain(u.iter().map(|x| x.cos()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn embedding_backward(s: &[f64], demb: &[f64], dim: usize) -> Vec<f64> {
        let f = freqs(dim);
        let half = dim / 2;
        s.iter()
            .enumerate()
            .map(|(r, &v)| {
                (0..half)
                    .map(|k| {
                        let w = 1000.0 * f[k];
                        w * ((v * w).cos() * demb[r * dim + k]
                            - (v * w).sin() * demb[r * dim + half + k])
                    })
                    .sum()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn embedding_matches_cpu_with_gradients() {
        for (k, &(n, dim)) in [(1, 4), (7, 64), (33, 128)].iter().enumerate() {
            let s = rounded(&rand_vec(n, k as u64, 0.0, 1.0));
            let ts = upload(&[n], &s);
            let y = sinusoidal_embedding(&ts, dim).unwrap();
            // Arguments reach 1000 rad: f32 rounding of the argument bounds the error (~1e-4).
            assert_close(
                "embedding",
                &y.to_vec().unwrap(),
                &cpu::embedding(&s, dim),
                0.0,
                3e-4,
            );
            let s_small = rand_vec(n, 5, 0.0, 0.01);
            check_grad_step(
                "embedding",
                &s_small,
                1e-9,
                |s| cpu::embedding(s, dim),
                |s, g| cpu::embedding_backward(s, g, dim),
            );
            let demb = rounded(&rand_vec(n * dim, 10 + k as u64, -1.0, 1.0));
            let ds = sinusoidal_embedding_backward(&ts, &upload(&[n, dim], &demb)).unwrap();
            let want = cpu::embedding_backward(&s, &demb, dim);
            let scale = 1000.0 * dim as f64;
            assert_close(
                "embedding backward",
                &ds.to_vec().unwrap(),
                &want,
                0.0,
                3e-4 * scale,
            );
        }
        let err = sinusoidal_embedding(&upload(&[3], &[0.0; 3]), 5)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sinusoidal_embedding") && err.contains("[3]") && err.contains('5'),
            "{err}"
        );
    }
}
