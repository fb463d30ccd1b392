//! `proxdm sample`: images from noise with trained weights, as a PNG grid (and `.npy`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::diffusion::oracles::{Network, Tweedie};
use crate::diffusion::samplers::{
    ProxSampler, ScoreSampler, forward_noise, initial_noise, prox_tail_start, sample_prox,
    sample_prox_tail, sample_score_tail, score_tail_start,
};
use crate::diffusion::toy::ToySampler;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::io::plot::Canvas;
use crate::models::ModelKind;

/// The shipped MNIST ProxDM weights, the default of --weights.
pub const DEFAULT_WEIGHTS: &str = "weights/mnist-prox-small.safetensors";

/// Everything `proxdm sample` takes.
#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    /// Weights (safetensors with the model config in the metadata), e.g. a run's
    /// model.safetensors. Default: the shipped MNIST ProxDM weights.
    #[arg(long, default_value = DEFAULT_WEIGHTS)]
    pub weights: PathBuf,
    /// prox-hybrid or prox-backward (prox weights); score-em, score-em-denoise or score-ode
    /// (score weights); tweedie-hybrid or tweedie-backward (score weights: the prox samplers
    /// with the score network's MMSE denoiser, by Tweedie's formula, in place of the prox).
    /// Default: prox-hybrid for prox weights, score-em-denoise for score ones.
    #[arg(long)]
    pub sampler: Option<String>,
    /// Network evaluations (prox-backward needs ≥ 10).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Images to draw.
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Seed of the initial noise and of every step's noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The PNG grid to write.
    #[arg(long, default_value = "samples.png")]
    pub out: PathBuf,
    /// Also write the images as float32 .npy (N, C, H, W), values in [-1, 1].
    #[arg(long)]
    pub npy: Option<PathBuf>,
    /// Images per GPU batch (each batch's noise is seeded by --seed plus its first image's
    /// index). Lowered, with a message, when a batch's largest tensor would exceed the
    /// adapter's largest storage binding.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Image side in pixels (the UNet runs at any multiple of 2^(levels−1); MNIST models were
    /// trained at 32).
    #[arg(long, default_value_t = 32)]
    pub size: usize,
}

/// The image samplers by name; the score ones stop at t = 1e-3 (the reference's ε_t).
pub fn sampler_by_name(name: &str) -> Option<ToySampler> {
    Some(match name {
        "prox-hybrid" => ToySampler::Prox(ProxSampler::Hybrid),
        "prox-backward" => ToySampler::Prox(ProxSampler::Backward),
        "score-em" => ToySampler::Score(ScoreSampler::EulerMaruyama {
            eps_t: 1e-3,
            last_noise: false,
        }),
        "score-em-denoise" => ToySampler::Score(ScoreSampler::EulerMaruyamaDenoise { eps_t: 1e-3 }),
        "score-ode" => ToySampler::Score(ScoreSampler::ProbabilityFlow { eps_t: 1e-3 }),
        "tweedie-hybrid" => ToySampler::Tweedie(ProxSampler::Hybrid),
        "tweedie-backward" => ToySampler::Tweedie(ProxSampler::Backward),
        _ => return None,
    })
}

/// Writes images (N, 1 or 3, H, W) in [-1, 1] as a grid with 2-pixel gaps.
pub fn write_grid(path: &Path, shape: [usize; 4], data: &[f32]) -> Result<()> {
    let cols = (shape[0] as f64).sqrt().ceil().max(1.0) as usize;
    write_grid_cols(path, shape, data, cols)
}

/// [`write_grid`] with `cols` images per row.
pub fn write_grid_cols(path: &Path, shape: [usize; 4], data: &[f32], cols: usize) -> Result<()> {
    let [n, c, h, w] = shape;
    let cols = cols.max(1);
    let rows = n.div_ceil(cols);
    let gap = 2;
    let mut canvas = Canvas::new(cols * (w + gap) + gap, rows * (h + gap) + gap, [40, 40, 40]);
    let px = |v: f32| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
    for i in 0..n {
        let (ox, oy) = (gap + (i % cols) * (w + gap), gap + (i / cols) * (h + gap));
        for y in 0..h {
            for x in 0..w {
                let at = |ch: usize| data[((i * c + ch) * h + y) * w + x];
                let rgb = if c >= 3 {
                    [px(at(0)), px(at(1)), px(at(2))]
                } else {
                    [px(at(0)); 3]
                };
                canvas.set((ox + x) as i64, (oy + y) as i64, rgb);
            }
        }
    }
    canvas.save(path)
}

