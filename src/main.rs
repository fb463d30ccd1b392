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
    Prox {
        /// Prox-network weights (.safetensors).
        #[arg(long)]
        weights: PathBuf,
        /// Input batch, float32 .npy of shape (N, C, H, W), images scaled to [-1, 1].
        #[arg(long)]
        input: PathBuf,
        /// Diffusion time t in [0, 1].
        #[arg(long)]
        t: f32,
        /// Prox weight λ > 0.
        #[arg(long = "lambda")]
        lambda: f32,
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
    Toy {
        /// Target points from a CSV file with an `x,y` header (e.g. the Datasaurus dino).
        #[arg(long, conflicts_with = "dataset")]
        points: Option<PathBuf>,
        /// Subtracted from every coordinate of --points (the paper uses 50 for the dino).
        #[arg(long, default_value_t = 0.0)]
        offset: f64,
        /// Divides every coordinate of --points after the offset (the paper uses 50).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// A built-in target instead: swissroll, moons, rings or checkerboard (200 points).
        #[arg(long)]
        dataset: Option<String>,
        /// Samplers, comma-separated, or "all": score-em, score-em-denoise-1e-3,
        /// score-em-denoise-1e-5, score-ode, prox-hybrid, prox-backward.
        #[arg(long, value_delimiter = ',', default_value = "all")]
        samplers: Vec<String>,
        /// Step counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "5,7,10,20,30,40")]
        steps: Vec<usize>,
        /// Samples per sampler and step count.
        #[arg(long, default_value_t = 1000)]
        samples: usize,
        /// Seed of the initial noise and of every step's noise (and of built-in datasets).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write the W1/W2 table as CSV here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Draw the figure (target, samples at the fewest steps, W2 against steps) as PNG here.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Write every sampler's samples as CSV files into this directory.
        #[arg(long)]
        save_samples: Option<PathBuf>,
        /// β(0) of the VP SDE's linear schedule.
        #[arg(long, default_value_t = 0.1)]
        beta_min: f64,
        /// β(1) of the VP SDE's linear schedule.
        #[arg(long, default_value_t = 20.0)]
        beta_max: f64,
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
        Command::Toy {
            points,
            offset,
            scale,
            dataset,
            samplers,
            steps,
            samples,
            seed,
            out,
            plot,
            save_samples,
            beta_min,
            beta_max,
        } => {
            let engine = proxdm::Engine::with_request(&request)?;
            let sde = proxdm::diffusion::Sde { beta_min, beta_max };
            let args = proxdm::cli::toy::ToyArgs {
                points,
                offset,
                scale,
                dataset,
                samplers,
                steps,
                samples,
                seed,
                out,
                plot,
                save_samples,
                sde,
            };
            print!("{}", proxdm::cli::toy::run(&engine, &args)?);
        }
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
