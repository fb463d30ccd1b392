//! What a layer needs from the machine it runs on. Two implementations: the GPU graph (with
//! autodiff) and a plain f64 CPU one built on the ops' CPU references, so every layer and the
//! whole UNet have an independent reference.

use crate::error::{Error, Result};
use crate::graph::{Graph, Var};
use crate::ops::elementwise::{BinaryOp, UnaryOp};
use crate::ops::{
    attention, channel, conv2d, elementwise, embedding, group_norm, matmul, upsample,
};

/// The ops layers are written with.
pub trait Backend {
    type T: Clone;
    fn shape<'a>(&self, x: &'a Self::T) -> &'a [usize];
    fn add(&self, a: &Self::T, b: &Self::T) -> Result<Self::T>;
    fn silu(&self, x: &Self::T) -> Result<Self::T>;
    fn reshape(&self, x: &Self::T, shape: &[usize]) -> Result<Self::T>;
    /// x Wᵀ (+ b): x (N, in), W (out, in), b (out).
    fn linear(&self, x: &Self::T, w: &Self::T, b: Option<&Self::T>) -> Result<Self::T>;
    fn conv2d(
        &self,
        x: &Self::T,
        w: &Self::T,
        b: Option<&Self::T>,
        stride: usize,
        pad: usize,
    ) -> Result<Self::T>;
    fn group_norm(
        &self,
        x: &Self::T,
        gamma: &Self::T,
        beta: &Self::T,
        groups: usize,
    ) -> Result<Self::T>;
    /// SiLU(GroupNorm(x)); backends with a fused kernel override this.
    fn group_norm_silu(
        &self,
        x: &Self::T,
        gamma: &Self::T,
        beta: &Self::T,
        groups: usize,
    ) -> Result<Self::T> {
        self.silu(&self.group_norm(x, gamma, beta, groups)?)
    }
    fn upsample2x(&self, x: &Self::T) -> Result<Self::T>;
    fn concat(&self, a: &Self::T, b: &Self::T) -> Result<Self::T>;
    fn attention(&self, q: &Self::T, k: &Self::T, v: &Self::T) -> Result<Self::T>;
    fn sinusoidal_embedding(&self, s: &Self::T, dim: usize) -> Result<Self::T>;
    /// Concatenation along the last axis of two (N, a) and (N, b) matrices.
    fn concat_cols(&self, a: &Self::T, b: &Self::T) -> Result<Self::T>;
    /// Inverted dropout (training only; `stream` distinguishes the layers).
    fn dropout(&self, x: &Self::T, p: f32, stream: u32) -> Result<Self::T>;
    /// A value that is not a parameter (fixed weights, per-sample coefficients).
    fn constant(&self, shape: &[usize], data: &[f32]) -> Result<Self::T>;
    /// (1/β) ln(1 + e^{βx}).
    fn softplus(&self, x: &Self::T, beta: f32) -> Result<Self::T>;
    /// 1/(1 + e^{−x}).
    fn sigmoid(&self, x: &Self::T) -> Result<Self::T>;
    /// a·x.
    fn scale(&self, x: &Self::T, a: f32) -> Result<Self::T>;
    /// Elementwise product with broadcasting (as `add`).
    fn mul(&self, a: &Self::T, b: &Self::T) -> Result<Self::T>;
    /// Σ over every axis but the first: (N, …) → (N, 1).
    fn sum_rows(&self, x: &Self::T) -> Result<Self::T>;
}

/// The GPU graph as a backend; dropout draws its masks from `dropout_seed` when set.
pub struct Gpu<'g> {
    pub graph: &'g Graph,
    pub dropout_seed: Option<u64>,
}

impl<'g> Gpu<'g> {
    /// No dropout (evaluation).
    pub fn inference(graph: &'g Graph) -> Self {
        Gpu {
            graph,
            dropout_seed: None,
        }
    }
}

