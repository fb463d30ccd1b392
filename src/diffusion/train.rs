//! Training: the (t, λ) draw, the loss and learning-rate schedule, and the training loop with
//! atomic checkpoints that resume bit for bit.
//!
//! Prox (DESIGN §2): per example, N from the step candidates with weights ∝ log₁₀ N, Δ = 1/N,
//! t = ⌊u/Δ⌋Δ (≤ 1 − Δ), γ = B(t, t + Δ), λ = γ (hybrid) or γ/(1 − γ/2) (backward);
//! x_t = √α(t)·x₀ + √(1−α(t))·z₁, y = x_t + √λ·z₂, and the loss compares g_θ(y, t, λ) with z₂:
//! L1 for the first `l1_iters`, then proximal matching with ζ = ζ₀·decay^stage.
//! Score: t ~ U(0, 1), x_t as above, MSE between ε_θ(x_t, t) and z₁.
//! LPN (`models::lpn`), through the second-order pass: conditioned on (t, λ), the prox draws
//! above with g = (y − f(y))/√λ compared with z₂; unconditioned, a denoiser: y = x₀ + σz and
//! f(y) compared with x₀ (the LPN paper). Same L1 → proximal-matching schedule; the optimiser
//! keeps the constrained weights ≥ 0.
//!
//! Everything random in a step is a function of (seed, iteration): the batch order (a shuffle
//! per epoch), the (t, λ) draws, the Gaussian noise (Philox streams) and the dropout masks. A
//! checkpoint therefore only needs the weights, the optimiser state and the iteration.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::graph::{Graph, ParamStore};
use crate::io::datasets::Images;
use crate::models::lpn::{Lpn, LpnArch, LpnConfig};
use crate::models::{Model, ModelConfig, ModelKind, SdeConfig, UNetConfig};
use crate::nn::Gpu;
use crate::nn::optim::{AdamW, Optimizer};
use crate::ops::elementwise;
use crate::ops::loss::Loss;
use crate::ops::noise;
use crate::tensor::Tensor;

/// How the prox sampler the network is trained for discretises the reverse SDE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discretization {
    Hybrid,
    Backward,
}

/// The `[train]` section of a run config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Images per step.
    pub batch: usize,
    /// Total steps; the schedule (L1 phase, ζ stages) is laid out over them.
    pub iters: usize,
    /// Seeds the initial weights, batch order, noise, (t, λ) draws and dropout.
    pub seed: u64,
    /// Prox only: the sampler trained for.
    pub discretization: Discretization,
    /// Prox only: step counts N drawn with weights ∝ log₁₀ N (empty: the reference's,
    /// 5..1000 for hybrid, 20..1000 for backward).
    pub step_candidates: Vec<usize>,
    /// Prox only: steps of the L1 phase, then proximal matching.
    pub l1_iters: usize,
    pub zeta_start: f32,
    pub zeta_decay: f32,
    pub zeta_stages: usize,
    pub l1_lr: f32,
    pub pm_lr: f32,
    /// Prox only: compare g with E[z₂ | x₀, y] = √λ/(1 − α + λ)·(y − √α·x₀) instead of z₂, and
    /// average the loss in closed form over the rest of z₂, Gaussian of variance
    /// (1 − α)/(1 − α + λ) per pixel (`ops::loss::expected_loss`). The expected loss and its
    /// gradient are the paper's; the gradient's noise from the part of z₂ that no network
    /// can predict (the split of y − √α·x₀ between z₁ and z₂) is gone (Rao–Blackwellisation).
    pub rao_blackwell: bool,
    /// Score only: learning rate.
    pub lr: f32,
    /// Steps over which the learning rate (of any kind of run) rises linearly from 0; useful
    /// when a run starts from trained weights (`proxdm train --init`) with a fresh optimiser.
    pub warmup: usize,
    /// Steps at the end of the run over which the learning rate falls linearly towards 0
    /// (step `iters − cooldown + 1` runs at the full rate, the last at 1/cooldown of it):
    /// annealing a long constant-rate run, as its last stage.
    pub cooldown: usize,
    pub weight_decay: f32,
    pub ema_decay: f32,
    /// Rescale the gradients so their global L2 norm is at most this (none when absent).
    pub grad_clip: Option<f32>,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// At most this many images per forward and backward pass: a step's batch is split into
    /// micro-batches whose gradients are summed, weighted by their share of the batch, before
    /// clipping and the update (the same step as the whole batch at once, up to rounding, for
    /// less memory). When absent, the whole batch, or as many images as fit the adapter's
    /// largest storage binding.
    pub micro_batch: Option<usize>,
    /// LPN denoiser (unconditioned) only: the noise std of y = x + σz, on the data's scale.
    pub sigma: f32,
    /// LPN denoiser only: draw σ uniformly in [sigma, sigma_max] per image instead.
    pub sigma_max: Option<f32>,
}

