//! The tape: first- and second-order gradients against finite differences of an independent
//! f64 CPU implementation, gradient accumulation, memory release, inference mode.

use proxdm::graph::{Graph, Var};
use proxdm::ops::elementwise::UnaryOp;
use proxdm::{Engine, Tensor};

fn engine() -> Engine {
    Engine::new().unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
}

/// Reproducible values in [-1, 1), rounded to f32.
fn vals(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 as f64
        })
        .collect()
}

fn up(e: &Engine, shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::from_slice(e, shape, &v.iter().map(|&x| x as f32).collect::<Vec<_>>()).unwrap()
}

fn read(v: &Var) -> Vec<f64> {
    v.tensor()
        .to_vec()
        .unwrap()
        .iter()
        .map(|&x| x as f64)
        .collect()
}

// A small input-convex network: z1 = sp(H0 y + b0), z2 = sp(W1 z1 + H1 y + b1),
// ψ(y) = Σ_batch w·z2 + α‖y‖², with W1, w ≥ 0. f(y) = ∇_y ψ.
const B: usize = 3;
const D: usize = 2;
const H: usize = 5;
const H2: usize = 4;
const BETA: f64 = 2.0;
const ALPHA: f64 = 0.1;
const SIZES: [(usize, usize); 6] = [(H, D), (H, 1), (H2, H), (H2, D), (H2, 1), (1, H2)];

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// f(y) = ∇_y ψ(y) in f64, by hand: the independent reference.
fn cpu_grad_psi(theta: &[Vec<f64>], y: &[f64]) -> Vec<f64> {
    let (h0, b0, w1, h1, b1, w) = (
        &theta[0], &theta[1], &theta[2], &theta[3], &theta[4], &theta[5],
    );
    let mut f = vec![0.0; B * D];
    for n in 0..B {
        let yn = &y[n * D..(n + 1) * D];
        let a1: Vec<f64> = (0..H)
            .map(|i| b0[i] + (0..D).map(|j| h0[i * D + j] * yn[j]).sum::<f64>())
            .collect();
        let z1: Vec<f64> = a1
            .iter()
            .map(|&a| (1.0 + (BETA * a).exp()).ln() / BETA)
            .collect();
        let a2: Vec<f64> = (0..H2)
            .map(|i| {
                b1[i]
                    + (0..H).map(|j| w1[i * H + j] * z1[j]).sum::<f64>()
                    + (0..D).map(|j| h1[i * D + j] * yn[j]).sum::<f64>()
            })
            .collect();
        let g2: Vec<f64> = (0..H2).map(|i| w[i] * sigmoid(BETA * a2[i])).collect(); // dψ/da2
        let g1: Vec<f64> = (0..H)
            .map(|j| (0..H2).map(|i| g2[i] * w1[i * H + j]).sum::<f64>() * sigmoid(BETA * a1[j]))
            .collect();
        for k in 0..D {
            f[n * D + k] = 2.0 * ALPHA * yn[k]
                + (0..H2).map(|i| g2[i] * h1[i * D + k]).sum::<f64>()
                + (0..H).map(|j| g1[j] * h0[j * D + k]).sum::<f64>();
        }
    }
    f
}

fn cpu_loss(theta: &[Vec<f64>], y: &[f64], target: &[f64]) -> f64 {
    cpu_grad_psi(theta, y)
        .iter()
        .zip(target)
        .map(|(a, b)| (a - b) * (a - b))
        .sum()
}

fn gpu_psi(g: &Graph, p: &[Var], y: &Var) -> Var {
    let b0 = g.reshape(&p[1], &[H]).unwrap();
    let b1 = g.reshape(&p[4], &[H2]).unwrap();
    let a1 = g.linear(y, &p[0], Some(&b0)).unwrap();
    let z1 = g.softplus(&a1, BETA as f32).unwrap();
    let a2 = g
        .add(
            &g.linear(&z1, &p[2], None).unwrap(),
            &g.linear(y, &p[3], Some(&b1)).unwrap(),
        )
        .unwrap();
    let z2 = g.softplus(&a2, BETA as f32).unwrap();
    let out = g.sum_all(&g.linear(&z2, &p[5], None).unwrap()).unwrap();
    let sq = g.sum_all(&g.unary(y, UnaryOp::Square).unwrap()).unwrap();
    g.add(&out, &g.scale(&sq, ALPHA as f32).unwrap()).unwrap()
}

