//! The quality metric for generated MNIST digits: a small classifier trained here, the Fréchet
//! distance between the Gaussians fitted to its penultimate features on generated and on real
//! images (an FID for MNIST), and the classifier's confidence and class histogram of samples.

use std::collections::HashMap;
use std::path::Path;

use safetensors::SafeTensors;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::graph::{Graph, ParamStore};
use crate::io::datasets::Images;
use crate::models::classifier::{CLASSES, Classifier, FEATURES};
use crate::nn::Gpu;
use crate::nn::optim::{AdamW, Optimizer};
use crate::ops::loss::Loss;
use crate::tensor::Tensor;

use super::train::SplitMix;

/// Metadata marking a classifier file (and its architecture version).
const KIND_KEY: &str = "proxdm.classifier";
const KIND: &str = "mnist-32x32-v1";

/// A trained classifier with its parameters.
pub struct Scorer {
    pub net: Classifier,
    pub params: ParamStore,
}

impl Scorer {
    /// Loads a classifier written by [`Scorer::save`]; refuses other files with the reason.
    pub fn load(path: &Path, engine: &Engine) -> Result<Scorer> {
        let bytes = crate::io::read(path)?;
        let bad = |d: String| Error::Format {
            path: path.display().to_string(),
            detail: d,
        };
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file (or truncated): {e}")))?;
        match meta.metadata().as_ref().and_then(|m| m.get(KIND_KEY)) {
            Some(k) if k == KIND => {}
            other => {
                return Err(bad(format!(
                    "not a proxdm MNIST classifier ('{KIND_KEY}' is {other:?}, expected {KIND})"
                )));
            }
        }
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a safetensors file (or truncated): {e}")))?;
        let (net, pb) = Classifier::build(0);
        let expected: Vec<(String, Vec<usize>)> = pb
            .into_params()
            .into_iter()
            .map(|(n, s, _)| (n, s))
            .collect();
        let params = crate::io::weights::checked_tensors(path, &st, &expected, engine)?;
        Ok(Scorer { net, params })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let meta = HashMap::from([(KIND_KEY.to_string(), KIND.to_string())]);
        crate::io::write_atomic(
            path,
            &crate::io::weights::params_to_bytes(meta, &self.params)?,
        )
    }

    /// Features (N, 128) and class probabilities (N, 10) of images (N, 1, 32, 32) in [-1, 1],
    /// `batch` at a time, as f64 on the host.
    pub fn evaluate(
        &self,
        engine: &Engine,
        images: &[f32],
        batch: usize,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let m = 32 * 32;
        let n = images.len() / m;
        let mut feats = Vec::with_capacity(n * FEATURES);
        let mut probs = Vec::with_capacity(n * CLASSES);
        for start in (0..n).step_by(batch.max(1)) {
            let b = batch.min(n - start);
            let x =
                Tensor::from_slice(engine, &[b, 1, 32, 32], &images[start * m..(start + b) * m])?;
            let g = Graph::inference(engine);
            let p = self.params.vars(&g);
            let be = Gpu::inference(&g);
            let f = self.net.features(&be, &p, &g.constant(x))?;
            let z = self.net.logits(&be, &p, &f)?;
            feats.extend(f.tensor().to_vec()?.iter().map(|&v| v as f64));
            for row in z.tensor().to_vec()?.chunks(CLASSES) {
                let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let e: Vec<f64> = row.iter().map(|&v| (v as f64 - mx).exp()).collect();
                let s: f64 = e.iter().sum();
                probs.extend(e.iter().map(|v| v / s));
            }
        }
        Ok((feats, probs))
    }
}

/// Trains the classifier on `train` (with labels) for `epochs` (Adam, lr 1e-3, batch 64,
/// reshuffled each epoch from `seed`); `progress(epoch, step, loss)` is called every step.
pub fn train_classifier(
    engine: &Engine,
    train: &Images,
    epochs: usize,
    seed: u64,
    mut progress: impl FnMut(usize, usize, f32),
) -> Result<Scorer> {
    let labels = train
        .labels
        .as_ref()
        .ok_or_else(|| Error::Config("the classifier needs labelled images (MNIST)".into()))?;
    if train.shape[1..] != [1, 32, 32] {
        return Err(Error::Config(format!(
            "the classifier takes (N, 1, 32, 32) images, got {:?}",
            train.shape
        )));
    }
    let (net, pb) = Classifier::build(seed);
    let params = pb.finish(engine)?;
    let mut opt = Optimizer::new(
        &params,
        AdamW {
            lr: 1e-3,
            ..Default::default()
        },
        None,
    )?;
    let n = train.len();
    let batch = 64;
    let mut step = 0;
    for epoch in 0..epochs {
        let mut rng = SplitMix::new(seed ^ 0xc1a5 ^ ((epoch as u64) << 20));
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.below(i + 1));
        }
        for idx in order.chunks(batch) {
            let b = idx.len();
            let x = Tensor::from_slice(engine, &[b, 1, 32, 32], &train.gather(idx))?;
            let mut onehot = vec![0.0f32; b * CLASSES];
            for (r, &i) in idx.iter().enumerate() {
                onehot[r * CLASSES + labels[i] as usize] = 1.0;
            }
            let y = Tensor::from_slice(engine, &[b, CLASSES], &onehot)?;
            let g = Graph::new(engine);
            let p = params.vars(&g);
            let be = Gpu {
                graph: &g,
                dropout_seed: None,
            };
            let f = net.features(&be, &p, &g.constant(x))?;
            let z = net.logits(&be, &p, &f)?;
            let loss = g.loss(Loss::CrossEntropy, &z, &g.constant(y))?;
            let refs: Vec<_> = p.iter().collect();
            let grads = g.backward(&loss, &refs, false)?;
            opt.update(&params, &grads)?;
            step += 1;
            progress(epoch, step, loss.tensor().to_vec()?[0]);
        }
    }
    Ok(Scorer { net, params })
}