impl Default for TrainConfig {
    /// The reference's MNIST schedule in proportion (l1 = 1/3 of the steps), sized down.
    fn default() -> Self {
        TrainConfig {
            batch: 64,
            iters: 30_000,
            seed: 0,
            discretization: Discretization::Hybrid,
            step_candidates: vec![],
            l1_iters: 10_000,
            zeta_start: 1.0,
            zeta_decay: 0.5,
            zeta_stages: 2,
            l1_lr: 1e-4,
            pm_lr: 1e-5,
            rao_blackwell: false,
            lr: 2e-4,
            warmup: 0,
            cooldown: 0,
            weight_decay: 0.0,
            ema_decay: 0.9999,
            grad_clip: None,
            checkpoint_every: 200,
            micro_batch: None,
            sigma: 0.2,
            sigma_max: None,
        }
    }
}

/// A training run's config file: the model (as `configs/*.toml`) and `[train]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub kind: ModelKind,
    #[serde(default)]
    pub unet: UNetConfig,
    #[serde(default)]
    pub sde: SdeConfig,
    /// The network when `kind = "lpn"` (the reference's MNIST LPN when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lpn: Option<LpnConfig>,
    #[serde(default)]
    pub train: TrainConfig,
}

impl RunConfig {
    /// The LPN's config (`kind = "lpn"`).
    pub fn lpn(&self) -> LpnConfig {
        self.lpn.clone().unwrap_or_default()
    }

    /// Whether the run trains a prox network for ProxDM samplers on (t, λ) draws: a prox UNet
    /// or a conditioned LPN (an unconditioned LPN is a denoiser at noise level σ).
    pub fn trains_prox(&self) -> bool {
        match self.kind {
            ModelKind::Prox => true,
            ModelKind::Lpn => self.lpn().cond,
            ModelKind::Score => false,
        }
    }

    pub fn model(&self) -> ModelConfig {
        ModelConfig {
            kind: self.kind,
            unet: self.unet.clone(),
            sde: self.sde,
        }
    }

    /// Reads a TOML run config.
    pub fn read(path: &Path) -> Result<RunConfig> {
        let text = String::from_utf8(crate::io::read(path)?).map_err(|_| Error::Format {
            path: path.display().to_string(),
            detail: "not UTF-8 text".into(),
        })?;
        let cfg: RunConfig = toml::from_str(&text).map_err(|e| Error::Format {
            path: path.display().to_string(),
            detail: format!("invalid run config: {e}"),
        })?;
        cfg.validate().map_err(|e| Error::Format {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        match self.kind {
            ModelKind::Lpn => self.lpn().validate()?,
            _ => self.model().validate()?,
        }
        let t = &self.train;
        let bad = |m: &str| Err(Error::Config(format!("[train] {m}")));
        if t.batch == 0 || t.iters == 0 || t.checkpoint_every == 0 {
            return bad("batch, iters and checkpoint_every must be positive");
        }
        if t.micro_batch == Some(0) {
            return bad("micro_batch must be positive (or absent: the whole batch)");
        }
        if t.warmup + t.cooldown > t.iters {
            return bad("warmup + cooldown must not exceed iters");
        }
        if t.grad_clip.is_some_and(|c| c.is_nan() || c <= 0.0) {
            return bad("grad_clip must be positive");
        }
        if self.kind == ModelKind::Lpn && !self.lpn().cond {
            let hi = t.sigma_max.unwrap_or(t.sigma);
            if !(t.sigma > 0.0 && hi >= t.sigma && hi.is_finite()) {
                return bad("an LPN denoiser needs 0 < sigma ≤ sigma_max");
            }
        }
        if t.rao_blackwell && !self.trains_prox() {
            return bad(
                "rao_blackwell applies to prox training only (a score model's ε and an LPN \
                 denoiser's clean image are already fixed by the example)",
            );
        }
        if self.kind != ModelKind::Score {
            if t.l1_iters > t.iters {
                return bad("l1_iters must not exceed iters");
            }
            if t.zeta_stages == 0 || t.zeta_start <= 0.0 {
                return bad("zeta_stages must be ≥ 1 and zeta_start > 0");
            }
            let c = self.candidates();
            if self.trains_prox() && (c.is_empty() || c.contains(&0)) {
                return bad("step_candidates must be positive step counts");
            }
            if self.trains_prox()
                && t.discretization == Discretization::Backward
                && let Some(n) = c.iter().find(|&&n| n < 10)
            {
                return bad(&format!(
                    "backward discretization needs N ≥ 10 (γ < 2 with β_max = 20); got {n}"
                ));
            }
        }
        Ok(())
    }

    /// The step candidates in use (the reference's when none are given).
    pub fn candidates(&self) -> Vec<usize> {
        match (&self.train.step_candidates[..], self.train.discretization) {
            ([], Discretization::Hybrid) => vec![5, 10, 20, 50, 100, 1000],
            ([], Discretization::Backward) => vec![20, 50, 100, 1000],
            (c, _) => c.to_vec(),
        }
    }
}

/// The loss and learning rate of step `it` (1-based), as the reference's schedule.
pub fn schedule(cfg: &RunConfig, it: usize) -> (Loss, f32) {
    let t = &cfg.train;
    let (loss, lr) = match cfg.kind {
        ModelKind::Score => (Loss::Mse, t.lr),
        ModelKind::Prox | ModelKind::Lpn if it <= t.l1_iters => (Loss::L1, t.l1_lr),
        ModelKind::Prox | ModelKind::Lpn => {
            let k = it - t.l1_iters - 1;
            let every = ((t.iters - t.l1_iters) / t.zeta_stages).max(1);
            let stage = (k / every).min(t.zeta_stages - 1);
            let zeta = t.zeta_start * t.zeta_decay.powi(stage as i32);
            (Loss::ProxMatch { zeta }, t.pm_lr)
        }
    };
    // Linear warm-up over the first `warmup` steps and cool-down over the last `cooldown`,
    // whatever the phase.
    let lr = if it < t.warmup {
        lr * it as f32 / t.warmup as f32
    } else if t.cooldown > 0 && it + t.cooldown > t.iters {
        lr * (t.iters + 1 - it.min(t.iters)) as f32 / t.cooldown as f32
    } else {
        lr
    };
    (loss, lr)
}

/// splitmix64: a small, stable generator for everything drawn on the host.
#[derive(Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }
}

/// A step count from `candidates` with probability ∝ log₁₀ N.
pub fn draw_steps(candidates: &[usize], rng: &mut SplitMix) -> usize {
    let w: Vec<f64> = candidates.iter().map(|&n| (n as f64).log10()).collect();
    let mut u = rng.uniform() * w.iter().sum::<f64>();
    for (&c, &wi) in candidates.iter().zip(&w) {
        if u < wi {
            return c;
        }
        u -= wi;
    }
    *candidates.last().expect("validated non-empty")
}

/// One (t, λ) draw for the prox objective: N from `candidates` with weights ∝ log₁₀ N, then t on
/// the N-step grid and λ from γ = B(t, t + 1/N).
pub fn draw_t_lambda(
    sde: &SdeConfig,
    candidates: &[usize],
    disc: Discretization,
    rng: &mut SplitMix,
) -> (f64, f64) {
    let n = draw_steps(candidates, rng);
    let dt = 1.0 / n as f64;
    let t = ((rng.uniform() / dt).floor() * dt).min(1.0 - dt);
    let gamma = sde.integral(t, t + dt);
    let lambda = match disc {
        Discretization::Hybrid => gamma,
        Discretization::Backward => gamma / (1.0 - gamma / 2.0),
    };
    (t, lambda)
}

/// The host-side random draws of one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Draws {
    /// Dataset indices of the batch.
    pub idx: Vec<usize>,
    pub t: Vec<f64>,
    pub lambda: Vec<f64>,
}

