//! `proxdm smoke`: a small GPU computation checked against the CPU references, so a user sees at
//! once that the adapter computes correctly (matmul, conv2d, group norm, attention, noise).

use std::fmt::Write;
use std::time::Instant;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ops::{attention, conv2d, group_norm, matmul, noise};
use crate::tensor::Tensor;

fn data(n: usize, seed: u64) -> Vec<f32> {
    // A small LCG: reproducible inputs without pulling rand into the CLI path.
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Largest |gpu - cpu| relative to max(1, |cpu|).
fn max_err(gpu: &[f32], cpu: &[f64]) -> f64 {
    gpu.iter()
        .zip(cpu)
        .map(|(&g, &c)| (g as f64 - c).abs() / c.abs().max(1.0))
        .fold(0.0, f64::max)
}

/// Runs the checks; the report lists each with its error and time. Fails if any error is large.
pub fn run(engine: &Engine) -> Result<String> {
    let mut out = String::new();
    let mut worst: f64 = 0.0;
    let mut check = |name: &str,
                     flops: f64,
                     f: &mut dyn FnMut() -> Result<(Vec<f32>, Vec<f64>)>|
     -> Result<()> {
        f()?; // warm-up: compiles the pipelines
        let t = Instant::now();
        let (gpu, cpu) = f()?;
        let secs = t.elapsed().as_secs_f64();
        let err = max_err(&gpu, &cpu);
        worst = worst.max(err);
        let _ = writeln!(
            out,
            "  {name:<44} max rel error {err:9.2e}   {:8.2} ms{}",
            secs * 1e3,
            if flops > 0.0 {
                format!(
                    "   {:6.2} GFLOP/s (incl. upload/readback)",
                    flops / secs / 1e9
                )
            } else {
                String::new()
            }
        );
        Ok(())
    };

    let (m, n, k) = (256, 256, 256);
    let a = data(m * k, 1);
    let b = data(k * n, 2);
    check("matmul 256x256x256", 2.0 * (m * n * k) as f64, &mut || {
        let c = matmul::matmul(
            &Tensor::from_slice(engine, &[m, k], &a)?,
            &Tensor::from_slice(engine, &[k, n], &b)?,
            false,
            false,
            1.0,
        )?;
        Ok((
            c.to_vec()?,
            matmul::cpu::matmul(&f64s(&a), &f64s(&b), m, n, k, false, false, 1.0),
        ))
    })?;

    let (xs, ws) = ([2, 32, 32, 32], [32, 32, 3, 3]);
    let x = data(xs.iter().product(), 3);
    let w = data(ws.iter().product(), 4);
    let bias = data(32, 5);
    check(
        "conv2d 3x3 [2,32,32,32] -> 32",
        2.0 * (2 * 32 * 32 * 32 * 32 * 9) as f64,
        &mut || {
            let y = conv2d::conv2d(
                &Tensor::from_slice(engine, &xs, &x)?,
                &Tensor::from_slice(engine, &ws, &w)?,
                Some(&Tensor::from_slice(engine, &[32], &bias)?),
                1,
                1,
            )?;
            Ok((
                y.to_vec()?,
                conv2d::cpu::conv2d(&f64s(&x), xs, &f64s(&w), ws, Some(&f64s(&bias)), 1, 1),
            ))
        },
    )?;

    let gamma = data(32, 6);
    let beta = data(32, 7);
    check("group norm [2,32,32,32], 32 groups", 0.0, &mut || {
        let (y, _) = group_norm::group_norm(
            &Tensor::from_slice(engine, &xs, &x)?,
            &Tensor::from_slice(engine, &[32], &gamma)?,
            &Tensor::from_slice(engine, &[32], &beta)?,
            32,
        )?;
        Ok((
            y.to_vec()?,
            group_norm::cpu::group_norm(&f64s(&x), 2, 32, 1024, 32, &f64s(&gamma), &f64s(&beta)),
        ))
    })?;

    let (bq, cq, tq) = (2, 32, 64);
    let q = data(bq * cq * tq, 8);
    let kk = data(bq * cq * tq, 9);
    let v = data(bq * cq * tq, 10);
    check(
        "attention 64 tokens x 32 channels",
        4.0 * (bq * tq * tq * cq) as f64,
        &mut || {
            let up = |d: &[f32]| Tensor::from_slice(engine, &[bq, cq, tq], d);
            let (o, _) = attention::attention(&up(&q)?, &up(&kk)?, &up(&v)?)?;
            Ok((
                o.to_vec()?,
                attention::cpu::attention(&f64s(&q), &f64s(&kk), &f64s(&v), bq, cq, tq),
            ))
        },
    )?;

    check("Philox Gaussian noise, 4096 draws", 0.0, &mut || {
        let z = noise::randn(engine, &[4096], 2025, 3)?;
        Ok((
            z.to_vec()?,
            (0..4096)
                .map(|i| noise::cpu::gaussian(2025, 3, i))
                .collect(),
        ))
    })?;

    let mut report = String::new();
    let i = &engine.adapter().info;
    let _ = writeln!(
        report,
        "GPU smoke test on {} ({:?}, {} {})",
        i.name, i.backend, i.driver, i.driver_info
    );
    report.push_str(&out);
    if worst > 1e-3 {
        return Err(Error::Gpu(format!(
            "{report}the adapter's results differ from the CPU reference (max relative error {worst:.2e}); \
             its driver may be faulty: try another with --adapter or --backend"
        )));
    }
    let _ = writeln!(
        report,
        "all results match the CPU reference (max relative error {worst:.1e})"
    );
    Ok(report)
}
