//! Training losses between a prediction and a target, per sample then averaged over the batch:
//! L1, MSE and proximal matching ℓ = 1 - exp(-mean((g - z)²)/ζ²), and the cross-entropy of
//! logits against class probabilities (one-hot labels), with their gradients.

use bytemuck::{Pod, Zeroable};

use super::elementwise::same_shape;
use crate::engine::{Kernel, Shader};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub static SHADER: Shader = Shader::new("loss", include_str!("../../shaders/loss.wgsl"));
const PER_SAMPLE: Kernel = Kernel::new(&SHADER, "per_sample_stat");
const FINISH: Kernel = Kernel::new(&SHADER, "finish");
const BACKWARD: Kernel = Kernel::new(&SHADER, "backward");

/// Mirrors `Params` in loss.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    b: u32,
    d: u32,
    kind: u32,
    zeta: f32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    L1,
    Mse,
    /// Proximal matching with width ζ.
    ProxMatch {
        zeta: f32,
    },
    /// Cross-entropy of logits (B, K) against class probabilities (B, K), e.g. one-hot labels:
    /// mean_b (logsumexp(z_b) − Σ_k t_bk z_bk).
    CrossEntropy,
}

impl Loss {
    fn params(self, pred: &Tensor) -> Params {
        let b = pred.shape().first().copied().unwrap_or(1);
        let (kind, zeta) = match self {
            Loss::L1 => (0, 1.0),
            Loss::Mse => (1, 1.0),
            Loss::ProxMatch { zeta } => (2, zeta),
            Loss::CrossEntropy => (3, 1.0),
        };
        Params {
            b: b as u32,
            d: (pred.numel() / b.max(1)) as u32,
            kind,
            zeta,
        }
    }
}

/// What the backward needs: the per-sample statistic m_b (B).
pub struct LossSaved {
    pub per_sample: Tensor,
}

/// The scalar loss (shape [1]) of `pred` against `target`, both (B, ...).
pub fn loss(kind: Loss, pred: &Tensor, target: &Tensor) -> Result<(Tensor, LossSaved)> {
    same_shape("loss", pred, target)?;
    if pred.shape().is_empty() {
        return Err(Error::shape("loss", "inputs need a batch axis"));
    }
    let p = kind.params(pred);
    let e = pred.engine();
    let per_sample = Tensor::uninit(e, &[p.b as usize])?;
    let out = Tensor::uninit(e, &[1])?;
    e.dispatch(
        PER_SAMPLE,
        &p,
        &[pred, target, &per_sample],
        [p.b.div_ceil(64), 1, 1],
    )?;
    e.dispatch(FINISH, &p, &[&per_sample, &out], [1, 1, 1])?;
    Ok((out, LossSaved { per_sample }))
}

/// d loss / d pred, scaled by the upstream gradient `dloss` (shape [1]).
pub fn loss_backward(
    kind: Loss,
    pred: &Tensor,
    target: &Tensor,
    saved: &LossSaved,
    dloss: &Tensor,
) -> Result<Tensor> {
    same_shape("loss_backward", pred, target)?;
    let p = kind.params(pred);
    let e = pred.engine();
    let dpred = Tensor::uninit(e, pred.shape())?;
    e.dispatch(
        BACKWARD,
        &p,
        &[pred, target, dloss, &saved.per_sample, &dpred],
        e.grid(pred.numel(), 256),
    )?;
    Ok(dpred)
}

/// CPU reference in f64.
pub mod cpu {
    use super::Loss;

    pub fn loss(kind: Loss, pred: &[f64], target: &[f64], b: usize) -> f64 {
        let d = pred.len() / b;
        (0..b)
            .map(|r| {
                let e = (r * d..(r + 1) * d).map(|i| pred[i] - target[i]);
                match kind {
                    Loss::L1 => e.map(f64::abs).sum::<f64>() / d as f64,
                    Loss::Mse => e.map(|x| x * x).sum::<f64>() / d as f64,
                    Loss::ProxMatch { zeta } => {
                        let m = e.map(|x| x * x).sum::<f64>() / d as f64;
                        1.0 - (-m / (zeta as f64 * zeta as f64)).exp()
                    }
                    Loss::CrossEntropy => {
                        let row = &pred[r * d..(r + 1) * d];
                        let t = &target[r * d..(r + 1) * d];
                        logsumexp(row) - row.iter().zip(t).map(|(a, b)| a * b).sum::<f64>()
                    }
                }
            })
            .sum::<f64>()
            / b as f64
    }

