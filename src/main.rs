//! The `proxdm` command line: argument parsing only; the work is in `proxdm::cli`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let request = AdapterRequest::default().with_overrides(cli.backend, cli.adapter);
    match cli.command {
        Command::Info => print!("{}", proxdm::cli::info::report(&request)?),
        Command::Smoke => {
            let engine = proxdm::Engine::with_request(&request)?;
            print!("{}", proxdm::cli::smoke::run(&engine)?);
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
