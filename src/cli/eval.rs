//! `proxdm eval`: the quality of generated digits against the number of steps, per sampler —
//! the paper's FID-against-steps comparison in this project's metric.

use std::fmt::Write;
use std::path::PathBuf;

use crate::cli::sample::{draw_images, draw_tails, sampler_by_name};
use crate::diffusion::denoise;
use crate::diffusion::metric::{READ_THRESHOLD, SampleReport, Scorer, mean_cov, report};
use crate::diffusion::oracles::{Network, Tweedie};
use crate::diffusion::samplers::ProxOracle;
use crate::diffusion::toy::ToySampler;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::io::datasets::{self, Split};
use crate::io::plot::Canvas;
use crate::models::ModelKind;
use crate::models::classifier::FEATURES;

/// Everything `proxdm eval` takes.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Weights to evaluate, comma-separated (prox and score models may be mixed).
    #[arg(long, value_delimiter = ',', default_value = crate::cli::sample::DEFAULT_WEIGHTS)]
    pub weights: Vec<PathBuf>,
    /// The metric's classifier (written by `proxdm classifier`).
    #[arg(long, default_value = "weights/mnist-classifier.safetensors")]
    pub classifier: PathBuf,
    /// Directory of the MNIST IDX files: the test split is the reference set.
    #[arg(long)]
    pub data: PathBuf,
    /// Samplers, comma-separated, or "all" (every sampler each model can drive).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub samplers: Vec<String>,
    /// Step counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "5,10,20")]
    pub steps: Vec<usize>,
    /// Samples per sampler and step count.
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    /// Seed of the samples' noise (the same for every sampler and step count).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per GPU batch (each batch's noise is seeded by --seed plus its first image's
    /// index). Lowered, with a message, when a batch's largest tensor would exceed the
    /// adapter's largest storage binding.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Write the table as CSV here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw the Fréchet distance against steps as PNG here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Measure denoising instead of sampling: at each (t, λ) where the hybrid sampler with
    /// `--steps` steps calls its prox, noise `--n` test images (y = x_t + √λ·z) and report each
    /// network's error in predicting z — a prox network directly, a score network through
    /// Tweedie's formula (its MMSE denoiser). Needs no classifier.
    #[arg(long)]
    pub denoise: bool,
    /// Where along the trajectory quality is lost: for each K given (comma-separated, each at
    /// most the step count), run only the last K of each sampler's steps, from the first --n
    /// training images noised by the forward process to where those K steps begin, and score
    /// the results as samples (the `steps` column reads K/N). K = N is plain sampling; the
    /// real-images row is the same training images untouched, so a row's distance above it is
    /// what the last K steps lose.
    #[arg(long, value_delimiter = ',')]
    pub from_data: Vec<usize>,
}

const ALL: [&str; 7] = [
    "prox-hybrid",
    "prox-backward",
    "score-em",
    "score-em-denoise",
    "score-ode",
    "tweedie-hybrid",
    "tweedie-backward",
];

