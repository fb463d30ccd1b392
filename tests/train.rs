//! A whole training step on the GPU: forward, loss, backward, AdamW and EMA recorded and
//! submitted once, with no host round-trip; the loss of a tiny UNet goes down; memory is stable.

use proxdm::graph::Graph;
use proxdm::models::{Model, ModelConfig, ModelKind, UNetConfig};
use proxdm::nn::Gpu;
use proxdm::nn::optim::{AdamW, Optimizer};
use proxdm::ops::loss::Loss;
use proxdm::ops::noise;
use proxdm::{Engine, Tensor};

struct Setup {
    e: Engine,
    model: Model,
    store: proxdm::graph::ParamStore,
    opt: Optimizer,
    x0: Tensor,
    z: Tensor,
    t: Vec<f32>,
}

fn setup() -> Setup {
    let e = Engine::new().unwrap_or_else(|err| panic!("GPU tests need an adapter: {err}"));
    let cfg = ModelConfig {
        kind: ModelKind::Score,
        unet: UNetConfig {
            ch: 32,
            ch_mult: vec![1, 1],
            attn: vec![1],
            num_res_blocks: 1,
            dropout: 0.1,
            in_ch: 1,
            ..Default::default()
        },
        sde: Default::default(),
    };
    let (model, pb) = Model::build(&cfg, 1).unwrap();
    let store = pb.finish(&e).unwrap();
    let opt = Optimizer::new(
        &store,
        AdamW {
            lr: 2e-3,
            ..Default::default()
        },
        Some(0.99),
    )
    .unwrap();
    let x0 = noise::randn(&e, &[4, 1, 8, 8], 5, 0).unwrap();
    let z = noise::randn(&e, &[4, 1, 8, 8], 5, 1).unwrap();
    Setup {
        e,
        model,
        store,
        opt,
        x0,
        z,
        t: vec![0.1, 0.3, 0.6, 0.9],
    }
}

/// One denoising score-matching step on a fixed batch; returns the loss tensor (not read).
fn step(s: &mut Setup, k: u64) -> Tensor {
    let g = Graph::new(&s.e);
    let p = s.store.vars(&g);
    let n = s.t.len();
    let sde = s.model.config.sde;
    let a: Vec<f32> =
        s.t.iter()
            .map(|&t| sde.alpha(t as f64).sqrt() as f32)
            .collect();
    let b: Vec<f32> =
        s.t.iter()
            .map(|&t| (1.0 - sde.alpha(t as f64)).sqrt() as f32)
            .collect();
    let c = |v: &[f32]| g.constant(Tensor::from_slice(&s.e, &[n, 1, 1, 1], v).unwrap());
    let (x0, z) = (g.constant(s.x0.clone()), g.constant(s.z.clone()));
    // x_t = √α x0 + √(1-α) z
    let xt = g
        .add(&g.mul(&x0, &c(&a)).unwrap(), &g.mul(&z, &c(&b)).unwrap())
        .unwrap();
    let be = Gpu {
        graph: &g,
        dropout_seed: Some(1000 + k),
    };
    let eps = s.model.eps(&be, &p, &xt, &s.t, None).unwrap();
    let loss = g.loss(Loss::Mse, &eps, &z).unwrap();
    let refs: Vec<_> = p.iter().collect();
    let grads = g.backward(&loss, &refs, false).unwrap();
    s.opt.update(&s.store, &grads).unwrap();
    s.e.flush().unwrap();
    loss.tensor().clone()
}

#[test]
fn a_tiny_unet_learns_and_a_step_is_one_submit_without_readback() {
    let mut s = setup();
    let first = step(&mut s, 0).item().unwrap();
    let (_, submits0) = s.e.counters();
    let mut last = Vec::new();
    for k in 1..60 {
        let l = step(&mut s, k);
        if k >= 57 {
            last.push(l);
        }
    }
    let (_, submits1) = s.e.counters();
    assert_eq!(
        submits1 - submits0,
        59,
        "one submit per training step, no read-backs"
    );
    let last: f32 = last.iter().map(|l| l.item().unwrap()).sum::<f32>() / last.len() as f32;
    assert!(first.is_finite() && last.is_finite());
    assert!(
        last < 0.5 * first,
        "loss should fall on a fixed batch: {first} → {last}"
    );
    // The EMA moved towards the trained weights but is not equal to them.
    let (decay, ema) = s.opt.ema.as_ref().unwrap();
    assert_eq!(*decay, 0.99);
    let i = s.store.index_of("unet.head.weight").unwrap();
    let (w, e) = (
        s.store.tensors()[i].to_vec().unwrap(),
        ema[i].to_vec().unwrap(),
    );
    assert!(w.iter().zip(&e).any(|(a, b)| a != b));
}

#[test]
fn fifty_training_steps_allocate_no_new_buffers() {
    let mut s = setup();
    step(&mut s, 0);
    step(&mut s, 1);
    let warm = s.e.pool_stats().created;
    for k in 2..52 {
        step(&mut s, k);
    }
    let stats = s.e.pool_stats();
    assert_eq!(
        stats.created, warm,
        "buffer pool grew during training: {stats:?}"
    );
}
