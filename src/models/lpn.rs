//! Learned Proximal Networks (Fang, Buchanan, Sulam, ICLR 2024): an input-convex network ψ_θ
//! whose gradient f_θ = ∇_y ψ_θ is exactly the proximal operator of a learned regulariser R_θ.
//!
//! ψ(y) = w·z_L (+ an affine term in y for the MLP) + α‖y‖², with
//! z₁ = σ(H₀y [+ c₀]), z_{k+1} = σ(W_k z_k + H_k y + b_k [+ c_k]), σ = softplus_β, and every W_k
//! and w non-negative (clipped after each optimiser step, checked on load). The optional
//! conditioning on (t, λ) adds c_k = Linear_k(SiLU([emb(t), emb(λ)])) to the pre-activations
//! and a term ½·sigmoid(a(t, λ))·‖y‖² to ψ: functions of (t, λ) only (the latter a
//! non-negative multiple of a convex function), so ψ stays convex in y. f = ∇_y ψ comes from the graph's reverse
//! pass; training differentiates it again (the second-order pass).
//!
//! Two architectures, named as the reference's modules (`lin.k` the chain whose k ≥ 1 weights
//! are non-negative, `res.k` the maps from y):
//! - `mlp`: y ∈ R^d; `layers` hidden→hidden maps; output w·z + h·y, as the reference's 1-D LPN
//!   (less its constant term, which f does not see); conditioned, h = h(t, λ).
//! - `conv`: (C, S, S) images, S divisible by 4, as the reference's MNIST LPN: 3×3 convolutions
//!   S → S/2 (stride 2) → S/2 → S/4 (stride 2) on z, convolutions of y bilinearly downscaled to
//!   each scale, then linear maps to a hidden vector of 64 and to the scalar.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::graph::{Graph, ParamStore, Var};
use crate::nn::{Backend, Gpu, ParamBuilder, ScalarEmbedding};
use crate::tensor::Tensor;

/// Width of the conv LPN's last hidden vector (as the reference).
pub const CONV_FC: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LpnArch {
    Mlp,
    Conv,
}

/// Everything needed to rebuild an LPN; stored in its weight file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LpnConfig {
    pub arch: LpnArch,
    /// mlp: the dimension of y; conv: image channels.
    pub in_ch: usize,
    /// conv: image side (divisible by 4). Unused by the MLP.
    pub size: usize,
    /// Hidden width (mlp) or channels (conv).
    pub hidden: usize,
    /// mlp: number of non-negative hidden→hidden layers. Unused by the conv LPN.
    pub layers: usize,
    /// Softplus sharpness β.
    pub beta: f32,
    /// Strong convexity: α‖y‖² in ψ.
    pub alpha: f32,
    /// Conditioned on (t, λ) (a prox network for ProxDM samplers) or not (a denoiser).
    pub cond: bool,
    /// Width of each of the t and λ embeddings when conditioned.
    pub emb: usize,
}

impl Default for LpnConfig {
    /// The reference's MNIST LPN: conv, 28×28, 64 channels, β = 10, α = 0.01.
    fn default() -> Self {
        LpnConfig {
            arch: LpnArch::Conv,
            in_ch: 1,
            size: 28,
            hidden: 64,
            layers: 2,
            beta: 10.0,
            alpha: 0.01,
            cond: false,
            emb: 32,
        }
    }
}

impl LpnConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| {
            Err(Error::Format {
                path: "LPN config".into(),
                detail: m,
            })
        };
        if self.in_ch == 0 || self.hidden == 0 {
            return bad("lpn.in_ch and lpn.hidden must be positive".into());
        }
        if self.arch == LpnArch::Conv && (self.size < 4 || !self.size.is_multiple_of(4)) {
            return bad(format!(
                "lpn.size = {} must be a positive multiple of 4 (two stride-2 stages)",
                self.size
            ));
        }
        if self.arch == LpnArch::Mlp && self.layers == 0 {
            return bad("lpn.layers must be ≥ 1".into());
        }
        if self.beta.is_nan() || self.beta <= 0.0 || self.alpha.is_nan() || self.alpha < 0.0 {
            return bad(format!(
                "need β > 0 and α ≥ 0, got β = {}, α = {}",
                self.beta, self.alpha
            ));
        }
        if self.cond && (self.emb == 0 || !self.emb.is_multiple_of(2)) {
            return bad("lpn.emb must be a positive even width".into());
        }
        Ok(())
    }

    /// Values of one input (d for the MLP, C·S·S for images).
    pub fn input_len(&self) -> usize {
        match self.arch {
            LpnArch::Mlp => self.in_ch,
            LpnArch::Conv => self.in_ch * self.size * self.size,
        }
    }

    /// The shape of a batch of `n` inputs.
    pub fn input_shape(&self, n: usize) -> Vec<usize> {
        match self.arch {
            LpnArch::Mlp => vec![n, self.in_ch],
            LpnArch::Conv => vec![n, self.in_ch, self.size, self.size],
        }
    }
}

