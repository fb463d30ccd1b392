//! Optimiser steps on the GPU: AdamW (decoupled weight decay) and the EMA of the weights.
//! Neither has a backward; both are checked against CPU references.

use bytemuck::{Pod, Zeroable};

use super::elementwise::same_shape;
use crate::engine::{Kernel, Shader};
use crate::error::Result;
use crate::tensor::Tensor;

pub static SHADER: Shader = Shader::new("optim", include_str!("../../shaders/optim.wgsl"));
const ADAMW: Kernel = Kernel::new(&SHADER, "adamw");
const ADAMW_EMA: Kernel = Kernel::new(&SHADER, "adamw_ema");
const EMA: Kernel = Kernel::new(&SHADER, "ema_update");

/// Mirrors `Params` in optim.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    n: u32,
    step: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    decay: f32,
    nonneg: u32,
    _pad: [u32; 3],
}

/// AdamW hyper-parameters (PyTorch's defaults but for weight decay, which is 0 here).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// One AdamW step (1-based `step`) updating `param`, `m` and `v` in place; with `nonneg` the
/// new weights are projected onto θ ≥ 0 (max(θ, 0)), as an LPN's constrained weights need.
///
/// With `ema = Some((decay, e))` the EMA of the updated weights is taken in the same pass
/// (e ← decay·e + (1 - decay)·θ), as [`ema_update`] after the step would.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    cfg: &AdamW,
    step: u32,
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    ema: Option<(f32, &Tensor)>,
    nonneg: bool,
) -> Result<()> {
    for (name, t) in [("grad", grad), ("m", m), ("v", v)] {
        same_shape(
            if name == "grad" {
                "adamw (param, grad)"
            } else {
                "adamw (param, state)"
            },
            param,
            t,
        )?;
    }
    let p = Params {
        n: param.numel() as u32,
        step: step.max(1),
        lr: cfg.lr,
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        weight_decay: cfg.weight_decay,
        decay: ema.map_or(0.0, |(d, _)| d),
        nonneg: nonneg as u32,
        ..Default::default()
    };
    let e = param.engine();
    let groups = e.grid(param.numel(), 256);
    match ema {
        None => e.dispatch(ADAMW, &p, &[grad, param, m, v], groups),
        Some((_, avg)) => {
            same_shape("adamw (param, ema)", param, avg)?;
            e.dispatch(ADAMW_EMA, &p, &[grad, param, m, v, avg], groups)
        }
    }
}

/// ema ← decay·ema + (1 - decay)·param.
pub fn ema_update(decay: f32, ema: &Tensor, param: &Tensor) -> Result<()> {
    same_shape("ema_update", ema, param)?;
    let p = Params {
        n: param.numel() as u32,
        decay,
        ..Default::default()
    };
    let e = param.engine();
    e.dispatch(EMA, &p, &[param, ema], e.grid(param.numel(), 256))
}

/// CPU references in f64.
pub mod cpu {
    use super::AdamW;

