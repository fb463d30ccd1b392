//! Training losses between a prediction and a target, per sample then averaged over the batch:
//! L1, MSE and proximal matching ℓ = 1 - exp(-mean((g - z)²)/ζ²), and the cross-entropy of
//! logits against class probabilities (one-hot labels), with their gradients.
//!
//! [`expected_loss`] gives the first three in expectation over a Gaussian part of the target
//! that the prediction cannot know: the loss of `pred` against `target + w`, w ~ N(0, v_b I)
//! per sample, averaged over w in closed form. Training a prox network against the part of z₂
//! that x₀ and y determine, with the rest averaged out this way, has the same expected loss and
//! gradient as the paper's objective and less gradient noise (Rao–Blackwellisation; see
//! `TrainConfig::rao_blackwell`).

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

/// What the backward needs: the per-sample statistic m_b and the target's variance v_b (B).
pub struct LossSaved {
    pub per_sample: Tensor,
    pub var: Tensor,
}

/// The scalar loss (shape [1]) of `pred` against `target`, both (B, ...).
pub fn loss(kind: Loss, pred: &Tensor, target: &Tensor) -> Result<(Tensor, LossSaved)> {
    expected_loss(kind, pred, target, None)
}

/// The scalar loss (shape [1]) of `pred` against `target + w`, averaged over w ~ N(0, v_b I)
/// for sample b, where `var` (B) holds v_b ≥ 0 (`None`: all zero, the plain loss). L1, MSE and
/// proximal matching only.
pub fn expected_loss(
    kind: Loss,
    pred: &Tensor,
    target: &Tensor,
    var: Option<&Tensor>,
) -> Result<(Tensor, LossSaved)> {
    same_shape("loss", pred, target)?;
    if pred.shape().is_empty() {
        return Err(Error::shape("loss", "inputs need a batch axis"));
    }
    let p = kind.params(pred);
    let e = pred.engine();
    let var = match var {
        None => Tensor::zeros(e, &[p.b as usize])?,
        Some(_) if kind == Loss::CrossEntropy => {
            return Err(Error::shape(
                "loss",
                "cross-entropy has no expected form over a noisy target",
            ));
        }
        Some(v) if v.shape() != [p.b as usize] => {
            return Err(Error::shape(
                "loss",
                format!(
                    "the target's variance is {:?}, expected one value per sample [{}]",
                    v.shape(),
                    p.b
                ),
            ));
        }
        Some(v) => v.clone(),
    };
    let per_sample = Tensor::uninit(e, &[p.b as usize])?;
    let out = Tensor::uninit(e, &[1])?;
    e.dispatch(
        PER_SAMPLE,
        &p,
        &[pred, target, &per_sample, &var],
        [p.b.div_ceil(64), 1, 1],
    )?;
    e.dispatch(FINISH, &p, &[&per_sample, &var, &out], [1, 1, 1])?;
    Ok((out, LossSaved { per_sample, var }))
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
        &[pred, target, dloss, &saved.per_sample, &saved.var, &dpred],
        e.grid(pred.numel(), 256),
    )?;
    Ok(dpred)
}

/// CPU reference in f64.
pub mod cpu {
    use super::Loss;

    pub fn loss(kind: Loss, pred: &[f64], target: &[f64], b: usize) -> f64 {
        expected_loss(kind, pred, target, &vec![0.0; b], b)
    }

    pub fn loss_backward(kind: Loss, pred: &[f64], target: &[f64], b: usize) -> Vec<f64> {
        expected_loss_backward(kind, pred, target, &vec![0.0; b], b)
    }

    /// E|e + w|, w ~ N(0, v), and its derivative in e.
    fn expected_abs(e: f64, v: f64) -> (f64, f64) {
        if v <= 0.0 {
            return (e.abs(), e.signum());
        }
        let s = v.sqrt();
        let r = erf(e / (s * std::f64::consts::SQRT_2));
        let density = (2.0 / std::f64::consts::PI).sqrt() * (-0.5 * e * e / v).exp();
        (s * density + e * r, r)
    }

    /// Proximal matching's width s_b = ζ² + 2v/d and scale K_b = (1 + 2v/(dζ²))^(-d/2).
    fn pm_width(zeta: f32, v: f64, d: usize) -> (f64, f64) {
        let (z2, d) = (zeta as f64 * zeta as f64, d as f64);
        (
            z2 + 2.0 * v / d,
            (-0.5 * d * (2.0 * v / (d * z2)).ln_1p()).exp(),
        )
    }

