//! `proxdm train`: a run directory with a checkpoint, the EMA weights and a loss log.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::diffusion::train::{RunConfig, Trainer};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::io::datasets;
use crate::ops::loss::Loss;

/// Everything `proxdm train` takes.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Run config (TOML): the model (kind, [unet], [sde]) and the [train] schedule; see
    /// configs/mnist-small.toml. Not needed with --resume (the checkpoint carries it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Training images: a directory of the MNIST IDX files (gzipped or not), a directory of
    /// PNG images of one size (grey → 1 channel, colour → 3), or a .npy file of images in
    /// [-1, 1], (N, H, W) or (N, C, H, W); for a 2D LPN, `toy:NAME` (the 200 points of a
    /// built-in `proxdm toy` target: swissroll, moons, rings, checkerboard).
    #[arg(long)]
    pub data: PathBuf,
    /// Run directory: checkpoint.safetensors (weights, optimiser, EMA, step),
    /// model.safetensors (the EMA weights, what `proxdm sample` loads), log.csv.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its checkpoint, with the same schedule.
    #[arg(long, conflicts_with = "init")]
    pub resume: bool,
    /// Start a new run from these weights (an earlier run's model.safetensors, or a shipped
    /// file) instead of the seed's initialisation: the weights and their EMA begin there, the
    /// optimiser and the --config schedule start afresh. The file's network must be the
    /// config's (the dropout rate may differ: it holds no weights). For training on past a
    /// finished run, as a new stage: give the stage its own [train] seed (else it replays the
    /// first stage's batches and noise) and a few hundred steps of `warmup`.
    #[arg(long, value_name = "WEIGHTS")]
    pub init: Option<PathBuf>,
    /// Stop after this many steps of this invocation (the schedule still spans [train] iters);
    /// for running a long schedule in stages.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// No progress bar (one log line per checkpoint instead).
    #[arg(long)]
    pub quiet: bool,
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source: e,
    }
}

fn loss_name(l: Loss) -> (&'static str, f32) {
    match l {
        Loss::L1 => ("l1", 0.0),
        Loss::Mse => ("mse", 0.0),
        Loss::ProxMatch { zeta } => ("pm", zeta),
        Loss::CrossEntropy => ("ce", 0.0),
    }
}

