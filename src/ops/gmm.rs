//! Exact score and oracle prox of a VP-perturbed uniform mixture of Diracs in 2D (the paper's
//! toy experiment), on the GPU; one invocation per point (see shaders/gmm.wgsl for the method).

use bytemuck::{Pod, Zeroable};

use crate::engine::{Kernel, Shader};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub static SHADER: Shader = Shader::new("gmm", include_str!("../../shaders/gmm.wgsl"));
const SCORE: Kernel = Kernel::new(&SHADER, "score");
const PROX: Kernel = Kernel::new(&SHADER, "prox");

/// Mirrors `Params` in gmm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    n: u32,
    m: u32,
    max_iter: u32,
    _pad: u32,
    sa: f32,
    var: f32,
    lambda: f32,
    tol: f32,
}

/// Newton iterations allowed per prox.
pub const MAX_ITER: u32 = 100;
/// Convergence threshold on |F|/(v + λ) (a distance).
pub const TOL: f32 = 1e-6;

fn check(op: &'static str, points: &Tensor, x: &Tensor) -> Result<()> {
    match (points.shape(), x.shape()) {
        ([m, 2], [_, 2]) if *m > 0 => Ok(()),
        (p, s) => Err(Error::shape(
            op,
            format!("points {p:?} must be (M, 2) with M > 0 and x {s:?} (N, 2)"),
        )),
    }
}

/// ∇ ln p_t(x) for x (N, 2), given √α(t) and 1 − α(t) > 0.
pub fn score(points: &Tensor, x: &Tensor, sqrt_alpha: f32, var: f32) -> Result<Tensor> {
    check("gmm score", points, x)?;
    if var <= 0.0 {
        return Err(Error::shape(
            "gmm score",
            "the score of a mixture of Diracs is undefined at t = 0",
        ));
    }
    let e = x.engine();
    let out = Tensor::uninit(e, x.shape())?;
    let p = Params {
        n: x.shape()[0] as u32,
        m: points.shape()[0] as u32,
        sa: sqrt_alpha,
        var,
        ..Default::default()
    };
    e.dispatch(SCORE, &p, &[points, x, &out], e.grid(x.shape()[0], 64))?;
    Ok(out)
}

/// prox_{−λ ln p_t}(y) for y (N, 2). `status` (N) accumulates each point's largest final
/// residual |F|/(v+λ) across calls (start it at zeros); values above [`TOL`] did not converge.
pub fn prox(
    points: &Tensor,
    y: &Tensor,
    sqrt_alpha: f32,
    var: f32,
    lambda: f32,
    status: &Tensor,
) -> Result<Tensor> {
    check("gmm prox", points, y)?;
    if status.shape() != [y.shape()[0]] {
        return Err(Error::shape(
            "gmm prox",
            format!("status {:?} must be ({})", status.shape(), y.shape()[0]),
        ));
    }
    let e = y.engine();
    let out = Tensor::uninit(e, y.shape())?;
    let p = Params {
        n: y.shape()[0] as u32,
        m: points.shape()[0] as u32,
        max_iter: MAX_ITER,
        _pad: 0,
        sa: sqrt_alpha,
        var,
        lambda,
        tol: TOL,
    };
    e.dispatch(
        PROX,
        &p,
        &[points, y, &out, status],
        e.grid(y.shape()[0], 64),
    )?;
    Ok(out)
}

/// CPU references in f64.
pub mod cpu {
    /// (posterior mean m(x), ln Σ exp(−|x−d|²/2v)) for one point.
    pub fn stats(points: &[[f64; 2]], x: [f64; 2], sa: f64, var: f64) -> ([f64; 2], f64) {
        let l: Vec<f64> = points
            .iter()
            .map(|m| -((x[0] - sa * m[0]).powi(2) + (x[1] - sa * m[1]).powi(2)) / (2.0 * var))
            .collect();
        let mx = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = l.iter().map(|v| (v - mx).exp()).sum();
        let mut mean = [0.0; 2];
        for (m, v) in points.iter().zip(&l) {
            let w = (v - mx).exp() / s;
            mean[0] += w * sa * m[0];
            mean[1] += w * sa * m[1];
        }
        (mean, mx + s.ln())
    }

