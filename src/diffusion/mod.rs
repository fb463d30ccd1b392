//! The method: the VP SDE, score and ProxDM samplers, and the oracles they call.

pub mod oracles;
pub mod ot;
pub mod samplers;
pub mod toy;

pub use crate::models::SdeConfig as Sde;