/// Draws the images; returns (shape, values).
pub fn draw(engine: &Engine, args: &SampleArgs) -> Result<([usize; 4], Vec<f32>)> {
    if !args.weights.is_file() {
        return Err(Error::Io {
            path: args.weights.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "weights not found; pass --weights (a run's model.safetensors) or restore the \
                 shipped weights/ directory",
            ),
        });
    }
    if let crate::io::weights::Kind::Lpn(..) = crate::io::weights::kind(&args.weights)? {
        return draw_lpn(engine, args);
    }
    let (model, params) = crate::io::weights::load(&args.weights, engine, None)?;
    let kind = model.config.kind;
    let name = args.sampler.clone().unwrap_or_else(|| {
        match kind {
            ModelKind::Prox => "prox-hybrid",
            ModelKind::Score => "score-em-denoise",
            ModelKind::Lpn => unreachable!("weights::load refuses LPN files"),
        }
        .to_string()
    });
    let sampler = sampler_by_name(&name).ok_or_else(|| {
        Error::Config(format!(
            "unknown sampler '{name}': prox-hybrid, prox-backward, score-em, score-em-denoise, \
             score-ode, tweedie-hybrid, tweedie-backward"
        ))
    })?;
    match (&sampler, kind) {
        (ToySampler::Prox(_), ModelKind::Prox)
        | (ToySampler::Score(_) | ToySampler::Tweedie(_), ModelKind::Score) => {}
        _ => {
            return Err(Error::Config(format!(
                "sampler '{name}' needs {} weights; {} holds a {kind:?} model",
                if matches!(sampler, ToySampler::Prox(_)) {
                    "prox"
                } else {
                    "score"
                },
                args.weights.display()
            )));
        }
    }
    if args.n == 0 || args.batch == 0 || args.steps == 0 {
        return Err(Error::Config(
            "--n, --batch and --steps must be positive".into(),
        ));
    }
    let c = model.config.unet.in_ch;
    let out = draw_images(
        engine, &model, &params, sampler, args.steps, args.n, args.seed, args.batch, args.size,
    )?;
    Ok(([args.n, c, args.size, args.size], out))
}

/// `n` images (N, C, size, size) from `sampler` in `steps` steps, `batch` at a time. A batch's
/// noise is seeded by `seed` plus the index of its first image: the same seed and batch give
/// the same images.
#[allow(clippy::too_many_arguments)]
pub fn draw_images(
    engine: &Engine,
    model: &crate::models::Model,
    params: &crate::graph::ParamStore,
    sampler: ToySampler,
    steps: usize,
    n: usize,
    seed: u64,
    batch: usize,
    size: usize,
) -> Result<Vec<f32>> {
    let net = Network { model, params };
    let shape = [model.config.unet.in_ch, size, size];
    let batch = fitted_batch(engine, batch, model.largest_tensor(size)?)?;
    in_batches(engine, shape, n, seed, batch, |x, s| {
        run_tail(&net, sampler, steps, steps, x, s)
    })
}

/// The last `last` of `sampler`'s `steps` steps on `net` from x (all of them when `last` =
/// `steps`).
fn run_tail(
    net: &Network<'_>,
    sampler: ToySampler,
    steps: usize,
    last: usize,
    x: crate::tensor::Tensor,
    seed: u64,
) -> Result<crate::tensor::Tensor> {
    let sde = net.model.config.sde;
    match sampler {
        ToySampler::Prox(k) => sample_prox_tail(net, &sde, k, steps, last, x, seed),
        ToySampler::Score(k) => sample_score_tail(net, &sde, k, steps, last, x, seed),
        ToySampler::Tweedie(k) => {
            let tw = Tweedie { score: net, sde };
            sample_prox_tail(&tw, &sde, k, steps, last, x, seed)
        }
    }
}

/// The last `last` of a sampler's `steps` steps, run from real images instead of from noise:
/// image i of `x0` (values in [-1, 1], `n` images of `size`²·C) is noised by the forward process
/// to where those steps begin ([`forward_noise`], a draw of p_t given the image) and the
/// sampler continues from there. What it loses against `x0` is what its last `last` steps
/// lose; with `last` = `steps` the start is t = 1 and the images are samples. Batches and
/// seeds as [`draw_images`].
#[allow(clippy::too_many_arguments)]
pub fn draw_tails(
    engine: &Engine,
    model: &crate::models::Model,
    params: &crate::graph::ParamStore,
    sampler: ToySampler,
    steps: usize,
    last: usize,
    x0: &[f32],
    seed: u64,
    batch: usize,
    size: usize,
) -> Result<Vec<f32>> {
    let net = Network { model, params };
    let sde = model.config.sde;
    let c = model.config.unet.in_ch;
    let m = c * size * size;
    if m == 0 || !x0.len().is_multiple_of(m) {
        return Err(Error::shape(
            "draw_tails",
            format!("{} values are not whole {c}×{size}×{size} images", x0.len()),
        ));
    }
    let t = match sampler {
        ToySampler::Prox(_) | ToySampler::Tweedie(_) => prox_tail_start(steps, last)?,
        ToySampler::Score(k) => score_tail_start(k, steps, last)?,
    };
    let n = x0.len() / m;
    let batch = fitted_batch(engine, batch, model.largest_tensor(size)?)?.max(1);
    let mut out = Vec::with_capacity(x0.len());
    let mut done = 0;
    while done < n {
        let b = batch.min(n - done);
        let s = seed.wrapping_add(done as u64);
        let clean = crate::tensor::Tensor::from_slice(
            engine,
            &[b, c, size, size],
            &x0[done * m..(done + b) * m],
        )?;
        let x = forward_noise(&sde, &clean, t, s)?;
        out.extend(run_tail(&net, sampler, steps, last, x, s)?.to_vec()?);
        done += b;
    }
    Ok(out)
}

