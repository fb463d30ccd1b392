//! The optimiser state of a model: AdamW moments per parameter and an EMA of the weights,
//! updated on the GPU in recording order (no host round-trip).

use crate::error::{Error, Result};
use crate::graph::{ParamStore, Var};
use crate::ops::{elementwise, optim};
use crate::tensor::Tensor;

pub use crate::ops::optim::AdamW;

/// AdamW state for every parameter of a store, plus an optional EMA of the weights.
pub struct Optimizer {
    pub cfg: AdamW,
    /// Steps taken so far.
    pub step: u32,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// (decay, EMA weights), the weights that sample.
    pub ema: Option<(f32, Vec<Tensor>)>,
    /// Indices of parameters kept non-negative: each step projects them onto θ ≥ 0 before
    /// the EMA (an LPN's constrained weights).
    pub nonneg: Vec<usize>,
}

impl Optimizer {
    pub fn new(store: &ParamStore, cfg: AdamW, ema_decay: Option<f32>) -> Result<Self> {
        let zeros = || -> Result<Vec<Tensor>> {
            store
                .tensors()
                .iter()
                .map(|t| Tensor::zeros(t.engine(), t.shape()))
                .collect()
        };
        let ema = match ema_decay {
            Some(d) => Some((
                d,
                store
                    .tensors()
                    .iter()
                    .map(|t| elementwise::scale(t, 1.0))
                    .collect::<Result<_>>()?,
            )),
            None => None,
        };
        Ok(Optimizer {
            cfg,
            step: 0,
            m: zeros()?,
            v: zeros()?,
            ema,
            nonneg: Vec::new(),
        })
    }

    /// The AdamW moments (m, v), one per parameter, for checkpoints.
    pub fn moments(&self) -> (&[Tensor], &[Tensor]) {
        (&self.m, &self.v)
    }

    /// Restores a checkpointed state: step count, moments and EMA weights (shapes must match).
    pub fn set_state(
        &mut self,
        step: u32,
        m: Vec<Tensor>,
        v: Vec<Tensor>,
        ema: Vec<Tensor>,
    ) -> Result<()> {
        let fits = |new: &[Tensor], old: &[Tensor]| {
            new.len() == old.len() && new.iter().zip(old).all(|(a, b)| a.shape() == b.shape())
        };
        let ok = fits(&m, &self.m)
            && fits(&v, &self.v)
            && self.ema.as_ref().is_none_or(|(_, e)| fits(&ema, e));
        if !ok {
            return Err(Error::shape(
                "Optimizer::set_state",
                "state tensors do not match the parameters",
            ));
        }
        self.step = step;
        self.m = m;
        self.v = v;
        if let Some((_, e)) = &mut self.ema {
            *e = ema;
        }
        Ok(())
    }

    /// One AdamW step on every parameter with a gradient (in place), then the EMA update.
    pub fn update(&mut self, store: &ParamStore, grads: &[Option<Var>]) -> Result<()> {
        let grads: Vec<Option<Tensor>> = grads
            .iter()
            .map(|g| g.as_ref().map(|g| g.tensor().clone()))
            .collect();
        self.update_with(store, &grads)
    }

    /// [`Optimizer::update`] with gradients as tensors.
    pub fn update_with(&mut self, store: &ParamStore, grads: &[Option<Tensor>]) -> Result<()> {
        if grads.len() != store.len() {
            return Err(Error::shape(
                "Optimizer::update",
                format!("{} gradients for {} parameters", grads.len(), store.len()),
            ));
        }
        self.step += 1;
        for (i, (p, g)) in store.tensors().iter().zip(grads).enumerate() {
            let ema = self.ema.as_ref().map(|(d, e)| (*d, &e[i]));
            match (g, ema) {
                // One pass: the step, then the EMA of the new weights.
                (Some(g), ema) => optim::adamw_step(
                    &self.cfg,
                    self.step,
                    p,
                    g,
                    &self.m[i],
                    &self.v[i],
                    ema,
                    self.nonneg.contains(&i),
                )?,
                (None, Some((decay, e))) => optim::ema_update(decay, e, p)?,
                (None, None) => {}
            }
        }
        Ok(())
    }
}