/// A weight and its optional bias (indices into the parameter list).
#[derive(Clone, Debug)]
struct Map {
    w: usize,
    b: Option<usize>,
    stride: usize,
}

/// One layer of the chain: z' = σ(W z + H y↓ + c).
#[derive(Clone, Debug)]
struct Layer {
    /// W ≥ 0 on z (absent for the first layer).
    core: Option<Map>,
    /// H on y (downscaled by `down` first for the conv LPN).
    res: Option<Map>,
    down: usize,
    /// Conditioning projection (N, 2·emb) → (N, width).
    cond: Option<Map>,
}

/// An LPN: its config, layers and parameter names.
pub struct Lpn {
    pub config: LpnConfig,
    layers: Vec<Layer>,
    /// The last map w ≥ 0 (and for the MLP, the affine term on y).
    out: Map,
    out_res: Option<Map>,
    embed: Option<(ScalarEmbedding, ScalarEmbedding)>,
    /// Conditioned only: a(t, λ) (Linear of the embedding to a scalar) in the extra quadratic
    /// ½·sigmoid(a)·‖y‖².
    cond_alpha: Option<Map>,
    /// Conditioned MLP only: h(t, λ) (Linear of the embedding to R^d) in the term ⟨h, y⟩.
    cond_shift: Option<Map>,
    /// Indices of the parameters that must stay non-negative.
    pub nonneg: Vec<usize>,
    pub names: Vec<String>,
}

/// PyTorch's default initialisation of a layer's weight and bias: U(±1/√fan_in).
fn torch_default(pb: &mut ParamBuilder, name: &str, shape: &[usize], bias: bool) -> Map {
    let fan_in: usize = shape[1..].iter().product();
    let bound = 1.0 / (fan_in as f64).sqrt();
    let w = pb.uniform(format!("{name}.weight"), shape, bound);
    let b = bias.then(|| pb.uniform(format!("{name}.bias"), &shape[..1], bound));
    Map { w, b, stride: 1 }
}

/// The reference's initialisation of the non-negative weights: exp(N(−10, 0.1)).
fn nonneg(pb: &mut ParamBuilder, name: &str, shape: &[usize], stride: usize) -> Map {
    let w = pb.log_normal(format!("{name}.weight"), shape, -10.0, 0.1);
    Map { w, b: None, stride }
}

