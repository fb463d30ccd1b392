//! The paper's 2D oracle experiment: a uniform mixture of Diracs at given points, sampled by
//! every sampler with the exact score or the oracle prox, scored by exact W1/W2 to the points.

use std::path::Path;

use rand::{Rng, SeedableRng, rngs::StdRng};

use super::Sde;
use super::oracles::{LpnNetwork, Mixture, Tweedie};
use super::ot::wasserstein;
use super::samplers::{
    ProxOracle, ProxSampler, ScoreSampler, initial_noise, max_gamma, sample_prox, sample_score,
};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Built-in 2D point sets (about [-1, 1]²).
pub const DATASETS: [&str; 4] = ["swissroll", "moons", "rings", "checkerboard"];

/// `n` points of a built-in dataset, reproducible for `seed`.
pub fn dataset(name: &str, n: usize, seed: u64) -> Result<Vec<[f64; 2]>> {
    let mut r = StdRng::seed_from_u64(seed);
    let pi = std::f64::consts::PI;
    let pts = match name {
        "swissroll" => (0..n)
            .map(|_| {
                let t = r.random_range(1.5 * pi..4.5 * pi);
                [t * t.cos() / 15.0, t * t.sin() / 15.0]
            })
            .collect(),
        "moons" => (0..n)
            .map(|k| {
                let a = r.random_range(0.0..pi);
                if k % 2 == 0 {
                    [a.cos() - 0.5, a.sin() - 0.25]
                } else {
                    [0.5 - a.cos(), 0.25 - a.sin()]
                }
            })
            .collect(),
        "rings" => (0..n)
            .map(|k| {
                let a = r.random_range(0.0..2.0 * pi);
                let rad = [0.3, 0.65, 1.0][k % 3];
                [rad * a.cos(), rad * a.sin()]
            })
            .collect(),
        "checkerboard" => {
            let mut v = Vec::with_capacity(n);
            while v.len() < n {
                let (x, y): (f64, f64) = (r.random_range(-1.0..1.0), r.random_range(-1.0..1.0));
                let (cx, cy) = (
                    ((x + 1.0) * 2.0).floor() as i64,
                    ((y + 1.0) * 2.0).floor() as i64,
                );
                if (cx + cy) % 2 == 0 {
                    v.push([x, y]);
                }
            }
            v
        }
        other => {
            return Err(Error::Format {
                path: "--dataset".into(),
                detail: format!(
                    "unknown dataset '{other}'; built-in: {}",
                    DATASETS.join(", ")
                ),
            });
        }
    };
    Ok(pts)
}

/// Points from a CSV file with an `x,y` header, rescaled as (p − offset)/scale.
pub fn read_points(path: &Path, offset: f64, scale: f64) -> Result<Vec<[f64; 2]>> {
    let bad = |detail: String| Error::Format {
        path: path.display().to_string(),
        detail,
    };
    let text =
        String::from_utf8(crate::io::read(path)?).map_err(|_| bad("not UTF-8 text".into()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or_else(|| bad("empty file".into()))?;
    let cols: Vec<String> = header
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_lowercase())
        .collect();
    let (Some(ix), Some(iy)) = (
        cols.iter().position(|c| c == "x"),
        cols.iter().position(|c| c == "y"),
    ) else {
        return Err(bad(format!("header '{header}' must name columns x and y")));
    };
    if scale == 0.0 {
        return Err(bad("--scale must not be 0".into()));
    }
    let mut pts = Vec::new();
    for (k, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let get = |i: usize| -> Result<f64> {
            f.get(i)
                .and_then(|v| v.trim_matches('"').parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    bad(format!(
                        "line {}: '{line}' has no number in column {}",
                        k + 2,
                        i + 1
                    ))
                })
        };
        pts.push([(get(ix)? - offset) / scale, (get(iy)? - offset) / scale]);
    }
    if pts.is_empty() {
        return Err(bad("no points".into()));
    }
    Ok(pts)
}

/// The samplers of the experiment, by the names the CLI uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ToySampler {
    Score(ScoreSampler),
    Prox(ProxSampler),
    /// A ProxDM sampler driven by the score's MMSE denoiser (`oracles::Tweedie`) in place of
    /// the prox: what the samplers give with a posterior mean instead of the mode.
    Tweedie(ProxSampler),
}

/// (name, sampler) for every sampler in the comparison.
pub fn all_samplers() -> Vec<(&'static str, ToySampler)> {
    vec![
        // As the reference experiment: plain Euler–Maruyama integrates to t = 0 with noise on every step.
        (
            "score-em",
            ToySampler::Score(ScoreSampler::EulerMaruyama {
                eps_t: 0.0,
                last_noise: true,
            }),
        ),
        (
            "score-em-denoise-1e-3",
            ToySampler::Score(ScoreSampler::EulerMaruyamaDenoise { eps_t: 1e-3 }),
        ),
        (
            "score-em-denoise-1e-5",
            ToySampler::Score(ScoreSampler::EulerMaruyamaDenoise { eps_t: 1e-5 }),
        ),
        (
            "score-ode",
            ToySampler::Score(ScoreSampler::ProbabilityFlow { eps_t: 1e-3 }),
        ),
        ("prox-hybrid", ToySampler::Prox(ProxSampler::Hybrid)),
        ("prox-backward", ToySampler::Prox(ProxSampler::Backward)),
    ]
}