/// What one step did (the loss is read back, so NaN stops the run at once).
#[derive(Clone, Debug)]
pub struct StepStats {
    pub iter: usize,
    pub loss: f32,
    pub kind: Loss,
    pub lr: f32,
}

/// The network a run trains.
pub enum Net {
    /// A score or prox UNet.
    Unet(Model),
    Lpn(Lpn),
}

impl Net {
    /// Builds the run's network with parameters initialised from `seed`.
    pub fn build(cfg: &RunConfig, seed: u64) -> Result<(Net, crate::nn::ParamBuilder)> {
        Ok(match cfg.kind {
            ModelKind::Lpn => {
                let (l, pb) = Lpn::build(&cfg.lpn(), seed)?;
                (Net::Lpn(l), pb)
            }
            _ => {
                let (m, pb) = Model::build(&cfg.model(), seed)?;
                (Net::Unet(m), pb)
            }
        })
    }

    /// FLOPs of one forward on one input of side `size` (ψ for an LPN).
    pub fn forward_flops(&self, size: usize) -> Result<f64> {
        match self {
            Net::Unet(m) => m.forward_flops(size),
            Net::Lpn(l) => l.forward_flops(),
        }
    }

    /// Elements of the largest tensor one forward creates per input of side `size`.
    pub fn largest_tensor(&self, size: usize) -> Result<usize> {
        match self {
            Net::Unet(m) => m.largest_tensor(size),
            Net::Lpn(l) => l.largest_tensor(),
        }
    }
}

/// Images per forward and backward pass: the config's `micro_batch` (else the batch), lowered
/// to the most whose largest tensor (`bytes_per_image` each) fits a storage binding of
/// `max_binding` bytes, then evened out over the parts that takes (512 images in parts of at
/// most 170 go as 4 × 128, not 170 + 170 + 170 + 2). Errors when not even one image fits.
pub fn micro_batch(
    batch: usize,
    requested: Option<usize>,
    bytes_per_image: u64,
    max_binding: u64,
) -> Result<usize> {
    let fit = (max_binding / bytes_per_image.max(1)) as usize;
    if fit == 0 {
        return Err(Error::Config(format!(
            "one image needs a tensor of {}, over this adapter's largest storage binding ({}): \
             the network is too large for this adapter",
            crate::engine::adapter::human_bytes(bytes_per_image),
            crate::engine::adapter::human_bytes(max_binding)
        )));
    }
    let most = requested.unwrap_or(batch).min(batch).min(fit).max(1);
    Ok(batch.div_ceil(batch.div_ceil(most)))
}

