//! Learned proximal networks: ψ on the GPU against the f64 CPU backend, convexity of ψ and
//! monotonicity of f = ∇ψ after clipping, f against finite differences of ψ, and the
//! second-order parameter gradient against finite differences of the first-order map.

use proxdm::graph::{Graph, ParamStore, Var};
use proxdm::models::lpn::{Lpn, LpnArch, LpnConfig};
use proxdm::nn::{Cpu, HostTensor};
use proxdm::ops::elementwise::UnaryOp;
use proxdm::{Engine, Tensor};

fn engine() -> Engine {
    Engine::new().unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
}

/// Reproducible values in [lo, hi), rounded to f32.
fn vals(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            (lo + (hi - lo) * u) as f32 as f64
        })
        .collect()
}

fn mlp(cond: bool) -> LpnConfig {
    LpnConfig {
        arch: LpnArch::Mlp,
        in_ch: 3,
        size: 0,
        hidden: 6,
        layers: 2,
        beta: 2.0,
        alpha: 0.05,
        cond,
        emb: 4,
    }
}

fn conv() -> LpnConfig {
    LpnConfig {
        arch: LpnArch::Conv,
        in_ch: 1,
        size: 8,
        hidden: 3,
        beta: 2.0,
        alpha: 0.05,
        ..LpnConfig::default()
    }
}

/// The network with random weights of order one: the non-negative ones drawn in [-1, 1] and
/// clipped (so some are exactly zero), the others in [-1, 1].
fn random(config: &LpnConfig, seed: u64) -> (Lpn, Vec<HostTensor>) {
    let (lpn, pb) = Lpn::build(config, 0).unwrap();
    let params = pb
        .into_params()
        .into_iter()
        .enumerate()
        .map(|(i, (_, shape, v))| {
            let fan: usize = shape[1..].iter().product::<usize>().max(1);
            let scale = 1.5 / (fan as f64).sqrt();
            let mut d = vals(v.len(), seed + i as u64, -scale, scale);
            if lpn.nonneg.contains(&i) {
                d.iter_mut().for_each(|x| *x = x.max(0.0));
            }
            HostTensor::new(&shape, d)
        })
        .collect();
    (lpn, params)
}

fn store(e: &Engine, lpn: &Lpn, params: &[HostTensor]) -> ParamStore {
    let mut s = ParamStore::new();
    for (name, h) in lpn.names.iter().zip(params) {
        let v: Vec<f32> = h.data.iter().map(|&x| x as f32).collect();
        s.insert(name.clone(), Tensor::from_slice(e, &h.shape, &v).unwrap());
    }
    s
}

fn t_lamb(n: usize) -> (Vec<f32>, Vec<f32>) {
    let t = (0..n).map(|i| 0.1 + 0.8 * i as f32 / n as f32).collect();
    let l = (0..n).map(|i| 0.02 + 0.3 * i as f32 / n as f32).collect();
    (t, l)
}

/// ψ of each input on the CPU in f64.
fn cpu_psi(
    lpn: &Lpn,
    p: &[HostTensor],
    y: &[f64],
    n: usize,
    tl: Option<&(Vec<f32>, Vec<f32>)>,
) -> Vec<f64> {
    let be = Cpu;
    let yv = HostTensor::new(&lpn.config.input_shape(n), y.to_vec());
    let cond = tl.map(|(t, l)| {
        let t = HostTensor::new(&[n], t.iter().map(|&v| v as f64).collect());
        let l = HostTensor::new(&[n], l.iter().map(|&v| v as f64).collect());
        lpn.embedding(&be, p, &t, &l).unwrap().unwrap()
    });
    lpn.psi(&be, p, &yv, cond.as_ref()).unwrap().data
}

