//! The LPN commands: `prox` with LPN weights, `prior` (the learned regulariser R(x)) and
//! `denoise` (MAP denoising of a PNG with an LPN trained at that noise level).

use std::path::{Path, PathBuf};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::graph::{Graph, ParamStore};
use crate::io::image::{Image, read_png, write_png};
use crate::io::{npy, weights};
use crate::models::lpn::Lpn;

/// (t, λ) for a conditioned LPN (both required), nothing for a denoiser.
fn cond_of(lpn: &Lpn, t: Option<f32>, lambda: Option<f32>) -> Result<Option<(f32, f32)>> {
    match (lpn.config.cond, t, lambda) {
        (true, Some(t), Some(l)) if (0.0..=1.0).contains(&t) && l > 0.0 => Ok(Some((t, l))),
        (true, Some(t), Some(l)) => Err(Error::Config(format!(
            "need 0 ≤ t ≤ 1 and λ > 0, got t = {t}, λ = {l}"
        ))),
        (true, _, _) => Err(Error::Config(
            "this LPN is conditioned on (t, λ) (a ProxDM prox network): pass --t and --lambda"
                .into(),
        )),
        (false, None, None) => Ok(None),
        (false, _, _) => Err(Error::Config(
            "this LPN is a denoiser (not conditioned on t, λ): drop --t and --lambda".into(),
        )),
    }
}

/// The `.npy` batch at `input`, checked against the LPN's input shape.
fn read_batch(lpn: &Lpn, input: &Path) -> Result<npy::Array> {
    let x = npy::read(input)?;
    let n = x.shape.first().copied().unwrap_or(0);
    if n == 0 || x.shape != lpn.config.input_shape(n) {
        return Err(Error::Format {
            path: input.display().to_string(),
            detail: format!(
                "array {:?} must be {:?} (N ≥ 1) for this LPN",
                x.shape,
                lpn.config.input_shape(n.max(1))
            ),
        });
    }
    Ok(x)
}

/// f(x) = ∇ψ(x) for every sample of `x`, `batch` at a time.
fn apply_f(
    engine: &Engine,
    lpn: &Lpn,
    store: &ParamStore,
    x: &npy::Array,
    cond: Option<(f32, f32)>,
    batch: usize,
) -> Result<Vec<f32>> {
    let per = lpn.config.input_len();
    let mut out = Vec::with_capacity(x.data.len());
    for chunk in x.data.chunks(per * batch.max(1)) {
        let n = chunk.len() / per;
        let g = Graph::new(engine);
        let p = store.vars(&g);
        let y = crate::tensor::Tensor::from_slice(engine, &lpn.config.input_shape(n), chunk)?;
        let (ts, ls);
        let tl = match cond {
            Some((t, l)) => {
                (ts, ls) = (vec![t; n], vec![l; n]);
                Some((&ts[..], &ls[..]))
            }
            None => None,
        };
        out.extend(lpn.prox(&g, &p, &y, tl, false)?.tensor().to_vec()?);
    }
    Ok(out)
}

/// `proxdm prox` with LPN weights.
pub fn prox(
    engine: &Engine,
    weights_path: &Path,
    input: &Path,
    out: &Path,
    t: Option<f32>,
    lambda: Option<f32>,
    batch: usize,
) -> Result<String> {
    let (lpn, store) = weights::load_lpn(weights_path, engine)?;
    let cond = cond_of(&lpn, t, lambda)?;
    let x = read_batch(&lpn, input)?;
    let y = apply_f(engine, &lpn, &store, &x, cond, batch)?;
    npy::write(
        out,
        &npy::Array {
            shape: x.shape.clone(),
            data: y,
        },
    )?;
    Ok(format!(
        "wrote {} {:?} (LPN: f = ∇ψ, the prox of its learned regulariser)",
        out.display(),
        x.shape
    ))
}

/// `proxdm prior`.
#[derive(clap::Args, Debug)]
pub struct PriorArgs {
    /// LPN weights (.safetensors).
    #[arg(long)]
    pub weights: PathBuf,
    /// Points x at which to evaluate R: float32 .npy shaped like the LPN's input, (N, d) or
    /// (N, C, H, W) in [-1, 1].
    #[arg(long)]
    pub input: PathBuf,
    /// Output .npy of shape (N): R(x) up to one additive constant (comparable across x).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the inverse y with f(y) = x (same shape as the input).
    #[arg(long)]
    pub inverse: Option<PathBuf>,
    /// Diffusion time t of a conditioned LPN.
    #[arg(long)]
    pub t: Option<f32>,
    /// Prox weight λ of a conditioned LPN.
    #[arg(long = "lambda")]
    pub lambda: Option<f32>,
    /// Convergence: RMS of f(y) − x below this.
    #[arg(long, default_value_t = 1e-4)]
    pub tol: f64,
    /// Iteration limit of the inversion.
    #[arg(long, default_value_t = 1000)]
    pub max_iters: usize,
    /// Samples solved together on the GPU.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
}

