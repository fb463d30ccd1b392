//! The UNet on the GPU against the same UNet on the f64 CPU backend (independent op
//! references): forward values, whole-model parameter gradients against finite differences,
//! reference parameter names and counts, determinism.

use proxdm::graph::{Graph, Var};
use proxdm::models::{Model, ModelConfig, ModelKind, Skip, UNetConfig};
use proxdm::nn::{Cpu, Gpu, HostTensor};
use proxdm::{Engine, Tensor};

fn engine() -> Engine {
    Engine::new().unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
}

fn tiny(kind: ModelKind) -> ModelConfig {
    ModelConfig {
        kind,
        unet: UNetConfig {
            ch: 32,
            ch_mult: vec![1, 1],
            attn: vec![1],
            num_res_blocks: 1,
            dropout: 0.0,
            in_ch: 1,
            // The prox network carries the Gaussian skip so every check below covers it.
            skip: if kind == ModelKind::Prox {
                Skip::Gaussian
            } else {
                Skip::None
            },
        },
        sde: Default::default(),
    }
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n)
            .map(|_| (self.next() * scale) as f32 as f64)
            .collect()
    }
}

/// Parameters with O(1) gradients everywhere (the reference init zeroes most of them).
fn random_params(model_params: &[(String, Vec<usize>, Vec<f32>)], seed: u64) -> Vec<HostTensor> {
    let mut r = Lcg(seed);
    model_params
        .iter()
        .map(|(name, shape, _)| {
            let n: usize = shape.iter().product();
            let data = if shape.len() >= 2 {
                let area: usize = shape[2..].iter().product();
                r.vec(n, (6.0 / ((shape[0] + shape[1]) * area) as f64).sqrt())
            } else if name.ends_with(".weight") {
                r.vec(n, 0.5).iter().map(|v| 1.0 + v).collect() // GroupNorm γ
            } else {
                r.vec(n, 0.5)
            };
            HostTensor::new(shape, data)
        })
        .collect()
}

fn upload(e: &Engine, h: &HostTensor) -> Tensor {
    Tensor::from_slice(
        e,
        &h.shape,
        &h.data.iter().map(|&v| v as f32).collect::<Vec<_>>(),
    )
    .unwrap()
}

#[test]
fn unet_forward_and_parameter_gradients_match_the_cpu_reference() {
    let e = engine();
    let cfg = tiny(ModelKind::Prox);
    let (model, pb) = Model::build(&cfg, 0).unwrap();
    let params = random_params(&pb.into_params(), 7);
    let mut r = Lcg(99);
    let (n, hw) = (2, 4);
    let x = HostTensor::new(&[n, 1, hw, hw], r.vec(n * hw * hw, 1.0));
    let (t, l) = ([0.3f32, 0.8], [0.05f32, 0.5]);
    let w = HostTensor::new(&[n, 1, hw, hw], r.vec(n * hw * hw, 1.0));

    let cpu_loss = |p: &[HostTensor]| -> f64 {
        let out = model.eps(&Cpu, p, &x, &t, Some(&l)).unwrap();
        out.data.iter().zip(&w.data).map(|(a, b)| a * b).sum()
    };
    let cpu_out = model.eps(&Cpu, &params, &x, &t, Some(&l)).unwrap();

    let g = Graph::new(&e);
    let pv: Vec<Var> = params.iter().map(|h| g.leaf(upload(&e, h))).collect();
    let be = Gpu {
        graph: &g,
        dropout_seed: None,
    };
    let xv = g.constant(upload(&e, &x));
    let out = model.eps(&be, &pv, &xv, &t, Some(&l)).unwrap();
    let gpu_out = out.tensor().to_vec().unwrap();
    let scale = cpu_out.data.iter().map(|v| v.abs()).fold(0.0, f64::max);
    for (a, b) in gpu_out.iter().zip(&cpu_out.data) {
        assert!(
            (*a as f64 - b).abs() < 1e-4 * (1.0 + scale),
            "forward: gpu {a} vs cpu {b}"
        );
    }

    let loss = g
        .sum_all(&g.mul(&out, &g.constant(upload(&e, &w))).unwrap())
        .unwrap();
    let refs: Vec<&Var> = pv.iter().collect();
    let grads = g.backward(&loss, &refs, false).unwrap();
    let mut checked = 0;
    for (k, (gk, p)) in grads.iter().zip(&params).enumerate() {
        let gk: Vec<f64> = gk
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no gradient", model.names[k]))
            .tensor()
            .to_vec()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let gscale = gk.iter().map(|v| v.abs()).fold(0.0, f64::max);
        // Three entries per tensor: first, middle, last.
        for i in [0, p.data.len() / 2, p.data.len() - 1] {
            let h = 1e-5;
            let mut pp = params.clone();
            pp[k].data[i] += h;
            let lp = cpu_loss(&pp);
            pp[k].data[i] -= 2.0 * h;
            let lm = cpu_loss(&pp);
            let fd = (lp - lm) / (2.0 * h);
            assert!(
                (gk[i] - fd).abs() <= 2e-3 * (fd.abs() + gscale) + 1e-6,
                "{}[{i}]: gradient {} vs finite difference {fd} (tensor max |g| {gscale})",
                model.names[k],
                gk[i]
            );
            checked += 1;
        }
    }
    assert!(checked > 150, "checked {checked} entries");
}

