//! The regulariser an LPN has learned. f = ∇ψ is the proximal operator of
//! R(x) = ψ*(x) − ½‖x‖² (ψ* the convex conjugate), so at x = f(y):
//! R(x) = ⟨x, y⟩ − ½‖x‖² − ψ(y), up to a constant. Evaluating R at a given x therefore means
//! inverting f: y = argmin_u ψ(u) − ⟨x, u⟩, a smooth convex problem (strongly convex when
//! α > 0) whose gradient is f(u) − x (the LPN paper's method).
//!
//! Solver: gradient descent with per-sample Barzilai–Borwein steps, started at u = x (as the
//! reference), every sample of the batch advanced together with one GPU evaluation of ψ and f
//! per iteration. A sample whose residual grows tenfold past its best is restarted from its
//! best point with half the step. Converged: RMS of f(u) − x below `tol`.

use crate::engine::Engine;
use crate::error::Result;
use crate::graph::{Graph, ParamStore};
use crate::models::lpn::Lpn;
use crate::nn::Gpu;
use crate::tensor::Tensor;

/// What [`evaluate`] found for each sample.
#[derive(Clone, Debug)]
pub struct Prior {
    /// R(x) up to a constant, per sample.
    pub r: Vec<f64>,
    /// The inverse y with f(y) ≈ x, (N, …) flattened.
    pub y: Vec<f32>,
    /// RMS of f(y) − x per sample.
    pub residual: Vec<f64>,
    /// Iterations run.
    pub iters: usize,
    /// Samples whose residual is below the tolerance.
    pub converged: usize,
}

/// ψ(u) (N) and f(u) = ∇ψ(u) (N·d) on the GPU.
pub fn psi_and_grad(
    engine: &Engine,
    lpn: &Lpn,
    store: &ParamStore,
    u: &[f32],
    n: usize,
    cond: Option<(f32, f32)>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let g = Graph::new(engine);
    let p = store.vars(&g);
    let be = Gpu::inference(&g);
    let uv = g.leaf(Tensor::from_slice(engine, &lpn.config.input_shape(n), u)?);
    let c = match cond {
        Some((t, l)) => {
            let tv = g.constant(Tensor::full(engine, &[n], t)?);
            let lv = g.constant(Tensor::full(engine, &[n], l)?);
            lpn.embedding(&be, &p, &tv, &lv)?
        }
        None => None,
    };
    let psi = lpn.psi(&be, &p, &uv, c.as_ref())?;
    let f = g.backward(&g.sum_all(&psi)?, &[&uv], false)?[0]
        .clone()
        .expect("ψ depends on its input");
    Ok((psi.tensor().to_vec()?, f.tensor().to_vec()?))
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// R(x) for the `n` samples of `x` (flattened, each `lpn.config.input_len()` values), with
/// (t, λ) for a conditioned LPN.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    engine: &Engine,
    lpn: &Lpn,
    store: &ParamStore,
    x: &[f32],
    n: usize,
    cond: Option<(f32, f32)>,
    tol: f64,
    max_iters: usize,
) -> Result<Prior> {
    let d = lpn.config.input_len();
    let rms = |g: &[f32]| (dot(g, g) / d as f64).sqrt();
    let mut u = x.to_vec();
    let (_, f) = psi_and_grad(engine, lpn, store, &u, n, cond)?;
    let mut grad: Vec<f32> = f.iter().zip(x).map(|(a, b)| a - b).collect();
    let mut step = vec![1.0f64; n];
    let mut res: Vec<f64> = (0..n).map(|i| rms(&grad[i * d..(i + 1) * d])).collect();
    // Per sample: the smallest residual so far, its point and its gradient.
    let mut best: Vec<(f64, Vec<f32>, Vec<f32>)> = (0..n)
        .map(|i| {
            let s = i * d..(i + 1) * d;
            (res[i], u[s.clone()].to_vec(), grad[s].to_vec())
        })
        .collect();
    let mut iters = 0;
    while iters < max_iters && res.iter().any(|&r| r > tol) {
        iters += 1;
        let (u0, g0) = (u.clone(), grad.clone());
        for i in 0..n {
            if res[i] <= tol {
                continue;
            }
            for k in i * d..(i + 1) * d {
                u[k] = (u[k] as f64 - step[i] * g0[k] as f64) as f32;
            }
        }
        let (_, f) = psi_and_grad(engine, lpn, store, &u, n, cond)?;
        grad = f.iter().zip(x).map(|(a, b)| a - b).collect();
        for i in 0..n {
            let r = i * d..(i + 1) * d;
            if res[i] <= tol {
                continue;
            }
            res[i] = rms(&grad[r.clone()]);
            if res[i] < best[i].0 {
                best[i] = (res[i], u[r.clone()].to_vec(), grad[r.clone()].to_vec());
            } else if res[i] > 10.0 * best[i].0 {
                // Diverging: back to the best point with a smaller step.
                u[r.clone()].copy_from_slice(&best[i].1);
                grad[r].copy_from_slice(&best[i].2);
                step[i] *= 0.5;
                res[i] = best[i].0;
                continue;
            }
            // BB1: s = ‖Δu‖² / ⟨Δu, Δg⟩ (the inverse curvature along the last step).
            let du: Vec<f32> = r.clone().map(|k| u[k] - u0[k]).collect();
            let dg: Vec<f32> = r.clone().map(|k| grad[k] - g0[k]).collect();
            let (uu, ug) = (dot(&du, &du), dot(&du, &dg));
            if ug > 0.0 && uu > 0.0 {
                step[i] = (uu / ug).clamp(1e-4, 1e4);
            }
        }
    }
    // Final values at the best points (restarts may have left u elsewhere).
    for i in 0..n {
        u[i * d..(i + 1) * d].copy_from_slice(&best[i].1);
    }
    let (psi_u, f_u) = psi_and_grad(engine, lpn, store, &u, n, cond)?;
    let mut r = Vec::with_capacity(n);
    let mut residual = Vec::with_capacity(n);
    for (i, &psi_i) in psi_u.iter().enumerate() {
        let s = i * d..(i + 1) * d;
        let (xi, ui) = (&x[s.clone()], &u[s.clone()]);
        r.push(dot(xi, ui) - 0.5 * dot(xi, xi) - psi_i as f64);
        let gi: Vec<f32> = s.map(|k| f_u[k] - x[k]).collect();
        residual.push(rms(&gi));
    }
    let converged = residual.iter().filter(|&&v| v <= tol).count();
    Ok(Prior {
        r,
        y: u,
        residual,
        iters,
        converged,
    })
}
