//! Samplers against closed forms: a Gaussian target whose score and prox are known exactly.

use proxdm::diffusion::Sde;
use proxdm::diffusion::oracles::Gaussian;
use proxdm::diffusion::samplers::*;
use proxdm::{Engine, Tensor};

fn engine() -> Engine {
    Engine::new().unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
}

const MEAN: [f32; 2] = [1.0, -2.0];
const STD: f64 = 0.5;

fn target(e: &Engine) -> Gaussian {
    Gaussian {
        sde: Sde::default(),
        mean: Tensor::from_slice(e, &[2], &MEAN).unwrap(),
        std: STD,
    }
}

/// Per-dimension mean and variance of (N, 2) samples.
fn moments(x: &Tensor) -> ([f64; 2], [f64; 2]) {
    let v = x.to_vec().unwrap();
    let n = (v.len() / 2) as f64;
    let mut m = [0.0; 2];
    let mut s = [0.0; 2];
    for (i, &x) in v.iter().enumerate() {
        m[i % 2] += x as f64 / n;
    }
    for (i, &x) in v.iter().enumerate() {
        s[i % 2] += (x as f64 - m[i % 2]).powi(2) / n;
    }
    (m, s)
}

#[test]
fn closed_form_score_and_prox_of_a_gaussian() {
    let e = engine();
    let g = target(&e);
    let sde = Sde::default();
    let x = Tensor::from_slice(&e, &[2, 2], &[0.0, 0.0, 3.0, 1.0]).unwrap();
    let t = 0.3f32;
    let a = sde.alpha(t as f64);
    let (mu, v) = ([a.sqrt() * 1.0, a.sqrt() * -2.0], a * STD * STD + 1.0 - a);
    let s = g.score(&x, t).unwrap().to_vec().unwrap();
    let xs = [0.0, 0.0, 3.0, 1.0];
    for i in 0..4 {
        let want = -(xs[i] - mu[i % 2]) / v;
        assert!(
            (s[i] as f64 - want).abs() < 1e-5,
            "score[{i}] {} vs {want}",
            s[i]
        );
    }
    // The prox satisfies its optimality condition u − y − λ∇ln p_t(u) = 0.
    let lambda = 0.7f32;
    let u = g.prox(&x, t, lambda).unwrap();
    let su = g.score(&u, t).unwrap().to_vec().unwrap();
    for (i, (uu, ss)) in u.to_vec().unwrap().iter().zip(su).enumerate() {
        let r = uu - xs[i] as f32 - lambda * ss;
        assert!(r.abs() < 1e-5, "optimality residual {r} at {i}");
    }
}

#[test]
fn every_sampler_reaches_the_gaussian_targets_moments_with_many_steps() {
    let e = engine();
    let g = target(&e);
    let sde = Sde::default();
    let n = 20_000;
    let steps = 200;
    let score: [(&str, ScoreSampler); 3] = [
        (
            "score-em",
            ScoreSampler::EulerMaruyama {
                eps_t: 1e-3,
                last_noise: false,
            },
        ),
        (
            "score-em-denoise",
            ScoreSampler::EulerMaruyamaDenoise { eps_t: 1e-3 },
        ),
        ("score-ode", ScoreSampler::ProbabilityFlow { eps_t: 1e-3 }),
    ];
    let mut results = Vec::new();
    for (name, k) in score {
        let x = sample_score(
            &g,
            &sde,
            k,
            steps,
            initial_noise(&e, &[n, 2], 1).unwrap(),
            1,
        )
        .unwrap();
        results.push((name, moments(&x)));
    }
    for (name, k) in [
        ("prox-hybrid", ProxSampler::Hybrid),
        ("prox-backward", ProxSampler::Backward),
    ] {
        let x = sample_prox(
            &g,
            &sde,
            k,
            steps,
            initial_noise(&e, &[n, 2], 1).unwrap(),
            1,
        )
        .unwrap();
        results.push((name, moments(&x)));
    }
    for (name, (m, v)) in results {
        for d in 0..2 {
            // Standard error of the mean 0.5/√20000 ≈ 0.0035; of the variance ≈ 0.0025.
            assert!(
                (m[d] - MEAN[d] as f64).abs() < 0.02,
                "{name}: mean[{d}] = {} vs {}",
                m[d],
                MEAN[d]
            );
            assert!(
                (v[d] - STD * STD).abs() < 0.02,
                "{name}: var[{d}] = {} vs {}",
                v[d],
                STD * STD
            );
        }
    }
}