    /// As the GPU step; `nonneg` projects the new weights onto θ ≥ 0.
    pub fn adamw_step(
        c: &AdamW,
        step: u32,
        p: &mut [f64],
        g: &[f64],
        m: &mut [f64],
        v: &mut [f64],
        nonneg: bool,
    ) {
        let (b1, b2) = (c.beta1 as f64, c.beta2 as f64);
        for i in 0..p.len() {
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let mh = m[i] / (1.0 - b1.powi(step as i32));
            let vh = v[i] / (1.0 - b2.powi(step as i32));
            p[i] -= c.lr as f64 * (mh / (vh.sqrt() + c.eps as f64) + c.weight_decay as f64 * p[i]);
            if nonneg {
                p[i] = p[i].max(0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn adamw_and_ema_match_cpu_over_several_steps() {
        let n = 1001;
        let cfg = AdamW {
            lr: 1e-2,
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut p = rounded(&rand_vec(n, 1, -1.0, 1.0));
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        let e = engine();
        let (tp, tm, tv) = (
            upload(&[n], &p),
            Tensor::zeros(&e, &[n]).unwrap(),
            Tensor::zeros(&e, &[n]).unwrap(),
        );
        let tema = upload(&[n], &p);
        let mut ema = p.clone();
        // The same steps again with the EMA fused into the AdamW pass.
        let (fp, fm, fv, fema) = (
            upload(&[n], &p),
            Tensor::zeros(&e, &[n]).unwrap(),
            Tensor::zeros(&e, &[n]).unwrap(),
            upload(&[n], &p),
        );
        for step in 1..=5u32 {
            let g = rounded(&rand_vec(n, 10 + step as u64, -1.0, 1.0));
            let tg = upload(&[n], &g);
            adamw_step(&cfg, step, &tp, &tg, &tm, &tv, None, false).unwrap();
            adamw_step(&cfg, step, &fp, &tg, &fm, &fv, Some((0.9, &fema)), false).unwrap();
            cpu::adamw_step(&cfg, step, &mut p, &g, &mut m, &mut v, false);
            ema_update(0.9, &tema, &tp).unwrap();
            ema.iter_mut()
                .zip(&p)
                .for_each(|(e, p)| *e = 0.9 * *e + 0.1 * p);
        }
        assert_close("fused param", &fp.to_vec().unwrap(), &p, 1e-5, 1e-5);
        assert_close("fused ema", &fema.to_vec().unwrap(), &ema, 1e-5, 1e-6);
        // Steps are ~lr = 1e-2; f32 rounding of m̂/√v̂ bounds the error at ~1e-3 of a step.
        assert_close("adamw param", &tp.to_vec().unwrap(), &p, 1e-5, 1e-5);
        assert_close("adamw m", &tm.to_vec().unwrap(), &m, 1e-5, 1e-7);
        assert_close("adamw v", &tv.to_vec().unwrap(), &v, 1e-5, 1e-8);
        assert_close("ema", &tema.to_vec().unwrap(), &ema, 1e-5, 1e-6);
        let err = ema_update(0.5, &tema, &upload(&[3], &[0.0; 3]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ema_update") && err.contains("[1001]") && err.contains("[3]"),
            "{err}"
        );
    }

    #[test]
    fn nonneg_steps_project_onto_the_orthant_before_the_ema() {
        let n = 517;
        let cfg = AdamW {
            lr: 0.3,
            ..Default::default()
        };
        // Weights near zero and large steps: about half of them would go negative.
        let mut p = rounded(&rand_vec(n, 3, 0.0, 0.2));
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        let e = engine();
        let (tp, tm, tv, tema) = (
            upload(&[n], &p),
            Tensor::zeros(&e, &[n]).unwrap(),
            Tensor::zeros(&e, &[n]).unwrap(),
            upload(&[n], &p),
        );
        let mut ema = p.clone();
        for step in 1..=3u32 {
            let g = rounded(&rand_vec(n, 20 + step as u64, -1.0, 1.0));
            adamw_step(
                &cfg,
                step,
                &tp,
                &upload(&[n], &g),
                &tm,
                &tv,
                Some((0.5, &tema)),
                true,
            )
            .unwrap();
            cpu::adamw_step(&cfg, step, &mut p, &g, &mut m, &mut v, true);
            ema.iter_mut()
                .zip(&p)
                .for_each(|(e, p)| *e = 0.5 * *e + 0.5 * p);
        }
        let (gp, gema) = (tp.to_vec().unwrap(), tema.to_vec().unwrap());
        assert!(gp.iter().chain(&gema).all(|&x| x >= 0.0));
        assert!(
            p.iter().filter(|&&x| x == 0.0).count() > n / 10,
            "the test clips something"
        );
        // Steps of ~lr = 0.3: f32 rounding of m̂/√v̂ allows ~3e-4 of a step.
        assert_close("nonneg param", &gp, &p, 1e-5, 1e-4);
        assert_close("nonneg ema", &gema, &ema, 1e-5, 1e-4);
    }
}
