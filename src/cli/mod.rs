//! The `proxdm` subcommands' logic (main.rs only parses arguments).

pub mod info;
pub mod smoke;