    /// The loss against `target + w`, w ~ N(0, var[r]) per sample r, averaged over w.
    pub fn expected_loss(kind: Loss, pred: &[f64], target: &[f64], var: &[f64], b: usize) -> f64 {
        let d = pred.len() / b;
        (0..b)
            .map(|r| {
                let e = (r * d..(r + 1) * d).map(|i| pred[i] - target[i]);
                let v = var[r];
                match kind {
                    Loss::L1 => e.map(|x| expected_abs(x, v).0).sum::<f64>() / d as f64,
                    Loss::Mse => e.map(|x| x * x).sum::<f64>() / d as f64 + v,
                    Loss::ProxMatch { zeta } => {
                        let m = e.map(|x| x * x).sum::<f64>() / d as f64;
                        let (s, k) = pm_width(zeta, v, d);
                        1.0 - k * (-m / s).exp()
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

    pub fn expected_loss_backward(
        kind: Loss,
        pred: &[f64],
        target: &[f64],
        var: &[f64],
        b: usize,
    ) -> Vec<f64> {
        let d = pred.len() / b;
        let n = (b * d) as f64;
        (0..pred.len())
            .map(|i| {
                let e = pred[i] - target[i];
                let r = i / d;
                match kind {
                    Loss::L1 => expected_abs(e, var[r]).1 / n,
                    Loss::Mse => 2.0 * e / n,
                    Loss::ProxMatch { zeta } => {
                        let m = (r * d..(r + 1) * d)
                            .map(|j| (pred[j] - target[j]).powi(2))
                            .sum::<f64>()
                            / d as f64;
                        let (s, k) = pm_width(zeta, var[r], d);
                        k * (-m / s).exp() / s * 2.0 * e / n
                    }
                    Loss::CrossEntropy => {
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

    /// The error function, Abramowitz–Stegun 7.1.26 (|error| < 1.5e-7).
    pub fn erf(x: f64) -> f64 {
        let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
        let y = 1.0
            - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736)
                * t
                + 0.254_829_592)
                * t
                * (-x * x).exp();
        if x >= 0.0 { y } else { -y }
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

    /// The expected losses: the kernel against the CPU reference (values and gradients), the
    /// CPU gradient against finite differences, and the closed forms against Monte Carlo
    /// averages of the plain loss over the noisy target (independent of both).
    #[test]
    fn expected_losses_are_the_plain_losses_averaged_over_the_noise() {
        use crate::ops::noise::cpu::gaussian;
        let (b, d) = (3, 17);
        let pred = rounded(&rand_vec(b * d, 21, -1.0, 1.0));
        let target = rounded(&rand_vec(b * d, 22, -1.0, 1.0));
        // One sample without noise (the plain loss), two with.
        let var = [0.0, 0.05, 0.4];
        let (tp, tt, tv) = (
            upload(&[b, d], &pred),
            upload(&[b, d], &target),
            upload(&[b], &var),
        );
        for kind in [
            Loss::L1,
            Loss::Mse,
            Loss::ProxMatch { zeta: 1.0 },
            Loss::ProxMatch { zeta: 0.5 },
        ] {
            let what = format!("expected {kind:?}");
            let want = cpu::expected_loss(kind, &pred, &target, &var, b);
            let (l, saved) = expected_loss(kind, &tp, &tt, Some(&tv)).unwrap();
            assert_close(&what, &l.to_vec().unwrap(), &[want], 1e-5, 1e-7);
            let g = loss_backward(kind, &tp, &tt, &saved, &upload(&[1], &[1.0])).unwrap();
            let want_g = cpu::expected_loss_backward(kind, &pred, &target, &var, b);
            assert_close(
                &format!("{what} backward"),
                &g.to_vec().unwrap(),
                &want_g,
                1e-4,
                1e-8,
            );
            check_grad(
                &what,
                &pred,
                |p| vec![cpu::expected_loss(kind, p, &target, &var, b)],
                |p, w| {
                    cpu::expected_loss_backward(kind, p, &target, &var, b)
                        .iter()
                        .map(|g| g * w[0])
                        .collect()
                },
            );
            // Monte Carlo: the plain loss against target + √v·w, over many w.
            let draws = 20_000;
            let (mut sum, mut sum2) = (0.0, 0.0);
            for k in 0..draws {
                let noisy: Vec<f64> = (0..b * d)
                    .map(|i| target[i] + var[i / d].sqrt() * gaussian(3, k, i as u32))
                    .collect();
                let l = cpu::loss(kind, &pred, &noisy, b);
                sum += l;
                sum2 += l * l;
            }
            let mean = sum / draws as f64;
            let se = ((sum2 / draws as f64 - mean * mean) / draws as f64).sqrt();
            assert!(
                (mean - want).abs() < 4.0 * se + 1e-6,
                "{what}: closed form {want}, Monte Carlo {mean} ± {se}"
            );
        }
        let ce = expected_loss(Loss::CrossEntropy, &tp, &tt, Some(&tv));
        assert!(ce.is_err(), "cross-entropy has no expected form");
        let wrong = expected_loss(Loss::L1, &tp, &tt, Some(&upload(&[2], &[0.1, 0.1])));
        let msg = wrong
            .err()
            .expect("a variance per sample is required")
            .to_string();
        assert!(msg.contains("one value per sample"), "{msg}");
    }
}
