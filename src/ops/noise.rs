//! Counter-based Gaussian noise on the GPU: Philox4x32-10 keyed by the seed, with counter
//! (element / 4, 0, stream, 0), then Box–Muller. A (seed, stream, element) triple gives the same
//! value on every run and every back end, whatever the tensor's size or the dispatch layout.

use bytemuck::{Pod, Zeroable};

use crate::engine::{Kernel, Shader};
use crate::error::Result;
use crate::tensor::Tensor;

pub static SHADER: Shader = Shader::new("noise", include_str!("../../shaders/noise.wgsl"));
const GAUSSIAN: Kernel = Kernel::new(&SHADER, "gaussian");
const UNIFORM: Kernel = Kernel::new(&SHADER, "uniform_fill");

/// Mirrors `Params` in noise.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    n: u32,
    key_lo: u32,
    key_hi: u32,
    stream: u32,
    offset: u32,
    mean: f32,
    std: f32,
    _pad: u32,
}

impl Params {
    /// Params for `out`'s elements under (seed, stream), starting at draw `offset`.
    fn keyed(out: &Tensor, seed: u64, stream: u32, offset: u32) -> Self {
        Params {
            n: out.numel() as u32,
            key_lo: seed as u32,
            key_hi: (seed >> 32) as u32,
            stream,
            offset,
            ..Default::default()
        }
    }
}

/// Fills `out` in place with N(mean, std²) draws: element i is draw (offset + i) of `stream`.
pub fn fill_gaussian(
    out: &Tensor,
    seed: u64,
    stream: u32,
    offset: u32,
    mean: f32,
    std: f32,
) -> Result<()> {
    let p = Params {
        mean,
        std,
        ..Params::keyed(out, seed, stream, offset)
    };
    let e = out.engine();
    e.dispatch(GAUSSIAN, &p, &[out], e.grid(out.numel().div_ceil(4), 64))
}

/// Fills `out` with uniform draws in (0, 1]: element i is draw (offset + i) of `stream`.
pub fn fill_uniform(out: &Tensor, seed: u64, stream: u32, offset: u32) -> Result<()> {
    let p = Params::keyed(out, seed, stream, offset);
    let e = out.engine();
    e.dispatch(UNIFORM, &p, &[out], e.grid(out.numel(), 64))
}

/// A new tensor of standard normal draws 0..numel of `stream` under `seed`.
pub fn randn(engine: &crate::Engine, shape: &[usize], seed: u64, stream: u32) -> Result<Tensor> {
    let t = Tensor::uninit(engine, shape)?;
    fill_gaussian(&t, seed, stream, 0, 0.0, 1.0)?;
    Ok(t)
}

/// CPU reference: the same generator in plain Rust.
pub mod cpu {
    fn mulhilo(a: u32, b: u32) -> (u32, u32) {
        let p = a as u64 * b as u64;
        ((p >> 32) as u32, p as u32)
    }

    /// Philox4x32 with 10 rounds.
    pub fn philox(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
        let (mut c, mut k) = (ctr, key);
        for _ in 0..10 {
            let (h0, l0) = mulhilo(0xD251_1F53, c[0]);
            let (h1, l1) = mulhilo(0xCD9E_8D57, c[2]);
            c = [h1 ^ c[1] ^ k[0], l1, h0 ^ c[3] ^ k[1], l0];
            k = [
                k[0].wrapping_add(0x9E37_79B9),
                k[1].wrapping_add(0xBB67_AE85),
            ];
        }
        c
    }

    pub fn uniform01(x: u32) -> f64 {
        ((x >> 8) as f64 + 1.0) / 16_777_216.0
    }

    /// Uniform draw `e` of `stream` under `seed`.
    pub fn uniform(seed: u64, stream: u32, e: u32) -> f64 {
        let r = philox([e / 4, 0, stream, 0], [seed as u32, (seed >> 32) as u32]);
        uniform01(r[(e % 4) as usize])
    }

