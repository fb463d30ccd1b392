//! Every layer on the GPU against the same layer on the f64 CPU backend: forward values, and
//! gradients w.r.t. its input and every parameter against finite differences of the CPU forward.

use proxdm::graph::{Graph, Var};
use proxdm::nn::{
    AttnBlock, Backend, Conv2d, Cpu, Gpu, GroupNorm, HostTensor, Linear, ParamBuilder, ResBlock,
    ScalarEmbedding,
};
use proxdm::{Engine, Result, Tensor};

/// A layer under test: a forward from one input (and, for ResBlock, a fixed embedding).
trait Case {
    fn name(&self) -> &'static str;
    fn input_shape(&self) -> Vec<usize>;
    fn run<B: Backend>(&self, be: &B, p: &[B::T], x: &B::T, extra: &B::T) -> Result<B::T>;
}

struct L(Linear);
struct C(Conv2d);
struct N(GroupNorm);
struct E(ScalarEmbedding);
struct A(AttnBlock);
struct R(ResBlock);

impl Case for L {
    fn name(&self) -> &'static str {
        "Linear"
    }
    fn input_shape(&self) -> Vec<usize> {
        vec![3, 7]
    }
    fn run<B: Backend>(&self, be: &B, p: &[B::T], x: &B::T, _: &B::T) -> Result<B::T> {
        self.0.forward(be, p, x)
    }
}
impl Case for C {
    fn name(&self) -> &'static str {
        "Conv2d stride 2"
    }
    fn input_shape(&self) -> Vec<usize> {
        vec![2, 3, 5, 5]
    }
    fn run<B: Backend>(&self, be: &B, p: &[B::T], x: &B::T, _: &B::T) -> Result<B::T> {
        self.0.forward(be, p, x)
    }
}
impl Case for N {
    fn name(&self) -> &'static str {
        "GroupNorm"
    }
    fn input_shape(&self) -> Vec<usize> {
        vec![2, 64, 3, 2]
    }
    fn run<B: Backend>(&self, be: &B, p: &[B::T], x: &B::T, _: &B::T) -> Result<B::T> {
        self.0.forward(be, p, x)
    }
}
impl Case for E {
    fn name(&self) -> &'static str {
        "ScalarEmbedding"
    }
    fn input_shape(&self) -> Vec<usize> {
        vec![3]
    }
    fn run<B: Backend>(&self, be: &B, p: &[B::T], x: &B::T, _: &B::T) -> Result<B::T> {
        self.0.forward(be, p, x)
    }
}
impl Case for A {
    fn name(&self) -> &'static str {
        "AttnBlock"
    }
    fn input_shape(&self) -> Vec<usize> {
        vec![2, 32, 3, 3]
    }
    fn run<B: Backend>(&self, be: &B, p: &[B::T], x: &B::T, _: &B::T) -> Result<B::T> {
        self.0.forward(be, p, x)
    }
}
impl Case for R {
    fn name(&self) -> &'static str {
        "ResBlock 32→64 with attention"
    }
    fn input_shape(&self) -> Vec<usize> {
        vec![2, 32, 4, 4]
    }
    fn run<B: Backend>(&self, be: &B, p: &[B::T], x: &B::T, emb: &B::T) -> Result<B::T> {
        self.0.forward(be, p, x, emb)
    }
}

struct Lcg(u64);
impl Lcg {
    fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (lo + (hi - lo) * ((self.0 >> 11) as f64 / (1u64 << 53) as f64)) as f32 as f64
            })
            .collect()
    }
}

fn up(e: &Engine, h: &HostTensor) -> Tensor {
    Tensor::from_slice(
        e,
        &h.shape,
        &h.data.iter().map(|&v| v as f32).collect::<Vec<_>>(),
    )
    .unwrap()
}

