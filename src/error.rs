//! The crate's one error type: device, shader, shape, I/O and file errors, each with a hint.

use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in proxdm, with enough context to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter at all, or none matching the user's choice.
    #[error("no usable GPU adapter: {reason}\nhint: {hint}")]
    NoAdapter { reason: String, hint: String },

    /// An adapter exists but lacks something our shaders need.
    #[error("adapter '{adapter}' cannot run proxdm's shaders: {missing}\nhint: {hint}")]
    Unsupported {
        adapter: String,
        missing: String,
        hint: String,
    },

    /// `request_device` failed.
    #[error("could not open device on adapter '{adapter}': {source}")]
    RequestDevice {
        adapter: String,
        #[source]
        source: wgpu::RequestDeviceError,
    },

    /// A WGSL shader failed to parse or validate (a bug in proxdm, reported with naga's message).
    #[error("shader '{shader}' is invalid: {message}")]
    Shader { shader: String, message: String },

    /// Validation or out-of-memory error reported by wgpu while recording or submitting work.
    #[error("GPU error: {0}")]
    Gpu(String),

    /// The device was lost (driver reset, GPU removed, or a watchdog timeout).
    #[error(
        "GPU device lost: {0}\nhint: the driver reset or the GPU was removed; rerun the command"
    )]
    DeviceLost(String),

    /// A gradient of a gradient was asked through an op whose backward is a fused kernel.
    #[error("{0}: differentiating this op's backward again is not supported")]
    NotDifferentiable(&'static str),

    /// The process-wide engine could not be opened (the message is that first error's).
    #[error("{0}")]
    Shared(String),

    /// Waiting for the GPU took longer than the timeout.
    #[error("GPU did not finish within {seconds} s (device hung or lost)")]
    Timeout { seconds: u64 },

    /// An op was given tensors whose shapes do not fit together.
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// An environment variable or option has a value proxdm does not accept.
    #[error("{0}")]
    Config(String),

    /// A file exists but its content is not what was expected.
    #[error("{path}: {detail}")]
    Format { path: String, detail: String },
}

impl Error {
    /// A shape error naming the op and describing the offending shapes.
    pub fn shape(op: &'static str, detail: impl fmt::Display) -> Self {
        Error::Shape {
            op,
            detail: detail.to_string(),
        }
    }
}
