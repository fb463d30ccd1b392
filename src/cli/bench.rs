//! `proxdm bench`: kernel and model throughput on the adapter in use, medians of repeated runs
//! after a warm-up, each timed region ending with a device sync.

use std::fmt::Write;
use std::time::Instant;

use crate::diffusion::oracles::Network;
use crate::diffusion::samplers::{ProxSampler, initial_noise, sample_prox};
use crate::engine::Engine;
use crate::error::Result;
use crate::graph::Graph;
use crate::models::{Model, ModelConfig, ModelKind, UNetConfig};
use crate::nn::Gpu;
use crate::nn::optim::{AdamW, Optimizer};
use crate::ops::loss::Loss;
use crate::ops::sampler::{self, StepCoefs};
use crate::ops::{attention, conv2d, group_norm, matmul, noise};
use crate::tensor::Tensor;

/// One line of the report.
pub struct Row {
    pub name: String,
    pub median_ms: f64,
    /// Useful floating-point operations per run.
    pub flops: Option<f64>,
    /// Bytes a run must read and write at least.
    pub bytes: Option<f64>,
    /// Items (images, samples) per run, for items/s.
    pub items: Option<(f64, &'static str)>,
}

/// Median seconds of `reps` runs of `f` (after one warm-up run), synchronising the device.
fn time(engine: &Engine, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    engine.sync()?;
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        engine.sync()?;
        v.push(t.elapsed().as_secs_f64());
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(v[v.len() / 2])
}

fn randn(e: &Engine, shape: &[usize], stream: u32) -> Result<Tensor> {
    noise::randn(e, shape, 1, stream)
}

/// Runs every benchmark; `batch` is the batch of the conv/group-norm/model shapes.
pub fn run(e: &Engine, reps: usize, batch: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut push = |name: String,
                    secs: f64,
                    flops: Option<f64>,
                    bytes: Option<f64>,
                    items: Option<(f64, &'static str)>| {
        eprintln!("[bench] {name}: {:.2} ms", secs * 1e3);
        rows.push(Row {
            name,
            median_ms: secs * 1e3,
            flops,
            bytes,
            items,
        });
    };
    // matmul
    for (b, m, n, k, what) in [
        (1usize, 1024usize, 1024usize, 1024usize, "matmul 1024^3"),
        (batch, 256, 256, 64, "attention logits qᵀk (B,256,64)"),
    ] {
        let (a, bm) = (randn(e, &[b, m, k], 1)?, randn(e, &[b, k, n], 2)?);
        let s = time(e, reps, || {
            matmul::matmul(&a, &bm, false, false, 1.0).map(drop)
        })?;
        let f = 2.0 * (b * m * n * k) as f64;
        push(
            what.to_string(),
            s,
            Some(f),
            Some(4.0 * (b * (m * k + k * n + m * n)) as f64),
            None,
        );
    }
    // conv2d forward and both gradients at the UNet's shapes
    for (ci, hw, co) in [(64usize, 32usize, 64usize), (128, 16, 128)] {
        let x = randn(e, &[batch, ci, hw, hw], 3)?;
        let w = randn(e, &[co, ci, 3, 3], 4)?;
        let dy = randn(e, &[batch, co, hw, hw], 5)?;
        let f = 2.0 * (batch * co * hw * hw * ci * 9) as f64;
        let bytes = 4.0 * (x.numel() + w.numel() + dy.numel()) as f64;
        let shape = format!("[{batch},{ci},{hw},{hw}]->{co}");
        let s = time(e, reps, || conv2d::conv2d(&x, &w, None, 1, 1).map(drop))?;
        push(
            format!("conv2d 3x3 forward {shape}"),
            s,
            Some(f),
            Some(bytes),
            None,
        );
        let s = time(e, reps, || {
            conv2d::conv2d_input_grad(&dy, &w, x.shape(), 1, 1).map(drop)
        })?;
        push(
            format!("conv2d 3x3 grad input {shape}"),
            s,
            Some(f),
            Some(bytes),
            None,
        );
        let s = time(e, reps, || {
            conv2d::conv2d_weight_grad(&x, &dy, w.shape(), 1, 1).map(drop)
        })?;
        push(
            format!("conv2d 3x3 grad weight {shape}"),
            s,
            Some(f),
            Some(bytes),
            None,
        );
    }
    // group norm
    let x = randn(e, &[batch, 64, 32, 32], 6)?;
    let (gm, bt) = (Tensor::full(e, &[64], 1.0)?, Tensor::zeros(e, &[64])?);
    let s = time(e, reps, || {
        group_norm::group_norm(&x, &gm, &bt, 32).map(drop)
    })?;
    push(
        format!("group norm [{batch},64,32,32]"),
        s,
        None,
        Some(8.0 * x.numel() as f64),
        None,
    );
    // attention over 256 and 64 tokens
    for (c, t) in [(64usize, 256usize), (128, 64)] {
        let (q, k, v) = (
            randn(e, &[batch, c, t], 7)?,
            randn(e, &[batch, c, t], 8)?,
            randn(e, &[batch, c, t], 9)?,
        );
        let s = time(e, reps, || attention::attention(&q, &k, &v).map(drop))?;
        push(
            format!("attention {t} tokens x {c} ch, batch {batch}"),
            s,
            Some(4.0 * (batch * t * t * c) as f64),
            None,
            None,
        );
    }
    // fused sampler step
    let xs = randn(e, &[batch, 1, 32, 32], 10)?;
    let k = StepCoefs {
        a: 1.1,
        b: 0.0,
        c: 0.3,
    };
    let s = time(e, reps, || sampler::step(&xs, None, k, 1, 1).map(drop))?;
    push(
        format!("fused sampler step [{batch},1,32,32]"),
        s,
        None,
        Some(8.0 * xs.numel() as f64),
        None,
    );

    // Both presets: forward and a training step (FLOPs counted from the model's own forward;
    // a training step is taken as 3× the forward: forward, input and weight gradients).
    for (label, unet) in [
        ("small preset", UNetConfig::default()),
        ("reference MNIST preset", UNetConfig::mnist_reference()),
    ] {
        let mb = ModelBench::new(e, unet, batch)?;
        let f = mb.model.forward_flops(32)? * batch as f64;
        let s = time(e, reps, || mb.forward())?;
        push(
            format!("UNet {label} forward, batch {batch}"),
            s,
            Some(f),
            None,
            Some((batch as f64, "images")),
        );
        let mut opt = Optimizer::new(&mb.store, AdamW::default(), Some(0.9999))?;
        let s = time(e, reps, || mb.train_step(&mut opt))?;
        push(
            format!("UNet {label} training step, batch {batch}"),
            s,
            Some(3.0 * f),
            None,
            Some((batch as f64, "images")),
        );
    }
    // Sampling with the small preset.
    let mb = ModelBench::new(e, UNetConfig::default(), batch)?;
    let (model, store, cfg) = (&mb.model, &mb.store, &mb.cfg);
    let net = Network {
        model,
        params: store,
    };
    let sde = cfg.sde;
    let s = time(e, reps.min(3), || {
        let x0 = initial_noise(e, &[batch, 1, 32, 32], 1)?;
        sample_prox(&net, &sde, ProxSampler::Hybrid, 10, x0, 1).map(drop)
    })?;
    push(
        format!("ProxDM hybrid sampling, 10 steps, batch {batch}"),
        s,
        None,
        None,
        Some((batch as f64, "images")),
    );
    Ok(rows)
}

/// The small prox preset with a batch of inputs, for the model benchmarks and the profile.
struct ModelBench {
    cfg: ModelConfig,
    model: Model,
    store: crate::graph::ParamStore,
    x: Tensor,
    t: Vec<f32>,
    lambda: Vec<f32>,
}

impl ModelBench {
    fn new(e: &Engine, unet: UNetConfig, batch: usize) -> Result<ModelBench> {
        let cfg = ModelConfig {
            kind: ModelKind::Prox,
            unet,
            sde: Default::default(),
        };
        let (model, pb) = Model::build(&cfg, 0)?;
        Ok(ModelBench {
            store: pb.finish(e)?,
            cfg,
            model,
            x: randn(e, &[batch, 1, 32, 32], 11)?,
            t: vec![0.5; batch],
            lambda: vec![0.05; batch],
        })
    }