    /// Gaussian draw `e` of `stream` under `seed`.
    pub fn gaussian(seed: u64, stream: u32, e: u32) -> f64 {
        let r = philox([e / 4, 0, stream, 0], [seed as u32, (seed >> 32) as u32]);
        let lane = (e % 4) as usize;
        let (a, b) = if lane < 2 { (r[0], r[1]) } else { (r[2], r[3]) };
        let m = (-2.0 * uniform01(a).ln()).sqrt();
        let th = std::f64::consts::TAU * uniform01(b);
        if lane.is_multiple_of(2) {
            m * th.cos()
        } else {
            m * th.sin()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn philox_matches_known_answers() {
        // Random123's published known-answer vectors for philox4x32_10.
        assert_eq!(
            cpu::philox([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            cpu::philox([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
    }

    #[test]
    fn gpu_noise_equals_cpu_generator_and_is_deterministic() {
        let e = engine();
        let t = Tensor::uninit(&e, &[3, 1001]).unwrap();
        fill_gaussian(&t, 0x1234_5678_9abc_def0, 7, 0, 0.0, 1.0).unwrap();
        let a = t.to_vec().unwrap();
        let want: Vec<f64> = (0..a.len() as u32)
            .map(|i| cpu::gaussian(0x1234_5678_9abc_def0, 7, i))
            .collect();
        assert_close("philox gaussian", &a, &want, 1e-4, 1e-5);
        // Same seed, same stream: bit-identical. Offsets continue the same sequence.
        let b = randn(&e, &[3, 1001], 0x1234_5678_9abc_def0, 7)
            .unwrap()
            .to_vec()
            .unwrap();
        assert_eq!(
            a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        let tail = Tensor::uninit(&e, &[99]).unwrap();
        fill_gaussian(&tail, 0x1234_5678_9abc_def0, 7, 1001, 0.0, 1.0).unwrap();
        assert_eq!(tail.to_vec().unwrap(), a[1001..1100].to_vec());
        // Another stream or seed differs.
        let c = randn(&e, &[3, 1001], 0x1234_5678_9abc_def0, 8)
            .unwrap()
            .to_vec()
            .unwrap();
        let d = randn(&e, &[3, 1001], 1, 7).unwrap().to_vec().unwrap();
        assert!(a.iter().zip(&c).filter(|(x, y)| x == y).count() < 5);
        assert!(a.iter().zip(&d).filter(|(x, y)| x == y).count() < 5);
    }

    #[test]
    fn gpu_uniform_noise_equals_cpu_and_is_uniform() {
        let t = Tensor::uninit(&engine(), &[100_003]).unwrap();
        fill_uniform(&t, 99, 2, 5).unwrap();
        let u = t.to_vec().unwrap();
        let want: Vec<f64> = (0..u.len() as u32)
            .map(|i| cpu::uniform(99, 2, i + 5))
            .collect();
        assert_close("uniform", &u, &want, 0.0, 0.0);
        assert!(u.iter().all(|&v| v > 0.0 && v <= 1.0));
        let mean = u.iter().map(|&v| v as f64).sum::<f64>() / u.len() as f64;
        // Standard error 0.29/√n ≈ 0.0009.
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
    }

    #[test]
    fn gpu_noise_is_standard_normal_over_a_million_draws() {
        let n = 1 << 20;
        let z: Vec<f64> = randn(&engine(), &[n], 42, 0)
            .unwrap()
            .to_vec()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let mean = z.iter().sum::<f64>() / n as f64;
        let var = z.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
        // Standard errors: mean 1/√n ≈ 0.001, variance √(2/n) ≈ 0.0014; allow ~5σ.
        assert!(mean.abs() < 0.005, "mean {mean}");
        assert!((var - 1.0).abs() < 0.007, "variance {var}");
        let skew = z.iter().map(|v| (v - mean).powi(3)).sum::<f64>() / n as f64;
        let kurt = z.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / n as f64;
        assert!(skew.abs() < 0.015, "skewness {skew}");
        assert!((kurt - 3.0).abs() < 0.03, "kurtosis {kurt}");
        // Kolmogorov–Smirnov against Φ on a subsample: D < 1.63/√m is the 1% critical value.
        let m = 20_000;
        let mut s: Vec<f64> = z.iter().step_by(n / m).copied().collect();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let phi = |x: f64| 0.5 * (1.0 + crate::ops::loss::cpu::erf(x / std::f64::consts::SQRT_2));
        let d = s
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let f = phi(x);
                (f - i as f64 / s.len() as f64)
                    .abs()
                    .max(((i + 1) as f64 / s.len() as f64 - f).abs())
            })
            .fold(0.0, f64::max);
        assert!(d < 1.63 / (s.len() as f64).sqrt(), "KS statistic {d}");
    }
}