/// Runs (or resumes) training; returns a summary line.
pub fn run(engine: &Engine, args: &TrainArgs) -> Result<String> {
    std::fs::create_dir_all(&args.out).map_err(|e| io_err(&args.out, e))?;
    let ckpt = args.out.join("checkpoint.safetensors");
    let log_path = args.out.join("log.csv");
    eprintln!("[train] reading {}", args.data.display());
    let data = match args.data.to_str().and_then(|s| s.strip_prefix("toy:")) {
        // The 200 points of a built-in 2D target (seed 0, as `proxdm toy`), as (N, 2, 1, 1).
        Some(name) => {
            let pts = crate::diffusion::toy::dataset(name, 200, 0)?;
            datasets::Images {
                shape: [pts.len(), 2, 1, 1],
                data: pts
                    .iter()
                    .flat_map(|p| [p[0] as f32, p[1] as f32])
                    .collect(),
                labels: None,
            }
        }
        None => datasets::open(&args.data)?,
    };
    let mut tr = if args.resume {
        if !ckpt.is_file() {
            return Err(Error::Config(format!(
                "--resume: no checkpoint at {}; start the run without --resume",
                ckpt.display()
            )));
        }
        let tr = Trainer::resume(engine, &ckpt, &data)?;
        if let Some(c) = &args.config
            && RunConfig::read(c)? != tr.cfg
        {
            return Err(Error::Config(format!(
                "--config {} differs from the run's config in {}; a resumed run keeps its \
                 config (drop --config)",
                c.display(),
                ckpt.display()
            )));
        }
        // Keep the log consistent with the checkpoint: drop rows after its step.
        let kept: Vec<String> = std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.split(',')
                    .next()
                    .and_then(|s| s.parse::<usize>().ok())
                    .is_none_or(|i| i <= tr.iter)
            })
            .map(str::to_string)
            .collect();
        crate::io::write_atomic(&log_path, (kept.join("\n") + "\n").as_bytes())?;
        eprintln!(
            "[train] resuming at step {} of {}",
            tr.iter, tr.cfg.train.iters
        );
        tr
    } else {
        let Some(c) = &args.config else {
            return Err(Error::Config(
                "--config is required to start a run (or pass --resume)".into(),
            ));
        };
        if ckpt.exists() {
            return Err(Error::Config(format!(
                "{} exists: pass --resume to continue that run, or choose another --out",
                ckpt.display()
            )));
        }
        let cfg = RunConfig::read(c)?;
        crate::io::write_atomic(
            &args.out.join("config.toml"),
            toml::to_string(&cfg).expect("serialises").as_bytes(),
        )?;
        crate::io::write_atomic(&log_path, b"step,loss,loss_kind,zeta,lr,images_per_s\n")?;
        let mut tr = Trainer::new(engine, cfg, &data)?;
        if let Some(w) = &args.init {
            tr.init_from(w)?;
            eprintln!("[train] starting from the weights in {}", w.display());
        }
        tr
    };
    let total = tr.cfg.train.iters;
    let stop = args.max_steps.map_or(total, |m| (tr.iter + m).min(total));
    let flops = tr.model.forward_flops(data.shape[2])?;
    eprintln!(
        "[train] {} images {:?}, {:?} model ({:.2} GFLOP per image forward), batch {}, steps {}..{} of {}",
        data.len(),
        &data.shape[1..],
        tr.cfg.kind,
        flops / 1e9,
        tr.cfg.train.batch,
        tr.iter,
        stop,
        total
    );
    let batch = tr.cfg.train.batch;
    if tr.micro < batch {
        let why = crate::diffusion::train::micro_batch_reason(
            tr.cfg.train.micro_batch,
            tr.binding_fit,
            tr.micro,
            engine.max_binding(),
        );
        eprintln!(
            "[train] each step's {batch} images go through in {} micro-batches of at most {} ({why}); \
             their gradients are summed before the update",
            batch.div_ceil(tr.micro),
            tr.micro
        );
    }
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(total as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .expect("valid template"),
        );
        b.set_position(tr.iter as u64);
        b
    };
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(&log_path)
        .map_err(|e| io_err(&log_path, e))?;
    let every = tr.cfg.train.checkpoint_every;
    let start = Instant::now();
    let first = tr.iter;
    let mut last = None;
    while tr.iter < stop {
        let t0 = Instant::now();
        let s = tr.step()?;
        let ips = tr.cfg.train.batch as f64 / t0.elapsed().as_secs_f64();
        let (kind, zeta) = loss_name(s.kind);
        writeln!(
            log,
            "{},{:.6},{kind},{zeta},{:e},{ips:.2}",
            s.iter, s.loss, s.lr
        )
        .map_err(|e| io_err(&log_path, e))?;
        bar.set_position(s.iter as u64);
        bar.set_message(format!(
            "loss {:.4} ({kind}{}) lr {:.0e} {ips:.1} img/s",
            s.loss,
            if zeta > 0.0 {
                format!(" ζ={zeta}")
            } else {
                String::new()
            },
            s.lr
        ));
        if s.iter % every == 0 || s.iter == stop {
            tr.save_checkpoint(&ckpt)?;
            tr.save_model(&args.out.join("model.safetensors"))?;
            if args.quiet {
                eprintln!(
                    "[train] step {} loss {:.4} ({kind}) checkpoint written",
                    s.iter, s.loss
                );
            }
        }
        last = Some(s);
    }
    bar.finish_and_clear();
    let done = tr.iter - first;
    Ok(match last {
        Some(s) => format!(
            "trained steps {first}..{} of {total} in {:.0} s ({:.2} images/s); last loss {:.4}; \
             checkpoint {} and EMA weights {}\n",
            s.iter,
            start.elapsed().as_secs_f64(),
            (done * tr.cfg.train.batch) as f64 / start.elapsed().as_secs_f64(),
            s.loss,
            ckpt.display(),
            args.out.join("model.safetensors").display()
        ),
        None => {
            // Re-export the weights from the checkpoint (e.g. after an upgrade of the export).
            tr.save_model(&args.out.join("model.safetensors"))?;
            format!(
                "nothing to train: the run is at step {} of {total}; exported weights {} \
                 rewritten from the checkpoint\n",
                tr.iter,
                args.out.join("model.safetensors").display()
            )
        }
    })
}
