//! Denoising error at the (t, λ) where a ProxDM sampler calls its prox: the quantity proximal
//! matching and the L1 phase train, measured on held-out data. For y = x_t + √λ·z with
//! x_t = √α(t)·x₀ + √(1−α(t))·z′, a denoiser D gives the noise estimate ĝ = (y − D(y))/√λ (for a
//! prox network D = y − √λ·g, so ĝ = g); the error is ĝ − z. Any [`ProxOracle`] can be measured:
//! a prox network, or a score network through [`super::oracles::Tweedie`] (its MMSE denoiser).

use super::Sde;
use super::samplers::ProxOracle;
use crate::error::{Error, Result};
use crate::ops::noise::randn;
use crate::tensor::Tensor;

/// The errors at one (t, λ).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DenoiseError {
    pub t: f64,
    pub lambda: f64,
    /// mean |ĝ − z| (the L1 phase's loss).
    pub l1: f64,
    /// mean (ĝ − z)² (what proximal matching's 1 − exp(−·/ζ²) is taken of, per image).
    pub mse: f64,
    /// mean (ĝ − E[z | x₀, y])², E[z | x₀, y] = √λ/(1 − α + λ)·(y − √α·x₀): the part of the
    /// MSE a better network could remove (what `rao_blackwell` training compares with).
    pub mse_given_x0: f64,
    /// (1 − α)/(1 − α + λ), the variance of z given x₀ and y per value: the part of the MSE no
    /// network can remove (the expected MSE is `mse_given_x0` + this).
    pub unpredictable: f64,
}

/// Measures `oracle` at each of `points` — (t, λ) pairs, e.g. the hybrid sampler's
/// [`super::samplers::prox_steps`] — on the clean samples `x0` (shape (N, …), values as
/// the model was trained on), `batch` rows at a time. The noise depends only on `seed`, the
/// point's index and the row, so two oracles measured with one seed see the same y and z.
pub fn errors(
    oracle: &dyn ProxOracle,
    sde: &Sde,
    x0: &Tensor,
    points: &[(f64, f64)],
    seed: u64,
    batch: usize,
) -> Result<Vec<DenoiseError>> {
    let shape = x0.shape().to_vec();
    let n = *shape.first().unwrap_or(&0);
    if n == 0 || batch == 0 {
        return Err(Error::shape(
            "denoise",
            "needs at least one sample and batch ≥ 1",
        ));
    }
    if let Some(&(t, l)) = points
        .iter()
        .find(|&&(t, l)| l.is_nan() || l <= 0.0 || !(0.0..=1.0).contains(&t))
    {
        return Err(Error::shape(
            "denoise",
            format!("t = {t} and λ = {l}: needs 0 ≤ t ≤ 1 and λ > 0"),
        ));
    }
    let row = shape[1..].iter().product::<usize>();
    let all = x0.to_vec()?;
    let e = x0.engine();
    let mut out: Vec<DenoiseError> = points
        .iter()
        .map(|&(t, lambda)| {
            let s = 1.0 - sde.alpha(t);
            DenoiseError {
                t,
                lambda,
                l1: 0.0,
                mse: 0.0,
                mse_given_x0: 0.0,
                unpredictable: s / (s + lambda),
            }
        })
        .collect();
    let mut done = 0;
    while done < n {
        let b = batch.min(n - done);
        let mut bshape = shape.clone();
        bshape[0] = b;
        let x = &all[done * row..(done + b) * row];
        let s = seed.wrapping_add(done as u64);
        for (k, r) in out.iter_mut().enumerate() {
            let a = sde.alpha(r.t);
            let (sa, sn, sl) = (a.sqrt(), (1.0 - a).sqrt(), r.lambda.sqrt());
            let z1 = randn(e, &bshape, s, 2 * k as u32 + 1)?.to_vec()?;
            let z2 = randn(e, &bshape, s, 2 * k as u32 + 2)?.to_vec()?;
            let y: Vec<f32> = (0..x.len())
                .map(|i| (sa * x[i] as f64 + sn * z1[i] as f64 + sl * z2[i] as f64) as f32)
                .collect();
            let d = oracle
                .prox(
                    &Tensor::from_slice(e, &bshape, &y)?,
                    r.t as f32,
                    r.lambda as f32,
                )?
                .to_vec()?;
            let c = sl / (1.0 - a + r.lambda);
            for i in 0..x.len() {
                let g = (y[i] as f64 - d[i] as f64) / sl;
                let err = g - z2[i] as f64;
                r.l1 += err.abs();
                r.mse += err * err;
                let mean = c * (sn * z1[i] as f64 + sl * z2[i] as f64);
                r.mse_given_x0 += (g - mean).powi(2);
            }
        }
        done += b;
    }
    let count = (n * row) as f64;
    for r in &mut out {
        r.l1 /= count;
        r.mse /= count;
        r.mse_given_x0 /= count;
    }
    Ok(out)
}
