//! Softmax over the last axis and its backward.

use bytemuck::{Pod, Zeroable};

use crate::engine::{Kernel, Shader};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub static SHADER: Shader = Shader::new("softmax", include_str!("../../shaders/softmax.wgsl"));
const FORWARD: Kernel = Kernel::new(&SHADER, "forward");
const BACKWARD: Kernel = Kernel::new(&SHADER, "backward");

/// Mirrors `Params` in softmax.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    rows: u32,
    len: u32,
    _pad: [u32; 2],
}

fn params(x: &Tensor) -> Result<Params> {
    let len = *x
        .shape()
        .last()
        .ok_or_else(|| Error::shape("softmax", "scalar input"))?;
    Ok(Params {
        rows: (x.numel() / len.max(1)) as u32,
        len: len as u32,
        _pad: [0; 2],
    })
}

/// y = exp(x - max) / Σ exp(x - max) along the last axis.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let p = params(x)?;
    let e = x.engine();
    let y = Tensor::uninit(e, x.shape())?;
    e.dispatch(FORWARD, &p, &[x, &y], e.grid(p.rows as usize, 64))?;
    Ok(y)
}

/// dx = y ⊙ (dy - Σ_j dy_j y_j), from the forward's output y.
pub fn softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    super::elementwise::same_shape("softmax_backward", y, dy)?;
    let p = params(y)?;
    let e = y.engine();
    let dx = Tensor::uninit(e, y.shape())?;
    e.dispatch(BACKWARD, &p, &[y, dy, &dx], e.grid(p.rows as usize, 64))?;
    Ok(dx)
}

/// CPU references in f64.
pub mod cpu {
    pub fn softmax(x: &[f64], len: usize) -> Vec<f64> {
        x.chunks(len)
            .flat_map(|r| {
                let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = r.iter().map(|v| (v - m).exp()).sum();
                r.iter().map(move |v| (v - m).exp() / s).collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn softmax_backward(y: &[f64], dy: &[f64], len: usize) -> Vec<f64> {
        y.chunks(len)
            .zip(dy.chunks(len))
            .flat_map(|(y, g)| {
                let s: f64 = y.iter().zip(g).map(|(a, b)| a * b).sum();
                y.iter()
                    .zip(g)
                    .map(move |(a, b)| a * (b - s))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn softmax_matches_cpu_with_gradients() {
        for (k, &(rows, len)) in [(1, 1), (3, 7), (65, 64), (2, 256)].iter().enumerate() {
            let x = rounded(&rand_vec(rows * len, k as u64, -8.0, 8.0));
            let tx = upload(&[rows, len], &x);
            let y = softmax(&tx).unwrap();
            let want = cpu::softmax(&x, len);
            assert_close("softmax", &y.to_vec().unwrap(), &want, 1e-5, 1e-7);
            if x.len() < 600 {
                check_grad(
                    "softmax",
                    &x,
                    |x| cpu::softmax(x, len),
                    |x, g| cpu::softmax_backward(&cpu::softmax(x, len), g, len),
                );
            }
            let dy = rounded(&rand_vec(x.len(), 10 + k as u64, -1.0, 1.0));
            let dx = softmax_backward(&y, &upload(&[rows, len], &dy)).unwrap();
            assert_close(
                "softmax backward",
                &dx.to_vec().unwrap(),
                &cpu::softmax_backward(&want, &dy, len),
                1e-4,
                1e-6,
            );
        }
        // Large logits do not overflow.
        let y = softmax(&upload(&[1, 3], &[1000.0, 0.0, -1000.0]))
            .unwrap()
            .to_vec()
            .unwrap();
        assert_close("softmax large", &y, &[1.0, 0.0, 0.0], 0.0, 1e-7);
    }
}