/// f = ∇ψ on the CPU by central differences in f64.
fn cpu_f(
    lpn: &Lpn,
    p: &[HostTensor],
    y: &[f64],
    n: usize,
    tl: Option<&(Vec<f32>, Vec<f32>)>,
) -> Vec<f64> {
    let m = y.len() / n;
    let h = 1e-5;
    let mut f = vec![0.0; y.len()];
    for j in 0..m {
        let (mut yp, mut ym) = (y.to_vec(), y.to_vec());
        for s in 0..n {
            yp[s * m + j] += h;
            ym[s * m + j] -= h;
        }
        let (pp, pm) = (cpu_psi(lpn, p, &yp, n, tl), cpu_psi(lpn, p, &ym, n, tl));
        for s in 0..n {
            f[s * m + j] = (pp[s] - pm[s]) / (2.0 * h);
        }
    }
    f
}

fn gpu_f(
    e: &Engine,
    lpn: &Lpn,
    st: &ParamStore,
    y: &[f64],
    n: usize,
    tl: Option<&(Vec<f32>, Vec<f32>)>,
) -> Vec<f64> {
    let g = Graph::new(e);
    let p = st.vars(&g);
    let yt = Tensor::from_slice(
        e,
        &lpn.config.input_shape(n),
        &y.iter().map(|&v| v as f32).collect::<Vec<_>>(),
    )
    .unwrap();
    let tl = tl.map(|(t, l)| (&t[..], &l[..]));
    let f = lpn.prox(&g, &p, &yt, tl, false).unwrap();
    f.tensor()
        .to_vec()
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect()
}

#[test]
fn psi_on_the_gpu_matches_the_cpu_and_f_matches_finite_differences() {
    let e = engine();
    for (config, n) in [(mlp(false), 5), (mlp(true), 4), (conv(), 3)] {
        let (lpn, p) = random(&config, 7);
        let st = store(&e, &lpn, &p);
        let tl = config.cond.then(|| t_lamb(n));
        let y = vals(n * config.input_len(), 3, -1.0, 1.0);
        // ψ itself.
        let g = Graph::new(&e);
        let pv = st.vars(&g);
        let be = proxdm::nn::Gpu::inference(&g);
        let yv = g.constant(
            Tensor::from_slice(
                &e,
                &config.input_shape(n),
                &y.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            )
            .unwrap(),
        );
        let cond = tl.as_ref().map(|(t, l)| {
            let t = g.constant(Tensor::from_slice(&e, &[n], t).unwrap());
            let l = g.constant(Tensor::from_slice(&e, &[n], l).unwrap());
            lpn.embedding(&be, &pv, &t, &l).unwrap().unwrap()
        });
        let psi_gpu = lpn.psi(&be, &pv, &yv, cond.as_ref()).unwrap();
        let psi_gpu = psi_gpu.tensor().to_vec().unwrap();
        let psi_cpu = cpu_psi(&lpn, &p, &y, n, tl.as_ref());
        for (a, b) in psi_gpu.iter().zip(&psi_cpu) {
            assert!(
                (*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()),
                "{config:?}: ψ {a} vs {b}"
            );
        }
        // f = ∇ψ from the reverse pass against central differences of the CPU ψ.
        let f = gpu_f(&e, &lpn, &st, &y, n, tl.as_ref());
        let fd = cpu_f(&lpn, &p, &y, n, tl.as_ref());
        let scale = fd.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(scale > 1e-3, "{config:?}: f is not trivially zero");
        for (i, (a, b)) in f.iter().zip(&fd).enumerate() {
            assert!(
                (a - b).abs() < 2e-4 * (1.0 + scale),
                "{config:?}: f[{i}] {a} vs {b}"
            );
        }
    }
}