/// Why a step's batch goes through in micro-batches of `micro` images: the config's
/// `requested` size, the `fit` images a storage binding of `max_binding` bytes holds, and the
/// evening out of the parts, each named when it applied.
pub fn micro_batch_reason(
    requested: Option<usize>,
    fit: usize,
    micro: usize,
    max_binding: u64,
) -> String {
    let binding = format!(
        "{fit} images' largest tensors fit this adapter's largest storage binding ({})",
        crate::engine::adapter::human_bytes(max_binding)
    );
    let mut why = match requested {
        Some(m) if m <= fit => format!("micro_batch = {m} in the config"),
        Some(m) => format!("micro_batch = {m} in the config, but only {binding}"),
        None => format!("only {binding}"),
    };
    if micro < requested.unwrap_or(usize::MAX).min(fit) {
        why.push_str(", evened out over the parts");
    }
    why
}

/// A model being trained: weights, optimiser (with the EMA), data, and the step count.
pub struct Trainer<'d> {
    pub cfg: RunConfig,
    pub model: Net,
    pub store: ParamStore,
    pub opt: Optimizer,
    data: &'d Images,
    /// Steps done.
    pub iter: usize,
    perm: (usize, Vec<usize>),
    /// The weight file the run started from (`--init`), if not the seed's initialisation.
    pub init: Option<String>,
    /// Images per forward and backward pass (see [`TrainConfig::micro_batch`]).
    pub micro: usize,
    /// Images whose largest tensors fit the adapter's largest storage binding.
    pub binding_fit: usize,
}

/// Metadata keys of a checkpoint.
const RUN_KEY: &str = "proxdm.run";
const ITER_KEY: &str = "proxdm.iter";
const INIT_KEY: &str = "proxdm.init";

impl<'d> Trainer<'d> {
    /// A fresh run: weights initialised from the seed.
    pub fn new(engine: &Engine, cfg: RunConfig, data: &'d Images) -> Result<Self> {
        cfg.validate()?;
        check_data(&cfg, data)?;
        let (model, pb) = Net::build(&cfg, cfg.train.seed)?;
        let max_binding = engine.max_binding();
        let per_image = 4 * model.largest_tensor(data.shape[2])? as u64;
        let micro = micro_batch(
            cfg.train.batch,
            cfg.train.micro_batch,
            per_image,
            max_binding,
        )?;
        let binding_fit = (max_binding / per_image.max(1)) as usize;
        let store = pb.finish(engine)?;
        let mut opt = Optimizer::new(&store, adamw(&cfg), Some(cfg.train.ema_decay))?;
        if let Net::Lpn(l) = &model {
            opt.nonneg = l.nonneg.clone();
        }
        Ok(Trainer {
            cfg,
            model,
            store,
            opt,
            data,
            iter: 0,
            perm: (usize::MAX, vec![]),
            init: None,
            micro,
            binding_fit,
        })
    }

    /// Starts the weights and the EMA from a weight file (an earlier run's `model.safetensors`
    /// or a shipped file) instead of the seed's initialisation; the optimiser's moments stay
    /// zero and the schedule starts at step 0. The file's network must be the config's.
    pub fn init_from(&mut self, path: &Path) -> Result<()> {
        if self.iter != 0 {
            return Err(Error::Config(
                "--init applies to a fresh run, not a resumed one".into(),
            ));
        }
        let e = self.store.tensors()[0].engine().clone();
        let mismatch = |file: String, run: String| {
            Error::Config(format!(
                "--init {}: the file holds {file} but the run's config builds {run}; start from \
                 weights of the same network (same kind and [unet] / [lpn] section)",
                path.display()
            ))
        };
        let loaded = match &self.model {
            Net::Unet(_) => {
                let (mut m, store) = crate::io::weights::load(path, &e, None)?;
                // Dropout holds no weights: a stage may start from a file trained with another
                // rate (the run's rate is what it trains with and what its files record).
                m.config.unet.dropout = self.cfg.model().unet.dropout;
                if m.config != self.cfg.model() {
                    return Err(mismatch(
                        format!("{:?}", m.config),
                        format!("{:?}", self.cfg.model()),
                    ));
                }
                store
            }
            Net::Lpn(_) => {
                let (l, store) = crate::io::weights::load_lpn(path, &e)?;
                if l.config != self.cfg.lpn() {
                    return Err(mismatch(
                        format!("{:?}", l.config),
                        format!("{:?}", self.cfg.lpn()),
                    ));
                }
                store
            }
        };
        let mut ema = Vec::new();
        for (i, t) in loaded.tensors().iter().enumerate() {
            self.store.set(i, t.clone())?;
            ema.push(elementwise::scale(t, 1.0)?);
        }
        let (m, v) = self.opt.moments();
        let (m, v) = (m.to_vec(), v.to_vec());
        self.opt.set_state(0, m, v, ema)?;
        self.init = Some(path.display().to_string());
        Ok(())
    }

    /// The batch indices of step `it` (0-based): epoch-wise shuffles of the dataset.
    fn batch_indices(&mut self, it: usize) -> Vec<usize> {
        let n = self.data.len();
        let b = self.cfg.train.batch;
        (it * b..(it + 1) * b)
            .map(|k| {
                let epoch = k / n;
                if self.perm.0 != epoch {
                    let mut rng =
                        SplitMix::new(self.cfg.train.seed ^ 0xda7a ^ (epoch as u64) << 20);
                    let mut p: Vec<usize> = (0..n).collect();
                    for i in (1..n).rev() {
                        p.swap(i, rng.below(i + 1));
                    }
                    self.perm = (epoch, p);
                }
                self.perm.1[k % n]
            })
            .collect()
    }