#[test]
fn parameter_names_and_counts_follow_the_reference() {
    let (m, pb) = Model::build(&tiny(ModelKind::Prox), 0).unwrap();
    for want in [
        "time_embedding.embedding_mlp.0.weight",
        "lamb_embedding.embedding_mlp.2.bias",
        "unet.head.weight",
        "unet.downblocks.0.block1.0.weight",
        "unet.downblocks.0.block1.2.weight",
        "unet.downblocks.0.temb_proj.1.weight",
        "unet.downblocks.0.block2.3.bias",
        "unet.downblocks.1.main.weight",
        "unet.downblocks.2.attn.proj_q.weight",
        "unet.middleblocks.0.attn.group_norm.bias",
        "unet.upblocks.0.shortcut.weight",
        "unet.upblocks.2.main.weight",
        "unet.tail.2.weight",
    ] {
        assert!(m.names.iter().any(|n| n == want), "missing {want}");
    }
    let params = pb.into_params();
    let shape = |name: &str| params.iter().find(|p| p.0 == name).unwrap().1.clone();
    assert_eq!(shape("unet.upblocks.0.block1.2.weight"), vec![32, 64, 3, 3]);
    assert_eq!(shape("time_embedding.embedding_mlp.0.weight"), vec![64, 32]);
    // The DDPM CIFAR-10 UNet (ch 128, mult [1,2,2,2], attention at 16×16, 2 blocks): 35.7 M.
    let cifar = ModelConfig {
        kind: ModelKind::Score,
        unet: UNetConfig {
            ch: 128,
            ch_mult: vec![1, 2, 2, 2],
            attn: vec![1],
            num_res_blocks: 2,
            dropout: 0.1,
            in_ch: 3,
            ..Default::default()
        },
        sde: Default::default(),
    };
    let (_, pb) = Model::build(&cifar, 0).unwrap();
    let n: usize = pb.into_params().iter().map(|p| p.2.len()).sum();
    assert_eq!(n, 35_746_307, "DDPM CIFAR-10 UNet parameter count");
}

