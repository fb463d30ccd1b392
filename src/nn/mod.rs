//! Layers of the DDPM UNet, written once for any [`Backend`]. Parameter names follow the
//! reference PyTorch `state_dict` (e.g. `block1.2.weight`).

pub mod backend;
pub mod flops;
pub mod optim;

use rand::{Rng, SeedableRng, rngs::StdRng};

pub use backend::{Backend, Cpu, Gpu, HostTensor};

use crate::engine::Engine;
use crate::error::Result;
use crate::graph::ParamStore;
use crate::tensor::Tensor;

/// GroupNorm groups everywhere in the UNet (as the reference).
pub const GROUPS: usize = 32;

/// Collects parameters (name, shape, initial values) while a model is built.
pub struct ParamBuilder {
    rng: StdRng,
    params: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl ParamBuilder {
    pub fn new(seed: u64) -> Self {
        ParamBuilder {
            rng: StdRng::seed_from_u64(seed),
            params: Vec::new(),
        }
    }

    fn push(&mut self, name: String, shape: &[usize], values: Vec<f32>) -> usize {
        self.params.push((name, shape.to_vec(), values));
        self.params.len() - 1
    }

    /// Xavier-uniform: U(±gain·√(6/(fan_in+fan_out))), fans counting the kernel's area.
    pub fn xavier(&mut self, name: String, shape: &[usize], gain: f64) -> usize {
        let area: usize = shape[2..].iter().product();
        let (fan_out, fan_in) = (shape[0] * area, shape[1] * area);
        let bound = gain * (6.0 / (fan_in + fan_out) as f64).sqrt();
        let n = shape.iter().product();
        let v = (0..n)
            .map(|_| self.rng.random_range(-bound..bound) as f32)
            .collect();
        self.push(name, shape, v)
    }

    /// U(±bound).
    pub fn uniform(&mut self, name: String, shape: &[usize], bound: f64) -> usize {
        let n = shape.iter().product();
        let v = (0..n)
            .map(|_| self.rng.random_range(-bound..bound) as f32)
            .collect();
        self.push(name, shape, v)
    }

    /// exp(N(mean, std²)): small positive values (the LPN's non-negative weights).
    pub fn log_normal(&mut self, name: String, shape: &[usize], mean: f64, std: f64) -> usize {
        let n = shape.iter().product();
        let v = (0..n)
            .map(|_| {
                // Box–Muller.
                let u1: f64 = 1.0 - self.rng.random::<f64>();
                let u2: f64 = self.rng.random::<f64>();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (mean + std * z).exp() as f32
            })
            .collect();
        self.push(name, shape, v)
    }

    pub fn constant(&mut self, name: String, shape: &[usize], value: f32) -> usize {
        self.push(name, shape, vec![value; shape.iter().product()])
    }

    /// Re-draws parameter `i` with Xavier gain `gain` (the reference re-initialises some layers).
    pub fn reinit_xavier(&mut self, i: usize, gain: f64) {
        let (name, shape, _) = self.params[i].clone();
        let j = self.xavier(name, &shape, gain);
        self.params.swap(i, j);
        self.params.pop();
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.0.as_str())
    }

    /// The parameters as (name, shape, values), in definition order.
    pub fn into_params(self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        self.params
    }

