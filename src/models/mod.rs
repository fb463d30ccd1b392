//! Models: the DDPM UNet (score and prox networks) and the MNIST classifier of the metric.

pub mod classifier;
pub mod unet;

pub use unet::{Model, ModelConfig, ModelKind, SdeConfig, UNetConfig};