/// With the UNet's last convolution zeroed, a prox network with the Gaussian skip is the
/// closed-form prox of N(0, v_t I), v_t = α(t)σ_d² + 1 − α(t) with σ_d = 0.5: v_t·y/(v_t + λ);
/// without the skip it is the identity.
#[test]
fn the_gaussian_skip_is_the_prox_of_the_gaussian_marginal() {
    let e = engine();
    let (t, lam) = ([0.05f32, 0.5, 0.95], [0.02f32, 0.4, 1.9]);
    let y: Vec<f32> = Lcg(5).vec(3 * 16, 2.0).iter().map(|&v| v as f32).collect();
    for skip in [Skip::Gaussian, Skip::None] {
        let mut cfg = tiny(ModelKind::Prox);
        cfg.unet.skip = skip;
        let (model, pb) = Model::build(&cfg, 0).unwrap();
        let params: Vec<Tensor> = pb
            .into_params()
            .into_iter()
            .map(|(name, shape, data)| {
                let zero = name.starts_with("unet.tail.2.");
                let data: Vec<f32> = data.iter().map(|&v| if zero { 0.0 } else { v }).collect();
                Tensor::from_slice(&e, &shape, &data).unwrap()
            })
            .collect();
        let g = Graph::inference(&e);
        let p: Vec<Var> = params.into_iter().map(|t| g.constant(t)).collect();
        let yv = g.constant(Tensor::from_slice(&e, &[3, 1, 4, 4], &y).unwrap());
        let got = model
            .prox(&g, &p, &yv, &t, &lam)
            .unwrap()
            .tensor()
            .to_vec()
            .unwrap();
        for (i, (a, &yi)) in got.iter().zip(&y).enumerate() {
            let (ti, li) = (t[i / 16] as f64, lam[i / 16] as f64);
            let v = 1.0 - cfg.sde.alpha(ti) * 0.75;
            let want = match skip {
                Skip::Gaussian => v * yi as f64 / (v + li),
                Skip::None => yi as f64,
            };
            assert!(
                (*a as f64 - want).abs() < 1e-5,
                "{skip:?} [{i}]: {a} vs {want}"
            );
        }
    }
}

#[test]
fn forward_is_deterministic_and_init_is_reproducible() {
    let e = engine();
    let cfg = tiny(ModelKind::Score);
    let (model, pb) = Model::build(&cfg, 3).unwrap();
    let (_, pb2) = Model::build(&cfg, 3).unwrap();
    assert_eq!(
        pb.into_params()
            .iter()
            .map(|p| p.2.clone())
            .collect::<Vec<_>>(),
        pb2.into_params()
            .iter()
            .map(|p| p.2.clone())
            .collect::<Vec<_>>()
    );
    let (_, pb) = Model::build(&cfg, 3).unwrap();
    let store = pb.finish(&e).unwrap();
    let run = || {
        let g = Graph::inference(&e);
        let p = store.vars(&g);
        let x = g.constant(Tensor::full(&e, &[2, 1, 8, 8], 0.25).unwrap());
        model
            .score(&g, &p, &x, &[0.5, 0.9])
            .unwrap()
            .tensor()
            .to_vec()
            .unwrap()
    };
    let a = run();
    assert_eq!(a, run());
    assert!(a.iter().all(|v| v.is_finite()));
    let bad = Graph::inference(&e);
    let p = store.vars(&bad);
    let x = bad.constant(Tensor::full(&e, &[2, 1, 7, 8], 0.0).unwrap());
    let err = model
        .score(&bad, &p, &x, &[0.5, 0.5])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unet") && err.contains("[2, 1, 7, 8]") && err.contains("divisible by 2"),
        "{err}"
    );
}

/// The largest tensor of a forward per 32×32 image, counted by hand: for both presets the
/// first concatenation at the top of the up path, 32×32 pixels of the 2·ch channels coming up
/// from 16×16 and the ch-channel skip (the attention logits at 16×16, 256 × 256, are smaller).
#[test]
fn preset_largest_tensors_are_the_top_concatenation() {
    use proxdm::models::{Model, ModelConfig, ModelKind, UNetConfig};
    for (unet, want) in [
        (UNetConfig::default(), (2 * 32 + 32) * 32 * 32),
        (UNetConfig::mnist_reference(), (2 * 64 + 64) * 32 * 32),
    ] {
        for kind in [ModelKind::Prox, ModelKind::Score] {
            let cfg = ModelConfig {
                kind,
                unet: unet.clone(),
                sde: Default::default(),
            };
            let (model, _) = Model::build(&cfg, 0).unwrap();
            assert_eq!(model.largest_tensor(32).unwrap(), want, "{unet:?}");
        }
    }
}