#[test]
fn psi_is_convex_along_segments_and_f_is_monotone() {
    let e = engine();
    for (config, seed) in [(mlp(false), 1), (mlp(true), 2), (conv(), 3)] {
        let (lpn, p) = random(&config, seed);
        let m = config.input_len();
        let tl1 = config.cond.then(|| (vec![0.3f32], vec![0.1f32]));
        // Second differences of ψ along random segments (f64, exact arithmetic up to rounding).
        for s in 0..8u64 {
            let a = vals(m, 100 + s, -2.0, 2.0);
            let b = vals(m, 200 + s, -2.0, 2.0);
            let k = 24;
            let along: Vec<f64> = (0..=k)
                .map(|i| {
                    let u = i as f64 / k as f64;
                    let y: Vec<f64> = a
                        .iter()
                        .zip(&b)
                        .map(|(x, z)| (1.0 - u) * x + u * z)
                        .collect();
                    cpu_psi(&lpn, &p, &y, 1, tl1.as_ref())[0]
                })
                .collect();
            for w in along.windows(3) {
                let d2 = w[0] - 2.0 * w[1] + w[2];
                assert!(
                    d2 >= -1e-12 * (1.0 + w[1].abs()),
                    "{config:?}: ψ not convex, Δ² = {d2}"
                );
            }
        }
        // Monotonicity of the GPU f: ⟨f(a) − f(b), a − b⟩ ≥ 0, on 16 random pairs at once.
        let n = 16;
        let st = store(&e, &lpn, &p);
        let tl = config.cond.then(|| (vec![0.3f32; n], vec![0.1f32; n]));
        let a = vals(n * m, 5, -2.0, 2.0);
        let b = vals(n * m, 6, -2.0, 2.0);
        let (fa, fb) = (
            gpu_f(&e, &lpn, &st, &a, n, tl.as_ref()),
            gpu_f(&e, &lpn, &st, &b, n, tl.as_ref()),
        );
        for s in 0..n {
            let r = s * m..(s + 1) * m;
            let ip: f64 = r.clone().map(|i| (fa[i] - fb[i]) * (a[i] - b[i])).sum();
            let d2: f64 = r.map(|i| (a[i] - b[i]).powi(2)).sum();
            // α‖y‖² makes ψ 2α-strongly convex: ⟨f(a) − f(b), a − b⟩ ≥ 2α‖a − b‖².
            assert!(
                ip >= 2.0 * config.alpha as f64 * d2 * (1.0 - 1e-3) - 1e-5,
                "{config:?}: pair {s}: ⟨f(a)−f(b), a−b⟩ = {ip} < 2α‖a−b‖² = {}",
                2.0 * config.alpha as f64 * d2
            );
        }
    }
}

#[test]
fn second_order_parameter_gradient_matches_finite_differences() {
    let e = engine();
    for (config, n) in [(mlp(true), 3), (conv(), 2)] {
        let (lpn, p) = random(&config, 11);
        let st = store(&e, &lpn, &p);
        let m = config.input_len();
        let tl = config.cond.then(|| t_lamb(n));
        let y = vals(n * m, 21, -1.0, 1.0);
        let target = vals(n * m, 22, -1.0, 1.0);
        // L(θ) = Σ (f_θ(y) − target)², its gradient through ∇_y ψ on the GPU.
        let g = Graph::new(&e);
        let pv = st.vars(&g);
        let yt = Tensor::from_slice(
            &e,
            &config.input_shape(n),
            &y.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        )
        .unwrap();
        let tls = tl.as_ref().map(|(t, l)| (&t[..], &l[..]));
        let f = lpn.prox(&g, &pv, &yt, tls, true).unwrap();
        let tt = Tensor::from_slice(
            &e,
            f.shape(),
            &target.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        )
        .unwrap();
        let diff = g.sub(&f, &g.constant(tt)).unwrap();
        let loss = g
            .sum_all(&g.unary(&diff, UnaryOp::Square).unwrap())
            .unwrap();
        let refs: Vec<&Var> = pv.iter().collect();
        let grads = g.backward(&loss, &refs, false).unwrap();
        let cpu_loss = |q: &[HostTensor]| -> f64 {
            cpu_f(&lpn, q, &y, n, tl.as_ref())
                .iter()
                .zip(&target)
                .map(|(a, b)| (a - b).powi(2))
                .sum()
        };
        // One random direction per parameter tensor: ⟨∇L, v⟩ against (L(θ+hv) − L(θ−hv))/2h.
        let mut checked = 0;
        for (k, gk) in grads.iter().enumerate() {
            let Some(gk) = gk else {
                panic!("{config:?}: no gradient for {}", lpn.names[k]);
            };
            let gk = gk.tensor().to_vec().unwrap();
            let v = vals(gk.len(), 300 + k as u64, -1.0, 1.0);
            let analytic: f64 = gk.iter().zip(&v).map(|(a, b)| *a as f64 * b).sum();
            let h = 1e-4;
            let shifted = |sign: f64| {
                let mut q = p.to_vec();
                q[k].data
                    .iter_mut()
                    .zip(&v)
                    .for_each(|(x, d)| *x += sign * h * d);
                cpu_loss(&q)
            };
            let fd = (shifted(1.0) - shifted(-1.0)) / (2.0 * h);
            assert!(
                (analytic - fd).abs() <= 2e-3 * (1.0 + fd.abs()),
                "{config:?}: {}: second-order gradient {analytic} vs finite difference {fd}",
                lpn.names[k]
            );
            checked += 1;
        }
        assert_eq!(checked, lpn.names.len());
    }
}

