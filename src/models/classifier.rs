//! The small MNIST classifier behind the quality metric: its penultimate features give a
//! Fréchet distance between generated and real images (an FID for MNIST), its softmax the
//! confidence and class histogram of samples.
//!
//! 32×32×1 → conv 3×3 (32) → GN+SiLU → conv 3×3 stride 2 (64, 16×16) → GN+SiLU →
//! conv 3×3 stride 2 (64, 8×8) → GN+SiLU → flatten → linear 4096→128 → SiLU (the features)
//! → linear 128→10 (the logits). 16 MFLOP per image.

use crate::error::{Error, Result};
use crate::nn::{Backend, Conv2d, GroupNorm, Linear, ParamBuilder};

/// Width of the feature vector the metric compares.
pub const FEATURES: usize = 128;
/// Classes (digits).
pub const CLASSES: usize = 10;

/// Parameter indices of the classifier's layers.
#[derive(Clone, Debug)]
pub struct Classifier {
    convs: [Conv2d; 3],
    norms: [GroupNorm; 3],
    fc1: Linear,
    fc2: Linear,
}

impl Classifier {
    /// The layers and their freshly initialised parameters.
    pub fn build(seed: u64) -> (Classifier, ParamBuilder) {
        let mut pb = ParamBuilder::new(seed);
        let convs = [
            Conv2d::new(&mut pb, "conv1", 1, 32, 3, 1, 1, 1.0),
            Conv2d::new(&mut pb, "conv2", 32, 64, 3, 2, 1, 1.0),
            Conv2d::new(&mut pb, "conv3", 64, 64, 3, 2, 1, 1.0),
        ];
        let norms = [
            GroupNorm::new(&mut pb, "norm1", 32),
            GroupNorm::new(&mut pb, "norm2", 64),
            GroupNorm::new(&mut pb, "norm3", 64),
        ];
        let fc1 = Linear::new(&mut pb, "fc1", 64 * 8 * 8, FEATURES);
        let fc2 = Linear::new(&mut pb, "fc2", FEATURES, CLASSES);
        (
            Classifier {
                convs,
                norms,
                fc1,
                fc2,
            },
            pb,
        )
    }

    /// The (N, 128) features of (N, 1, 32, 32) images in [-1, 1].
    pub fn features<B: Backend>(&self, be: &B, p: &[B::T], x: &B::T) -> Result<B::T> {
        let s = be.shape(x).to_vec();
        if s.len() != 4 || s[1] != 1 || s[2] != 32 || s[3] != 32 {
            return Err(Error::shape(
                "classifier",
                format!("images {s:?} must be (N, 1, 32, 32)"),
            ));
        }
        let mut h = x.clone();
        for (conv, norm) in self.convs.iter().zip(&self.norms) {
            h = norm.forward_silu(be, p, &conv.forward(be, p, &h)?)?;
        }
        let h = be.reshape(&h, &[s[0], 64 * 8 * 8])?;
        be.silu(&self.fc1.forward(be, p, &h)?)
    }

    /// The (N, 10) logits of the features.
    pub fn logits<B: Backend>(&self, be: &B, p: &[B::T], features: &B::T) -> Result<B::T> {
        self.fc2.forward(be, p, features)
    }
}