    /// Uploads everything into a parameter store, in definition order.
    pub fn finish(self, engine: &Engine) -> Result<ParamStore> {
        let mut store = ParamStore::new();
        for (name, shape, v) in self.params {
            store.insert(name, Tensor::from_slice(engine, &shape, &v)?);
        }
        Ok(store)
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// y = x Wᵀ + b; W (out, in) Xavier-uniform, b zeros.
#[derive(Clone, Debug)]
pub struct Linear {
    pub w: usize,
    pub b: usize,
}

impl Linear {
    pub fn new(pb: &mut ParamBuilder, prefix: &str, fin: usize, fout: usize) -> Self {
        Linear {
            w: pb.xavier(join(prefix, "weight"), &[fout, fin], 1.0),
            b: pb.constant(join(prefix, "bias"), &[fout], 0.0),
        }
    }

    pub fn forward<B: Backend>(&self, be: &B, p: &[B::T], x: &B::T) -> Result<B::T> {
        be.linear(x, &p[self.w], Some(&p[self.b]))
    }
}

/// 2D convolution with bias; weight Xavier-uniform with `gain`, bias zeros.
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub w: usize,
    pub b: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pb: &mut ParamBuilder,
        prefix: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        gain: f64,
    ) -> Self {
        Conv2d {
            w: pb.xavier(join(prefix, "weight"), &[cout, cin, k, k], gain),
            b: pb.constant(join(prefix, "bias"), &[cout], 0.0),
            stride,
            pad,
        }
    }

    pub fn forward<B: Backend>(&self, be: &B, p: &[B::T], x: &B::T) -> Result<B::T> {
        be.conv2d(x, &p[self.w], Some(&p[self.b]), self.stride, self.pad)
    }
}

/// GroupNorm(32, C) with γ = 1, β = 0.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    pub gamma: usize,
    pub beta: usize,
}

impl GroupNorm {
    pub fn new(pb: &mut ParamBuilder, prefix: &str, c: usize) -> Self {
        GroupNorm {
            gamma: pb.constant(join(prefix, "weight"), &[c], 1.0),
            beta: pb.constant(join(prefix, "bias"), &[c], 0.0),
        }
    }

    pub fn forward<B: Backend>(&self, be: &B, p: &[B::T], x: &B::T) -> Result<B::T> {
        be.group_norm(x, &p[self.gamma], &p[self.beta], GROUPS)
    }

    /// SiLU(GroupNorm(x)), fused where the backend can.
    pub fn forward_silu<B: Backend>(&self, be: &B, p: &[B::T], x: &B::T) -> Result<B::T> {
        be.group_norm_silu(x, &p[self.gamma], &p[self.beta], GROUPS)
    }
}

/// Sinusoidal embedding of a scalar (width `d_model`), then Linear → SiLU → Linear.
#[derive(Clone, Debug)]
pub struct ScalarEmbedding {
    pub d_model: usize,
    pub l0: Linear,
    pub l2: Linear,
}

impl ScalarEmbedding {
    pub fn new(pb: &mut ParamBuilder, prefix: &str, d_model: usize, dim: usize) -> Self {
        ScalarEmbedding {
            d_model,
            l0: Linear::new(pb, &join(prefix, "embedding_mlp.0"), d_model, dim),
            l2: Linear::new(pb, &join(prefix, "embedding_mlp.2"), dim, dim),
        }
    }

    /// s (N) → (N, dim)
    pub fn forward<B: Backend>(&self, be: &B, p: &[B::T], s: &B::T) -> Result<B::T> {
        let e = be.sinusoidal_embedding(s, self.d_model)?;
        let h = be.silu(&self.l0.forward(be, p, &e)?)?;
        self.l2.forward(be, p, &h)
    }
}

/// Self-attention over the H·W positions with a residual: x + proj(attn(GN(x))).
#[derive(Clone, Debug)]
pub struct AttnBlock {
    pub norm: GroupNorm,
    pub q: Conv2d,
    pub k: Conv2d,
    pub v: Conv2d,
    pub proj: Conv2d,
}

impl AttnBlock {
    pub fn new(pb: &mut ParamBuilder, prefix: &str, c: usize) -> Self {
        AttnBlock {
            norm: GroupNorm::new(pb, &join(prefix, "group_norm"), c),
            q: Conv2d::new(pb, &join(prefix, "proj_q"), c, c, 1, 1, 0, 1.0),
            k: Conv2d::new(pb, &join(prefix, "proj_k"), c, c, 1, 1, 0, 1.0),
            v: Conv2d::new(pb, &join(prefix, "proj_v"), c, c, 1, 1, 0, 1.0),
            proj: Conv2d::new(pb, &join(prefix, "proj"), c, c, 1, 1, 0, 1e-5),
        }
    }