#[test]
fn clipping_zeroes_exactly_the_negative_constrained_weights() {
    let e = engine();
    let config = mlp(true);
    let (lpn, _) = Lpn::build(&config, 0).unwrap();
    let (_, p) = random(&config, 4);
    // Make every weight negative somewhere, then clip.
    let p: Vec<HostTensor> = p
        .into_iter()
        .map(|h| {
            HostTensor::new(
                &h.shape,
                h.data
                    .iter()
                    .enumerate()
                    .map(|(i, v)| if i % 2 == 0 { -v.abs() - 0.1 } else { v.abs() })
                    .collect(),
            )
        })
        .collect();
    let mut st = store(&e, &lpn, &p);
    lpn.clip(&mut st).unwrap();
    let host: Vec<Vec<f32>> = st.tensors().iter().map(|t| t.to_vec().unwrap()).collect();
    assert_eq!(lpn.check_nonneg(&host), None);
    for (i, (after, before)) in host.iter().zip(&p).enumerate() {
        for (a, b) in after.iter().zip(&before.data) {
            let want = if lpn.nonneg.contains(&i) {
                b.max(0.0)
            } else {
                *b
            };
            assert_eq!(*a as f64, want as f32 as f64, "{}", lpn.names[i]);
        }
    }
    // Which weights are constrained: the chain's lin.k for k ≥ 1, nothing else.
    let names: Vec<&str> = lpn.nonneg.iter().map(|&i| lpn.names[i].as_str()).collect();
    assert_eq!(names, ["lin.1.weight", "lin.2.weight", "lin.3.weight"]);
    let unclipped = p
        .iter()
        .map(|h| h.data.iter().map(|&v| v as f32).collect())
        .collect::<Vec<Vec<f32>>>();
    let (name, _, v) = lpn
        .check_nonneg(&unclipped)
        .expect("negative weights are found");
    assert!(name == "lin.1.weight" && v < 0.0);
}

