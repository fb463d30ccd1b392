//! Score samplers (Euler–Maruyama, with final denoising, probability-flow ODE) and ProxDM
//! samplers (hybrid, fully backward). Each step is the oracle call plus one fused kernel
//! (`ops::sampler`) that draws the step's noise and applies the update; the whole trajectory
//! is recorded and submitted once.

use super::Sde;
use crate::error::{Error, Result};
use crate::ops::sampler::{self, StepCoefs};
use crate::tensor::Tensor;

/// Something that returns ∇ ln p_t(x) for a batch.
pub trait ScoreOracle {
    fn score(&self, x: &Tensor, t: f32) -> Result<Tensor>;
}

/// Something that returns prox_{−λ ln p_t}(y) for a batch.
pub trait ProxOracle {
    fn prox(&self, y: &Tensor, t: f32, lambda: f32) -> Result<Tensor>;
}

/// Score-based samplers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScoreSampler {
    /// Grid linspace(ε_t, 1, N+1); noise on the last step only if `last_noise`.
    EulerMaruyama { eps_t: f64, last_noise: bool },
    /// Grid linspace(1, ε_t, N): N−1 steps of (1−ε_t)/(N−1), then a noise-free step of ε_t.
    EulerMaruyamaDenoise { eps_t: f64 },
    /// Probability-flow ODE (Euler) on the denoising grid.
    ProbabilityFlow { eps_t: f64 },
}

/// ProxDM samplers on the grid linspace(0, 1, N+1), with noise at every step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxSampler {
    /// λ = γ; y = (1+γ/2)x + √γ z; x ← prox_{−λ ln p_{t_new}}(y).
    Hybrid,
    /// λ = γ/(1−γ/2); y = (x + √γ z)/(1−γ/2); x ← prox(y). Needs every γ < 2.
    Backward,
}

fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            if n == 1 {
                a
            } else {
                a + (b - a) * i as f64 / (n - 1) as f64
            }
        })
        .collect()
}

/// Noise streams: 0 is the initial x_T (see [`initial_noise`]); step k (in execution order)
/// uses stream k + 1.
fn stream(k: usize) -> u32 {
    k as u32 + 1
}

/// x_t = √α(t)·x₀ + √(1 − α(t))·z, a draw of p_t given x₀, with z draw stream 0 of `seed` (the
/// stream of [`initial_noise`], which the tails of [`sample_prox_tail`] and
/// [`sample_score_tail`] replace).
pub fn forward_noise(sde: &Sde, x0: &Tensor, t: f64, seed: u64) -> Result<Tensor> {
    let a = sde.alpha(t);
    let c = StepCoefs {
        a: a.sqrt() as f32,
        b: 0.0,
        c: (1.0 - a).sqrt() as f32,
    };
    sampler::step(x0, None, c, seed, 0)
}

/// x_T ~ N(0, I) of `shape`, draw stream 0 of `seed`.
pub fn initial_noise(engine: &crate::Engine, shape: &[usize], seed: u64) -> Result<Tensor> {
    crate::ops::noise::randn(engine, shape, seed, 0)
}

/// Runs a score sampler for `steps` network evaluations from x_T.
pub fn sample_score(
    oracle: &dyn ScoreOracle,
    sde: &Sde,
    kind: ScoreSampler,
    steps: usize,
    x_t: Tensor,
    seed: u64,
) -> Result<Tensor> {
    sample_score_tail(oracle, sde, kind, steps, steps, x_t, seed)
}

/// Refuses a tail of `last` steps that the `steps`-step grid does not have.
fn check_tail(what: &'static str, steps: usize, last: usize) -> Result<()> {
    if steps == 0 {
        return Err(Error::shape(what, "needs at least 1 step"));
    }
    if last == 0 || last > steps {
        return Err(Error::shape(
            what,
            format!("the last {last} of {steps} steps: the tail must have 1 to {steps} steps"),
        ));
    }
    Ok(())
}

/// The time at which the last `last` of a score sampler's `steps` steps begin: run from a draw
/// of p at this time, [`sample_score_tail`] continues the sampler's trajectory from there.
pub fn score_tail_start(kind: ScoreSampler, steps: usize, last: usize) -> Result<f64> {
    check_tail("score sampler tail", steps, last)?;
    Ok(match kind {
        ScoreSampler::EulerMaruyama { eps_t, .. } => linspace(eps_t, 1.0, steps + 1)[last],
        ScoreSampler::EulerMaruyamaDenoise { eps_t } | ScoreSampler::ProbabilityFlow { eps_t } => {
            if steps < 2 {
                return Err(Error::shape(
                    "sample_score",
                    "the denoising grid needs at least 2 steps",
                ));
            }
            linspace(1.0, eps_t, steps)[steps - last]
        }
    })
}