/// Evaluates R at every input; reports convergence.
pub fn prior(engine: &Engine, a: &PriorArgs) -> Result<String> {
    let (lpn, store) = weights::load_lpn(&a.weights, engine)?;
    let cond = cond_of(&lpn, a.t, a.lambda)?;
    let x = read_batch(&lpn, &a.input)?;
    let per = lpn.config.input_len();
    let (mut r, mut y, mut worst, mut conv, mut iters) = (vec![], vec![], 0.0f64, 0, 0);
    for chunk in x.data.chunks(per * a.batch.max(1)) {
        let n = chunk.len() / per;
        let p = crate::diffusion::prior::evaluate(
            engine,
            &lpn,
            &store,
            chunk,
            n,
            cond,
            a.tol,
            a.max_iters,
        )?;
        worst = p.residual.iter().fold(worst, |m, &v| m.max(v));
        conv += p.converged;
        iters = iters.max(p.iters);
        r.extend(p.r.iter().map(|&v| v as f32));
        y.extend(p.y);
    }
    let n = x.shape[0];
    npy::write(
        &a.out,
        &npy::Array {
            shape: vec![n],
            data: r.clone(),
        },
    )?;
    if let Some(path) = &a.inverse {
        npy::write(
            path,
            &npy::Array {
                shape: x.shape.clone(),
                data: y,
            },
        )?;
    }
    let mean = r.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let mut s = format!(
        "R(x) for {n} points -> {} (mean {mean:.5}, min {:.5}, max {:.5}; up to a constant)\n\
         inversion f(y) = x: {conv}/{n} converged to RMS residual ≤ {:e} in ≤ {iters} \
         iterations; largest residual {worst:.2e}\n",
        a.out.display(),
        r.iter().fold(f32::INFINITY, |m, &v| m.min(v)),
        r.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)),
        a.tol
    );
    if conv < n {
        s.push_str(&format!(
            "warning: {} point(s) did not converge: raise --max-iters or --tol; their R is \
             approximate\n",
            n - conv
        ));
    }
    Ok(s)
}

/// `proxdm denoise`.
#[derive(clap::Args, Debug)]
pub struct DenoiseArgs {
    /// LPN denoiser weights (.safetensors), trained at the noise level of the input.
    #[arg(long)]
    pub weights: PathBuf,
    /// Noisy image (PNG, grey or colour as the LPN; its size must be the LPN's).
    #[arg(long, required_unless_present = "data", conflicts_with = "data")]
    pub input: Option<PathBuf>,
    /// Instead of --input: evaluate on the MNIST test split in this directory (IDX files,
    /// centre-cropped to the LPN's size): noise of --sigma is added (seeded), the mean PSNR of
    /// the noisy and the denoised images is reported, and --out gets a grid of clean / noisy /
    /// denoised examples.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// With --data: how many test images (from the first).
    #[arg(long, default_value_t = 10000)]
    pub n: usize,
    /// Noise standard deviation of the input on the [0, 1] pixel scale (0.1 = the LPN paper's
    /// MNIST setting). Checked against what the weights were trained for.
    #[arg(long)]
    pub sigma: f32,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// Treat the input as clean: add Gaussian noise of --sigma first (seeded), write it to
    /// --noisy-out if given, and report the PSNR of the noisy and the denoised image.
    #[arg(long)]
    pub add_noise: bool,
    /// Where to write the noisy image made by --add-noise.
    #[arg(long)]
    pub noisy_out: Option<PathBuf>,
    /// Seed of the noise added by --add-noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Mean PSNR of noisy and denoised MNIST test images; a grid of examples to `a.out`.
fn denoise_test_set(
    engine: &Engine,
    lpn: &Lpn,
    store: &ParamStore,
    dir: &Path,
    a: &DenoiseArgs,
    model_sigma: f32,
) -> Result<String> {
    use crate::io::datasets::{Split, mnist};
    let c = &lpn.config;
    let test = mnist(dir, Split::Test)?;
    let [_, ch, h, w] = test.shape;
    if c.arch != crate::models::lpn::LpnArch::Conv
        || ch != c.in_ch
        || h < c.size
        || !(h - c.size).is_multiple_of(2)
    {
        return Err(Error::Config(format!(
            "MNIST images {:?} do not fit this LPN ({} channel(s), {}×{})",
            &test.shape[1..],
            c.in_ch,
            c.size,
            c.size
        )));
    }
    let n = a.n.min(test.len()).max(1);
    let idx: Vec<usize> = (0..n).collect();
    let clean = crate::diffusion::train::center_crop([n, ch, h, w], &test.gather(&idx), c.size);
    let z = crate::ops::noise::randn(engine, &[clean.len()], a.seed, 0)?.to_vec()?;
    let noisy: Vec<f32> = clean
        .iter()
        .zip(&z)
        .map(|(x, z)| x + model_sigma * z)
        .collect();
    let x = npy::Array {
        shape: c.input_shape(n),
        data: noisy.clone(),
    };
    let t0 = std::time::Instant::now();
    let out = apply_f(engine, lpn, store, &x, None, 100)?;
    let secs = t0.elapsed().as_secs_f64();
    let per = c.input_len();
    let mean = |v: &[f32]| -> f64 {
        (0..n)
            .map(|i| psnr(&clean[i * per..(i + 1) * per], &v[i * per..(i + 1) * per]))
            .sum::<f64>()
            / n as f64
    };
    let (pn, pd) = (mean(&noisy), mean(&out));
    // Grid: 8 examples per row group (clean, noisy, denoised rows).
    let k = n.min(8);
    let mut grid = Vec::with_capacity(3 * k * per);
    for src in [&clean, &noisy, &out] {
        grid.extend_from_slice(&src[..k * per]);
    }
    crate::cli::sample::write_grid_cols(&a.out, [3 * k, ch, c.size, c.size], &grid, k)?;
    Ok(format!(
        "MNIST test set, first {n} images ({}×{}), σ = {} on [0, 1] (seed {}):\n  \
         mean PSNR noisy {pn:.2} dB, denoised {pd:.2} dB ({:+.2} dB); {:.1} images/s\n  \
         grid (rows: clean, noisy, denoised) -> {}\n",
        c.size,
        c.size,
        a.sigma,
        a.seed,
        pd - pn,
        n as f64 / secs,
        a.out.display()
    ))
}

/// PSNR in dB of `b` against `a`, both in [-1, 1], on the [0, 1] scale (data range 1).
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64 / 2.0).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (1.0 / mse.max(1e-20)).log10()
}