#[test]
fn conv_lpn_layout_follows_the_reference() {
    let (lpn, pb) = Lpn::build(&LpnConfig::default(), 0).unwrap();
    let shapes: Vec<(String, Vec<usize>)> = pb
        .into_params()
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect();
    let want: Vec<(&str, Vec<usize>)> = vec![
        ("lin.0.weight", vec![64, 1, 3, 3]),
        ("lin.1.weight", vec![64, 64, 3, 3]),
        ("res.0.weight", vec![64, 1, 3, 3]),
        ("res.0.bias", vec![64]),
        ("lin.2.weight", vec![64, 64, 3, 3]),
        ("res.1.weight", vec![64, 1, 3, 3]),
        ("res.1.bias", vec![64]),
        ("lin.3.weight", vec![64, 64, 3, 3]),
        ("res.2.weight", vec![64, 1, 3, 3]),
        ("res.2.bias", vec![64]),
        ("lin.4.weight", vec![64, 64 * 7 * 7]),
        ("res.3.weight", vec![64, 49]),
        ("res.3.bias", vec![64]),
        ("lin.5.weight", vec![1, 64]),
    ];
    let got: Vec<(&str, Vec<usize>)> = shapes
        .iter()
        .map(|(n, s)| (n.as_str(), s.clone()))
        .collect();
    assert_eq!(got, want);
    // FLOPs of ψ on a 28×28 image: 2·(conv 1→64 at 28² + three 64→64 convs at 14², 14², 7²
    // + the res convs + the linear maps), counted independently here.
    let conv = |cin: usize, cout: usize, side: usize| 2.0 * (cin * cout * 9 * side * side) as f64;
    let fc = |a: usize, b: usize| 2.0 * (a * b) as f64;
    let down = |side: usize, f: usize| conv(1, 1, side) * (f * f) as f64 / 9.0;
    let want = conv(1, 64, 28)
        + conv(64, 64, 14)
        + conv(1, 64, 14)
        + conv(64, 64, 14)
        + conv(1, 64, 14)
        + down(14, 2)
        + conv(64, 64, 7)
        + conv(1, 64, 7)
        + fc(64 * 49, 64)
        + fc(49, 64)
        + down(7, 4)
        + fc(64, 1);
    let got = lpn.forward_flops().unwrap();
    assert!((got - want).abs() < 1e-6 * want, "FLOPs {got} vs {want}");
}

// ---- training -------------------------------------------------------------------------

use proxdm::diffusion::train::{Net, RunConfig, SplitMix, TrainConfig, Trainer};
use proxdm::io::datasets::Images;
use proxdm::models::ModelKind;

fn lpn_run(lpn: LpnConfig, train: TrainConfig) -> RunConfig {
    RunConfig {
        kind: ModelKind::Lpn,
        unet: Default::default(),
        sde: Default::default(),
        lpn: Some(lpn),
        train,
    }
}

/// 12×12 images (cropped to the LPN's 8×8 by the trainer): a bright bar on a dark background.
fn bars(n: usize) -> Images {
    let mut rng = SplitMix::new(5);
    let mut data = Vec::with_capacity(n * 144);
    for _ in 0..n {
        let (vertical, at) = (rng.below(2) == 0, 2 + rng.below(8));
        for y in 0..12 {
            for x in 0..12 {
                let on = if vertical { x == at } else { y == at };
                data.push(if on { 1.0 } else { -1.0 });
            }
        }
    }
    Images {
        shape: [n, 1, 12, 12],
        data,
        labels: None,
    }
}

/// Points on a circle of radius 1 (2D data for the MLP LPN, stored as (N, 2, 1, 1)).
fn circle(n: usize) -> Images {
    let data = (0..n)
        .flat_map(|i| {
            let a = i as f32 * 2.399;
            [a.cos(), a.sin()]
        })
        .collect();
    Images {
        shape: [n, 2, 1, 1],
        data,
        labels: None,
    }
}

fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len() as f32
}