    /// The clean batch at `idx`, shaped for the network: an LPN's images centre-cropped to its
    /// size (MNIST's 32×32 padding back to 28×28), an MLP's points as (N, d).
    fn batch(&self, idx: &[usize]) -> (Vec<usize>, Vec<f32>) {
        let x = self.data.gather(idx);
        let [_, c, h, w] = self.data.shape;
        let b = idx.len();
        match &self.model {
            Net::Lpn(l) if l.config.arch == LpnArch::Mlp => (vec![b, c * h * w], x),
            Net::Lpn(l) if l.config.size != h => {
                let s = l.config.size;
                (vec![b, c, s, s], center_crop([b, c, h, w], &x, s))
            }
            _ => (vec![b, c, h, w], x),
        }
    }

    /// Whether the loss compares g with E[z₂ | x₀, y] (`TrainConfig::rao_blackwell`).
    fn rao_blackwell(&self) -> bool {
        self.cfg.train.rao_blackwell && self.cfg.trains_prox()
    }

    /// The host-side draws of step `it` (0-based): image indices, t and λ per example (λ = 0
    /// for a score model; t = 0 and λ = σ² for an LPN denoiser, whose y = x + σz is the prox
    /// problem at t = 0). The Gaussian noise is Philox: z₁ on stream 3·it + 1, z₂ on 3·it + 2,
    /// keyed by the seed.
    pub fn draws(&mut self, it: usize) -> Draws {
        let idx = self.batch_indices(it);
        let mut rng = SplitMix::new(self.cfg.train.seed ^ 0x7a11 ^ ((it as u64) << 24));
        let (sde, b) = (self.cfg.sde, idx.len());
        let tr = &self.cfg.train;
        let (t, lambda) = match self.cfg.kind {
            _ if self.cfg.trains_prox() => {
                let cands = self.cfg.candidates();
                (0..b)
                    .map(|_| draw_t_lambda(&sde, &cands, tr.discretization, &mut rng))
                    .unzip()
            }
            ModelKind::Lpn => (0..b)
                .map(|_| {
                    let hi = tr.sigma_max.unwrap_or(tr.sigma) as f64;
                    let s = tr.sigma as f64 + (hi - tr.sigma as f64) * rng.uniform();
                    (0.0, s * s)
                })
                .unzip(),
            _ => (0..b).map(|_| (rng.uniform(), 0.0)).unzip(),
        };
        Draws { idx, t, lambda }
    }

