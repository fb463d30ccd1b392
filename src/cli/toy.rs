//! `proxdm toy`: the paper's 2D oracle experiment (Figure 1).

use std::path::PathBuf;
use std::time::Instant;

use crate::diffusion::toy::{self, ToySampler};
use crate::engine::Engine;
use crate::error::{Error, Result};

/// Everything `proxdm toy` takes.
pub struct ToyArgs {
    pub points: Option<PathBuf>,
    pub offset: f64,
    pub scale: f64,
    pub dataset: Option<String>,
    pub samplers: Vec<String>,
    pub steps: Vec<usize>,
    pub samples: usize,
    pub seed: u64,
    pub out: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    pub save_samples: Option<PathBuf>,
    pub sde: crate::diffusion::Sde,
}

pub fn run(engine: &Engine, a: &ToyArgs) -> Result<String> {
    let (points, source) = match (&a.points, &a.dataset) {
        (Some(p), None) => (
            toy::read_points(p, a.offset, a.scale)?,
            p.display().to_string(),
        ),
        (None, Some(d)) => (toy::dataset(d, 200, a.seed)?, format!("built-in '{d}'")),
        (None, None) => (
            toy::dataset("swissroll", 200, a.seed)?,
            "built-in 'swissroll'".to_string(),
        ),
        (Some(_), Some(_)) => {
            return Err(Error::Format {
                path: "arguments".into(),
                detail: "give --points or --dataset, not both".into(),
            });
        }
    };
    let all = toy::all_samplers();
    let chosen: Vec<(&str, ToySampler)> = if a.samplers.iter().any(|s| s == "all") {
        all
    } else {
        a.samplers
            .iter()
            .map(|s| {
                all.iter()
                    .find(|(n, _)| n == s)
                    .copied()
                    .ok_or_else(|| Error::Format {
                        path: "--samplers".into(),
                        detail: format!(
                            "unknown sampler '{s}'; choose from: all, {}",
                            all.iter().map(|x| x.0).collect::<Vec<_>>().join(", ")
                        ),
                    })
            })
            .collect::<Result<_>>()?
    };
    if !(a.sde.beta_min > 0.0 && a.sde.beta_max > a.sde.beta_min) {
        return Err(Error::Format {
            path: "arguments".into(),
            detail: format!(
                "need 0 < --beta-min < --beta-max, got {} and {}",
                a.sde.beta_min, a.sde.beta_max
            ),
        });
    }
    if a.steps.is_empty() || a.steps.contains(&0) || a.samples == 0 {
        return Err(Error::Format {
            path: "arguments".into(),
            detail: "--steps must be positive and --samples > 0".into(),
        });
    }
    let t0 = Instant::now();
    let total = chosen.len() * a.steps.len();
    let mut done = 0;
    let results = toy::run(
        engine,
        &points,
        &chosen,
        &a.steps,
        a.samples,
        a.seed,
        |name, k| {
            done += 1;
            eprint!("\r[toy] {done}/{total}: {name} with {k} steps          ");
        },
    )?;
    eprintln!();
    let mut report = format!(
        "2D oracle experiment: {} target points from {source}, {} samples, seed {} ({:.1} s on {})\n\n",
        points.len(),
        a.samples,
        a.seed,
        t0.elapsed().as_secs_f64(),
        engine.adapter().info.name
    );
    report.push_str(&toy::table(&results, &a.steps, true));
    report.push('\n');
    report.push_str(&toy::table(&results, &a.steps, false));
    let bad: usize = results.iter().map(|r| r.unconverged).sum();
    report.push_str(&format!(
        "\nprox solves not converged to |residual| < {:e}: {bad}\n",
        crate::ops::gmm::TOL
    ));
    if results.iter().any(|r| r.w2.is_none()) {
        report.push_str("— : prox-backward is undefined at that step count (some γ ≥ 2)\n");
    }
    if let Some(out) = &a.out {
        crate::io::write_atomic(out, toy::csv(&results).as_bytes())?;
        report.push_str(&format!("table written to {}\n", out.display()));
    }
    if let Some(plot) = &a.plot {
        toy::figure(&points, &results, &a.steps, plot)?;
        report.push_str(&format!("figure written to {}\n", plot.display()));
    }
    if let Some(dir) = &a.save_samples {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
        for r in results.iter().filter(|r| !r.samples.is_empty()) {
            let mut s = "x,y\n".to_string();
            for q in r.samples.chunks(2) {
                s.push_str(&format!("{},{}\n", q[0], q[1]));
            }
            crate::io::write_atomic(
                &dir.join(format!("{}-{}.csv", r.sampler, r.steps)),
                s.as_bytes(),
            )?;
        }
        report.push_str(&format!("samples written to {}\n", dir.display()));
    }
    Ok(report)
}