/// The σ (on the model's [-1, 1] scale) a denoiser was trained for, from its metadata.
fn trained_sigma(trained: Option<&str>) -> Option<(f32, f32)> {
    let s = trained?.strip_prefix("denoise sigma=")?;
    match s.split_once("..") {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => s.parse().ok().map(|v| (v, v)),
    }
}

pub fn denoise(engine: &Engine, a: &DenoiseArgs) -> Result<String> {
    let weights::Kind::Lpn(_, trained) = weights::kind(&a.weights)? else {
        return Err(Error::Config(format!(
            "{} is a UNet, not an LPN: `denoise` needs LPN weights (`proxdm prox` applies a \
             prox UNet)",
            a.weights.display()
        )));
    };
    let (lpn, store) = weights::load_lpn(&a.weights, engine)?;
    if lpn.config.cond {
        return Err(Error::Config(
            "these LPN weights are conditioned on (t, λ) (a ProxDM prox network), not a \
             denoiser: use `proxdm prox --t … --lambda …`"
                .into(),
        ));
    }
    if a.sigma.is_nan() || a.sigma <= 0.0 {
        return Err(Error::Config(format!(
            "--sigma must be > 0, got {}",
            a.sigma
        )));
    }
    let mut note = String::new();
    // The model works on [-1, 1]: noise σ on [0, 1] is 2σ there.
    let model_sigma = 2.0 * a.sigma;
    match trained_sigma(trained.as_deref()) {
        Some((lo, hi)) if model_sigma < 0.9 * lo || model_sigma > 1.1 * hi => {
            note.push_str(&format!(
                "warning: these weights were trained at σ = {} on the [0, 1] scale; the \
                 result at σ = {} may be poor\n",
                if lo == hi {
                    format!("{}", lo / 2.0)
                } else {
                    format!("{}..{}", lo / 2.0, hi / 2.0)
                },
                a.sigma
            ));
        }
        _ => {}
    }
    if let Some(dir) = &a.data {
        note.push_str(&denoise_test_set(
            engine,
            &lpn,
            &store,
            dir,
            a,
            model_sigma,
        )?);
        return Ok(note);
    }
    let input = a.input.as_ref().expect("clap: --input or --data");
    let img = read_png(input)?;
    let c = &lpn.config;
    if (img.c, img.h, img.w) != (c.in_ch, c.size, c.size) {
        return Err(Error::Format {
            path: input.display().to_string(),
            detail: format!(
                "a {}×{}×{} image (channels×height×width); this LPN denoises {}×{}×{}",
                img.c, img.h, img.w, c.in_ch, c.size, c.size
            ),
        });
    }
    let clean = img.data.clone();
    let noisy = if a.add_noise {
        let z = crate::ops::noise::randn(engine, &[clean.len()], a.seed, 0)?.to_vec()?;
        let v: Vec<f32> = clean
            .iter()
            .zip(&z)
            .map(|(x, z)| x + model_sigma * z)
            .collect();
        if let Some(p) = &a.noisy_out {
            write_png(
                p,
                &Image {
                    data: v.clone(),
                    ..img.clone()
                },
            )?;
        }
        v
    } else {
        clean.clone()
    };
    let x = npy::Array {
        shape: c.input_shape(1),
        data: noisy.clone(),
    };
    let out = apply_f(engine, &lpn, &store, &x, None, 1)?;
    write_png(
        &a.out,
        &Image {
            data: out.clone(),
            ..img
        },
    )?;
    note.push_str(&format!("wrote {}\n", a.out.display()));
    if a.add_noise {
        note.push_str(&format!(
            "PSNR against the clean input: noisy {:.2} dB, denoised {:.2} dB\n",
            psnr(&clean, &noisy),
            psnr(&clean, &out)
        ));
    }
    Ok(note)
}