/// Fraction of `images` whose most probable class is their label.
pub fn accuracy(probs: &[f64], labels: &[u8]) -> f64 {
    let hits = probs
        .chunks(CLASSES)
        .zip(labels)
        .filter(|(p, l)| argmax(p) == **l as usize)
        .count();
    hits as f64 / labels.len().max(1) as f64
}

fn argmax(p: &[f64]) -> usize {
    (0..p.len()).fold(0, |b, i| if p[i] > p[b] { i } else { b })
}

/// Mean (d) and covariance (d × d, divided by n − 1) of n rows of width d.
pub fn mean_cov(x: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() / d;
    let mut mu = vec![0.0; d];
    for row in x.chunks(d) {
        mu.iter_mut().zip(row).for_each(|(m, v)| *m += v / n as f64);
    }
    let mut cov = vec![0.0; d * d];
    for row in x.chunks(d) {
        for i in 0..d {
            let a = row[i] - mu[i];
            for j in i..d {
                cov[i * d + j] += a * (row[j] - mu[j]);
            }
        }
    }
    let den = (n.max(2) - 1) as f64;
    for i in 0..d {
        for j in i..d {
            cov[i * d + j] /= den;
            cov[j * d + i] = cov[i * d + j];
        }
    }
    (mu, cov)
}

/// Eigenvalues and eigenvectors (columns of the returned d × d matrix) of a symmetric matrix,
/// by cyclic Jacobi rotations.
pub fn sym_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; d * d];
    (0..d).for_each(|i| v[i * d + i] = 1.0);
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j] * a[i * d + j])
            .sum();
        let scale: f64 = (0..d).map(|i| a[i * d + i] * a[i * d + i]).sum::<f64>() + off;
        if off <= 1e-24 * scale.max(1e-300) {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

/// Fréchet distance between N(μ₁, C₁) and N(μ₂, C₂):
/// ‖μ₁ − μ₂‖² + tr(C₁ + C₂ − 2 (C₁^{½} C₂ C₁^{½})^{½}).
pub fn frechet(mu1: &[f64], c1: &[f64], mu2: &[f64], c2: &[f64]) -> f64 {
    let d = mu1.len();
    // C₁^{½} = V diag(√λ) Vᵀ.
    let (l, v) = sym_eigen(c1, d);
    let mut s = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            s[i * d + j] = (0..d)
                .map(|k| v[i * d + k] * l[k].max(0.0).sqrt() * v[j * d + k])
                .sum();
        }
    }
    let mul = |a: &[f64], b: &[f64]| -> Vec<f64> {
        let mut c = vec![0.0; d * d];
        for i in 0..d {
            for k in 0..d {
                let aik = a[i * d + k];
                for j in 0..d {
                    c[i * d + j] += aik * b[k * d + j];
                }
            }
        }
        c
    };
    let m = mul(&mul(&s, c2), &s);
    let sym: Vec<f64> = (0..d * d)
        .map(|k| 0.5 * (m[k] + m[(k % d) * d + k / d]))
        .collect();
    let tr_sqrt: f64 = sym_eigen(&sym, d).0.iter().map(|x| x.max(0.0).sqrt()).sum();
    let dm: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b) * (a - b)).sum();
    let tr: f64 = (0..d).map(|i| c1[i * d + i] + c2[i * d + i]).sum();
    (dm + tr - 2.0 * tr_sqrt).max(0.0)
}

/// What the classifier says about a set of samples.
#[derive(Clone, Debug)]
pub struct SampleReport {
    /// Fréchet distance of the samples' features to the real images'.
    pub fd: f64,
    /// Mean probability of the most probable class.
    pub confidence: f64,
    /// Share of samples whose most probable class has probability ≥ [`READ_THRESHOLD`]: the
    /// samples the classifier reads as one digit.
    pub read: f64,
    /// Entropy (nats) of the predicted-class histogram; ln 10 = 2.30 when the classes are even.
    pub class_entropy: f64,
    /// Samples per predicted class.
    pub histogram: [usize; CLASSES],
}

/// The probability above which a sample counts as read as a digit (`SampleReport::read`).
pub const READ_THRESHOLD: f64 = 0.9;