impl Lpn {
    /// Builds the network and its freshly initialised parameters (reproducible for `seed`).
    pub fn build(config: &LpnConfig, seed: u64) -> Result<(Lpn, ParamBuilder)> {
        config.validate()?;
        let c = config;
        let mut pb = ParamBuilder::new(seed);
        let (h, d) = (c.hidden, c.in_ch);
        let mut layers = Vec::new();
        let out;
        let mut out_res = None;
        match c.arch {
            LpnArch::Mlp => {
                layers.push(Layer {
                    core: None,
                    res: Some(torch_default(&mut pb, "lin.0", &[h, d], false)),
                    down: 1,
                    cond: None,
                });
                for k in 1..=c.layers {
                    layers.push(Layer {
                        core: Some(nonneg(&mut pb, &format!("lin.{k}"), &[h, h], 1)),
                        res: Some(torch_default(
                            &mut pb,
                            &format!("res.{}", k - 1),
                            &[h, d],
                            true,
                        )),
                        down: 1,
                        cond: None,
                    });
                }
                out = nonneg(&mut pb, &format!("lin.{}", c.layers + 1), &[1, h], 1);
                // The reference's output map on y also has a bias: a constant in ψ, which f
                // does not see, so it is left out.
                // Conditioned, the linear term becomes ⟨h(t, λ), y⟩ (below): a shift of f that
                // does not vanish as λ → 0 would drift every sampler step.
                if !c.cond {
                    out_res = Some(torch_default(
                        &mut pb,
                        &format!("res.{}", c.layers),
                        &[1, d],
                        false,
                    ));
                }
            }
            LpnArch::Conv => {
                let conv = |pb: &mut ParamBuilder, name: &str, cin: usize, stride: usize| {
                    let mut m = torch_default(pb, name, &[h, cin, 3, 3], true);
                    m.stride = stride;
                    m
                };
                let mut first = torch_default(&mut pb, "lin.0", &[h, d, 3, 3], false);
                first.stride = 1;
                layers.push(Layer {
                    core: None,
                    res: Some(first),
                    down: 1,
                    cond: None,
                });
                // (stride of the core conv, res conv stride, downscale of y before res).
                for (k, (stride, down)) in [(2, 1), (1, 2), (2, 2)].into_iter().enumerate() {
                    layers.push(Layer {
                        core: Some(nonneg(
                            &mut pb,
                            &format!("lin.{}", k + 1),
                            &[h, h, 3, 3],
                            stride,
                        )),
                        res: Some(conv(&mut pb, &format!("res.{k}"), d, stride)),
                        down,
                        cond: None,
                    });
                }
                let side = c.size / 4;
                layers.push(Layer {
                    core: Some(nonneg(&mut pb, "lin.4", &[CONV_FC, h * side * side], 1)),
                    res: Some(torch_default(
                        &mut pb,
                        "res.3",
                        &[CONV_FC, d * side * side],
                        true,
                    )),
                    down: 4,
                    cond: None,
                });
                out = nonneg(&mut pb, "lin.5", &[1, CONV_FC], 1);
            }
        }
        let embed = if c.cond {
            let t = ScalarEmbedding::new(&mut pb, "time_embedding", c.emb, c.emb);
            let l = ScalarEmbedding::new(&mut pb, "lamb_embedding", c.emb, c.emb);
            let widths: Vec<usize> = (0..layers.len())
                .map(|k| match (c.arch, k + 1 == layers.len()) {
                    (LpnArch::Conv, true) => CONV_FC,
                    _ => h,
                })
                .collect();
            for (k, (layer, w)) in layers.iter_mut().zip(widths).enumerate() {
                layer.cond = Some(torch_default(
                    &mut pb,
                    &format!("cond.{k}"),
                    &[w, 2 * c.emb],
                    true,
                ));
            }
            Some((t, l))
        } else {
            None
        };
        // A (t, λ)-dependent strong-convexity term: the prox is near the identity at small λ
        // and a strong shrinkage at large λ, which an ICNN on top of a fixed α‖y‖² would
        // have to build from softplus units. ½·sigmoid(a(t, λ))·‖y‖² is convex in y for any a
        // and its gradient never expands (a slope in (0, 1)), so far from the data f stays a
        // contraction plus the ICNN's bounded slopes. Initialised to the identity:
        // 2α + sigmoid(a) = 1, a constant in (t, λ).
        let cond_alpha = c.cond.then(|| {
            let s = (1.0 - 2.0 * c.alpha as f64).clamp(1e-3, 1.0 - 1e-3);
            Map {
                w: pb.constant("cond_alpha.weight".into(), &[1, 2 * c.emb], 0.0),
                b: Some(pb.constant("cond_alpha.bias".into(), &[1], (s / (1.0 - s)).ln() as f32)),
                stride: 1,
            }
        });
        // The conditioned MLP's linear term ⟨h(t, λ), y⟩, zero at initialisation.
        let cond_shift = (c.cond && c.arch == LpnArch::Mlp).then(|| Map {
            w: pb.constant("cond_shift.weight".into(), &[d, 2 * c.emb], 0.0),
            b: Some(pb.constant("cond_shift.bias".into(), &[d], 0.0)),
            stride: 1,
        });
        let mut nonneg_idx: Vec<usize> = layers
            .iter()
            .filter_map(|l| l.core.as_ref().map(|m| m.w))
            .collect();
        nonneg_idx.push(out.w);
        let names = pb.names().map(str::to_string).collect();
        Ok((
            Lpn {
                config: c.clone(),
                layers,
                out,
                out_res,
                embed,
                cond_alpha,
                cond_shift,
                nonneg: nonneg_idx,
                names,
            },
            pb,
        ))
    }