#[test]
fn second_order_gradient_of_an_input_convex_network_matches_finite_differences() {
    let e = engine();
    let theta: Vec<Vec<f64>> = SIZES
        .iter()
        .enumerate()
        .map(|(k, &(r, c))| {
            let v = vals(r * c, 10 + k as u64);
            // W1 and w are non-negative (clipped), as in an LPN.
            if k == 2 || k == 5 {
                v.iter().map(|x| x.abs()).collect()
            } else {
                v
            }
        })
        .collect();
    let y = vals(B * D, 1);
    let target = vals(B * D, 2);

    let g = Graph::new(&e);
    let p: Vec<Var> = theta
        .iter()
        .zip(SIZES)
        .map(|(v, (r, c))| g.leaf(up(&e, &[r, c], v)))
        .collect();
    let yv = g.leaf(up(&e, &[B, D], &y));
    let psi = gpu_psi(&g, &p, &yv);
    // First order: f = ∇_y ψ, recorded so it can be differentiated again.
    let f = g.backward(&psi, &[&yv], true).unwrap()[0]
        .clone()
        .expect("ψ depends on y");
    let f_cpu = cpu_grad_psi(&theta, &y);
    for (a, b) in read(&f).iter().zip(&f_cpu) {
        assert!(
            (a - b).abs() < 1e-5 * (1.0 + b.abs()),
            "∇_y ψ: gpu {a} vs cpu {b}"
        );
    }
    // Second order: ∂/∂θ of ‖f(y) - target‖².
    let diff = g.sub(&f, &g.constant(up(&e, &[B, D], &target))).unwrap();
    let loss = g
        .sum_all(&g.unary(&diff, UnaryOp::Square).unwrap())
        .unwrap();
    let refs: Vec<&Var> = p.iter().collect();
    let grads = g.backward(&loss, &refs, false).unwrap();
    for (k, (gk, th)) in grads.iter().zip(&theta).enumerate() {
        let gk = read(
            gk.as_ref()
                .unwrap_or_else(|| panic!("no gradient for parameter {k}")),
        );
        for i in 0..th.len() {
            let h = 1e-6;
            let mut tp = theta.clone();
            tp[k][i] += h;
            let lp = cpu_loss(&tp, &y, &target);
            tp[k][i] -= 2.0 * h;
            let lm = cpu_loss(&tp, &y, &target);
            let fd = (lp - lm) / (2.0 * h);
            assert!(
                (gk[i] - fd).abs() <= 2e-4 * (1.0 + fd.abs()),
                "parameter {k}[{i}]: second-order gradient {} vs finite difference {fd}",
                gk[i]
            );
        }
    }
}

#[test]
fn gradients_accumulate_over_reuse_and_untracked_paths_give_none() {
    let e = engine();
    let g = Graph::new(&e);
    let x = g.leaf(up(&e, &[3], &[1.0, 2.0, -3.0]));
    let c = g.constant(up(&e, &[3], &[5.0, 5.0, 5.0]));
    // L = Σ (x·x + 3x + c)  →  dL/dx = 2x + 3
    let l = g
        .sum_all(
            &g.add(
                &g.add(&g.mul(&x, &x).unwrap(), &g.scale(&x, 3.0).unwrap())
                    .unwrap(),
                &c,
            )
            .unwrap(),
        )
        .unwrap();
    let grads = g.backward(&l, &[&x, &c], false).unwrap();
    assert_eq!(read(grads[0].as_ref().unwrap()), vec![5.0, 7.0, -3.0]);
    assert!(grads[1].is_none(), "constants get no gradient");
}

#[test]
fn a_consumed_reverse_pass_releases_saved_tensors_and_inference_records_nothing() {
    let e = engine();
    let g = Graph::new(&e);
    let x = g.leaf(up(&e, &[64, 64], &vals(4096, 3)));
    let mut h = x.clone();
    for _ in 0..10 {
        h = g.silu(&h).unwrap();
    }
    let l = g.sum_all(&h).unwrap();
    drop(h);
    let live_before = e.pool_stats().idle;
    g.backward(&l, &[&x], false).unwrap();
    e.flush().unwrap();
    // The ten activations held by the tape went back to the pool.
    assert!(
        e.pool_stats().idle >= live_before + 10,
        "{:?} vs {live_before}",
        e.pool_stats()
    );

    let inf = Graph::inference(&e);
    let y = inf.leaf(up(&e, &[4], &[1.0; 4]));
    let z = inf.silu(&inf.silu(&y).unwrap()).unwrap();
    assert!(
        !z.tracked() && inf.is_empty(),
        "inference mode records nothing"
    );
}

#[test]
fn asking_a_second_derivative_through_a_fused_backward_is_a_clear_error() {
    let e = engine();
    let g = Graph::new(&e);
    let x = g.leaf(up(&e, &[2, 3], &vals(6, 5)));
    let s = g.softmax(&x).unwrap();
    let l = g.sum_all(&g.mul(&s, &s).unwrap()).unwrap();
    let dx = g.backward(&l, &[&x], true).unwrap()[0].clone().unwrap();
    let l2 = g.sum_all(&dx).unwrap();
    let err = g.backward(&l2, &[&x], false).unwrap_err().to_string();
    assert!(
        err.contains("softmax") && err.contains("not supported"),
        "{err}"
    );
}