    /// Forward, loss and backward of step `it` (0-based) without updating: the loss (a GPU
    /// scalar) and the gradient of each parameter (`None` where the loss does not depend on it).
    /// The batch goes through in micro-batches of at most [`Trainer::micro`] images, whose
    /// losses and gradients are summed weighted by their share of the batch (every loss is a
    /// mean over the batch's images).
    pub fn loss_and_grads(&mut self, it: usize) -> Result<(Tensor, Vec<Option<Tensor>>)> {
        let draws = self.draws(it);
        let b = draws.idx.len();
        let m = self.micro.clamp(1, b);
        if m == b {
            return self.part_loss_and_grads(it, &draws, 0..b);
        }
        let mut total: Option<(Tensor, Vec<Option<Tensor>>)> = None;
        for start in (0..b).step_by(m) {
            let part = start..(start + m).min(b);
            let w = part.len() as f32 / b as f32;
            let (loss, grads) = self.part_loss_and_grads(it, &draws, part)?;
            let loss = elementwise::scale(&loss, w)?;
            let grads = grads
                .into_iter()
                .map(|g| g.map(|g| elementwise::scale(&g, w)).transpose())
                .collect::<Result<Vec<_>>>()?;
            total = Some(match total {
                None => (loss, grads),
                Some((l0, g0)) => {
                    let sum = g0
                        .into_iter()
                        .zip(grads)
                        .map(|(a, b)| match (a, b) {
                            (Some(a), Some(b)) => elementwise::add(&a, &b).map(Some),
                            (a, b) => Ok(a.or(b)),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    (elementwise::add(&l0, &loss)?, sum)
                }
            });
        }
        Ok(total.expect("a batch has at least one image"))
    }

    /// The loss (mean over the images of `part`) and gradients of the part `part` of step
    /// `it`'s batch. Its noise is the whole batch's at those images (Philox draws keyed by
    /// element), and a part after the first draws its dropout masks from its own seed.
    fn part_loss_and_grads(
        &self,
        it: usize,
        draws: &Draws,
        part: std::ops::Range<usize>,
    ) -> Result<(Tensor, Vec<Option<Tensor>>)> {
        let e = self.store.tensors()[0].engine().clone();
        let (kind, _) = schedule(&self.cfg, it + 1);
        let idx = &draws.idx[part.clone()];
        let ts = &draws.t[part.clone()];
        let lambda = &draws.lambda[part.clone()];
        let b = idx.len();
        let (shape, x0) = self.batch(idx);
        let x0 = Tensor::from_slice(&e, &shape, &x0)?;
        let seed = self.cfg.train.seed;
        let stream = (it as u32).wrapping_mul(3);
        let offset = (part.start * (x0.numel() / b)) as u32;
        let randn = |stream: u32| -> Result<Tensor> {
            let z = Tensor::uninit(&e, &shape)?;
            noise::fill_gaussian(&z, seed, stream, offset, 0.0, 1.0)?;
            Ok(z)
        };
        let z1 = randn(stream.wrapping_add(1))?;
        let sde = self.cfg.sde;
        let mut col_shape = vec![1; shape.len()];
        col_shape[0] = b;
        let col = |v: Vec<f32>| Tensor::from_slice(&e, &col_shape, &v);
        let sa = col(ts.iter().map(|&t| sde.alpha(t).sqrt() as f32).collect())?;
        let sb = col(ts
            .iter()
            .map(|&t| (1.0 - sde.alpha(t)).sqrt() as f32)
            .collect())?;
        let xt = elementwise::add(&elementwise::mul(&x0, &sa)?, &elementwise::mul(&z1, &sb)?)?;
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
        let (t32, l32) = (f32s(ts), f32s(lambda));
        let (input, target, prox) = match self.cfg.kind {
            ModelKind::Prox | ModelKind::Lpn => {
                let z2 = randn(stream.wrapping_add(2))?;
                let sl = col(lambda.iter().map(|&l| l.sqrt() as f32).collect())?;
                let z2l = elementwise::mul(&z2, &sl)?;
                let y = elementwise::add(&xt, &z2l)?;
                let target = if self.rao_blackwell() {
                    // E[z₂ | x₀, y] = √λ/(1 − α + λ)·(√(1 − α)·z₁ + √λ·z₂).
                    let n = elementwise::add(&elementwise::mul(&z1, &sb)?, &z2l)?;
                    let c = col(ts
                        .iter()
                        .zip(lambda)
                        .map(|(&t, &l)| (l.sqrt() / (1.0 - sde.alpha(t) + l)) as f32)
                        .collect())?;
                    elementwise::mul(&n, &c)?
                } else {
                    z2
                };
                (y, target, true)
            }
            ModelKind::Score => (xt, z1, false),
        };
        // The variance of z₂ given x₀ and y, per image: (1 − α)/(1 − α + λ).
        let target_var = self
            .rao_blackwell()
            .then(|| {
                let v = ts.iter().zip(lambda).map(|(&t, &l)| {
                    let s = 1.0 - sde.alpha(t);
                    (s / (s + l)) as f32
                });
                Tensor::from_slice(&e, &[b], &v.collect::<Vec<_>>())
            })
            .transpose()?;
        let g = Graph::new(&e);
        let p = self.store.vars(&g);
        let (out, target) = if let Net::Lpn(lpn) = &self.model {
            // f = ∇_y ψ(y), kept differentiable: the loss's gradient is the second-order pass.
            let cond = lpn.config.cond.then_some((&t32[..], &l32[..]));
            let f = lpn.prox(&g, &p, &input, cond, true)?;
            if lpn.config.cond {
                // As the prox UNet: compare g = (y − f(y))/√λ with z₂.
                let inv = col(lambda.iter().map(|&l| (1.0 / l.sqrt()) as f32).collect())?;
                let g_out = g.mul(&g.sub(&g.constant(input), &f)?, &g.constant(inv))?;
                (g_out, target)
            } else {
                // A denoiser: compare f(y) with the clean image (the LPN paper's objective).
                (f, x0)
            }
        } else {
            let Net::Unet(model) = &self.model else {
                unreachable!("LPN handled above")
            };
            let be = Gpu {
                graph: &g,
                dropout_seed: Some(
                    seed ^ 0xd209 ^ ((it as u64) << 16) ^ ((part.start as u64) << 40),
                ),
            };
            let lam = prox.then_some(&l32[..]);
            let out = model.eps(&be, &p, &g.constant(input), &t32, lam)?;
            (out, target)
        };
        let loss = g.expected_loss(kind, &out, &g.constant(target), target_var.as_ref())?;
        let refs: Vec<_> = p.iter().collect();
        let grads = g
            .backward(&loss, &refs, false)?
            .into_iter()
            .map(|d| d.map(|d| d.tensor().clone()))
            .collect();
        Ok((loss.tensor().clone(), grads))
    }

    /// One training step. A loss that is not finite is an error; the step's update has been
    /// applied by then (it runs on the GPU before the loss is read), so the caller must not
    /// save: the last checkpoint is the last good state.
    pub fn step(&mut self) -> Result<StepStats> {
        let it = self.iter;
        let (kind, lr) = schedule(&self.cfg, it + 1);
        let (loss, mut grads) = self.loss_and_grads(it)?;
        if let Some(c) = self.cfg.train.grad_clip {
            clip_grad_norm(&mut grads, c)?;
        }
        self.opt.cfg.lr = lr;
        self.opt.update_with(&self.store, &grads)?;
        let value = loss.to_vec()?[0];
        self.iter += 1;
        if !value.is_finite() {
            return Err(Error::Config(format!(
                "loss is {value} at step {}: stopping (the last checkpoint is kept); lower the \
                 learning rate or check the data",
                self.iter
            )));
        }
        Ok(StepStats {
            iter: self.iter,
            loss: value,
            kind,
            lr,
        })
    }

    /// The EMA weights as a store (what samples).
    pub fn ema_store(&self) -> ParamStore {
        let mut s = ParamStore::new();
        let (_, ema) = self.opt.ema.as_ref().expect("trainer keeps an EMA");
        for (n, t) in self.store.names().iter().zip(ema) {
            s.insert(n.clone(), t.clone());
        }
        s
    }

    /// The weights a run exports: the EMA with the bias of its initial value removed,
    /// (ema − dᵏ·θ₀)/(1 − dᵏ) after k steps, as Adam debiases its moments. Raw, an EMA of
    /// decay 0.999 after 3000 steps still holds 5 % of the initial weights. θ₀ is rebuilt from
    /// the seed. An LPN's constrained weights stay ≥ 0 (the result is a weighted mean of
    /// projected iterates; rounding is clamped).
    pub fn export_store(&self) -> Result<ParamStore> {
        let ema = self.ema_store();
        if self.init.is_some() {
            // Started from trained weights: the EMA's initial value is part of the result.
            return Ok(ema);
        }
        let d = self.opt.ema.as_ref().map_or(0.0, |(d, _)| *d as f64);
        let dk = d.powi(self.opt.step.min(i32::MAX as u32) as i32);
        if self.opt.step == 0 || dk < 1e-7 {
            return Ok(ema);
        }
        let e = self.store.tensors()[0].engine().clone();
        let (_, pb) = Net::build(&self.cfg, self.cfg.train.seed)?;
        let init = pb.finish(&e)?;
        let nonneg = match &self.model {
            Net::Lpn(l) => l.nonneg.clone(),
            Net::Unet(_) => vec![],
        };
        let mut out = ParamStore::new();
        for (i, (name, t)) in ema.names().iter().zip(ema.tensors()).enumerate() {
            let w = elementwise::scale(t, (1.0 / (1.0 - dk)) as f32)?;
            elementwise::axpy((-dk / (1.0 - dk)) as f32, &init.tensors()[i], &w)?;
            let w = if nonneg.contains(&i) {
                elementwise::unary(&w, elementwise::UnaryOp::Relu)?
            } else {
                w
            };
            out.insert(name.clone(), w);
        }
        Ok(out)
    }

    /// Writes the exported weights (the debiased EMA, what samples) as a self-contained weight
    /// file, atomically.
    pub fn save_model(&self, path: &Path) -> Result<()> {
        let ema = self.export_store()?;
        match self.cfg.kind {
            ModelKind::Lpn => {
                let t = &self.cfg.train;
                let trained = if self.cfg.trains_prox() {
                    format!("prox ({:?})", t.discretization).to_lowercase()
                } else {
                    match t.sigma_max {
                        Some(hi) => format!("denoise sigma={}..{hi}", t.sigma),
                        None => format!("denoise sigma={}", t.sigma),
                    }
                };
                crate::io::weights::save_lpn(path, &self.cfg.lpn(), &trained, &ema)
            }
            _ => crate::io::weights::save(path, &self.cfg.model(), &ema),
        }
    }

    /// Writes the checkpoint (weights, AdamW moments, EMA, step, config) atomically.
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let (m, v) = self.opt.moments();
        let (_, ema) = self.opt.ema.as_ref().expect("trainer keeps an EMA");
        let mut all = ParamStore::new();
        for (i, name) in self.store.names().iter().enumerate() {
            all.insert(name.clone(), self.store.tensors()[i].clone());
            all.insert(format!("opt.m.{name}"), m[i].clone());
            all.insert(format!("opt.v.{name}"), v[i].clone());
            all.insert(format!("ema.{name}"), ema[i].clone());
        }
        let model_meta = match self.cfg.kind {
            ModelKind::Lpn => (
                crate::io::weights::LPN_KEY.to_string(),
                serde_json::to_string(&self.cfg.lpn()).expect("serialises"),
            ),
            _ => (
                crate::io::weights::CONFIG_KEY.to_string(),
                serde_json::to_string(&self.cfg.model()).expect("serialises"),
            ),
        };
        let mut meta = HashMap::from([
            model_meta,
            (
                RUN_KEY.to_string(),
                serde_json::to_string(&self.cfg).expect("serialises"),
            ),
            (ITER_KEY.to_string(), self.iter.to_string()),
            ("proxdm.adam_step".to_string(), self.opt.step.to_string()),
        ]);
        if let Some(init) = &self.init {
            meta.insert(INIT_KEY.to_string(), init.clone());
        }
        let bytes = crate::io::weights::params_to_bytes(meta, &all)?;
        crate::io::write_atomic(path, &bytes)
    }

    /// Continues a run from its checkpoint (its config wins; the data must fit it).
    pub fn resume(engine: &Engine, path: &Path, data: &'d Images) -> Result<Self> {
        let bytes = crate::io::read(path)?;
        let bad = |d: String| Error::Format {
            path: path.display().to_string(),
            detail: d,
        };
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a checkpoint (or truncated): {e}")))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a checkpoint (or truncated): {e}")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            meta.get(k).ok_or_else(|| {
                bad(format!(
                    "no '{k}' in the metadata: not a training checkpoint"
                ))
            })
        };
        let cfg: RunConfig = serde_json::from_str(get(RUN_KEY)?)
            .map_err(|e| bad(format!("unreadable run config: {e}")))?;
        let iter: usize = get(ITER_KEY)?
            .parse()
            .map_err(|_| bad("bad step count".into()))?;
        let adam_step: u32 = get("proxdm.adam_step")?
            .parse()
            .map_err(|_| bad("bad optimiser step".into()))?;
        let mut tr = Trainer::new(engine, cfg, data)?;
        let names = tr.store.names().to_vec();
        let load = |name: &str, like: &Tensor| -> Result<Tensor> {
            let v = st
                .tensor(name)
                .map_err(|_| bad(format!("tensor '{name}' missing")))?;
            if v.dtype() != Dtype::F32 || v.shape() != like.shape() {
                return Err(bad(format!(
                    "tensor '{name}' is {:?} {:?}, expected F32 {:?}",
                    v.dtype(),
                    v.shape(),
                    like.shape()
                )));
            }
            let data: Vec<f32> = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            Tensor::from_slice(engine, like.shape(), &data)
        };
        let mut m = Vec::new();
        let mut v = Vec::new();
        let mut ema = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let like = tr.store.tensors()[i].clone();
            tr.store.set(i, load(name, &like)?)?;
            m.push(load(&format!("opt.m.{name}"), &like)?);
            v.push(load(&format!("opt.v.{name}"), &like)?);
            ema.push(load(&format!("ema.{name}"), &like)?);
        }
        tr.opt.set_state(adam_step, m, v, ema)?;
        tr.iter = iter;
        tr.init = meta.get(INIT_KEY).cloned();
        Ok(tr)
    }
}

