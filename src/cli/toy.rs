//! `proxdm toy`: the paper's 2D oracle experiment (Figure 1).

use std::path::PathBuf;
use std::time::Instant;

use crate::diffusion::toy::{self, ToySampler};
use crate::engine::Engine;
use crate::error::{Error, Result};

/// Everything `proxdm toy` takes (its command-line flags).
#[derive(clap::Args, Debug)]
pub struct ToyArgs {
    /// Target points from a CSV file with an `x,y` header (e.g. the Datasaurus dino).
    #[arg(long, conflicts_with = "dataset")]
    pub points: Option<PathBuf>,
    /// Subtracted from every coordinate of --points (the paper uses 50 for the dino).
    #[arg(long, default_value_t = 0.0)]
    pub offset: f64,
    /// Divides every coordinate of --points after the offset (the paper uses 50).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// A built-in target instead: swissroll, moons, rings or checkerboard (200 points).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Samplers, comma-separated, or "all": score-em, score-em-denoise-1e-3,
    /// score-em-denoise-1e-5, score-ode, prox-hybrid, prox-backward; also (not in "all")
    /// tweedie-hybrid and tweedie-backward, the prox samplers with the score's MMSE denoiser
    /// (Tweedie's formula) in place of the prox.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub samplers: Vec<String>,
    /// Step counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "5,7,10,20,30,40")]
    pub steps: Vec<usize>,
    /// Samples per sampler and step count.
    #[arg(long, default_value_t = 1000)]
    pub samples: usize,
    /// Seed of the initial noise and of every step's noise (and of built-in datasets).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the W1/W2 table as CSV here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw the figure (target, samples at the fewest steps, W2 against steps) as PNG here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write every sampler's samples as CSV files into this directory.
    #[arg(long)]
    pub save_samples: Option<PathBuf>,
    /// Prox operators of the prox samplers: "oracle" (solved exactly per point), or "lpn" to
    /// add rows (lpn-hybrid, lpn-backward) where a learned proximal network replaces the
    /// oracle, next to the oracle rows.
    #[arg(long, default_value = "oracle")]
    pub prox: String,
    /// The 2D LPN conditioned on (t, λ) used by --prox lpn (trained on the built-in
    /// swissroll, the default target).
    #[arg(long, default_value = "weights/toy-lpn-swissroll.safetensors")]
    pub lpn_weights: PathBuf,
    /// β(0) of the VP SDE's linear schedule.
    #[arg(long, default_value_t = 0.1)]
    pub beta_min: f64,
    /// β(1) of the VP SDE's linear schedule.
    #[arg(long, default_value_t = 20.0)]
    pub beta_max: f64,
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
        let all = [all, toy::mmse_samplers()].concat();
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
    let sde = crate::diffusion::Sde {
        beta_min: a.beta_min,
        beta_max: a.beta_max,
    };
    if !(sde.beta_min > 0.0 && sde.beta_max > sde.beta_min) {
        return Err(Error::Format {
            path: "arguments".into(),
            detail: format!(
                "need 0 < --beta-min < --beta-max, got {} and {}",
                sde.beta_min, sde.beta_max
            ),
        });
    }
    if a.steps.is_empty() || a.steps.contains(&0) || a.samples == 0 {
        return Err(Error::Format {
            path: "arguments".into(),
            detail: "--steps must be positive and --samples > 0".into(),
        });
    }
    let lpn = match a.prox.as_str() {
        "oracle" => None,
        "lpn" => {
            let (l, store) = crate::io::weights::load_lpn(&a.lpn_weights, engine)?;
            if !l.config.cond || l.config.input_len() != 2 {
                return Err(Error::Format {
                    path: a.lpn_weights.display().to_string(),
                    detail: "--prox lpn needs a 2D LPN conditioned on (t, λ)".into(),
                });
            }
            Some((l, store))
        }
        other => {
            return Err(Error::Format {
                path: "--prox".into(),
                detail: format!("unknown prox '{other}': oracle or lpn"),
            });
        }
    };
    let net = lpn
        .as_ref()
        .map(|(l, s)| crate::diffusion::oracles::LpnNetwork { lpn: l, params: s });
    let t0 = Instant::now();
    let lpn_rows = chosen
        .iter()
        .filter(|c| matches!(c.1, ToySampler::Prox(_)))
        .count();
    let total = (chosen.len() + if net.is_some() { lpn_rows } else { 0 }) * a.steps.len();
    let mut done = 0;
    let results = toy::run(
        engine,
        &points,
        &chosen,
        &a.steps,
        a.samples,
        a.seed,
        net.as_ref(),
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
        report.push_str("— : the backward sampler is undefined at that step count (some γ ≥ 2)\n");
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
