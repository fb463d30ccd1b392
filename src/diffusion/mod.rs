//! The method: the VP SDE, score and ProxDM samplers, the oracles they call, training, and the
//! regulariser an LPN has learned.

pub mod denoise;
pub mod metric;
pub mod oracles;
pub mod ot;
pub mod prior;
pub mod samplers;
pub mod toy;
pub mod train;

pub use crate::models::SdeConfig as Sde;