/// FLOPs per 32×32 image, counted by running each preset's forward on shapes, against the
/// figures measured independently with PyTorch's profiler for the same networks (issue #6:
/// ≈ 0.56 GFLOP for the small preset, ≈ 3.2 GFLOP for the reference MNIST network).
#[test]
fn preset_flops_match_independent_counts() {
    use proxdm::models::{Model, ModelConfig, ModelKind, UNetConfig};
    for (unet, want) in [
        (UNetConfig::default(), 0.56e9),
        (UNetConfig::mnist_reference(), 3.2e9),
    ] {
        let cfg = ModelConfig {
            kind: ModelKind::Prox,
            unet: unet.clone(),
            sde: Default::default(),
        };
        let (model, _) = Model::build(&cfg, 0).unwrap();
        let f = model.forward_flops(32).unwrap();
        assert!(
            (f / want - 1.0).abs() < 0.1,
            "{unet:?}: {:.3} GFLOP per image, expected ≈ {:.2}",
            f / 1e9,
            want / 1e9
        );
    }
}

#[test]
fn a_deepened_network_computes_what_the_original_did() {
    use proxdm::models::deepen::deepen;
    let mut cfg = tiny(ModelKind::Prox);
    cfg.unet.ch_mult = vec![1, 2]; // channel changes on both paths; attention on level 1
    let (model, pb) = Model::build(&cfg, 0).unwrap();
    let params = random_params(&pb.into_params(), 11);
    let old: Vec<(String, Vec<usize>, Vec<f32>)> = model
        .names
        .iter()
        .zip(&params)
        .map(|(n, h)| {
            let v = h.data.iter().map(|&v| v as f32).collect();
            (n.clone(), h.shape.clone(), v)
        })
        .collect();
    let mut r = Lcg(5);
    let (n, hw) = (2, 4);
    let x = HostTensor::new(&[n, 1, hw, hw], r.vec(n * hw * hw, 1.0));
    let (t, l) = ([0.3f32, 0.8], [0.05f32, 0.5]);
    let host = |ps: &[(String, Vec<usize>, Vec<f32>)]| -> Vec<HostTensor> {
        ps.iter()
            .map(|(_, s, v)| HostTensor::new(s, v.iter().map(|&v| v as f64).collect()))
            .collect()
    };
    let before = model.eps(&Cpu, &host(&old), &x, &t, Some(&l)).unwrap();

    let (cfg3, grown) = deepen(&cfg, &old, 3, 1).unwrap();
    assert_eq!(cfg3.unet.num_res_blocks, 3);
    let (model3, pb3) = Model::build(&cfg3, 0).unwrap();
    let names3: Vec<&str> = pb3.names().collect();
    let got: Vec<&str> = grown.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(got, names3, "definition order of the deeper network");
    assert!(grown.len() > old.len());
    let max_diff = |a: &HostTensor, b: &HostTensor| {
        a.data
            .iter()
            .zip(&b.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    };
    let after = model3.eps(&Cpu, &host(&grown), &x, &t, Some(&l)).unwrap();
    let diff = max_diff(&before, &after);
    assert!(diff < 1e-9, "deepened output differs by {diff}");

    // The new blocks are on the path: un-zeroing one new block's output conv (down and up)
    // changes the output.
    for name in [
        "unet.downblocks.2.block2.3.weight",
        "unet.upblocks.1.block2.3.weight",
    ] {
        let mut p = grown.clone();
        let i = p.iter().position(|q| q.0 == name).unwrap();
        assert!(p[i].2.iter().all(|&v| v == 0.0), "{name} starts at zero");
        p[i].2.iter_mut().for_each(|v| *v = 0.1);
        let moved = model3.eps(&Cpu, &host(&p), &x, &t, Some(&l)).unwrap();
        let d = max_diff(&before, &moved);
        assert!(d > 1e-3, "{name} does not reach the output ({d})");
    }
    // Not shallower, and not from a mismatched file.
    assert!(deepen(&cfg, &old, 1, 1).is_err());
    assert!(deepen(&cfg, &old[1..], 2, 1).is_err());
}
