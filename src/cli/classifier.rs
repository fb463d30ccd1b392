//! `proxdm classifier`: trains the MNIST classifier behind the quality metric.

use std::path::PathBuf;
use std::time::Instant;

use crate::diffusion::metric::{accuracy, train_classifier};
use crate::engine::Engine;
use crate::error::Result;
use crate::io::datasets::{self, Split};

/// Everything `proxdm classifier` takes.
#[derive(clap::Args, Debug)]
pub struct ClassifierArgs {
    /// Directory of the MNIST IDX files (train split; the test split, when present, is scored).
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write the classifier (safetensors).
    #[arg(long, default_value = "weights/mnist-classifier.safetensors")]
    pub out: PathBuf,
    /// Passes over the training images.
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Seeds the initial weights and the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Trains, scores on the test split, writes the weights; returns a summary.
pub fn run(engine: &Engine, args: &ClassifierArgs) -> Result<String> {
    let train = datasets::mnist(&args.data, Split::Train)?;
    let start = Instant::now();
    let steps = args.epochs * train.len().div_ceil(64);
    let bar = indicatif::ProgressBar::new(steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    // Without a terminal (a background run) the bar is hidden: log every 100 steps instead.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let scorer = train_classifier(
        engine,
        &train,
        args.epochs,
        args.seed,
        |epoch, step, loss| {
            bar.set_position(step as u64);
            bar.set_message(format!("epoch {} loss {loss:.4}", epoch + 1));
            if !tty && step % 100 == 0 {
                eprintln!(
                    "[classifier] step {step}/{steps} epoch {} loss {loss:.4}",
                    epoch + 1
                );
            }
        },
    )?;
    bar.finish_and_clear();
    scorer.save(&args.out)?;
    let mut out = format!(
        "trained {} epochs on {} images in {:.0} s -> {}\n",
        args.epochs,
        train.len(),
        start.elapsed().as_secs_f64(),
        args.out.display()
    );
    let (_, train_probs) = scorer.evaluate(engine, &train.data, 256)?;
    out += &format!(
        "train accuracy {:.4}\n",
        accuracy(&train_probs, train.labels.as_deref().unwrap_or(&[]))
    );
    if let Ok(test) = datasets::mnist(&args.data, Split::Test) {
        let (_, probs) = scorer.evaluate(engine, &test.data, 256)?;
        out += &format!(
            "test accuracy {:.4} ({} images)\n",
            accuracy(&probs, test.labels.as_deref().unwrap_or(&[])),
            test.len()
        );
    }
    Ok(out)
}