#[test]
fn backward_sampler_refuses_too_few_steps_and_names_the_minimum() {
    let e = engine();
    let g = target(&e);
    let sde = Sde::default();
    assert_eq!(min_backward_steps(&sde), 10);
    let err = sample_prox(
        &g,
        &sde,
        ProxSampler::Backward,
        9,
        initial_noise(&e, &[4, 2], 0).unwrap(),
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("at least 10 steps") && err.contains("≥ 2"),
        "{err}"
    );
    assert!(
        sample_prox(
            &g,
            &sde,
            ProxSampler::Backward,
            10,
            initial_noise(&e, &[4, 2], 0).unwrap(),
            0
        )
        .is_ok()
    );
}

#[test]
fn same_seed_same_samples_other_seed_other_samples() {
    let e = engine();
    let g = target(&e);
    let sde = Sde::default();
    let run = |seed| {
        sample_prox(
            &g,
            &sde,
            ProxSampler::Hybrid,
            5,
            initial_noise(&e, &[64, 2], seed).unwrap(),
            seed,
        )
        .unwrap()
        .to_vec()
        .unwrap()
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4));
    let em = |seed| {
        let k = ScoreSampler::EulerMaruyama {
            eps_t: 1e-3,
            last_noise: false,
        };
        sample_score(
            &g,
            &sde,
            k,
            5,
            initial_noise(&e, &[64, 2], seed).unwrap(),
            seed,
        )
        .unwrap()
        .to_vec()
        .unwrap()
    };
    assert_eq!(em(3), em(3));
    assert_ne!(em(3), em(4));
}

#[test]
fn prox_samplers_on_a_two_point_mixture_split_mass_evenly_in_few_steps() {
    use proxdm::diffusion::oracles::Mixture;
    let e = engine();
    let pts = Tensor::from_slice(&e, &[2, 2], &[-1.0, 0.0, 1.0, 0.0]).unwrap();
    let mix = Mixture::new(Sde::default(), pts);
    let n = 4000;
    for (kind, steps) in [(ProxSampler::Hybrid, 5), (ProxSampler::Backward, 10)] {
        let x = sample_prox(
            &mix,
            &Sde::default(),
            kind,
            steps,
            initial_noise(&e, &[n, 2], 7).unwrap(),
            7,
        )
        .unwrap();
        let v = x.to_vec().unwrap();
        // The last prox is at t = 0: every sample lands exactly on a target point.
        assert!(
            v.chunks(2)
                .all(|p| (p[0].abs() - 1.0).abs() < 1e-6 && p[1] == 0.0),
            "{kind:?}"
        );
        let right = v.chunks(2).filter(|p| p[0] > 0.0).count() as f64 / n as f64;
        // Binomial standard error √(0.25/4000) ≈ 0.008.
        assert!(
            (right - 0.5).abs() < 0.04,
            "{kind:?}: {right} of the mass on the right point"
        );
        let (bad, worst) = mix.take_unconverged().unwrap();
        assert_eq!(
            bad, 0,
            "{kind:?}: non-converged prox points (worst residual {worst})"
        );
    }
    // The exact score drives Euler–Maruyama to the points with many steps.
    let k = ScoreSampler::EulerMaruyamaDenoise { eps_t: 1e-3 };
    let x = sample_score(
        &mix,
        &Sde::default(),
        k,
        500,
        initial_noise(&e, &[n, 2], 8).unwrap(),
        8,
    )
    .unwrap();
    let v = x.to_vec().unwrap();
    let near = v
        .chunks(2)
        .filter(|p| ((p[0].abs() - 1.0).powi(2) + p[1].powi(2)).sqrt() < 0.1)
        .count();
    assert!(
        near as f64 > 0.95 * n as f64,
        "only {near} of {n} samples near a point"
    );
}