/// Samplers that can be named but are not part of the comparison ("all"): the ProxDM samplers
/// with the MMSE denoiser of the score in place of the prox.
pub fn mmse_samplers() -> Vec<(&'static str, ToySampler)> {
    vec![
        ("tweedie-hybrid", ToySampler::Tweedie(ProxSampler::Hybrid)),
        (
            "tweedie-backward",
            ToySampler::Tweedie(ProxSampler::Backward),
        ),
    ]
}

/// One cell of the table.
#[derive(Clone, Debug)]
pub struct ToyResult {
    pub sampler: String,
    pub steps: usize,
    /// `None` where the sampler is undefined (backward with γ ≥ 2).
    pub w1: Option<f64>,
    pub w2: Option<f64>,
    /// Prox solves that did not reach the tolerance (0 for score samplers).
    pub unconverged: usize,
    pub samples: Vec<f32>,
}

/// Runs every (sampler, steps) pair with `n` samples from the same x_T (seed). With `lpn`, every
/// prox sampler runs a second time with the learned proximal network in place of the oracle
/// (rows `lpn-hybrid`, `lpn-backward`).
#[allow(clippy::too_many_arguments)]
pub fn run(
    engine: &Engine,
    points: &[[f64; 2]],
    samplers: &[(&str, ToySampler)],
    steps: &[usize],
    n: usize,
    seed: u64,
    lpn: Option<&LpnNetwork<'_>>,
    mut progress: impl FnMut(&str, usize),
) -> Result<Vec<ToyResult>> {
    let sde = Sde::default();
    let flat: Vec<f32> = points
        .iter()
        .flat_map(|p| [p[0] as f32, p[1] as f32])
        .collect();
    let target: Vec<f64> = points.iter().flat_map(|p| *p).collect();
    let mix = Mixture::new(sde, Tensor::from_slice(engine, &[points.len(), 2], &flat)?);
    let mut out = Vec::new();
    let mut runs: Vec<(String, ToySampler, bool)> = samplers
        .iter()
        .map(|&(name, s)| (name.to_string(), s, false))
        .collect();
    if lpn.is_some() {
        for &(name, s) in samplers {
            if let ToySampler::Prox(_) = s {
                runs.push((name.replacen("prox", "lpn", 1), s, true));
            }
        }
    }
    for (name, s, learned) in &runs {
        let name = name.as_str();
        for &k in steps {
            progress(name, k);
            let x_t = initial_noise(engine, &[n, 2], seed)?;
            let oracle: &dyn ProxOracle = match (learned, lpn) {
                (true, Some(l)) => l,
                _ => &mix,
            };
            let x = match *s {
                ToySampler::Score(kind) => Some(sample_score(&mix, &sde, kind, k, x_t, seed)?),
                ToySampler::Prox(ProxSampler::Backward)
                | ToySampler::Tweedie(ProxSampler::Backward)
                    if max_gamma(&sde, k) >= 2.0 =>
                {
                    None
                }
                ToySampler::Prox(kind) => Some(sample_prox(oracle, &sde, kind, k, x_t, seed)?),
                ToySampler::Tweedie(kind) => {
                    let mmse = Tweedie { score: &mix, sde };
                    Some(sample_prox(&mmse, &sde, kind, k, x_t, seed)?)
                }
            };
            let (unconverged, _) = mix.take_unconverged()?;
            let (w1, w2, samples) = match x {
                Some(x) => {
                    let v = x.to_vec()?;
                    let xs: Vec<f64> = v.iter().map(|&a| a as f64).collect();
                    (
                        Some(wasserstein(&xs, &target, 2, 1)?),
                        Some(wasserstein(&xs, &target, 2, 2)?),
                        v,
                    )
                }
                None => (None, None, Vec::new()),
            };
            out.push(ToyResult {
                sampler: name.to_string(),
                steps: k,
                w1,
                w2,
                unconverged,
                samples,
            });
        }
    }
    Ok(out)
}

/// The W2 (or W1) table as text: one row per sampler, one column per step count.
pub fn table(results: &[ToyResult], steps: &[usize], w2: bool) -> String {
    let mut s = format!("{:<24}", if w2 { "W2" } else { "W1" });
    for k in steps {
        s.push_str(&format!("{:>9}", format!("N={k}")));
    }
    s.push('\n');
    let mut names: Vec<&str> = Vec::new();
    for r in results {
        if !names.contains(&r.sampler.as_str()) {
            names.push(&r.sampler);
        }
    }
    for name in names {
        s.push_str(&format!("{name:<24}"));
        for k in steps {
            let cell = results.iter().find(|r| r.sampler == name && r.steps == *k);
            let v = cell.and_then(|r| if w2 { r.w2 } else { r.w1 });
            s.push_str(&match v {
                Some(v) => format!("{v:>9.4}"),
                None => format!("{:>9}", "—"),
            });
        }
        s.push('\n');
    }
    s
}