    pub fn loss_backward(kind: Loss, pred: &[f64], target: &[f64], b: usize) -> Vec<f64> {
        let d = pred.len() / b;
        let n = (b * d) as f64;
        (0..pred.len())
            .map(|i| {
                let e = pred[i] - target[i];
                match kind {
                    Loss::L1 => e.signum() / n,
                    Loss::Mse => 2.0 * e / n,
                    Loss::ProxMatch { zeta } => {
                        let r = i / d;
                        let m = (r * d..(r + 1) * d)
                            .map(|j| (pred[j] - target[j]).powi(2))
                            .sum::<f64>()
                            / d as f64;
                        let z2 = zeta as f64 * zeta as f64;
                        (-m / z2).exp() / z2 * 2.0 * e / n
                    }
                    Loss::CrossEntropy => {
                        let r = i / d;
                        let lse = logsumexp(&pred[r * d..(r + 1) * d]);
                        ((pred[i] - lse).exp() - target[i]) / b as f64
                    }
                }
            })
            .collect()
    }

    fn logsumexp(row: &[f64]) -> f64 {
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        mx + row.iter().map(|v| (v - mx).exp()).sum::<f64>().ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn losses_match_cpu_with_gradients() {
        for (k, &(b, d)) in [(1, 1), (3, 17), (8, 300)].iter().enumerate() {
            let pred = rounded(&rand_vec(b * d, k as u64, -1.0, 1.0));
            // Keep |pred - target| away from 0 so L1 is differentiable where checked.
            let target: Vec<f64> = rounded(
                &pred
                    .iter()
                    .zip(rand_vec(b * d, 10 + k as u64, 0.05, 0.5))
                    .enumerate()
                    .map(|(i, (p, o))| if i % 2 == 0 { p + o } else { p - o })
                    .collect::<Vec<_>>(),
            );
            let (tp, tt) = (upload(&[b, d], &pred), upload(&[b, d], &target));
            for kind in [
                Loss::L1,
                Loss::Mse,
                Loss::ProxMatch { zeta: 1.0 },
                Loss::ProxMatch { zeta: 0.25 },
                Loss::CrossEntropy,
            ] {
                let what = format!("{kind:?} ({b},{d})");
                // Cross-entropy takes logits (scaled up) against one-hot labels.
                let (pred, target, tp, tt) = if kind == Loss::CrossEntropy {
                    let logits: Vec<f64> = pred.iter().map(|v| 4.0 * v).collect();
                    let onehot: Vec<f64> = (0..b * d)
                        .map(|i| ((i % d) == (i / d * 7) % d) as u8 as f64)
                        .collect();
                    let (ul, uo) = (upload(&[b, d], &logits), upload(&[b, d], &onehot));
                    (logits, onehot, ul, uo)
                } else {
                    (pred.clone(), target.clone(), tp.clone(), tt.clone())
                };
                let (l, saved) = loss(kind, &tp, &tt).unwrap();
                assert_close(
                    &what,
                    &l.to_vec().unwrap(),
                    &[cpu::loss(kind, &pred, &target, b)],
                    1e-5,
                    1e-7,
                );
                if pred.len() < 100 {
                    check_grad(
                        &what,
                        &pred,
                        |p| vec![cpu::loss(kind, p, &target, b)],
                        |p, w| {
                            cpu::loss_backward(kind, p, &target, b)
                                .iter()
                                .map(|g| g * w[0])
                                .collect()
                        },
                    );
                }
                let dl = upload(&[1], &[0.5]);
                let g = loss_backward(kind, &tp, &tt, &saved, &dl).unwrap();
                let want: Vec<f64> = cpu::loss_backward(kind, &pred, &target, b)
                    .iter()
                    .map(|v| 0.5 * v)
                    .collect();
                assert_close(
                    &format!("{what} backward"),
                    &g.to_vec().unwrap(),
                    &want,
                    1e-5,
                    1e-9,
                );
            }
        }
    }
}
