//! The method: the VP SDE, score and ProxDM samplers, the oracles they call, and training.

pub mod metric;
pub mod oracles;
pub mod ot;
pub mod samplers;
pub mod toy;
pub mod train;

pub use crate::models::SdeConfig as Sde;