#[test]
fn training_a_denoising_lpn_lowers_the_loss_and_keeps_psi_convex() {
    let e = engine();
    let data = bars(64);
    let cfg = lpn_run(
        LpnConfig {
            hidden: 8,
            ..conv()
        },
        TrainConfig {
            batch: 16,
            iters: 40,
            l1_iters: 20,
            l1_lr: 1e-2,
            pm_lr: 1e-3,
            zeta_start: 0.5,
            zeta_stages: 2,
            sigma: 0.3,
            ema_decay: 0.9,
            ..Default::default()
        },
    );
    let mut tr = Trainer::new(&e, cfg, &data).unwrap();
    let losses: Vec<f32> = (0..20).map(|_| tr.step().unwrap().loss).collect();
    let (head, tail) = (mean(&losses[..5]), mean(&losses[15..]));
    assert!(
        tail < 0.8 * head,
        "L1 loss {head} → {tail}: the LPN does not learn"
    );
    for _ in 20..40 {
        assert!(tr.step().unwrap().loss.is_finite());
    }
    // The constrained weights stayed non-negative, in the live weights and in the EMA.
    let Net::Lpn(lpn) = &tr.model else {
        panic!("an LPN run")
    };
    for (k, store) in [&tr.store, &tr.ema_store()].into_iter().enumerate() {
        let host: Vec<Vec<f32>> = store
            .tensors()
            .iter()
            .map(|t| t.to_vec().unwrap())
            .collect();
        assert_eq!(lpn.check_nonneg(&host), None);
        let zeros: usize = lpn
            .nonneg
            .iter()
            .map(|&i| host[i].iter().filter(|&&v| v == 0.0).count())
            .sum();
        // The live weights: Adam pushed some below zero, the step projected them back.
        assert!(k == 1 || zeros > 0, "no weight was projected");
    }
    // The saved EMA weights load as an LPN and give the same f.
    let path = std::env::temp_dir().join(format!("proxdm-lpn-{}.safetensors", std::process::id()));
    tr.save_model(&path).unwrap();
    let (back, st) = proxdm::io::weights::load_lpn(&path, &e).unwrap();
    let kind = proxdm::io::weights::kind(&path).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(
        kind,
        proxdm::io::weights::Kind::Lpn(back.config.clone(), Some("denoise sigma=0.3".into()))
    );
    let y = vals(2 * 64, 9, -1.0, 1.0);
    let a = gpu_f(&e, &back, &st, &y, 2, None);
    let exported = tr.export_store().unwrap();
    let b = gpu_f(&e, lpn, &exported, &y, 2, None);
    assert_eq!(a, b);
    // The export is the debiased EMA: (ema − dᵏθ₀)/(1 − dᵏ), θ₀ the seed's initial weights.
    let (_, pb) = Net::build(&tr.cfg, tr.cfg.train.seed).unwrap();
    let dk = 0.9f64.powi(40);
    for (i, (_, _, init)) in pb.into_params().into_iter().enumerate() {
        let raw = tr.ema_store().tensors()[i].to_vec().unwrap();
        let got = exported.tensors()[i].to_vec().unwrap();
        for j in 0..raw.len() {
            let mut want = (raw[j] as f64 - dk * init[j] as f64) / (1.0 - dk);
            if lpn.nonneg.contains(&i) {
                want = want.max(0.0);
            }
            assert!(
                (got[j] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()),
                "{}[{j}]",
                lpn.names[i]
            );
        }
    }
}

#[test]
fn a_conditioned_mlp_lpn_learns_the_prox_objective() {
    let e = engine();
    let data = circle(256);
    let cfg = lpn_run(
        LpnConfig {
            hidden: 32,
            ..mlp(true)
        },
        TrainConfig {
            batch: 64,
            iters: 60,
            l1_iters: 60,
            l1_lr: 5e-3,
            step_candidates: vec![5],
            ..Default::default()
        },
    );
    let cfg = RunConfig {
        lpn: Some(LpnConfig {
            in_ch: 2,
            ..cfg.lpn()
        }),
        ..cfg
    };
    let mut tr = Trainer::new(&e, cfg, &data).unwrap();
    let losses: Vec<f32> = (0..60).map(|_| tr.step().unwrap().loss).collect();
    let (head, tail) = (mean(&losses[..10]), mean(&losses[50..]));
    assert!(
        tail < 0.9 * head,
        "L1 loss on ε {head} → {tail}: the LPN does not learn"
    );
}

#[test]
fn lpn_runs_refuse_data_that_does_not_fit() {
    let e = engine();
    let cfg = lpn_run(conv(), TrainConfig::default());
    let err = Trainer::new(&e, cfg, &circle(4)).err().unwrap().to_string();
    assert!(
        err.contains("does not fit the LPN") && err.contains("8×8"),
        "{err}"
    );
    let odd = Images {
        shape: [2, 1, 11, 11],
        data: vec![0.0; 242],
        labels: None,
    };
    let err = Trainer::new(&e, lpn_run(conv(), TrainConfig::default()), &odd)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("even margin"), "{err}");
    // A UNet's weights are not an LPN, and an LPN file is not a UNet.
    let bad = RunConfig {
        lpn: Some(LpnConfig {
            beta: 0.0,
            ..conv()
        }),
        ..lpn_run(conv(), TrainConfig::default())
    };
    assert!(bad.validate().unwrap_err().to_string().contains("β > 0"));
}