    /// SiLU([emb(t), emb(λ)]) (N, 2·emb) for a conditioned LPN.
    pub fn embedding<B: Backend>(
        &self,
        be: &B,
        p: &[B::T],
        t: &B::T,
        lamb: &B::T,
    ) -> Result<Option<B::T>> {
        match &self.embed {
            Some((te, le)) => {
                let e = be.concat_cols(&te.forward(be, p, t)?, &le.forward(be, p, lamb)?)?;
                Ok(Some(be.silu(&e)?))
            }
            None => Ok(None),
        }
    }

    /// ψ(y) (N, 1) for y of `config.input_shape(N)`; `cond` from [`Lpn::embedding`] when the
    /// network is conditioned.
    pub fn psi<B: Backend>(
        &self,
        be: &B,
        p: &[B::T],
        y: &B::T,
        cond: Option<&B::T>,
    ) -> Result<B::T> {
        let s = be.shape(y).to_vec();
        let n = s.first().copied().unwrap_or(0);
        if s != self.config.input_shape(n) || n == 0 {
            return Err(Error::shape(
                "lpn",
                format!(
                    "input {s:?} must be {:?} with N ≥ 1",
                    self.config.input_shape(n.max(1))
                ),
            ));
        }
        if cond.is_some() != self.embed.is_some() {
            return Err(Error::shape(
                "lpn",
                if self.embed.is_some() {
                    "this LPN is conditioned on (t, λ): give t and λ"
                } else {
                    "this LPN is not conditioned on (t, λ)"
                },
            ));
        }
        let conv = self.config.arch == LpnArch::Conv;
        let mut downs: Vec<(usize, B::T)> = vec![(1, y.clone())];
        let mut z: Option<B::T> = None;
        let last = self.layers.len() - 1;
        for (k, layer) in self.layers.iter().enumerate() {
            let yk = match downs.iter().find(|d| d.0 == layer.down) {
                Some(d) => d.1.clone(),
                None => {
                    let d = self.downscale(be, y, layer.down)?;
                    downs.push((layer.down, d.clone()));
                    d
                }
            };
            let flat = conv && k == last;
            let apply = |m: &Map, x: &B::T| -> Result<B::T> {
                let b = m.b.map(|b| &p[b]);
                if conv && !flat {
                    be.conv2d(x, &p[m.w], b, m.stride, 1)
                } else {
                    let xs = be.shape(x).to_vec();
                    let x = be.reshape(x, &[xs[0], xs[1..].iter().product()])?;
                    be.linear(&x, &p[m.w], b)
                }
            };
            let mut a = apply(layer.res.as_ref().expect("every layer reads y"), &yk)?;
            if let (Some(core), Some(z)) = (&layer.core, &z) {
                a = be.add(&apply(core, z)?, &a)?;
            }
            if let (Some(cm), Some(e)) = (&layer.cond, cond) {
                let c = be.linear(e, &p[cm.w], cm.b.map(|b| &p[b]))?;
                let cs = be.shape(&c).to_vec();
                let c = if conv && !flat {
                    be.reshape(&c, &[cs[0], cs[1], 1, 1])?
                } else {
                    c
                };
                a = be.add(&a, &c)?;
            }
            z = Some(be.softplus(&a, self.config.beta)?);
        }
        let z = z.expect("at least one layer");
        let mut out = be.linear(&z, &p[self.out.w], None)?;
        if let (Some(m), Some(e)) = (&self.cond_shift, cond) {
            let h = be.linear(e, &p[m.w], m.b.map(|b| &p[b]))?;
            out = be.add(&out, &be.sum_rows(&be.mul(&h, y)?)?)?;
        }
        if let Some(r) = &self.out_res {
            out = be.add(&out, &be.linear(y, &p[r.w], r.b.map(|b| &p[b]))?)?;
        }
        if self.config.alpha > 0.0 || self.cond_alpha.is_some() {
            let sq = be.sum_rows(&be.mul(y, y)?)?;
            if self.config.alpha > 0.0 {
                out = be.add(&out, &be.scale(&sq, self.config.alpha)?)?;
            }
            if let (Some(m), Some(e)) = (&self.cond_alpha, cond) {
                let a = be.sigmoid(&be.linear(e, &p[m.w], m.b.map(|b| &p[b]))?)?;
                out = be.add(&out, &be.scale(&be.mul(&sq, &a)?, 0.5)?)?;
            }
        }
        Ok(out)
    }

