//! The `proxdm` command line: argument parsing only; the work is in `proxdm::cli`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use proxdm::cli::apply;
use proxdm::engine::AdapterRequest;

#[derive(Parser)]
#[command(
    name = "proxdm",
    version,
    about = "Proximal Diffusion Models on a hand-written wgpu engine"
)]
struct Cli {
    /// GPU back end: vulkan, metal, dx12 or gl (default: the best adapter of any back end).
    #[arg(long, global = true, env = "PROXDM_BACKEND")]
    backend: Option<String>,
    /// Use the adapter whose name contains this text (case-insensitive), e.g. "llvmpipe".
    #[arg(long, global = true, env = "PROXDM_ADAPTER")]
    adapter: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every adapter with back end, device type, driver, limits and optional features;
    /// the one proxdm would use is marked with '*'.
    Info,
    /// Run a small GPU computation (matmul, conv2d, group norm, attention, noise) and check it
    /// against the CPU reference.
    Smoke,
    /// Write a freshly initialised model (config in TOML) to a safetensors file.
    Init {
        /// Model config (TOML): kind = "score" | "prox", [unet] and [sde] tables.
        #[arg(long)]
        config: PathBuf,
        /// Output weights file (.safetensors).
        #[arg(long)]
        out: PathBuf,
        /// Initialisation seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Apply a prox network: y ↦ prox_{−λ ln p_t}(y) (MAP denoising), for a batch in .npy.
    /// Also takes LPN weights: f = ∇ψ, the exact prox of the LPN's learned regulariser.
    Prox {
        /// Prox-network or LPN weights (.safetensors).
        #[arg(long)]
        weights: PathBuf,
        /// Input batch, float32 .npy of shape (N, C, H, W) (an MLP LPN: (N, d)), images
        /// scaled to [-1, 1].
        #[arg(long)]
        input: PathBuf,
        /// Diffusion time t in [0, 1] (not for an LPN denoiser).
        #[arg(long)]
        t: Option<f32>,
        /// Prox weight λ > 0 (not for an LPN denoiser).
        #[arg(long = "lambda")]
        lambda: Option<f32>,
        /// Output .npy, same shape as the input.
        #[arg(long)]
        out: PathBuf,
        /// Model config for weight files that carry none (e.g. converted from the reference).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Samples per GPU batch.
        #[arg(long, default_value_t = 64)]
        batch: usize,
    },
    /// Apply a score network: x ↦ ∇ ln p_t(x), for a batch in .npy.
    Score {
        /// Score-network weights (.safetensors).
        #[arg(long)]
        weights: PathBuf,
        /// Input batch, float32 .npy of shape (N, C, H, W).
        #[arg(long)]
        input: PathBuf,
        /// Diffusion time t in (0, 1].
        #[arg(long)]
        t: f32,
        /// Output .npy, same shape as the input.
        #[arg(long)]
        out: PathBuf,
        /// Model config for weight files that carry none.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Samples per GPU batch.
        #[arg(long, default_value_t = 64)]
        batch: usize,
    },
    /// The paper's 2D oracle experiment: every sampler with the exact score or the oracle prox
    /// of a mixture of Diracs, W1/W2 to the target against the number of steps.
    Toy(proxdm::cli::toy::ToyArgs),
    /// Train a ProxDM (or score) UNet on MNIST or a .npy image set: checkpoints, EMA weights,
    /// a loss log; --resume continues the same schedule.
    Train(proxdm::cli::train::TrainArgs),
    /// Train the small MNIST classifier whose features and probabilities score generated
    /// digits (the Fréchet distance of `eval`); prints train and test accuracy.
    Classifier(proxdm::cli::classifier::ClassifierArgs),
    /// Score samples per sampler and step count: Fréchet distance of the classifier's
    /// features to the MNIST test set, confidence, share read as a digit, class histogram; table,
    /// CSV and plot.
    /// With --denoise: each network's denoising error at the sampler's (t, λ) instead.
    Eval(proxdm::cli::eval::EvalArgs),
    /// Draw images from noise with trained weights (the shipped MNIST ProxDM model by
    /// default) in a few steps; writes a PNG grid (and optionally .npy).
    Sample(proxdm::cli::sample::SampleArgs),
    /// Time the kernels at the UNet's shapes, the small-preset UNet (forward, training step)
    /// and sampling; medians after warm-up, in GFLOP/s, GB/s and images/s.
    Bench {
        /// Timed runs per benchmark (the median is reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Batch of the conv, group-norm, attention and model benchmarks.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Instead of the table: time every kernel of one small-preset forward and training
        /// step, each dispatch alone between device syncs, and print where the time goes.
        #[arg(long, conflicts_with = "json")]
        profile: bool,
    },
    /// Evaluate an LPN's learned regulariser R(x) (up to a constant) by inverting f = ∇ψ
    /// (a convex problem per point); reports convergence.
    Prior(proxdm::cli::lpn::PriorArgs),
    /// MAP-denoise a PNG with an LPN denoiser trained at that noise level (one application of
    /// f, the prox of the learned regulariser).
    Denoise(proxdm::cli::lpn::DenoiseArgs),
    /// Average weight files of one model element-wise (a "model soup" of runs that started
    /// from the same weights, e.g. one stage trained with several seeds). Needs no GPU.
    Average {
        /// Weight files (.safetensors) of one model, at least two; a file listed twice counts
        /// twice.
        #[arg(required = true, num_args = 2..)]
        inputs: Vec<PathBuf>,
        /// Output weights file (.safetensors), written atomically; the inputs are listed in
        /// its metadata under "proxdm.averaged".
        #[arg(long)]
        out: PathBuf,
    },
    /// Deepen a UNet weight file: more ResBlocks per level, each new block starting as the
    /// identity, so the output file computes what the input did and a larger network trains on
    /// from it (`train --init`, with a config of the new depth). Needs no GPU.
    Deepen {
        /// Weight file (.safetensors) of a score or prox network, with its config.
        input: PathBuf,
        /// ResBlocks per level of the output (more than the input has).
        #[arg(long)]
        blocks: usize,
        /// Seed of the new blocks' other weights (their output convs start at zero).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output weights file (.safetensors), written atomically; the source is recorded in
        /// its metadata under "proxdm.deepened".
        #[arg(long)]
        out: PathBuf,
    },
    /// Write standard Gaussian noise (reproducible for a seed) as float32 .npy.
    Randn {
        /// Shape, comma-separated, e.g. 4,1,32,32.
        #[arg(long, value_delimiter = ',', required = true)]
        shape: Vec<usize>,
        /// Noise seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output .npy.
        #[arg(long)]
        out: PathBuf,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let request = AdapterRequest::default().with_overrides(cli.backend, cli.adapter);
    match cli.command {
        Command::Info => print!("{}", proxdm::cli::info::report(&request)?),
        Command::Smoke => {
            let engine = proxdm::Engine::with_request(&request)?;
            print!("{}", proxdm::cli::smoke::run(&engine)?);
        }
        Command::Init { config, out, seed } => {
            let engine = proxdm::Engine::with_request(&request)?;
            println!("{}", apply::init(&engine, &config, &out, seed)?);
        }
        Command::Prox {
            weights,
            input,
            t,
            lambda,
            out,
            config,
            batch,
        } => {
            let engine = proxdm::Engine::with_request(&request)?;
            if let proxdm::io::weights::Kind::Lpn(..) = proxdm::io::weights::kind(&weights)? {
                let s = proxdm::cli::lpn::prox(&engine, &weights, &input, &out, t, lambda, batch)?;
                println!("{s}");
                return Ok(());
            }
            let (Some(t), Some(lambda)) = (t, lambda) else {
                anyhow::bail!("a prox UNet needs --t and --lambda");
            };
            let what = apply::Apply::Prox { t, lambda };
            println!(
                "{}",
                apply::apply(
                    &engine,
                    &weights,
                    config.as_deref(),
                    &input,
                    &out,
                    what,
                    batch
                )?
            );
        }
        Command::Score {
            weights,
            input,
            t,
            out,
            config,
            batch,
        } => {
            let engine = proxdm::Engine::with_request(&request)?;
            let what = apply::Apply::Score { t };
            println!(
                "{}",
                apply::apply(
                    &engine,
                    &weights,
                    config.as_deref(),
                    &input,
                    &out,
                    what,
                    batch
                )?
            );
        }
        Command::Bench {
            reps,
            batch,
            json,
            profile,
        } => {
            let engine = proxdm::Engine::with_request(&request)?;
            if profile {
                print!("{}", proxdm::cli::bench::profile(&engine, batch.max(1))?);
                return Ok(());
            }
            let rows = proxdm::cli::bench::run(&engine, reps, batch.max(1))?;
            if json {
                println!("{}", proxdm::cli::bench::json(&engine, &rows));
            } else {
                print!("{}", proxdm::cli::bench::table(&engine, &rows));
            }
        }
        Command::Sample(args) => {
            let engine = proxdm::Engine::with_request(&request)?;
            print!("{}", proxdm::cli::sample::run(&engine, &args)?);
        }
        Command::Eval(args) => {
            let engine = proxdm::Engine::with_request(&request)?;
            print!("{}", proxdm::cli::eval::run(&engine, &args)?);
        }
        Command::Classifier(args) => {
            let engine = proxdm::Engine::with_request(&request)?;
            print!("{}", proxdm::cli::classifier::run(&engine, &args)?);
        }
        Command::Train(args) => {
            let engine = proxdm::Engine::with_request(&request)?;
            print!("{}", proxdm::cli::train::run(&engine, &args)?);
        }
        Command::Toy(args) => {
            let engine = proxdm::Engine::with_request(&request)?;
            print!("{}", proxdm::cli::toy::run(&engine, &args)?);
        }
        Command::Prior(args) => {
            let engine = proxdm::Engine::with_request(&request)?;
            print!("{}", proxdm::cli::lpn::prior(&engine, &args)?);
        }
        Command::Denoise(args) => {
            let engine = proxdm::Engine::with_request(&request)?;
            print!("{}", proxdm::cli::lpn::denoise(&engine, &args)?);
        }
        Command::Average { inputs, out } => println!("{}", apply::average(&inputs, &out)?),
        Command::Deepen {
            input,
            blocks,
            seed,
            out,
        } => println!("{}", apply::deepen(&input, blocks, seed, &out)?),
        Command::Randn { shape, seed, out } => {
            let engine = proxdm::Engine::with_request(&request)?;
            println!("{}", apply::randn(&engine, &shape, seed, &out)?);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
