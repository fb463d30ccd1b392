//! The `proxdm` subcommands' logic (main.rs only parses arguments).

pub mod apply;
pub mod bench;
pub mod classifier;
pub mod eval;
pub mod info;
pub mod lpn;
pub mod sample;
pub mod smoke;
pub mod toy;
pub mod train;
