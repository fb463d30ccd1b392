//! Oracles the samplers call: trained networks, and closed forms used to test the samplers.

use super::Sde;
use super::samplers::{ProxOracle, ScoreOracle};
use crate::error::Result;
use crate::graph::{Graph, ParamStore};
use crate::models::Model;
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
