//! The fused sampling-step kernel: out = a·x + b·s + c·z with the step's Gaussian noise z
//! generated in the same dispatch (Philox keyed by seed, stream = step, element).

use bytemuck::{Pod, Zeroable};

use super::elementwise::same_shape;
use crate::engine::{Kernel, Shader};
use crate::error::Result;
use crate::tensor::Tensor;

pub static SHADER: Shader = Shader::new("sampler", include_str!("../../shaders/sampler.wgsl"));
const STEP: Kernel = Kernel::new(&SHADER, "step");

/// Mirrors `Params` in sampler.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    n: u32,
    key_lo: u32,
    key_hi: u32,
    stream: u32,
    a: f32,
    b: f32,
    c: f32,
    _pad: u32,
}

/// Coefficients of one step: out = a·x + b·s + c·z.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCoefs {
    pub a: f32,
    pub b: f32,
    pub c: f32,
}

/// One fused step. `s` is the score (None when b = 0); noise is draw `i` of (seed, stream).
pub fn step(
    x: &Tensor,
    s: Option<&Tensor>,
    k: StepCoefs,
    seed: u64,
    stream: u32,
) -> Result<Tensor> {
    if let Some(s) = s {
        same_shape("sampler step", x, s)?;
    }
    let e = x.engine();
    let out = Tensor::uninit(e, x.shape())?;
    let p = Params {
        n: x.numel() as u32,
        key_lo: seed as u32,
        key_hi: (seed >> 32) as u32,
        stream,
        a: k.a,
        b: if s.is_some() { k.b } else { 0.0 },
        c: k.c,
        _pad: 0,
    };
    e.dispatch(
        STEP,
        &p,
        &[x, s.unwrap_or(x), &out],
        e.grid(x.numel().div_ceil(4), 64),
    )?;
    Ok(out)
}

/// CPU reference in f64.
pub mod cpu {
    use super::StepCoefs;
    use crate::ops::noise::cpu::gaussian;

    pub fn step(x: &[f64], s: Option<&[f64]>, k: StepCoefs, seed: u64, stream: u32) -> Vec<f64> {
        x.iter()
            .enumerate()
            .map(|(i, &v)| {
                let z = if k.c != 0.0 {
                    gaussian(seed, stream, i as u32)
                } else {
                    0.0
                };
                k.a as f64 * v + s.map_or(0.0, |s| k.b as f64 * s[i]) + k.c as f64 * z
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn fused_step_matches_cpu_and_its_noise_is_the_generators() {
        for (k, &n) in [1usize, 7, 1001].iter().enumerate() {
            let x = rounded(&rand_vec(n, k as u64, -2.0, 2.0));
            let s = rounded(&rand_vec(n, 10 + k as u64, -2.0, 2.0));
            let (tx, ts) = (upload(&[n], &x), upload(&[n], &s));
            let coefs = StepCoefs {
                a: 1.05,
                b: 0.1,
                c: 0.3162,
            };
            let got = step(&tx, Some(&ts), coefs, 77, 5)
                .unwrap()
                .to_vec()
                .unwrap();
            assert_close(
                "sampler step",
                &got,
                &cpu::step(&x, Some(&s), coefs, 77, 5),
                1e-4,
                1e-5,
            );
            let noiseless = StepCoefs {
                a: 0.5,
                b: 0.0,
                c: 0.0,
            };
            let got = step(&tx, None, noiseless, 77, 5).unwrap().to_vec().unwrap();
            assert_close(
                "noise-free step",
                &got,
                &cpu::step(&x, None, noiseless, 77, 5),
                1e-6,
                1e-7,
            );
        }
        // Same (seed, stream) → same noise; another stream → different.
        let x = upload(&[64], &[0.0; 64]);
        let k = StepCoefs {
            a: 1.0,
            b: 0.0,
            c: 1.0,
        };
        let a = step(&x, None, k, 1, 2).unwrap().to_vec().unwrap();
        assert_eq!(a, step(&x, None, k, 1, 2).unwrap().to_vec().unwrap());
        assert_ne!(a, step(&x, None, k, 1, 3).unwrap().to_vec().unwrap());
    }
}