    pub fn forward<B: Backend>(&self, be: &B, p: &[B::T], x: &B::T) -> Result<B::T> {
        let s = be.shape(x).to_vec();
        let tokens = [s[0], s[1], s[2] * s[3]];
        let h = self.norm.forward(be, p, x)?;
        let q = be.reshape(&self.q.forward(be, p, &h)?, &tokens)?;
        let k = be.reshape(&self.k.forward(be, p, &h)?, &tokens)?;
        let v = be.reshape(&self.v.forward(be, p, &h)?, &tokens)?;
        let a = be.reshape(&be.attention(&q, &k, &v)?, &s)?;
        be.add(x, &self.proj.forward(be, p, &a)?)
    }
}

/// GN→SiLU→conv3×3, + Linear(SiLU(emb)) per channel, GN→SiLU→dropout→conv3×3, + shortcut,
/// then optional attention.
#[derive(Clone, Debug)]
pub struct ResBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub temb: Linear,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub shortcut: Option<Conv2d>,
    pub attn: Option<AttnBlock>,
    pub dropout: f32,
    /// Dropout stream (distinct per block).
    pub stream: u32,
}

impl ResBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pb: &mut ParamBuilder,
        prefix: &str,
        cin: usize,
        cout: usize,
        tdim: usize,
        dropout: f32,
        attn: bool,
        stream: u32,
    ) -> Self {
        let norm1 = GroupNorm::new(pb, &join(prefix, "block1.0"), cin);
        let conv1 = Conv2d::new(pb, &join(prefix, "block1.2"), cin, cout, 3, 1, 1, 1.0);
        let temb = Linear::new(pb, &join(prefix, "temb_proj.1"), tdim, cout);
        let norm2 = GroupNorm::new(pb, &join(prefix, "block2.0"), cout);
        // The block's last conv starts near zero, so each block starts near the identity.
        let conv2 = Conv2d::new(pb, &join(prefix, "block2.3"), cout, cout, 3, 1, 1, 1e-5);
        let shortcut = (cin != cout)
            .then(|| Conv2d::new(pb, &join(prefix, "shortcut"), cin, cout, 1, 1, 0, 1.0));
        let attn = attn.then(|| AttnBlock::new(pb, &join(prefix, "attn"), cout));
        if let Some(a) = &attn {
            // As the reference: the ResBlock re-initialises every conv inside it with gain 1
            // after the attention block set its output projection to gain 1e-5.
            pb.reinit_xavier(a.proj.w, 1.0);
        }
        ResBlock {
            norm1,
            conv1,
            temb,
            norm2,
            conv2,
            shortcut,
            attn,
            dropout,
            stream,
        }
    }

    pub fn forward<B: Backend>(&self, be: &B, p: &[B::T], x: &B::T, emb: &B::T) -> Result<B::T> {
        let h = self
            .conv1
            .forward(be, p, &self.norm1.forward_silu(be, p, x)?)?;
        let e = self.temb.forward(be, p, &be.silu(emb)?)?;
        let es = be.shape(&e).to_vec();
        let h = be.add(&h, &be.reshape(&e, &[es[0], es[1], 1, 1])?)?;
        let h = self.norm2.forward_silu(be, p, &h)?;
        let h = be.dropout(&h, self.dropout, self.stream)?;
        let h = self.conv2.forward(be, p, &h)?;
        let skip = match &self.shortcut {
            Some(s) => s.forward(be, p, x)?,
            None => x.clone(),
        };
        let h = be.add(&h, &skip)?;
        match &self.attn {
            Some(a) => a.forward(be, p, &h),
            None => Ok(h),
        }
    }
}
