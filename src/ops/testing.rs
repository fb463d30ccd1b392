//! Test helpers: the shared engine, seeded random data, tolerances and finite differences.

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{Engine, Tensor};

/// The process-wide engine (lavapipe in CI); panics with the adapter error if there is none.
pub fn engine() -> Engine {
    match Engine::shared() {
        Ok(e) => e,
        Err(e) => panic!("GPU tests need an adapter: {e}\nrun scripts/setup.sh"),
    }
}

/// `n` values uniform in [lo, hi), reproducible for `seed`.
pub fn rand_vec(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
    let mut r = StdRng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

pub fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Values as the GPU sees them (rounded to f32), back in f64 for references.
pub fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| x as f32 as f64).collect()
}

pub fn upload(shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::from_slice(&engine(), shape, &to_f32(v)).unwrap()
}

/// Asserts |gpu - cpu| <= atol + rtol * |cpu| element-wise, reporting the worst element.
pub fn assert_close(what: &str, gpu: &[f32], cpu: &[f64], rtol: f64, atol: f64) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths differ");
    let mut worst = (0usize, 0.0f64);
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let err = (g as f64 - c).abs();
        let excess = err - (atol + rtol * c.abs());
        assert!(
            g.is_finite() || !c.is_finite(),
            "{what}[{i}]: gpu {g}, cpu {c}"
        );
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    if worst.1 > 0.0 {
        let i = worst.0;
        panic!(
            "{what}: element {i} differs: gpu {} vs cpu {} (rtol {rtol}, atol {atol})",
            gpu[i], cpu[i]
        );
    }
}

/// Checks a CPU backward against central finite differences of L(x) = <w, f(x)> in f64.
/// `backward(x, w)` must return dL/dx.
pub fn check_grad(
    what: &str,
    x: &[f64],
    f: impl Fn(&[f64]) -> Vec<f64>,
    backward: impl Fn(&[f64], &[f64]) -> Vec<f64>,
) {
    check_grad_step(what, x, 1e-6, f, backward)
}

/// [`check_grad`] with step `h` (relative to 1 + |x|): smaller for fast-oscillating functions.
pub fn check_grad_step(
    what: &str,
    x: &[f64],
    step: f64,
    f: impl Fn(&[f64]) -> Vec<f64>,
    backward: impl Fn(&[f64], &[f64]) -> Vec<f64>,
) {
    let y = f(x);
    let w = rand_vec(y.len(), 9_001, -1.0, 1.0);
    let analytic = backward(x, &w);
    assert_eq!(analytic.len(), x.len(), "{what}: gradient length");
    let loss = |x: &[f64]| -> f64 { f(x).iter().zip(&w).map(|(a, b)| a * b).sum() };
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        let h = step * (1.0 + x[i].abs());
        xp[i] = x[i] + h;
        let lp = loss(&xp);
        xp[i] = x[i] - h;
        let lm = loss(&xp);
        xp[i] = x[i];
        let fd = (lp - lm) / (2.0 * h);
        let tol = 1e-6 * (1.0 + fd.abs().max(analytic[i].abs()));
        assert!(
            (fd - analytic[i]).abs() <= tol,
            "{what}: d/dx[{i}] analytic {} vs finite difference {fd}",
            analytic[i]
        );
    }
}

/// Central finite differences of L(x) = <w, f(x)>, for GPU backwards composed of other ops.
pub fn fd_grad(x: &[f64], w: &[f64], f: impl Fn(&[f64]) -> Vec<f64>) -> Vec<f64> {
    let loss = |x: &[f64]| -> f64 { f(x).iter().zip(w).map(|(a, b)| a * b).sum() };
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let h = 1e-6 * (1.0 + x[i].abs());
            xp[i] = x[i] + h;
            let lp = loss(&xp);
            xp[i] = x[i] - h;
            let lm = loss(&xp);
            xp[i] = x[i];
            (lp - lm) / (2.0 * h)
        })
        .collect()
}