impl Backend for Gpu<'_> {
    type T = Var;
    fn shape<'a>(&self, x: &'a Var) -> &'a [usize] {
        x.shape()
    }
    fn add(&self, a: &Var, b: &Var) -> Result<Var> {
        self.graph.add(a, b)
    }
    fn silu(&self, x: &Var) -> Result<Var> {
        self.graph.silu(x)
    }
    fn reshape(&self, x: &Var, shape: &[usize]) -> Result<Var> {
        self.graph.reshape(x, shape)
    }
    fn linear(&self, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
        self.graph.linear(x, w, b)
    }
    fn conv2d(&self, x: &Var, w: &Var, b: Option<&Var>, stride: usize, pad: usize) -> Result<Var> {
        self.graph.conv2d(x, w, b, stride, pad)
    }
    fn group_norm(&self, x: &Var, gamma: &Var, beta: &Var, groups: usize) -> Result<Var> {
        self.graph.group_norm(x, gamma, beta, groups)
    }
    fn group_norm_silu(&self, x: &Var, gamma: &Var, beta: &Var, groups: usize) -> Result<Var> {
        self.graph.group_norm_silu(x, gamma, beta, groups)
    }
    fn upsample2x(&self, x: &Var) -> Result<Var> {
        self.graph.upsample2x(x)
    }
    fn concat(&self, a: &Var, b: &Var) -> Result<Var> {
        self.graph.concat(a, b)
    }
    fn attention(&self, q: &Var, k: &Var, v: &Var) -> Result<Var> {
        self.graph.attention(q, k, v)
    }
    fn sinusoidal_embedding(&self, s: &Var, dim: usize) -> Result<Var> {
        self.graph.sinusoidal_embedding(s, dim)
    }
    fn concat_cols(&self, a: &Var, b: &Var) -> Result<Var> {
        // (N, a) and (N, b) as (N, a, 1, 1) and (N, b, 1, 1) feature maps.
        let (sa, sb) = (a.shape().to_vec(), b.shape().to_vec());
        let g = self.graph;
        let c = g.concat(
            &g.reshape(a, &[sa[0], sa[1], 1, 1])?,
            &g.reshape(b, &[sb[0], sb[1], 1, 1])?,
        )?;
        g.reshape(&c, &[sa[0], sa[1] + sb[1]])
    }
    fn dropout(&self, x: &Var, p: f32, stream: u32) -> Result<Var> {
        match self.dropout_seed {
            Some(seed) => self.graph.dropout(x, p, seed, stream),
            None => Ok(x.clone()),
        }
    }
    fn constant(&self, shape: &[usize], data: &[f32]) -> Result<Var> {
        Ok(self.graph.constant(crate::tensor::Tensor::from_slice(
            self.graph.engine(),
            shape,
            data,
        )?))
    }
    fn softplus(&self, x: &Var, beta: f32) -> Result<Var> {
        self.graph.softplus(x, beta)
    }
    fn sigmoid(&self, x: &Var) -> Result<Var> {
        self.graph.unary(x, UnaryOp::Sigmoid)
    }
    fn scale(&self, x: &Var, a: f32) -> Result<Var> {
        self.graph.scale(x, a)
    }
    fn mul(&self, a: &Var, b: &Var) -> Result<Var> {
        self.graph.mul(a, b)
    }
    fn sum_rows(&self, x: &Var) -> Result<Var> {
        let axes: Vec<usize> = (1..x.shape().len()).collect();
        let s = self.graph.sum(x, &axes)?;
        self.graph.reshape(&s, &[x.shape()[0], 1])
    }
}

/// A host tensor in f64 for the CPU backend.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl HostTensor {
    pub fn new(shape: &[usize], data: Vec<f64>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "HostTensor {shape:?}"
        );
        HostTensor {
            shape: shape.to_vec(),
            data,
        }
    }
}

/// The f64 CPU backend (inference only; no dropout).
pub struct Cpu;

fn four(op: &'static str, s: &[usize]) -> Result<[usize; 4]> {
    s.try_into()
        .map_err(|_| Error::shape(op, format!("{s:?} must be (N, C, H, W)")))
}