/// `batch`, lowered (and evened out, as `train` does) to what the adapter holds when a batch's
/// largest tensor, `elems_per_image` f32s per image, would exceed its largest storage binding;
/// says so on stderr, since the images are then those of the lower `--batch`.
pub fn fitted_batch(engine: &Engine, batch: usize, elems_per_image: usize) -> Result<usize> {
    let max = engine.max_binding();
    let b = crate::diffusion::train::micro_batch(batch, None, 4 * elems_per_image as u64, max)?;
    if b < batch {
        eprintln!(
            "--batch {batch} lowered to {b}: {}; the images are those --batch {b} gives",
            crate::diffusion::train::micro_batch_reason(
                None,
                (max / (4 * elems_per_image as u64)) as usize,
                b,
                max
            )
        );
    }
    Ok(b)
}

/// Runs `sample` on `n` initial noises of `shape` (C, H, W), `batch` at a time; a batch's
/// noise is seeded by `seed` plus the index of its first image.
fn in_batches(
    engine: &Engine,
    shape: [usize; 3],
    n: usize,
    seed: u64,
    batch: usize,
    mut sample: impl FnMut(crate::tensor::Tensor, u64) -> Result<crate::tensor::Tensor>,
) -> Result<Vec<f32>> {
    let [c, h, w] = shape;
    let mut out = Vec::with_capacity(n * c * h * w);
    let mut done = 0;
    while done < n {
        let b = batch.max(1).min(n - done);
        let s = seed.wrapping_add(done as u64);
        let x = initial_noise(engine, &[b, c, h, w], s)?;
        out.extend(sample(x, s)?.to_vec()?);
        done += b;
    }
    Ok(out)
}

/// `sample` with a convolutional LPN conditioned on (t, λ) as the prox network (the default
/// VP SDE, β from 0.1 to 20, as it was trained).
fn draw_lpn(engine: &Engine, args: &SampleArgs) -> Result<([usize; 4], Vec<f32>)> {
    let (lpn, params) = crate::io::weights::load_lpn(&args.weights, engine)?;
    let c = &lpn.config;
    if !c.cond || c.arch != crate::models::lpn::LpnArch::Conv {
        return Err(Error::Config(format!(
            "{} is an LPN {}: `sample` needs a convolutional LPN conditioned on (t, λ) (or UNet \
             weights)",
            args.weights.display(),
            if c.cond {
                "on points, not images"
            } else {
                "denoiser (not conditioned on (t, λ)); use `proxdm denoise`"
            }
        )));
    }
    let name = args.sampler.as_deref().unwrap_or("prox-hybrid");
    let Some(ToySampler::Prox(kind)) = sampler_by_name(name) else {
        return Err(Error::Config(format!(
            "an LPN is a prox network: use --sampler prox-hybrid or prox-backward, not '{name}'"
        )));
    };
    if args.size != c.size {
        return Err(Error::Config(format!(
            "this LPN works on {0}×{0} images: pass --size {0}",
            c.size
        )));
    }
    if args.n == 0 || args.batch == 0 || args.steps == 0 {
        return Err(Error::Config(
            "--n, --batch and --steps must be positive".into(),
        ));
    }
    let net = crate::diffusion::oracles::LpnNetwork {
        lpn: &lpn,
        params: &params,
    };
    let sde = crate::models::SdeConfig::default();
    let shape = [c.in_ch, c.size, c.size];
    let batch = fitted_batch(engine, args.batch, lpn.largest_tensor()?)?;
    let out = in_batches(engine, shape, args.n, args.seed, batch, |x, s| {
        sample_prox(&net, &sde, kind, args.steps, x, s)
    })?;
    Ok(([args.n, c.in_ch, c.size, c.size], out))
}

/// Runs `proxdm sample`; returns a summary line.
pub fn run(engine: &Engine, args: &SampleArgs) -> Result<String> {
    let start = Instant::now();
    let (shape, data) = draw(engine, args)?;
    write_grid(&args.out, shape, &data)?;
    if let Some(p) = &args.npy {
        crate::io::npy::write(
            p,
            &crate::io::npy::Array {
                shape: shape.to_vec(),
                data,
            },
        )?;
    }
    Ok(format!(
        "{} images in {} steps in {:.1} s -> {}{}\n",
        shape[0],
        args.steps,
        start.elapsed().as_secs_f64(),
        args.out.display(),
        args.npy
            .as_ref()
            .map(|p| format!(" and {}", p.display()))
            .unwrap_or_default()
    ))
}