/// Scales `grads` so their global L2 norm is at most `max_norm`; returns the norm before.
/// The norm is summed on the GPU and read back once.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f32) -> Result<f32> {
    use crate::ops::reduce::{ReduceOp, reduce};
    let mut total: Option<Tensor> = None;
    for g in grads.iter().flatten() {
        let axes: Vec<usize> = (0..g.shape().len()).collect();
        let s = reduce(g, &axes, ReduceOp::SumSq)?.reshape(&[1])?;
        total = Some(match total {
            None => s,
            Some(t) => elementwise::add(&t, &s)?,
        });
    }
    let Some(total) = total else { return Ok(0.0) };
    let norm = total.to_vec()?[0].sqrt();
    if norm > max_norm {
        let k = max_norm / norm;
        for g in grads.iter_mut().flatten() {
            *g = elementwise::scale(g, k)?;
        }
    }
    Ok(norm)
}

fn adamw(cfg: &RunConfig) -> AdamW {
    AdamW {
        lr: schedule(cfg, 1).1,
        weight_decay: cfg.train.weight_decay,
        ..Default::default()
    }
}

/// Centre crop of (N, C, H, W) images to `side` × `side` (`H − side` and `W − side` even).
pub fn center_crop(shape: [usize; 4], data: &[f32], side: usize) -> Vec<f32> {
    let [n, c, h, w] = shape;
    let (oy, ox) = ((h - side) / 2, (w - side) / 2);
    let mut out = Vec::with_capacity(n * c * side * side);
    for plane in 0..n * c {
        for y in 0..side {
            let row = (plane * h + oy + y) * w + ox;
            out.extend_from_slice(&data[row..row + side]);
        }
    }
    out
}