#[test]
fn time_of_inverts_the_integrated_beta() {
    for sde in [
        Sde::default(),
        Sde {
            beta_min: 1.0,
            beta_max: 1.0,
        },
    ] {
        for t in [0.0, 1e-4, 0.05, 0.5, 1.0, 1.7] {
            let back = sde.time_of(sde.integral(0.0, t));
            assert!(
                (back - t).abs() < 1e-12 * (1.0 + t),
                "{sde:?}: {t} -> {back}"
            );
        }
    }
}

/// For a Gaussian target the posterior mean is the posterior mode, so Tweedie's formula applied
/// to the exact score is the exact prox, at every (t, λ) including t = 0.
#[test]
fn tweedie_on_a_gaussian_score_is_the_gaussian_prox() {
    use proxdm::diffusion::oracles::Tweedie;
    let e = engine();
    let g = target(&e);
    let tw = Tweedie {
        score: &g,
        sde: Sde::default(),
    };
    let y = Tensor::from_slice(&e, &[3, 2], &[0.0, 0.0, 3.0, 1.0, -2.5, 0.4]).unwrap();
    for (t, lambda) in [(0.0f32, 0.05f32), (0.3, 0.7), (0.9, 3.0)] {
        let want = g.prox(&y, t, lambda).unwrap().to_vec().unwrap();
        let got = tw.prox(&y, t, lambda).unwrap().to_vec().unwrap();
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 1e-4, "t {t} λ {lambda} [{i}]: {a} vs {b}");
        }
    }
}

/// The denoising error of the exact prox of N(μ, s²) is known: with v = α·s² + 1 − α,
/// ĝ − z = (√(λv)·n − v·z)/(v + λ), a normal of variance v/(v + λ), so MSE = v/(v + λ) and
/// L1 = √(2/π)·√(v/(v + λ)). Measured on samples of the target at the 10-step grid.
#[test]
fn denoising_error_of_the_exact_gaussian_prox_matches_its_closed_form() {
    use proxdm::diffusion::denoise;
    use proxdm::diffusion::oracles::Tweedie;
    use proxdm::ops::noise::cpu::gaussian;
    let e = engine();
    let g = target(&e);
    let sde = Sde::default();
    let n = 8192;
    let x0: Vec<f32> = (0..2 * n)
        .map(|i| MEAN[i % 2] + (STD * gaussian(99, 0, i as u32)) as f32)
        .collect();
    let x0 = Tensor::from_slice(&e, &[n, 2], &x0).unwrap();
    let points = prox_steps(&sde, 10);
    assert_eq!(points.len(), 10);
    assert!((points[0].0 - 0.9).abs() < 1e-12 && points[9].0 == 0.0);
    let biggest = points.iter().map(|p| p.1).fold(0.0, f64::max);
    assert!((biggest - max_gamma(&sde, 10)).abs() < 1e-12);
    let exact = denoise::errors(&g, &sde, &x0, &points, 5, 3000).unwrap();
    let tw = Tweedie {
        score: &g,
        sde: Sde::default(),
    };
    let via_score = denoise::errors(&tw, &sde, &x0, &points, 5, 3000).unwrap();
    for (r, q) in exact.iter().zip(&via_score) {
        let a = sde.alpha(r.t);
        let v = a * STD * STD + 1.0 - a;
        let mse = v / (v + r.lambda);
        let l1 = (2.0 / std::f64::consts::PI).sqrt() * mse.sqrt();
        // 16384 values: relative standard error ≈ 1.1 % for the MSE, 0.8 % for L1.
        assert!((r.mse / mse - 1.0).abs() < 0.04, "{r:?}: MSE vs {mse}");
        assert!((r.l1 / l1 - 1.0).abs() < 0.04, "{r:?}: L1 vs {l1}");
        // Given x₀ as well, z keeps variance (1 − α)/(1 − α + λ), independent of ĝ: the MSE
        // splits into that and the error against E[z | x₀, y].
        let w = (1.0 - a) / (1.0 - a + r.lambda);
        assert!((r.unpredictable - w).abs() < 1e-12, "{r:?}");
        assert!(
            (r.mse_given_x0 - (mse - w)).abs() < 0.04 * mse,
            "{r:?}: MSE given x₀ vs {}",
            mse - w
        );
        // The same noise: the two oracles agree far closer than the sampling error.
        assert!((q.mse - r.mse).abs() < 1e-3 * r.mse, "{q:?} vs {r:?}");
    }
    // A wrong denoiser is caught: the identity (no denoising) has ĝ = 0, so MSE = 1.
    struct Identity;
    impl ProxOracle for Identity {
        fn prox(&self, y: &Tensor, _: f32, _: f32) -> proxdm::Result<Tensor> {
            Ok(y.clone())
        }
    }
    let none = denoise::errors(&Identity, &sde, &x0, &points[..1], 5, 3000).unwrap();
    assert!((none[0].mse - 1.0).abs() < 0.04, "{:?}", none[0]);
    assert!(denoise::errors(&g, &sde, &x0, &[(0.5, 0.0)], 5, 10).is_err());
}