/// CSV of every result: sampler,steps,w1,w2,unconverged_prox.
pub fn csv(results: &[ToyResult]) -> String {
    let mut s = "sampler,steps,w1,w2,unconverged_prox\n".to_string();
    for r in results {
        let f = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
        s.push_str(&format!(
            "{},{},{},{},{}\n",
            r.sampler,
            r.steps,
            f(r.w1),
            f(r.w2),
            r.unconverged
        ));
    }
    s
}

/// The figure: the target and each sampler's samples at the smallest step count, then W2
/// against steps for every sampler (log scale).
pub fn figure(
    points: &[[f64; 2]],
    results: &[ToyResult],
    steps: &[usize],
    path: &Path,
) -> Result<()> {
    use crate::io::plot::{Canvas, PALETTE};
    let k0 = *steps.iter().min().unwrap_or(&0);
    let mut names: Vec<&str> = Vec::new();
    for r in results {
        if !names.contains(&r.sampler.as_str()) {
            names.push(&r.sampler);
        }
    }
    let panel = 240i64;
    let cols = names.len() as i64 + 1;
    let chart_h = 380i64;
    let (w, h) = ((cols * panel) as usize, (panel + 40 + chart_h) as usize);
    let mut c = Canvas::new(w, h, [255, 255, 255]);
    let black = [0, 0, 0];
    let grey = [200, 200, 200];
    // Common scatter window: the target's bounding box, enlarged by 30%.
    let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
    for p in points {
        for d in 0..2 {
            lo[d] = lo[d].min(p[d]);
            hi[d] = hi[d].max(p[d]);
        }
    }
    let span = (hi[0] - lo[0]).max(hi[1] - lo[1]).max(1e-6) * 1.3;
    let mid = [(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0];
    let to_px = |p: [f64; 2], ox: i64| -> (f64, f64) {
        let s = (panel - 20) as f64 / span;
        (
            ox as f64 + 10.0 + (p[0] - mid[0] + span / 2.0) * s,
            30.0 + (mid[1] - p[1] + span / 2.0) * s,
        )
    };
    let frame = |c: &mut Canvas, ox: i64| {
        c.rect(ox + 10, 30, panel - 20, 1, grey);
        c.rect(ox + 10, 30 + panel - 20, panel - 20, 1, grey);
        c.rect(ox + 10, 30, 1, panel - 20, grey);
        c.rect(ox + panel - 10, 30, 1, panel - 20, grey);
    };
    frame(&mut c, 0);
    c.text(10, 10, "TARGET", 2, black);
    for p in points {
        let (x, y) = to_px(*p, 0);
        c.dot(x, y, 2, black);
    }
    for (k, name) in names.iter().enumerate() {
        let ox = (k as i64 + 1) * panel;
        frame(&mut c, ox);
        let label = format!("{} N={k0}", name.replace("score-em-denoise", "em-dn"));
        c.text(
            ox + 10,
            10,
            &label,
            if Canvas::text_width(&label, 2) < panel - 12 {
                2
            } else {
                1
            },
            PALETTE[k % 8],
        );
        if let Some(r) = results.iter().find(|r| r.sampler == *name && r.steps == k0) {
            for q in r.samples.chunks(2) {
                let (x, y) = to_px([q[0] as f64, q[1] as f64], ox);
                if x > (ox + 10) as f64
                    && x < (ox + panel - 10) as f64
                    && y > 30.0
                    && y < (30 + panel - 20) as f64
                {
                    c.dot(x, y, 1, PALETTE[k % 8]);
                }
            }
            if r.w2.is_none() {
                c.text(ox + 40, 30 + panel / 2 - 10, "UNDEFINED", 2, black);
            }
        }
    }
    // W2 against steps, log10 y.
    let series: Vec<(String, Vec<(f64, f64)>)> = names
        .iter()
        .map(|name| {
            let pts = results
                .iter()
                .filter(|r| r.sampler == *name)
                .filter_map(|r| r.w2.map(|v| (r.steps as f64, v)))
                .collect();
            (name.to_string(), pts)
        })
        .collect();
    let area = (80i64, panel + 60, w as i64 - 80 - 340, chart_h - 90);
    let ticks: Vec<f64> = steps.iter().map(|&s| s as f64).collect();
    c.log_chart(
        area,
        &series,
        &ticks,
        "STEPS N",
        "W2 TO THE TARGET (LOG SCALE)",
    );
    c.save(path)
}