// ---- the learned regulariser ----------------------------------------------------------

use proxdm::diffusion::prior;

#[test]
fn prior_of_a_quadratic_psi_matches_the_closed_form() {
    let e = engine();
    for config in [mlp(false), conv()] {
        // Zero output maps: ψ(y) = α‖y‖², f(y) = 2αy, R(x) = (1/(4α) − ½)‖x‖².
        let (lpn, p) = random(&config, 1);
        let out: Vec<usize> = lpn
            .names
            .iter()
            .enumerate()
            .filter(|(i, n)| *i == *lpn.nonneg.last().unwrap() || n.starts_with("res.2."))
            .map(|(i, _)| i)
            .collect();
        let p: Vec<HostTensor> = p
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                if out.contains(&i) {
                    HostTensor::new(&h.shape, vec![0.0; h.data.len()])
                } else {
                    h
                }
            })
            .collect();
        let st = store(&e, &lpn, &p);
        let n = 3;
        let x: Vec<f32> = vals(n * config.input_len(), 8, -1.0, 1.0)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let pr = prior::evaluate(&e, &lpn, &st, &x, n, None, 1e-6, 200).unwrap();
        assert_eq!(pr.converged, n, "residuals {:?}", pr.residual);
        let a = config.alpha as f64;
        let m = config.input_len();
        for i in 0..n {
            let sq: f64 = x[i * m..(i + 1) * m]
                .iter()
                .map(|&v| (v as f64).powi(2))
                .sum();
            let want = (1.0 / (4.0 * a) - 0.5) * sq;
            assert!(
                (pr.r[i] - want).abs() < 1e-4 * want.abs(),
                "{config:?}: R = {} vs {want}",
                pr.r[i]
            );
        }
    }
}

#[test]
fn the_prior_inverts_f_and_f_minimises_the_prox_objective() {
    let e = engine();
    let config = mlp(true);
    let (lpn, p) = random(&config, 13);
    let st = store(&e, &lpn, &p);
    let (t, l) = (0.4f32, 0.2f32);
    let m = config.input_len();
    let y = vals(m, 31, -1.0, 1.0);
    // x* = f(y): the prox of R at y.
    let xs: Vec<f32> = gpu_f(&e, &lpn, &st, &y, 1, Some(&(vec![t], vec![l])))
        .iter()
        .map(|&v| v as f32)
        .collect();
    // Candidates: x* and points around it.
    let mut cands = xs.clone();
    for k in 0..6u64 {
        let d = vals(m, 40 + k, -0.2, 0.2);
        cands.extend(xs.iter().zip(&d).map(|(a, b)| a + *b as f32));
    }
    let pr = prior::evaluate(&e, &lpn, &st, &cands, 7, Some((t, l)), 1e-6, 500).unwrap();
    assert_eq!(pr.converged, 7, "residuals {:?}", pr.residual);
    // The inverse of f at x* is y (ψ is strongly convex: the inverse is unique).
    for (a, b) in pr.y[..m].iter().zip(&y) {
        assert!((*a as f64 - b).abs() < 1e-3, "inverse {a} vs {b}");
    }
    // ½‖x − y‖² + R(x) is smallest at x = f(y).
    let obj = |i: usize| -> f64 {
        let c = &cands[i * m..(i + 1) * m];
        0.5 * c
            .iter()
            .zip(&y)
            .map(|(a, b)| (*a as f64 - b).powi(2))
            .sum::<f64>()
            + pr.r[i]
    };
    for i in 1..7 {
        assert!(
            obj(0) <= obj(i) + 1e-6,
            "candidate {i}: {} < {} at f(y)",
            obj(i),
            obj(0)
        );
    }
}