fn check<K: Case>(case: K, pb: ParamBuilder, input_range: (f64, f64)) {
    let e = Engine::new().unwrap();
    let mut r = Lcg(42);
    // Random parameters of the right shapes (GroupNorm γ around 1).
    let params: Vec<HostTensor> = pb
        .into_params()
        .into_iter()
        .map(|(name, shape, _)| {
            let n = shape.iter().product();
            let v = if shape.len() == 1 && name.contains("norm")
                || name.contains("block1.0")
                || name.contains("block2.0")
            {
                if name.ends_with("weight") {
                    r.vec(n, 0.5, 1.5)
                } else {
                    r.vec(n, -0.5, 0.5)
                }
            } else {
                r.vec(n, -0.5, 0.5)
            };
            HostTensor::new(&shape, v)
        })
        .collect();
    let xs = case.input_shape();
    let x = HostTensor::new(
        &xs,
        r.vec(xs.iter().product(), input_range.0, input_range.1),
    );
    let emb = HostTensor::new(&[2, 16], r.vec(32, -1.0, 1.0));
    let cpu = |p: &[HostTensor], x: &HostTensor| case.run(&Cpu, p, x, &emb).unwrap();
    let want = cpu(&params, &x);
    let w = HostTensor::new(&want.shape, r.vec(want.data.len(), -1.0, 1.0));
    let loss = |p: &[HostTensor], x: &HostTensor| -> f64 {
        cpu(p, x).data.iter().zip(&w.data).map(|(a, b)| a * b).sum()
    };

    let g = Graph::new(&e);
    let pv: Vec<Var> = params.iter().map(|h| g.leaf(up(&e, h))).collect();
    let xv = g.leaf(up(&e, &x));
    let out = case
        .run(&Gpu::inference(&g), &pv, &xv, &g.constant(up(&e, &emb)))
        .unwrap();
    let got = out.tensor().to_vec().unwrap();
    let scale = want.data.iter().map(|v| v.abs()).fold(1.0, f64::max);
    for (a, b) in got.iter().zip(&want.data) {
        assert!(
            (*a as f64 - b).abs() < 2e-5 * scale,
            "{} forward: gpu {a} vs cpu {b}",
            case.name()
        );
    }
    let l = g
        .sum_all(&g.mul(&out, &g.constant(up(&e, &w))).unwrap())
        .unwrap();
    let mut wrt: Vec<&Var> = pv.iter().collect();
    wrt.push(&xv);
    let grads = g.backward(&l, &wrt, false).unwrap();
    let fd = |k: usize, i: usize| -> f64 {
        let h = 1e-5;
        let (mut p, mut xx) = (params.clone(), x.clone());
        let bump = |p: &mut Vec<HostTensor>, xx: &mut HostTensor, d: f64| {
            if k < params.len() {
                p[k].data[i] += d
            } else {
                xx.data[i] += d
            }
        };
        bump(&mut p, &mut xx, h);
        let lp = loss(&p, &xx);
        bump(&mut p, &mut xx, -2.0 * h);
        (lp - loss(&p, &xx)) / (2.0 * h)
    };
    let host: Vec<Vec<f64>> = grads
        .iter()
        .enumerate()
        .map(|(k, gk)| {
            gk.as_ref()
                .unwrap_or_else(|| panic!("{}: input {k} has no gradient", case.name()))
                .tensor()
                .to_vec()
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect()
        })
        .collect();
    // f32 round-off is relative to the largest gradient anywhere (some are exactly 0, e.g.
    // the key bias of attention: softmax ignores a per-row constant).
    let global = host.iter().flatten().map(|v| v.abs()).fold(0.0, f64::max);
    for (k, gk) in host.iter().enumerate() {
        let gs = gk.iter().map(|v| v.abs()).fold(0.0, f64::max);
        for i in [0, gk.len() / 3, gk.len() - 1] {
            let f = fd(k, i);
            assert!(
                (gk[i] - f).abs() <= 2e-3 * (f.abs() + gs) + 1e-5 * global,
                "{} gradient of input {k}[{i}]: {} vs finite difference {f}",
                case.name(),
                gk[i]
            );
        }
    }
}

#[test]
fn linear_conv_groupnorm_match_cpu_with_gradients() {
    let mut pb = ParamBuilder::new(1);
    let l = Linear::new(&mut pb, "l", 7, 5);
    check(L(l), pb, (-1.0, 1.0));
    let mut pb = ParamBuilder::new(1);
    let c = Conv2d::new(&mut pb, "c", 3, 4, 3, 2, 1, 1.0);
    check(C(c), pb, (-1.0, 1.0));
    let mut pb = ParamBuilder::new(1);
    let n = GroupNorm::new(&mut pb, "norm", 64);
    check(N(n), pb, (-1.0, 3.0));
}

#[test]
fn embedding_attention_and_resblock_match_cpu_with_gradients() {
    let mut pb = ParamBuilder::new(1);
    let emb = ScalarEmbedding::new(&mut pb, "time_embedding", 8, 16);
    // The scalar input's gradient is checked too, at small t where f32 arguments are exact enough.
    check(E(emb), pb, (0.0, 0.002));
    let mut pb = ParamBuilder::new(1);
    let a = AttnBlock::new(&mut pb, "attn", 32);
    check(A(a), pb, (-1.0, 1.0));
    let mut pb = ParamBuilder::new(1);
    let r = ResBlock::new(&mut pb, "res", 32, 64, 16, 0.0, true, 1);
    check(R(r), pb, (-1.0, 1.0));
}

#[test]
fn dropout_drops_at_its_rate_and_rescales() {
    let e = Engine::new().unwrap();
    let g = Graph::new(&e);
    let x = g.constant(Tensor::full(&e, &[100_000], 1.0).unwrap());
    let y = Gpu {
        graph: &g,
        dropout_seed: Some(5),
    }
    .dropout(&x, 0.25, 3)
    .unwrap()
    .tensor()
    .to_vec()
    .unwrap();
    let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
    assert!((zeros - 0.25).abs() < 0.01, "dropped fraction {zeros}");
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    let same = Gpu {
        graph: &g,
        dropout_seed: Some(5),
    }
    .dropout(&x, 0.25, 3)
    .unwrap()
    .tensor()
    .to_vec()
    .unwrap();
    assert_eq!(y, same, "a seed gives the same mask");
    let off = Gpu::inference(&g)
        .dropout(&x, 0.25, 3)
        .unwrap()
        .tensor()
        .to_vec()
        .unwrap();
    assert!(off.iter().all(|&v| v == 1.0), "no dropout in inference");
}
