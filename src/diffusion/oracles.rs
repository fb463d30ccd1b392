//! Oracles the samplers call: trained networks, and closed forms used to test the samplers.

use super::Sde;
use super::samplers::{ProxOracle, ScoreOracle};
use crate::error::Result;
use crate::graph::{Graph, ParamStore};
use crate::models::Model;
use crate::models::lpn::Lpn;
use crate::ops::elementwise;
use crate::tensor::Tensor;

/// A trained network with its parameters.
pub struct Network<'a> {
    pub model: &'a Model,
    pub params: &'a ParamStore,
}

impl ScoreOracle for Network<'_> {
    fn score(&self, x: &Tensor, t: f32) -> Result<Tensor> {
        let g = Graph::inference(x.engine());
        let p = self.params.vars(&g);
        let n = x.shape()[0];
        Ok(self
            .model
            .score(&g, &p, &g.constant(x.clone()), &vec![t; n])?
            .tensor()
            .clone())
    }
}

impl ProxOracle for Network<'_> {
    fn prox(&self, y: &Tensor, t: f32, lambda: f32) -> Result<Tensor> {
        let g = Graph::inference(y.engine());
        let p = self.params.vars(&g);
        let n = y.shape()[0];
        Ok(self
            .model
            .prox(
                &g,
                &p,
                &g.constant(y.clone()),
                &vec![t; n],
                &vec![lambda; n],
            )?
            .tensor()
            .clone())
    }
}

/// The MMSE denoiser of a score network (Tweedie's formula) in place of a prox: for
/// y = x_t + √λ·z it returns E[x_t | y] = y + λ·∇ln p_{t,λ}(y), where p_{t,λ} = p_t ∗ N(0, λI) is
/// the law of c·x_{t'} with c = √(1+λ) and α(t') = α(t)/(1+λ), so
/// ∇ln p_{t,λ}(y) = s(y/c, t')/c. For a Gaussian target MMSE and MAP coincide and this is the
/// prox; for anything else it is the posterior mean, not the mode the ProxDM samplers assume.
pub struct Tweedie<'a> {
    pub score: &'a dyn ScoreOracle,
    pub sde: Sde,
}

impl ProxOracle for Tweedie<'_> {
    fn prox(&self, y: &Tensor, t: f32, lambda: f32) -> Result<Tensor> {
        let l = lambda as f64;
        let c = (1.0 + l).sqrt();
        let t2 = self
            .sde
            .time_of(self.sde.integral(0.0, t as f64) + l.ln_1p());
        let s = self
            .score
            .score(&elementwise::scale(y, (1.0 / c) as f32)?, t2 as f32)?;
        elementwise::add(y, &elementwise::scale(&s, (l / c) as f32)?)
    }
}

/// A learned proximal network conditioned on (t, λ): prox_{−λ ln p_t}(y) = f(y) = ∇ψ(y; t, λ).
pub struct LpnNetwork<'a> {
    pub lpn: &'a Lpn,
    pub params: &'a ParamStore,
}

impl ProxOracle for LpnNetwork<'_> {
    fn prox(&self, y: &Tensor, t: f32, lambda: f32) -> Result<Tensor> {
        // f is a gradient: the graph records ψ, then the reverse pass gives f (and frees it).
        let g = Graph::new(y.engine());
        let p = self.params.vars(&g);
        let n = y.shape()[0];
        let (ts, ls) = (vec![t; n], vec![lambda; n]);
        let f = self.lpn.prox(&g, &p, y, Some((&ts, &ls)), false)?;
        Ok(f.tensor().clone())
    }
}

/// Target N(mean, std²·I) per dimension; p_t = N(√α·mean, (α·std² + 1 − α)·I), so
/// score = −(x − μ_t)/v_t and prox_{−λ ln p_t}(y) = (v_t·y + λ·μ_t)/(v_t + λ).
pub struct Gaussian {
    pub sde: Sde,
    /// (D) per-dimension mean, on the GPU.
    pub mean: Tensor,
    pub std: f64,
}

impl Gaussian {
    fn moments(&self, t: f32) -> (f64, f64) {
        let a = self.sde.alpha(t as f64);
        (a.sqrt(), a * self.std * self.std + 1.0 - a)
    }
}

impl ScoreOracle for Gaussian {
    fn score(&self, x: &Tensor, t: f32) -> Result<Tensor> {
        let (sa, v) = self.moments(t);
        // −x/v + (√α/v)·mean
        let m = elementwise::scale(&self.mean, (sa / v) as f32)?;
        elementwise::add(&elementwise::scale(x, (-1.0 / v) as f32)?, &m)
    }
}

impl ProxOracle for Gaussian {
    fn prox(&self, y: &Tensor, t: f32, lambda: f32) -> Result<Tensor> {
        let (sa, v) = self.moments(t);
        let l = lambda as f64;
        let m = elementwise::scale(&self.mean, (l * sa / (v + l)) as f32)?;
        elementwise::add(&elementwise::scale(y, (v / (v + l)) as f32)?, &m)
    }
}

/// The 2D toy target: a uniform mixture of Diracs at `points` (M, 2), perturbed by the SDE.
/// Its score is exact; its prox is solved per point on the GPU (`ops::gmm`), and every call's
/// final residual is accumulated so non-converged points can be reported, not hidden.
pub struct Mixture {
    pub sde: Sde,
    pub points: Tensor,
    status: std::cell::RefCell<Option<Tensor>>,
}

impl Mixture {
    pub fn new(sde: Sde, points: Tensor) -> Self {
        Mixture {
            sde,
            points,
            status: std::cell::RefCell::new(None),
        }
    }

    fn coefs(&self, t: f32) -> (f32, f32) {
        let a = self.sde.alpha(t as f64);
        (a.sqrt() as f32, (1.0 - a) as f32)
    }

    /// Largest prox residual seen per sample so far, and how many exceed the tolerance
    /// (reads back; call after sampling). Resets the record.
    pub fn take_unconverged(&self) -> Result<(usize, f32)> {
        let Some(s) = self.status.borrow_mut().take() else {
            return Ok((0, 0.0));
        };
        let v = s.to_vec()?;
        let worst = v.iter().cloned().fold(0.0, f32::max);
        Ok((
            v.iter().filter(|&&r| r >= crate::ops::gmm::TOL).count(),
            worst,
        ))
    }
}

impl ScoreOracle for Mixture {
    fn score(&self, x: &Tensor, t: f32) -> Result<Tensor> {
        let (sa, var) = self.coefs(t);
        crate::ops::gmm::score(&self.points, x, sa, var)
    }
}

impl ProxOracle for Mixture {
    fn prox(&self, y: &Tensor, t: f32, lambda: f32) -> Result<Tensor> {
        let (sa, var) = self.coefs(t);
        let mut status = self.status.borrow_mut();
        if status.as_ref().is_none_or(|s| s.shape() != [y.shape()[0]]) {
            *status = Some(Tensor::zeros(y.engine(), &[y.shape()[0]])?);
        }
        crate::ops::gmm::prox(
            &self.points,
            y,
            sa,
            var,
            lambda,
            status.as_ref().expect("set above"),
        )
    }
}
