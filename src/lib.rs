//! proxdm: Proximal Diffusion Models and Learned Proximal Networks on a hand-written wgpu engine.
//!
//! Layers, bottom to top: [`engine`] (adapter, buffers, pipelines, command recording),
//! [`tensor`] (GPU tensors), [`ops`] (one WGSL kernel family per module, with CPU references).

pub mod cli;
pub mod diffusion;
pub mod engine;
pub mod error;
pub mod graph;
pub mod io;
pub mod models;
pub mod nn;
pub mod ops;
pub mod tensor;

pub use engine::Engine;
pub use error::{Error, Result};
pub use tensor::Tensor;