    /// Bilinear downscaling by an even integer factor (PyTorch's `interpolate(…, 'bilinear')`
    /// without corner alignment): each output pixel is the mean of the 2×2 source pixels at the
    /// centre of its f×f block, so it is a fixed stride-f convolution.
    fn downscale<B: Backend>(&self, be: &B, y: &B::T, f: usize) -> Result<B::T> {
        let c = self.config.in_ch;
        let mut w = vec![0.0f32; c * c * f * f];
        for ch in 0..c {
            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let (r, q) = (f / 2 - 1 + dy, f / 2 - 1 + dx);
                w[((ch * c + ch) * f + r) * f + q] = 0.25;
            }
        }
        let k = be.constant(&[c, c, f, f], &w)?;
        be.conv2d(y, &k, None, f, 0)
    }

    /// f(y) = ∇_y ψ(y) on the GPU, for per-sample (t, λ) when conditioned. With
    /// `create_graph` the result stays differentiable with respect to the parameters (training).
    pub fn prox(
        &self,
        g: &Graph,
        p: &[Var],
        y: &Tensor,
        t_lamb: Option<(&[f32], &[f32])>,
        create_graph: bool,
    ) -> Result<Var> {
        if !g.is_recording() {
            return Err(Error::shape(
                "lpn",
                "an LPN's output is a gradient: evaluate it on a recording graph",
            ));
        }
        let n = y.shape().first().copied().unwrap_or(0);
        let be = Gpu::inference(g);
        let cond = match (t_lamb, self.embed.is_some()) {
            (Some((t, l)), true) => {
                if t.len() != n || l.len() != n {
                    return Err(Error::shape(
                        "lpn",
                        format!("{n} samples need {n} values of t and λ"),
                    ));
                }
                let e = g.engine();
                let tv = g.constant(Tensor::from_slice(e, &[n], t)?);
                let lv = g.constant(Tensor::from_slice(e, &[n], l)?);
                self.embedding(&be, p, &tv, &lv)?
            }
            (None, false) => None,
            (Some(_), false) => None,
            (None, true) => {
                return Err(Error::shape(
                    "lpn",
                    "this LPN is conditioned on (t, λ): give t and λ",
                ));
            }
        };
        let yv = g.leaf(y.clone());
        let psi = self.psi(&be, p, &yv, cond.as_ref())?;
        let total = g.sum_all(&psi)?;
        let f = g.backward(&total, &[&yv], create_graph)?;
        f.into_iter()
            .next()
            .flatten()
            .ok_or_else(|| Error::shape("lpn", "ψ does not depend on y"))
    }

    /// Sets every non-negative weight to max(w, 0) (after an optimiser step).
    pub fn clip(&self, store: &mut ParamStore) -> Result<()> {
        use crate::ops::elementwise::{UnaryOp, unary};
        for &i in &self.nonneg {
            let w = unary(&store.tensors()[i], UnaryOp::Relu)?;
            store.set(i, w)?;
        }
        Ok(())
    }

    /// The first negative entry of a weight that must be non-negative, if any (on load).
    pub fn check_nonneg(&self, params: &[Vec<f32>]) -> Option<(String, usize, f32)> {
        self.nonneg.iter().find_map(|&i| {
            params[i]
                .iter()
                .position(|&v| v < 0.0)
                .map(|j| (self.names[i].clone(), j, params[i][j]))
        })
    }

    /// FLOPs of ψ on one input (the forward; f costs about twice more).
    pub fn forward_flops(&self) -> Result<f64> {
        Ok(self.psi_on_shapes()?.total())
    }

    /// Elements of the largest tensor ψ's forward creates per input.
    pub fn largest_tensor(&self) -> Result<usize> {
        Ok(self.psi_on_shapes()?.largest())
    }

    /// ψ of a single input on shapes only.
    fn psi_on_shapes(&self) -> Result<crate::nn::flops::Flops> {
        let (_, pb) = Lpn::build(&self.config, 0)?;
        let params: Vec<Vec<usize>> = pb.into_params().into_iter().map(|p| p.1).collect();
        let be = crate::nn::flops::Flops::default();
        let cond = self.config.cond.then(|| vec![1, 2 * self.config.emb]);
        self.psi(&be, &params, &self.config.input_shape(1), cond.as_ref())?;
        Ok(be)
    }
}