fn check_data(cfg: &RunConfig, data: &Images) -> Result<()> {
    let [n, c, h, w] = data.shape;
    if cfg.kind == ModelKind::Lpn {
        let l = cfg.lpn();
        let fits = match l.arch {
            LpnArch::Mlp => c * h * w == l.in_ch,
            LpnArch::Conv => {
                c == l.in_ch && h == w && h >= l.size && (h - l.size).is_multiple_of(2)
            }
        };
        if n == 0 || !fits {
            return Err(Error::Config(format!(
                "data of shape {:?} does not fit the LPN ({}): give {}",
                data.shape,
                match l.arch {
                    LpnArch::Mlp => format!("MLP on R^{}", l.in_ch),
                    LpnArch::Conv => format!("{} channel(s), {}×{}", l.in_ch, l.size, l.size),
                },
                match l.arch {
                    LpnArch::Mlp => format!("{}-dimensional points", l.in_ch),
                    LpnArch::Conv => format!(
                        "square images of {} channel(s), {} pixels or larger by an even \
                         margin (centre-cropped)",
                        l.in_ch, l.size
                    ),
                }
            )));
        }
        return Ok(());
    }
    let div = 1usize << (cfg.unet.ch_mult.len() - 1);
    if n == 0 || c != cfg.unet.in_ch || h % div != 0 || w % div != 0 {
        return Err(Error::Config(format!(
            "data of shape {:?} does not fit the model (in_ch {}, sides divisible by {div})",
            data.shape, cfg.unet.in_ch
        )));
    }
    Ok(())
}
