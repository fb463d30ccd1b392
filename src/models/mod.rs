//! Models: the DDPM UNet (score and prox networks).

pub mod unet;

pub use unet::{Model, ModelConfig, ModelKind, SdeConfig, UNetConfig};
