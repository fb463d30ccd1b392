//! Models: the DDPM UNet (score and prox networks), the learned proximal network (LPN) and the
//! MNIST classifier of the metric.

pub mod classifier;
pub mod deepen;
pub mod lpn;
pub mod unet;

pub use unet::{Model, ModelConfig, ModelKind, SdeConfig, Skip, UNetConfig};
