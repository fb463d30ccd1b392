//! Group normalisation (32 groups in the UNet) with affine γ, β; backward to x, γ and β.

use bytemuck::{Pod, Zeroable};

use crate::engine::{Kernel, Shader};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub static SHADER: Shader =
    Shader::new("group_norm", include_str!("../../shaders/group_norm.wgsl"));
const FORWARD: Kernel = Kernel::new(&SHADER, "forward");
const BACKWARD_INPUT: Kernel = Kernel::new(&SHADER, "backward_input");
const BACKWARD_AFFINE: Kernel = Kernel::new(&SHADER, "backward_affine");

/// Mirrors `Params` in group_norm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    n: u32,
    c: u32,
    hw: u32,
    groups: u32,
    eps: f32,
    silu: u32,
    _pad: [u32; 2],
}

/// PyTorch's default.
pub const EPS: f32 = 1e-5;

fn plan(x: &Tensor, gamma: &Tensor, beta: &Tensor, groups: usize) -> Result<Params> {
    let s = x.shape();
    if s.len() != 4
        || groups == 0
        || !s[1].is_multiple_of(groups)
        || gamma.shape() != [s[1]]
        || beta.shape() != [s[1]]
    {
        return Err(Error::shape(
            "group_norm",
            format!(
                "x {s:?} (N, C, H, W) with {groups} groups needs C divisible by groups and gamma/beta (C); got {:?} and {:?}",
                gamma.shape(),
                beta.shape()
            ),
        ));
    }
    Ok(Params {
        n: s[0] as u32,
        c: s[1] as u32,
        hw: (s[2] * s[3]) as u32,
        groups: groups as u32,
        eps: EPS,
        silu: 0,
        _pad: [0; 2],
    })
}

fn wg_grid(count: u32) -> [u32; 3] {
    // The shader recovers the group index as x + 65535·y.
    if count <= 65535 {
        [count, 1, 1]
    } else {
        [65535, count.div_ceil(65535), 1]
    }
}

/// y = (x - μ)/σ · γ + β per (sample, group); also returns the (N, G, 2) statistics (μ, 1/σ)
/// the backward needs.
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
) -> Result<(Tensor, Tensor)> {
    group_norm_act(x, gamma, beta, groups, false)
}

/// [`group_norm`], followed by SiLU in the same pass when `silu` (GroupNorm then SiLU is how
/// every UNet block starts: one pass over memory instead of two).
pub fn group_norm_act(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    silu: bool,
) -> Result<(Tensor, Tensor)> {
    let mut p = plan(x, gamma, beta, groups)?;
    p.silu = silu as u32;
    let e = x.engine();
    let y = Tensor::uninit(e, x.shape())?;
    let stats = Tensor::uninit(e, &[p.n as usize, groups, 2])?;
    e.dispatch(
        FORWARD,
        &p,
        &[x, gamma, beta, &stats, &y],
        wg_grid(p.n * p.groups),
    )?;
    Ok((y, stats))
}

/// (dx, dγ, dβ) for y = group_norm(x, γ, β).
pub fn group_norm_backward(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    stats: &Tensor,
    dy: &Tensor,
    groups: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    group_norm_act_backward(x, gamma, beta, stats, dy, groups, false)
}

/// (dx, dγ, dβ) for y = group_norm_act(x, γ, β, groups, silu).
pub fn group_norm_act_backward(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    stats: &Tensor,
    dy: &Tensor,
    groups: usize,
    silu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let mut p = plan(x, gamma, beta, groups)?;
    p.silu = silu as u32;
    if dy.shape() != x.shape() || stats.shape() != [p.n as usize, groups, 2] {
        return Err(Error::shape(
            "group_norm_backward",
            format!("dy {:?} must equal x {:?}", dy.shape(), x.shape()),
        ));
    }
    let e = x.engine();
    let dx = Tensor::uninit(e, x.shape())?;
    e.dispatch(
        BACKWARD_INPUT,
        &p,
        &[x, gamma, beta, dy, stats, &dx],
        wg_grid(p.n * p.groups),
    )?;
    let dgamma = Tensor::uninit(e, gamma.shape())?;
    let dbeta = Tensor::uninit(e, beta.shape())?;
    e.dispatch(
        BACKWARD_AFFINE,
        &p,
        &[x, gamma, beta, dy, stats, &dgamma, &dbeta],
        [p.c.div_ceil(64), 1, 1],
    )?;
    Ok((dx, dgamma, dbeta))
}