/// The last `last` of a score sampler's `steps` steps (the whole sampler when `last` =
/// `steps`), from x at [`score_tail_start`]. Each step draws the noise it draws in the full
/// run, so a tail from the full run's own x at that time reproduces the rest of that run.
pub fn sample_score_tail(
    oracle: &dyn ScoreOracle,
    sde: &Sde,
    kind: ScoreSampler,
    steps: usize,
    last: usize,
    x_t: Tensor,
    seed: u64,
) -> Result<Tensor> {
    score_tail_start(kind, steps, last)?;
    let mut x = x_t;
    match kind {
        ScoreSampler::EulerMaruyama { eps_t, last_noise } => {
            let times = linspace(eps_t, 1.0, steps + 1);
            for (k, i) in (0..steps).rev().enumerate().skip(steps - last) {
                let (t_now, t_new) = (times[i + 1], times[i]);
                let g = sde.beta(t_now) * (t_now - t_new);
                let s = oracle.score(&x, t_now as f32)?;
                let noise = if i == 0 && !last_noise { 0.0 } else { g.sqrt() };
                let c = StepCoefs {
                    a: (1.0 + 0.5 * g) as f32,
                    b: g as f32,
                    c: noise as f32,
                };
                x = sampler::step(&x, Some(&s), c, seed, stream(k))?;
            }
        }
        ScoreSampler::EulerMaruyamaDenoise { eps_t } | ScoreSampler::ProbabilityFlow { eps_t } => {
            let ode = matches!(kind, ScoreSampler::ProbabilityFlow { .. });
            let times = linspace(1.0, eps_t, steps);
            for (i, &t_now) in times.iter().enumerate().skip(steps - last) {
                let dt = if i == steps - 1 {
                    eps_t
                } else {
                    (1.0 - eps_t) / (steps - 1) as f64
                };
                let g = sde.beta(t_now) * dt;
                let s = oracle.score(&x, t_now as f32)?;
                let c = if ode {
                    // x ← x + ½γ(x + s)
                    StepCoefs {
                        a: (1.0 + 0.5 * g) as f32,
                        b: (0.5 * g) as f32,
                        c: 0.0,
                    }
                } else {
                    let noise = if i == steps - 1 { 0.0 } else { g.sqrt() };
                    StepCoefs {
                        a: (1.0 + 0.5 * g) as f32,
                        b: g as f32,
                        c: noise as f32,
                    }
                };
                x = sampler::step(&x, Some(&s), c, seed, stream(i))?;
            }
        }
    }
    x.engine().flush()?;
    Ok(x)
}

/// The ProxDM grid linspace(0, 1, steps + 1) in execution order: for each step, the time the
/// prox is taken at, t_i, and γ = B(t_i, t_{i+1}), from i = steps − 1 down to 0. The hybrid
/// sampler's λ is γ.
pub fn prox_steps(sde: &Sde, steps: usize) -> Vec<(f64, f64)> {
    let times = linspace(0.0, 1.0, steps + 1);
    (0..steps)
        .rev()
        .map(|i| (times[i], sde.integral(times[i], times[i + 1])))
        .collect()
}

/// The largest γ = B(t_{i}, t_{i+1}) on the ProxDM grid with `steps` steps.
pub fn max_gamma(sde: &Sde, steps: usize) -> f64 {
    prox_steps(sde, steps)
        .iter()
        .map(|&(_, g)| g)
        .fold(0.0, f64::max)
}

/// The smallest step count for which the backward sampler is defined (every γ < 2).
pub fn min_backward_steps(sde: &Sde) -> usize {
    (1..)
        .find(|&n| max_gamma(sde, n) < 2.0)
        .expect("γ shrinks as steps grow")
}

/// Runs a ProxDM sampler for `steps` prox evaluations from x_T.
pub fn sample_prox(
    oracle: &dyn ProxOracle,
    sde: &Sde,
    kind: ProxSampler,
    steps: usize,
    x_t: Tensor,
    seed: u64,
) -> Result<Tensor> {
    sample_prox_tail(oracle, sde, kind, steps, steps, x_t, seed)
}

/// The time at which the last `last` of a ProxDM sampler's `steps` steps begin, `last`/`steps`
/// (the grid is linspace(0, 1, steps + 1)).
pub fn prox_tail_start(steps: usize, last: usize) -> Result<f64> {
    check_tail("ProxDM sampler tail", steps, last)?;
    Ok(linspace(0.0, 1.0, steps + 1)[last])
}

/// The last `last` of a ProxDM sampler's `steps` steps (the whole sampler when `last` =
/// `steps`), from x at [`prox_tail_start`], with the noise the full run draws at those steps.
pub fn sample_prox_tail(
    oracle: &dyn ProxOracle,
    sde: &Sde,
    kind: ProxSampler,
    steps: usize,
    last: usize,
    x_t: Tensor,
    seed: u64,
) -> Result<Tensor> {
    prox_tail_start(steps, last)?;
    if kind == ProxSampler::Backward && max_gamma(sde, steps) >= 2.0 {
        return Err(Error::shape(
            "prox-backward",
            format!(
                "{steps} steps give γ = {:.3} ≥ 2, where the backward sampler is undefined; use at least {} steps (or the hybrid sampler)",
                max_gamma(sde, steps),
                min_backward_steps(sde)
            ),
        ));
    }
    let mut x = x_t;
    let tail = prox_steps(sde, steps)
        .into_iter()
        .enumerate()
        .skip(steps - last);
    for (k, (t_new, g)) in tail {
        let (c, lambda) = match kind {
            ProxSampler::Hybrid => (
                StepCoefs {
                    a: (1.0 + 0.5 * g) as f32,
                    b: 0.0,
                    c: g.sqrt() as f32,
                },
                g,
            ),
            ProxSampler::Backward => {
                let d = 1.0 - 0.5 * g;
                (
                    StepCoefs {
                        a: (1.0 / d) as f32,
                        b: 0.0,
                        c: (g.sqrt() / d) as f32,
                    },
                    g / d,
                )
            }
        };
        let y = sampler::step(&x, None, c, seed, stream(k))?;
        x = oracle.prox(&y, t_new as f32, lambda as f32)?;
    }
    x.engine().flush()?;
    Ok(x)
}