/// Runs the evaluation; returns the table.
pub fn run(engine: &Engine, args: &EvalArgs) -> Result<String> {
    if args.denoise {
        return run_denoise(engine, args);
    }
    if !args.from_data.is_empty() {
        if args.plot.is_some() {
            return Err(Error::Config(
                "--plot draws the Fréchet distance against steps; it does not go with \
                 --from-data (use --out for a CSV)"
                    .into(),
            ));
        }
        if let Some(&k) = args.from_data.iter().find(|&&k| k == 0) {
            return Err(Error::Config(format!(
                "--from-data {k}: each K is a number of final steps, at least 1"
            )));
        }
    }
    let scorer = Scorer::load(&args.classifier, engine)?;
    let test = datasets::mnist(&args.data, Split::Test)?;
    eprintln!("[eval] features of {} test images", test.len());
    let (tf, tp) = scorer.evaluate(engine, &test.data, 250)?;
    let real = mean_cov(&tf, FEATURES);
    let acc = crate::diffusion::metric::accuracy(&tp, test.labels.as_deref().unwrap_or(&[]));
    let mut table = format!(
        "Fréchet distance of classifier features to the {} MNIST test images (classifier test \
         accuracy {acc:.4}); {} samples each, seed {}; read: the share of samples whose class has \
         probability ≥ {READ_THRESHOLD}\n\n{:<28} {:<18} {:>5} {:>9} {:>6} {:>6} {:>8}  histogram\n",
        test.len(),
        args.n,
        args.seed,
        "weights",
        "sampler",
        "steps",
        "FD",
        "conf",
        "read",
        "H(class)"
    );
    let mut csv =
        String::from("weights,sampler,steps,fd,confidence,read,class_entropy,histogram\n");
    let mut row = |wname: &str, name: &str, steps: &str, r: &SampleReport| {
        let hist = r
            .histogram
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            table,
            "{wname:<28} {name:<18} {steps:>5} {:>9.3} {:>6.3} {:>6.3} {:>8.3}  {hist}",
            r.fd, r.confidence, r.read, r.class_entropy
        );
        let _ = writeln!(
            csv,
            "{wname},{name},{steps},{:.6},{:.6},{:.6},{:.6},{}",
            r.fd, r.confidence, r.read, r.class_entropy, hist
        );
    };
    // The floor: n real training images, scored as the samples are (the Fréchet distance of
    // n samples from the test set's statistics is not 0 even for perfect samples).
    let train = datasets::mnist(&args.data, Split::Train)?;
    let m = 32 * 32;
    let k = args.n.min(train.len());
    let (f, p) = scorer.evaluate(engine, &train.data[..k * m], 250)?;
    row("mnist-train", "real images", "—", &report(&f, &p, &real));
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for w in &args.weights {
        let (model, params) = crate::io::weights::load(w, engine, None)?;
        let kind = model.config.kind;
        let wname = w
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let names: Vec<&str> = if args.samplers == ["all"] {
            ALL.to_vec()
        } else {
            args.samplers.iter().map(String::as_str).collect()
        };
        for name in names {
            let sampler = sampler_by_name(name)
                .ok_or_else(|| Error::Config(format!("unknown sampler '{name}'")))?;
            let fits = matches!(
                (&sampler, kind),
                (ToySampler::Prox(_), ModelKind::Prox)
                    | (
                        ToySampler::Score(_) | ToySampler::Tweedie(_),
                        ModelKind::Score
                    )
            );
            if !fits {
                continue;
            }
            let mut pts = Vec::new();
            for &steps in &args.steps {
                if name.ends_with("-backward") && steps < 10 {
                    continue; // undefined below 10 steps (some γ ≥ 2)
                }
                if !args.from_data.is_empty() {
                    for &last in args.from_data.iter().filter(|&&k| k <= steps) {
                        eprintln!(
                            "[eval] {wname} {name}: the last {last} of {steps} steps from noised training images"
                        );
                        let imgs = draw_tails(
                            engine,
                            &model,
                            &params,
                            sampler,
                            steps,
                            last,
                            &train.data[..k * m],
                            args.seed,
                            args.batch,
                            32,
                        )?;
                        let (f, p) = scorer.evaluate(engine, &imgs, 250)?;
                        row(
                            &wname,
                            name,
                            &format!("{last}/{steps}"),
                            &report(&f, &p, &real),
                        );
                    }
                    continue;
                }
                eprintln!("[eval] {wname} {name} {steps} steps");
                let imgs = draw_images(
                    engine, &model, &params, sampler, steps, args.n, args.seed, args.batch, 32,
                )?;
                let (f, p) = scorer.evaluate(engine, &imgs, 250)?;
                let r = report(&f, &p, &real);
                row(&wname, name, &steps.to_string(), &r);
                pts.push((steps as f64, r.fd));
            }
            series.push((format!("{wname} {name}"), pts));
        }
    }
    if let Some(p) = &args.out {
        crate::io::write_atomic(p, csv.as_bytes())?;
        let _ = writeln!(table, "\ntable written to {}", p.display());
    }
    if let Some(p) = &args.plot {
        let mut c = Canvas::new(900, 420, [255, 255, 255]);
        let ticks: Vec<f64> = args.steps.iter().map(|&s| s as f64).collect();
        c.log_chart(
            (80, 50, 420, 300),
            &series,
            &ticks,
            "STEPS N",
            "FRECHET DISTANCE (LOG SCALE)",
        );
        c.save(p)?;
        let _ = writeln!(table, "plot written to {}", p.display());
    }
    Ok(table)
}