impl Backend for Cpu {
    type T = HostTensor;
    fn shape<'a>(&self, x: &'a HostTensor) -> &'a [usize] {
        &x.shape
    }
    fn add(&self, a: &HostTensor, b: &HostTensor) -> Result<HostTensor> {
        let out = elementwise::broadcast_shape("add", &a.shape, &b.shape)?;
        let (pa, pb) = (
            crate::ops::pad4("add", &a.shape)?,
            crate::ops::pad4("add", &b.shape)?,
        );
        Ok(HostTensor::new(
            &out,
            elementwise::cpu::binary(&a.data, pa, &b.data, pb, BinaryOp::Add),
        ))
    }
    fn silu(&self, x: &HostTensor) -> Result<HostTensor> {
        Ok(HostTensor::new(
            &x.shape,
            x.data
                .iter()
                .map(|&v| elementwise::cpu::unary(v, UnaryOp::Silu))
                .collect(),
        ))
    }
    fn reshape(&self, x: &HostTensor, shape: &[usize]) -> Result<HostTensor> {
        if shape.iter().product::<usize>() != x.data.len() {
            return Err(Error::shape(
                "reshape",
                format!("{:?} cannot become {shape:?}", x.shape),
            ));
        }
        Ok(HostTensor::new(shape, x.data.clone()))
    }
    fn linear(&self, x: &HostTensor, w: &HostTensor, b: Option<&HostTensor>) -> Result<HostTensor> {
        let (n, fin, fout) = (x.shape[0], x.shape[1], w.shape[0]);
        if w.shape[1] != fin {
            return Err(Error::shape(
                "linear",
                format!("x {:?} and W {:?}", x.shape, w.shape),
            ));
        }
        let mut y = matmul::cpu::matmul(&x.data, &w.data, n, fout, fin, false, true, 1.0);
        if let Some(b) = b {
            y.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v += b.data[i % fout]);
        }
        Ok(HostTensor::new(&[n, fout], y))
    }
    fn conv2d(
        &self,
        x: &HostTensor,
        w: &HostTensor,
        b: Option<&HostTensor>,
        stride: usize,
        pad: usize,
    ) -> Result<HostTensor> {
        let (xs, ws) = (four("conv2d", &x.shape)?, four("conv2d", &w.shape)?);
        let b = b.map(|b| &b.data[..]);
        let y = conv2d::cpu::conv2d(&x.data, xs, &w.data, ws, b, stride, pad);
        let (ho, wo) = (
            conv2d::out_size(xs[2], ws[2], stride, pad),
            conv2d::out_size(xs[3], ws[3], stride, pad),
        );
        Ok(HostTensor::new(&[xs[0], ws[0], ho, wo], y))
    }
    fn group_norm(
        &self,
        x: &HostTensor,
        gamma: &HostTensor,
        beta: &HostTensor,
        groups: usize,
    ) -> Result<HostTensor> {
        let s = four("group_norm", &x.shape)?;
        Ok(HostTensor::new(
            &x.shape,
            group_norm::cpu::group_norm(
                &x.data,
                s[0],
                s[1],
                s[2] * s[3],
                groups,
                &gamma.data,
                &beta.data,
            ),
        ))
    }
    fn upsample2x(&self, x: &HostTensor) -> Result<HostTensor> {
        let s = four("upsample2x", &x.shape)?;
        Ok(HostTensor::new(
            &[s[0], s[1], 2 * s[2], 2 * s[3]],
            upsample::cpu::upsample2x(&x.data, s[0] * s[1], s[2], s[3]),
        ))
    }
    fn concat(&self, a: &HostTensor, b: &HostTensor) -> Result<HostTensor> {
        let (sa, sb) = (four("concat", &a.shape)?, four("concat", &b.shape)?);
        Ok(HostTensor::new(
            &[sa[0], sa[1] + sb[1], sa[2], sa[3]],
            channel::cpu::concat(&a.data, &b.data, sa[0], sa[1], sb[1], sa[2] * sa[3]),
        ))
    }
    fn attention(&self, q: &HostTensor, k: &HostTensor, v: &HostTensor) -> Result<HostTensor> {
        let s = &q.shape;
        Ok(HostTensor::new(
            s,
            attention::cpu::attention(&q.data, &k.data, &v.data, s[0], s[1], s[2]),
        ))
    }
    fn sinusoidal_embedding(&self, s: &HostTensor, dim: usize) -> Result<HostTensor> {
        Ok(HostTensor::new(
            &[s.data.len(), dim],
            embedding::cpu::embedding(&s.data, dim),
        ))
    }
    fn concat_cols(&self, a: &HostTensor, b: &HostTensor) -> Result<HostTensor> {
        let (n, ca, cb) = (a.shape[0], a.shape[1], b.shape[1]);
        Ok(HostTensor::new(
            &[n, ca + cb],
            channel::cpu::concat(&a.data, &b.data, n, ca, cb, 1),
        ))
    }
    fn dropout(&self, x: &HostTensor, _p: f32, _stream: u32) -> Result<HostTensor> {
        Ok(x.clone())
    }
    fn constant(&self, shape: &[usize], data: &[f32]) -> Result<HostTensor> {
        Ok(HostTensor::new(
            shape,
            data.iter().map(|&v| v as f64).collect(),
        ))
    }
    fn softplus(&self, x: &HostTensor, beta: f32) -> Result<HostTensor> {
        let op = UnaryOp::Softplus { beta };
        Ok(HostTensor::new(
            &x.shape,
            x.data
                .iter()
                .map(|&v| elementwise::cpu::unary(v, op))
                .collect(),
        ))
    }
    fn sigmoid(&self, x: &HostTensor) -> Result<HostTensor> {
        Ok(HostTensor::new(
            &x.shape,
            x.data
                .iter()
                .map(|&v| elementwise::cpu::sigmoid(v))
                .collect(),
        ))
    }
    fn scale(&self, x: &HostTensor, a: f32) -> Result<HostTensor> {
        Ok(HostTensor::new(
            &x.shape,
            x.data.iter().map(|&v| v * a as f64).collect(),
        ))
    }
    fn mul(&self, a: &HostTensor, b: &HostTensor) -> Result<HostTensor> {
        let out = elementwise::broadcast_shape("mul", &a.shape, &b.shape)?;
        let (pa, pb) = (
            crate::ops::pad4("mul", &a.shape)?,
            crate::ops::pad4("mul", &b.shape)?,
        );
        Ok(HostTensor::new(
            &out,
            elementwise::cpu::binary(&a.data, pa, &b.data, pb, BinaryOp::Mul),
        ))
    }
    fn sum_rows(&self, x: &HostTensor) -> Result<HostTensor> {
        let n = x.shape[0];
        let m = x.data.len() / n.max(1);
        Ok(HostTensor::new(
            &[n, 1],
            x.data.chunks(m.max(1)).map(|r| r.iter().sum()).collect(),
        ))
    }
}