    pub fn score(points: &[[f64; 2]], x: [f64; 2], sa: f64, var: f64) -> [f64; 2] {
        let (m, _) = stats(points, x, sa, var);
        [(m[0] - x[0]) / var, (m[1] - x[1]) / var]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    fn setup(m: usize) -> (Vec<[f64; 2]>, Tensor) {
        let v = rounded(&rand_vec(2 * m, 3, -1.0, 1.0));
        let pts: Vec<[f64; 2]> = v.chunks(2).map(|c| [c[0], c[1]]).collect();
        (pts, upload(&[m, 2], &v))
    }

    #[test]
    fn score_matches_cpu_including_far_points() {
        let (pts, tp) = setup(37);
        // Far points test the log-sum-exp stabilisation.
        let x = rounded(&[0.1, 0.2, 5.0, -7.0, -0.3, 0.9, 30.0, 30.0, 0.0, 0.0]);
        let tx = upload(&[5, 2], &x);
        for &(sa, var) in &[(0.99f64, 0.02f64), (0.7, 0.51), (0.05, 0.9975)] {
            let s = score(&tp, &tx, sa as f32, var as f32)
                .unwrap()
                .to_vec()
                .unwrap();
            let want: Vec<f64> = x
                .chunks(2)
                .flat_map(|c| cpu::score(&pts, [c[0], c[1]], sa, var))
                .collect();
            let scale = want.iter().map(|v| v.abs()).fold(1.0, f64::max);
            assert_close(&format!("gmm score v={var}"), &s, &want, 1e-4, 1e-5 * scale);
        }
    }

    #[test]
    fn prox_satisfies_its_optimality_condition_and_reports_convergence() {
        let (pts, tp) = setup(142);
        let e = engine();
        let n = 500;
        let y = rounded(&rand_vec(2 * n, 9, -1.5, 1.5));
        let ty = upload(&[n, 2], &y);
        // From late (smooth) to early (sharply multimodal) times of a 40-step grid.
        for &(sa, var, lambda) in &[
            (0.2f64, 0.96f64, 0.5f64),
            (0.9, 0.19, 0.05),
            (0.995, 0.01, 0.0125),
            (0.9999, 2.5e-4, 0.0025),
        ] {
            let status = Tensor::zeros(&e, &[n]).unwrap();
            let u = prox(&tp, &ty, sa as f32, var as f32, lambda as f32, &status)
                .unwrap()
                .to_vec()
                .unwrap();
            let st = status.to_vec().unwrap();
            let unconverged = st.iter().filter(|&&r| r >= TOL).count();
            assert!(
                unconverged == 0,
                "v={var}: {unconverged} points did not converge"
            );
            // u − y − λ∇ln p_t(u) = 0, checked in f64 (scaled by v to be f32-meaningful).
            for i in 0..n {
                let ui = [u[2 * i] as f64, u[2 * i + 1] as f64];
                let s = cpu::score(&pts, ui, sa, var);
                for d in 0..2 {
                    let r = var * (ui[d] - y[2 * i + d] - lambda * s[d]) / (var + lambda);
                    assert!(r.abs() < 2e-5, "v={var} point {i}: optimality residual {r}");
                }
            }
        }
        // t = 0: the nearest target point.
        let status = Tensor::zeros(&e, &[n]).unwrap();
        let u = prox(&tp, &ty, 1.0, 0.0, 0.01, &status)
            .unwrap()
            .to_vec()
            .unwrap();
        for i in 0..n {
            let near = pts
                .iter()
                .min_by(|a, b| {
                    let da = (a[0] - y[2 * i]).powi(2) + (a[1] - y[2 * i + 1]).powi(2);
                    let db = (b[0] - y[2 * i]).powi(2) + (b[1] - y[2 * i + 1]).powi(2);
                    da.partial_cmp(&db).unwrap()
                })
                .unwrap();
            assert_eq!([u[2 * i] as f64, u[2 * i + 1] as f64], *near);
        }
    }
}