/// Wraps an oracle and records, for every call, the x a tail would start from: a score
/// sampler's input (its x at the start of the step), a prox sampler's output (its x after it).
struct Recorder<'a> {
    inner: &'a Gaussian,
    seen: std::cell::RefCell<Vec<Tensor>>,
}

impl ScoreOracle for Recorder<'_> {
    fn score(&self, x: &Tensor, t: f32) -> proxdm::Result<Tensor> {
        self.seen.borrow_mut().push(x.clone());
        self.inner.score(x, t)
    }
}

impl ProxOracle for Recorder<'_> {
    fn prox(&self, y: &Tensor, t: f32, lambda: f32) -> proxdm::Result<Tensor> {
        let u = self.inner.prox(y, t, lambda)?;
        self.seen.borrow_mut().push(u.clone());
        Ok(u)
    }
}

/// The last K steps from the full run's own x where they begin reproduce the full run's result
/// bit for bit (the same steps, the same noise draws), for every sampler and every K.
#[test]
fn a_tail_from_the_full_runs_own_state_finishes_that_run() {
    let e = engine();
    let g = target(&e);
    let sde = Sde::default();
    let n = 6;
    let steps = 5;
    let x_t = || initial_noise(&e, &[3, 2], 11).unwrap();
    for kind in [ProxSampler::Hybrid, ProxSampler::Backward] {
        let steps = if kind == ProxSampler::Backward {
            10
        } else {
            steps
        };
        let rec = Recorder {
            inner: &g,
            seen: Default::default(),
        };
        let full = sample_prox(&rec, &sde, kind, steps, x_t(), 11).unwrap();
        let outs = rec.seen.take();
        assert_eq!(outs.len(), steps);
        for last in 1..=steps {
            let start = if last == steps {
                x_t()
            } else {
                outs[steps - last - 1].clone()
            };
            let tail = sample_prox_tail(&g, &sde, kind, steps, last, start, 11).unwrap();
            assert_eq!(
                tail.to_vec().unwrap(),
                full.to_vec().unwrap(),
                "{kind:?}, last {last}"
            );
        }
    }
    for kind in [
        ScoreSampler::EulerMaruyama {
            eps_t: 1e-3,
            last_noise: true,
        },
        ScoreSampler::EulerMaruyamaDenoise { eps_t: 1e-3 },
        ScoreSampler::ProbabilityFlow { eps_t: 1e-3 },
    ] {
        let rec = Recorder {
            inner: &g,
            seen: Default::default(),
        };
        let full = sample_score(&rec, &sde, kind, n, x_t(), 11).unwrap();
        let ins = rec.seen.take();
        assert_eq!(ins.len(), n);
        for last in 1..=n {
            let tail =
                sample_score_tail(&g, &sde, kind, n, last, ins[n - last].clone(), 11).unwrap();
            assert_eq!(
                tail.to_vec().unwrap(),
                full.to_vec().unwrap(),
                "{kind:?}, last {last}"
            );
        }
    }
}