/// `eval --denoise`: the denoising error of each network at each prox call of the hybrid
/// sampler's grid, on the same noised test images.
fn run_denoise(engine: &Engine, args: &EvalArgs) -> Result<String> {
    if args.plot.is_some() {
        return Err(Error::Config(
            "--plot draws the Fréchet distance against steps; it does not go with --denoise \
             (use --out for a CSV)"
                .into(),
        ));
    }
    if args.n == 0 || args.batch == 0 || args.steps.contains(&0) {
        return Err(Error::Config(
            "--n, --batch and every --steps value must be positive".into(),
        ));
    }
    let test = datasets::mnist(&args.data, Split::Test)?;
    let k = args.n.min(test.len());
    let [_, c, h, w] = test.shape;
    let x0 = crate::tensor::Tensor::from_slice(engine, &[k, c, h, w], &test.data[..k * c * h * w])?;
    let mut table = format!(
        "Denoising error at the prox calls of the hybrid sampler: y = x_t + √λ·z on {k} MNIST \
         test images (seed {}); a prox network's g(y, t, λ), or a score network's Tweedie \
         (MMSE) estimate, against z. L1 = mean |ĝ − z|, MSE = mean (ĝ − z)²; MSE|x₀ = mean \
         (ĝ − E[z | x₀, y])², the part a better network could remove, and v = (1 − α)/(1 − α \
         + λ), the part none can (MSE ≈ MSE|x₀ + v).\n\n{:<28} {:<14} {:>5} {:>7} {:>9} {:>8} \
         {:>8} {:>8} {:>8}\n",
        args.seed, "weights", "denoiser", "steps", "t", "λ", "L1", "MSE", "MSE|x₀", "v"
    );
    let mut csv = String::from("weights,denoiser,steps,t,lambda,l1,mse,mse_given_x0,v\n");
    for wpath in &args.weights {
        let (model, params) = crate::io::weights::load(wpath, engine, None)?;
        let wname = wpath
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        if model.config.unet.in_ch != c {
            return Err(Error::Config(format!(
                "{} takes {} channels; the data has {c}",
                wpath.display(),
                model.config.unet.in_ch
            )));
        }
        let sde = model.config.sde;
        let net = Network {
            model: &model,
            params: &params,
        };
        let tweedie = Tweedie { score: &net, sde };
        let (oracle, name): (&dyn ProxOracle, &str) = match model.config.kind {
            ModelKind::Prox => (&net, "prox net"),
            ModelKind::Score => (&tweedie, "score Tweedie"),
            ModelKind::Lpn => unreachable!("weights::load refuses LPN files"),
        };
        for &steps in &args.steps {
            eprintln!("[eval] {wname}: denoising at the {steps}-step grid");
            let points = crate::diffusion::samplers::prox_steps(&sde, steps);
            for r in denoise::errors(oracle, &sde, &x0, &points, args.seed, args.batch)? {
                let _ = writeln!(
                    table,
                    "{wname:<28} {name:<14} {steps:>5} {:>7.4} {:>9.5} {:>8.4} {:>8.4} {:>8.4} \
                     {:>8.4}",
                    r.t, r.lambda, r.l1, r.mse, r.mse_given_x0, r.unpredictable
                );
                let _ = writeln!(
                    csv,
                    "{wname},{name},{steps},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6}",
                    r.t, r.lambda, r.l1, r.mse, r.mse_given_x0, r.unpredictable
                );
            }
        }
    }
    if let Some(p) = &args.out {
        crate::io::write_atomic(p, csv.as_bytes())?;
        let _ = writeln!(table, "\ntable written to {}", p.display());
    }
    Ok(table)
}