    fn forward(&self) -> Result<()> {
        let e = self.x.engine();
        let g = Graph::inference(e);
        let p = self.store.vars(&g);
        self.model
            .eps(
                &Gpu::inference(&g),
                &p,
                &g.constant(self.x.clone()),
                &self.t,
                Some(&self.lambda),
            )
            .map(drop)
    }

    fn train_step(&self, opt: &mut Optimizer) -> Result<()> {
        let g = Graph::new(self.x.engine());
        let p = self.store.vars(&g);
        let be = Gpu {
            graph: &g,
            dropout_seed: Some(1),
        };
        let out = self.model.eps(
            &be,
            &p,
            &g.constant(self.x.clone()),
            &self.t,
            Some(&self.lambda),
        )?;
        let l = g.loss(Loss::L1, &out, &g.constant(self.x.clone()))?;
        let refs: Vec<_> = p.iter().collect();
        let grads = g.backward(&l, &refs, false)?;
        opt.update(&self.store, &grads)
    }
}

/// Where a small-preset forward and training step spend their time, per kernel: each dispatch
/// run alone between two device syncs (so the total exceeds the pipelined step time).
pub fn profile(e: &Engine, batch: usize) -> Result<String> {
    let mb = ModelBench::new(e, UNetConfig::default(), batch)?;
    let mut opt = Optimizer::new(&mb.store, AdamW::default(), Some(0.9999))?;
    let mut out = String::new();
    for (what, train) in [("forward", false), ("training step", true)] {
        let mut step = || {
            if train {
                mb.train_step(&mut opt)
            } else {
                mb.forward()
            }
        };
        step()?;
        e.sync()?;
        e.set_profiling(true);
        step()?;
        e.sync()?;
        let prof = e.profile();
        e.set_profiling(false);
        let total: f64 = prof.iter().map(|r| r.2).sum();
        let _ = writeln!(
            out,
            "\nUNet small preset {what}, batch {batch}: {:.1} ms in {} dispatches\n{:<44} {:>6} {:>10} {:>6}",
            total * 1e3,
            prof.iter().map(|r| r.1).sum::<u64>(),
            "kernel",
            "calls",
            "ms",
            "%"
        );
        for (k, n, t) in prof {
            let _ = writeln!(
                out,
                "{k:<44} {n:>6} {:>10.2} {:>6.1}",
                t * 1e3,
                100.0 * t / total
            );
        }
    }
    Ok(out)
}

/// The human-readable table.
pub fn table(e: &Engine, rows: &[Row]) -> String {
    let i = &e.adapter().info;
    let mut s = format!(
        "proxdm bench on {} ({:?}, {} {}), medians after warm-up\n\n",
        i.name, i.backend, i.driver, i.driver_info
    );
    let _ = writeln!(
        s,
        "{:<52} {:>10} {:>10} {:>9} {:>14}",
        "benchmark", "ms", "GFLOP/s", "GB/s", "items/s"
    );
    for r in rows {
        let secs = r.median_ms / 1e3;
        let f = r
            .flops
            .map(|f| format!("{:.2}", f / secs / 1e9))
            .unwrap_or_default();
        let b = r
            .bytes
            .map(|b| format!("{:.2}", b / secs / 1e9))
            .unwrap_or_default();
        let it = r
            .items
            .map(|(n, what)| format!("{:.1} {what}", n / secs))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "{:<52} {:>10.2} {:>10} {:>9} {:>14}",
            r.name, r.median_ms, f, b, it
        );
    }
    s
}

/// The same as JSON (one object with the adapter and a list of rows).
pub fn json(e: &Engine, rows: &[Row]) -> String {
    let i = &e.adapter().info;
    let list: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let secs = r.median_ms / 1e3;
            serde_json::json!({
                "name": r.name,
                "median_ms": r.median_ms,
                "gflops": r.flops.map(|f| f / secs / 1e9),
                "gbs": r.bytes.map(|b| b / secs / 1e9),
                "items_per_s": r.items.map(|(n, _)| n / secs),
                "items": r.items.map(|(_, w)| w),
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "adapter": i.name, "backend": format!("{:?}", i.backend), "driver": format!("{} {}", i.driver, i.driver_info),
        "results": list,
    }))
    .expect("serialisable")
}