/// Where tails begin: the grid point K/N of the ProxDM grid, and of each score grid; a tail of
/// 0 or of more steps than the grid has is refused.
#[test]
fn tails_begin_on_the_grid_and_refuse_impossible_lengths() {
    assert_eq!(prox_tail_start(10, 10).unwrap(), 1.0);
    assert!((prox_tail_start(10, 3).unwrap() - 0.3).abs() < 1e-12);
    let em = ScoreSampler::EulerMaruyama {
        eps_t: 1e-3,
        last_noise: false,
    };
    let ode = ScoreSampler::ProbabilityFlow { eps_t: 1e-3 };
    // EM: linspace(ε, 1, N + 1); the last K steps start at its K-th point.
    assert_eq!(score_tail_start(em, 4, 4).unwrap(), 1.0);
    assert!((score_tail_start(em, 4, 1).unwrap() - (1e-3 + 0.999 / 4.0)).abs() < 1e-12);
    // The denoising grid linspace(1, ε, N): the last step starts at ε, the last two at the
    // point before it.
    assert_eq!(score_tail_start(ode, 5, 5).unwrap(), 1.0);
    assert!((score_tail_start(ode, 5, 1).unwrap() - 1e-3).abs() < 1e-12);
    assert!((score_tail_start(ode, 5, 2).unwrap() - (1.0 - 3.0 * 0.999 / 4.0)).abs() < 1e-12);
    for (steps, last) in [(10, 0), (10, 11), (0, 0)] {
        let err = prox_tail_start(steps, last).unwrap_err().to_string();
        assert!(err.contains("step"), "{err}");
        assert!(score_tail_start(em, steps, last).is_err());
    }
}

/// Started from exact draws of p_t (target draws noised by `forward_noise`), a tail with
/// many steps lands on the target's moments: the start time and the noising agree with the
/// SDE. Also the forward noising's own moments, against the closed form.
#[test]
fn tails_from_forward_noised_target_draws_reach_the_target() {
    let e = engine();
    let g = target(&e);
    let sde = Sde::default();
    let n = 20_000;
    // Exact target draws: mean + STD·z, z from a stream the samplers do not use.
    let z = proxdm::ops::noise::randn(&e, &[n, 2], 99, 1000)
        .unwrap()
        .to_vec()
        .unwrap();
    let x0: Vec<f32> = z
        .iter()
        .enumerate()
        .map(|(i, &z)| MEAN[i % 2] + STD as f32 * z)
        .collect();
    let x0 = Tensor::from_slice(&e, &[n, 2], &x0).unwrap();
    let t = 0.4;
    let a = sde.alpha(t);
    let (m, v) = moments(&forward_noise(&sde, &x0, t, 5).unwrap());
    for d in 0..2 {
        let (mw, vw) = (a.sqrt() * MEAN[d] as f64, a * STD * STD + 1.0 - a);
        assert!(
            (m[d] - mw).abs() < 0.02,
            "noised mean[{d}] {} vs {mw}",
            m[d]
        );
        assert!((v[d] - vw).abs() < 0.03, "noised var[{d}] {} vs {vw}", v[d]);
    }
    let steps = 200;
    let last = 80; // starts at t = 0.4
    let start = prox_tail_start(steps, last).unwrap();
    assert!((start - t).abs() < 1e-12);
    let x = sample_prox_tail(
        &g,
        &sde,
        ProxSampler::Hybrid,
        steps,
        last,
        forward_noise(&sde, &x0, start, 5).unwrap(),
        5,
    )
    .unwrap();
    let ode = ScoreSampler::ProbabilityFlow { eps_t: 1e-3 };
    let s_start = score_tail_start(ode, steps, last).unwrap();
    let y = sample_score_tail(
        &g,
        &sde,
        ode,
        steps,
        last,
        forward_noise(&sde, &x0, s_start, 6).unwrap(),
        6,
    )
    .unwrap();
    for (name, out) in [("prox-hybrid", x), ("score-ode", y)] {
        let (m, v) = moments(&out);
        for d in 0..2 {
            assert!(
                (m[d] - MEAN[d] as f64).abs() < 0.02,
                "{name}: mean[{d}] {} vs {}",
                m[d],
                MEAN[d]
            );
            assert!(
                (v[d] - STD * STD).abs() < 0.02,
                "{name}: var[{d}] {} vs {}",
                v[d],
                STD * STD
            );
        }
    }
}