/// Scores samples against the real images' feature statistics (`real` = (μ, C)).
pub fn report(feats: &[f64], probs: &[f64], real: &(Vec<f64>, Vec<f64>)) -> SampleReport {
    let (mu, cov) = mean_cov(feats, FEATURES);
    let mut histogram = [0usize; CLASSES];
    let (mut conf, mut read) = (0.0, 0usize);
    for p in probs.chunks(CLASSES) {
        let k = argmax(p);
        histogram[k] += 1;
        conf += p[k];
        read += usize::from(p[k] >= READ_THRESHOLD);
    }
    let n = (probs.len() / CLASSES).max(1) as f64;
    let class_entropy = -histogram
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| c as f64 / n * (c as f64 / n).ln())
        .sum::<f64>();
    SampleReport {
        fd: frechet(&mu, &cov, &real.0, &real.1),
        confidence: conf / n,
        read: read as f64 / n,
        class_entropy,
        histogram,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_spd(d: usize, seed: u64) -> Vec<f64> {
        let mut rng = SplitMix::new(seed);
        let a: Vec<f64> = (0..d * d).map(|_| rng.uniform() - 0.5).collect();
        let mut c = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                c[i * d + j] = (0..d).map(|k| a[i * d + k] * a[j * d + k]).sum::<f64>()
                    + if i == j { 0.1 } else { 0.0 };
            }
        }
        c
    }

    #[test]
    fn jacobi_eigenpairs_satisfy_a_v_equals_lambda_v() {
        let d = 7;
        let a = random_spd(d, 3);
        let (l, v) = sym_eigen(&a, d);
        for k in 0..d {
            for i in 0..d {
                let av: f64 = (0..d).map(|j| a[i * d + j] * v[j * d + k]).sum();
                assert!(
                    (av - l[k] * v[i * d + k]).abs() < 1e-10,
                    "pair {k}, row {i}"
                );
            }
        }
    }

    #[test]
    fn frechet_matches_the_closed_form_for_commuting_covariances() {
        // C₁ = Q D₁ Qᵀ, C₂ = Q D₂ Qᵀ: distance ‖μ₁ − μ₂‖² + Σ (√d₁ − √d₂)².
        let d = 5;
        let (_, q) = sym_eigen(&random_spd(d, 4), d);
        let (d1, d2) = ([1.0, 2.0, 0.5, 3.0, 0.1], [2.0, 0.3, 0.5, 1.0, 4.0]);
        let build = |dg: &[f64]| -> Vec<f64> {
            let mut c = vec![0.0; d * d];
            for i in 0..d {
                for j in 0..d {
                    c[i * d + j] = (0..d).map(|k| q[i * d + k] * dg[k] * q[j * d + k]).sum();
                }
            }
            c
        };
        let (mu1, mu2) = (
            vec![0.0, 1.0, 0.0, 0.0, 2.0],
            vec![1.0, 1.0, 0.0, -1.0, 2.0],
        );
        let want: f64 = 2.0
            + d1.iter()
                .zip(&d2)
                .map(|(a, b): (&f64, &f64)| (a.sqrt() - b.sqrt()).powi(2))
                .sum::<f64>();
        let got = frechet(&mu1, &build(&d1), &mu2, &build(&d2));
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        // A set against itself: 0.
        let c = random_spd(d, 5);
        assert!(frechet(&mu1, &c, &mu1, &c).abs() < 1e-9);
    }

    #[test]
    fn report_counts_classes_confidence_and_read_samples() {
        // Four samples: two read as 3 (one at 0.95, one exactly at the threshold), a 7 at 0.6 and a 0
        // at 0.5.
        let mut probs = vec![0.0; 4 * CLASSES];
        let mut put = |i: usize, k: usize, p: f64| {
            let row = &mut probs[i * CLASSES..(i + 1) * CLASSES];
            row.fill((1.0 - p) / (CLASSES - 1) as f64);
            row[k] = p;
        };
        put(0, 3, 0.95);
        put(1, 3, READ_THRESHOLD);
        put(2, 7, 0.6);
        put(3, 0, 0.5);
        let feats: Vec<f64> = (0..4 * FEATURES).map(|i| (i % 7) as f64).collect();
        let real = mean_cov(&feats, FEATURES);
        let r = report(&feats, &probs, &real);
        assert!((r.confidence - (0.95 + 0.9 + 0.6 + 0.5) / 4.0).abs() < 1e-12);
        assert_eq!(r.read, 0.5);
        let mut want = [0; CLASSES];
        (want[0], want[3], want[7]) = (1, 2, 1);
        assert_eq!(r.histogram, want);
        // Histogram shares ½, ¼, ¼: entropy −(½ ln ½ + 2 · ¼ ln ¼) = 1.5 ln 2.
        assert!((r.class_entropy - 1.5 * 2f64.ln()).abs() < 1e-12);
        assert!(r.fd.abs() < 1e-9, "the same features: {}", r.fd);
    }

    #[test]
    fn mean_and_covariance_of_rows() {
        let x = [1.0, 2.0, 3.0, 6.0, 5.0, 10.0];
        let (mu, c) = mean_cov(&x, 2);
        assert_eq!(mu, vec![3.0, 6.0]);
        assert_eq!(c, vec![4.0, 8.0, 8.0, 16.0]);
    }
}