/// CPU references in f64.
pub mod cpu {
    /// (mean, 1/std) of one group, two-pass.
    fn stats(xs: &[f64]) -> (f64, f64) {
        let m = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / m;
        let var = xs.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / m;
        (mean, 1.0 / (var + super::EPS as f64).sqrt())
    }

    /// x (n, c, hw) → y.
    pub fn group_norm(
        x: &[f64],
        n: usize,
        c: usize,
        hw: usize,
        groups: usize,
        gamma: &[f64],
        beta: &[f64],
    ) -> Vec<f64> {
        let m = c / groups * hw;
        let mut y = vec![0.0; x.len()];
        for g in 0..n * groups {
            let xs = &x[g * m..(g + 1) * m];
            let (mean, rstd) = stats(xs);
            for i in 0..m {
                let ch = (g % groups) * (c / groups) + i / hw;
                y[g * m + i] = (xs[i] - mean) * rstd * gamma[ch] + beta[ch];
            }
        }
        y
    }

    /// (dx, dgamma, dbeta).
    #[allow(clippy::too_many_arguments)]
    pub fn group_norm_backward(
        x: &[f64],
        n: usize,
        c: usize,
        hw: usize,
        groups: usize,
        gamma: &[f64],
        dy: &[f64],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let m = c / groups * hw;
        let (mut dx, mut dg, mut db) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
        for g in 0..n * groups {
            let xs = &x[g * m..(g + 1) * m];
            let (mean, rstd) = stats(xs);
            let ch = |i: usize| (g % groups) * (c / groups) + i / hw;
            let xh: Vec<f64> = xs.iter().map(|v| (v - mean) * rstd).collect();
            let gh: Vec<f64> = (0..m).map(|i| dy[g * m + i] * gamma[ch(i)]).collect();
            let ma = gh.iter().sum::<f64>() / m as f64;
            let mb = gh.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / m as f64;
            for i in 0..m {
                dx[g * m + i] = rstd * (gh[i] - ma - xh[i] * mb);
                dg[ch(i)] += dy[g * m + i] * xh[i];
                db[ch(i)] += dy[g * m + i];
            }
        }
        (dx, dg, db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn group_norm_matches_cpu_with_gradients() {
        // (N, C, H, W, G): the UNet's 32 groups, odd sizes, groups of one channel.
        for (k, &(n, c, h, w, g)) in [
            (1, 4, 3, 3, 2),
            (2, 64, 5, 7, 32),
            (3, 6, 1, 1, 3),
            (2, 32, 17, 9, 32),
            (1, 8, 2, 3, 1),
        ]
        .iter()
        .enumerate()
        {
            let what = format!("group_norm ({n},{c},{h},{w}) G{g}");
            let hw = h * w;
            // An offset tests the two-pass variance.
            let x = rounded(&rand_vec(n * c * hw, k as u64, 2.0, 4.0));
            let gamma = rounded(&rand_vec(c, 10 + k as u64, 0.5, 1.5));
            let beta = rounded(&rand_vec(c, 20 + k as u64, -1.0, 1.0));
            let (tx, tg, tb) = (
                upload(&[n, c, h, w], &x),
                upload(&[c], &gamma),
                upload(&[c], &beta),
            );
            let (y, stats) = group_norm(&tx, &tg, &tb, g).unwrap();
            assert_close(
                &what,
                &y.to_vec().unwrap(),
                &cpu::group_norm(&x, n, c, hw, g, &gamma, &beta),
                1e-4,
                1e-4,
            );
            if x.len() <= 400 {
                check_grad(
                    &format!("{what} dx"),
                    &x,
                    |x| cpu::group_norm(x, n, c, hw, g, &gamma, &beta),
                    |x, d| cpu::group_norm_backward(x, n, c, hw, g, &gamma, d).0,
                );
                check_grad(
                    &format!("{what} dgamma"),
                    &gamma,
                    |gm| cpu::group_norm(&x, n, c, hw, g, gm, &beta),
                    |gm, d| cpu::group_norm_backward(&x, n, c, hw, g, gm, d).1,
                );
                check_grad(
                    &format!("{what} dbeta"),
                    &beta,
                    |b| cpu::group_norm(&x, n, c, hw, g, &gamma, b),
                    |_, d| cpu::group_norm_backward(&x, n, c, hw, g, &gamma, d).2,
                );
            }
            let dy = rounded(&rand_vec(x.len(), 30 + k as u64, -1.0, 1.0));
            let (dx, dg, db) =
                group_norm_backward(&tx, &tg, &tb, &stats, &upload(&[n, c, h, w], &dy), g).unwrap();
            let (wdx, wdg, wdb) = cpu::group_norm_backward(&x, n, c, hw, g, &gamma, &dy);
            assert_close(
                &format!("{what} dx"),
                &dx.to_vec().unwrap(),
                &wdx,
                1e-3,
                1e-3,
            );
            assert_close(
                &format!("{what} dgamma"),
                &dg.to_vec().unwrap(),
                &wdg,
                1e-4,
                1e-4,
            );
            assert_close(
                &format!("{what} dbeta"),
                &db.to_vec().unwrap(),
                &wdb,
                1e-4,
                1e-4,
            );
        }
        let err = group_norm(
            &upload(&[1, 6, 2, 2], &[0.0; 24]),
            &upload(&[6], &[1.0; 6]),
            &upload(&[6], &[0.0; 6]),
            4,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("group_norm") && err.contains("[1, 6, 2, 2]"),
            "{err}"
        );
    }

    /// GroupNorm then SiLU in one pass, against the CPU composition and finite differences.
    #[test]
    fn fused_silu_matches_cpu_with_gradients() {
        use crate::ops::elementwise::{UnaryOp, cpu::unary};
        let (n, c, h, w, g) = (2, 6, 3, 2, 3);
        let hw = h * w;
        let x = rounded(&rand_vec(n * c * hw, 7, -2.0, 2.0));
        let gamma = rounded(&rand_vec(c, 8, 0.5, 1.5));
        let beta = rounded(&rand_vec(c, 9, -1.0, 1.0));
        let fwd = |x: &[f64], gm: &[f64], b: &[f64]| -> Vec<f64> {
            cpu::group_norm(x, n, c, hw, g, gm, b)
                .into_iter()
                .map(|v| unary(v, UnaryOp::Silu))
                .collect()
        };
        // Backward of the composition: dy through SiLU' at the pre-activation, then GroupNorm's.
        let back = |x: &[f64], gm: &[f64], b: &[f64], d: &[f64]| {
            let v = cpu::group_norm(x, n, c, hw, g, gm, b);
            let dv: Vec<f64> = v
                .iter()
                .zip(d)
                .map(|(&v, &d)| {
                    let s = 1.0 / (1.0 + (-v).exp());
                    d * s * (1.0 + v * (1.0 - s))
                })
                .collect();
            cpu::group_norm_backward(x, n, c, hw, g, gm, &dv)
        };
        check_grad(
            "gn+silu dx",
            &x,
            |x| fwd(x, &gamma, &beta),
            |x, d| back(x, &gamma, &beta, d).0,
        );
        check_grad(
            "gn+silu dgamma",
            &gamma,
            |gm| fwd(&x, gm, &beta),
            |gm, d| back(&x, gm, &beta, d).1,
        );
        check_grad(
            "gn+silu dbeta",
            &beta,
            |b| fwd(&x, &gamma, b),
            |b, d| back(&x, &gamma, b, d).2,
        );
        let (tx, tg, tb) = (
            upload(&[n, c, h, w], &x),
            upload(&[c], &gamma),
            upload(&[c], &beta),
        );
        let (y, stats) = group_norm_act(&tx, &tg, &tb, g, true).unwrap();
        assert_close(
            "gn+silu",
            &y.to_vec().unwrap(),
            &fwd(&x, &gamma, &beta),
            1e-4,
            1e-5,
        );
        let dy = rounded(&rand_vec(x.len(), 10, -1.0, 1.0));
        let (dx, dg, db) =
            group_norm_act_backward(&tx, &tg, &tb, &stats, &upload(&[n, c, h, w], &dy), g, true)
                .unwrap();
        let (wdx, wdg, wdb) = back(&x, &gamma, &beta, &dy);
        assert_close("gn+silu dx", &dx.to_vec().unwrap(), &wdx, 1e-3, 1e-4);
        assert_close("gn+silu dgamma", &dg.to_vec().unwrap(), &wdg, 1e-4, 1e-4);
        assert_close("gn+silu dbeta", &db.to_vec().unwrap(), &wdb, 1e-4, 1e-4);
    }
}
