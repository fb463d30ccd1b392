//! The DDPM UNet and its two wrappers: the score network (time embedding of width 4·ch) and the
//! prox network (time and λ embeddings of 2·ch each, concatenated). Both predict a noise g; the
//! prox is y − √λ·g and the score −g/√(1−α(t)).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::graph::{Graph, ParamStore, Var};
use crate::nn::{Backend, Conv2d, GroupNorm, ParamBuilder, ResBlock, ScalarEmbedding};
use crate::tensor::Tensor;

/// UNet architecture, named as the reference's arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UNetConfig {
    /// Base channel count (a multiple of 32: GroupNorm has 32 groups).
    pub ch: usize,
    /// Channel multiplier per resolution level.
    pub ch_mult: Vec<usize>,
    /// Levels (indices into ch_mult) whose ResBlocks carry self-attention.
    pub attn: Vec<usize>,
    pub num_res_blocks: usize,
    pub dropout: f32,
    /// Image channels in and out.
    pub in_ch: usize,
    /// Prox networks only: an analytic term added to the network's output (see [`Skip`]).
    pub skip: Skip,
}

/// What a prox network adds to its UNet's output g.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Skip {
    /// g = UNet(y, t, λ): the paper's ε-parameterisation.
    #[default]
    None,
    /// g = UNet(y, t, λ) + √λ/(v_t + λ)·y, v_t = 1 − α(t)(1 − σ_d²), σ_d = 0.5: the ε of the
    /// prox of N(0, v_t I), the marginal p_t of data with variance σ_d². The UNet learns only
    /// the departure from that Gaussian prox, and the prox stays linear in y where the UNet's
    /// output, bounded by its final GroupNorm, cannot follow: the hybrid sampler's first
    /// large steps feed it y ≈ 1.4× the norm of any training input at that (t, λ).
    Gaussian,
}

/// σ_d of [`Skip::Gaussian`].
pub const SKIP_SIGMA_DATA: f64 = 0.5;

impl Default for UNetConfig {
    /// The small preset: ch 32, mult [1, 2, 2], attention at level 1, one block per level.
    fn default() -> Self {
        UNetConfig {
            ch: 32,
            ch_mult: vec![1, 2, 2],
            attn: vec![1],
            num_res_blocks: 1,
            dropout: 0.1,
            in_ch: 1,
            skip: Skip::None,
        }
    }
}

impl UNetConfig {
    /// The reference's MNIST network: ch 64, mult [1, 2, 2, 2], attention at level 1, two
    /// blocks per level, dropout 0.1.
    pub fn mnist_reference() -> Self {
        UNetConfig {
            ch: 64,
            ch_mult: vec![1, 2, 2, 2],
            attn: vec![1],
            num_res_blocks: 2,
            dropout: 0.1,
            in_ch: 1,
            skip: Skip::None,
        }
    }
}

/// Linear-β VP SDE parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SdeConfig {
    pub beta_min: f64,
    pub beta_max: f64,
}

impl Default for SdeConfig {
    fn default() -> Self {
        SdeConfig {
            beta_min: 0.1,
            beta_max: 20.0,
        }
    }
}

impl SdeConfig {
    /// β(t) = β_min + (β_max − β_min)·t.
    pub fn beta(&self, t: f64) -> f64 {
        self.beta_min + (self.beta_max - self.beta_min) * t
    }

    /// B(a, b) = ∫_a^b β = (β(a) + β(b))(b − a)/2.
    pub fn integral(&self, a: f64, b: f64) -> f64 {
        0.5 * (self.beta(a) + self.beta(b)) * (b - a)
    }

    /// α(t) = exp(−B(0, t)).
    pub fn alpha(&self, t: f64) -> f64 {
        (-self.integral(0.0, t)).exp()
    }

    /// The time t ≥ 0 with B(0, t) = `b` (so α(t) = e^(−b)), the positive root of
    /// β_min·t + (β_max − β_min)·t²/2 = b; it may lie beyond 1.
    pub fn time_of(&self, b: f64) -> f64 {
        let (lo, d) = (self.beta_min, self.beta_max - self.beta_min);
        if d.abs() < 1e-12 {
            return b / lo;
        }
        // 2b / (lo + √(lo² + 2db)): the root without cancellation when d·b is small.
        2.0 * b / (lo + (lo * lo + 2.0 * d * b).sqrt())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// ε_θ(x, t); score = −ε/√(1−α(t)).
    Score,
    /// g_θ(y, t, λ); prox_{−λ ln p_t}(y) = y − √λ·g.
    Prox,
    /// A learned proximal network (`models::lpn`), not a UNet: f = ∇ψ is the prox itself.
    Lpn,
}

/// Everything needed to rebuild a model: stored in the weight file's metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub kind: ModelKind,
    #[serde(default)]
    pub unet: UNetConfig,
    #[serde(default)]
    pub sde: SdeConfig,
}

impl ModelConfig {
    /// Checks the architecture can be built.
    pub fn validate(&self) -> Result<()> {
        let u = &self.unet;
        let bad = |m: String| {
            Err(Error::Format {
                path: "model config".into(),
                detail: m,
            })
        };
        if self.kind == ModelKind::Lpn {
            return bad("kind = \"lpn\" is a learned proximal network, not a UNet".into());
        }
        if u.ch == 0 || !u.ch.is_multiple_of(crate::nn::GROUPS) {
            return bad(format!(
                "unet.ch = {} must be a positive multiple of 32 (GroupNorm groups)",
                u.ch
            ));
        }
        if u.ch_mult.is_empty() || u.ch_mult.contains(&0) {
            return bad(format!(
                "unet.ch_mult = {:?} must be non-empty and positive",
                u.ch_mult
            ));
        }
        if let Some(a) = u.attn.iter().find(|&&a| a >= u.ch_mult.len()) {
            return bad(format!(
                "unet.attn level {a} is out of range for {} levels",
                u.ch_mult.len()
            ));
        }
        if u.num_res_blocks == 0 || u.in_ch == 0 || !(0.0..1.0).contains(&u.dropout) {
            return bad("unet.num_res_blocks and in_ch must be ≥ 1 and 0 ≤ dropout < 1".into());
        }
        if u.skip != Skip::None && self.kind != ModelKind::Prox {
            return bad("unet.skip is for prox networks: remove it from a score config".into());
        }
        if !(self.sde.beta_min > 0.0 && self.sde.beta_max > self.sde.beta_min) {
            return bad(format!(
                "sde: need 0 < beta_min < beta_max, got {:?}",
                self.sde
            ));
        }
        Ok(())
    }
}

enum Layer {
    Res(Box<ResBlock>),
    Down(Conv2d),
    Up(Conv2d),
}

/// The UNet body: head, down path with skips, middle, up path with concatenated skips, tail.
pub struct UNet {
    head: Conv2d,
    down: Vec<Layer>,
    middle: Vec<ResBlock>,
    up: Vec<Layer>,
    tail_norm: GroupNorm,
    tail: Conv2d,
}

impl UNet {
    pub fn new(pb: &mut ParamBuilder, prefix: &str, c: &UNetConfig, edim: usize) -> UNet {
        let name = |s: String| {
            if prefix.is_empty() {
                s
            } else {
                format!("{prefix}.{s}")
            }
        };
        let head = Conv2d::new(pb, &name("head".into()), c.in_ch, c.ch, 3, 1, 1, 1.0);
        let mut stream = 0u32;
        let mut res = |pb: &mut ParamBuilder, p: String, cin, cout, attn| {
            stream += 1;
            ResBlock::new(pb, &p, cin, cout, edim, c.dropout, attn, stream)
        };
        let mut chs = vec![c.ch];
        let mut now = c.ch;
        let mut down = Vec::new();
        for (i, &mult) in c.ch_mult.iter().enumerate() {
            let out = c.ch * mult;
            for _ in 0..c.num_res_blocks {
                let p = name(format!("downblocks.{}", down.len()));
                down.push(Layer::Res(Box::new(res(
                    pb,
                    p,
                    now,
                    out,
                    c.attn.contains(&i),
                ))));
                now = out;
                chs.push(now);
            }
            if i + 1 != c.ch_mult.len() {
                let p = name(format!("downblocks.{}.main", down.len()));
                down.push(Layer::Down(Conv2d::new(pb, &p, now, now, 3, 2, 1, 1.0)));
                chs.push(now);
            }
        }
        let middle = vec![
            res(pb, name("middleblocks.0".into()), now, now, true),
            res(pb, name("middleblocks.1".into()), now, now, false),
        ];
        let mut up = Vec::new();
        for (i, &mult) in c.ch_mult.iter().enumerate().rev() {
            let out = c.ch * mult;
            for _ in 0..=c.num_res_blocks {
                let skip = chs.pop().expect("one skip per down layer");
                let p = name(format!("upblocks.{}", up.len()));
                up.push(Layer::Res(Box::new(res(
                    pb,
                    p,
                    skip + now,
                    out,
                    c.attn.contains(&i),
                ))));
                now = out;
            }
            if i != 0 {
                let p = name(format!("upblocks.{}.main", up.len()));
                up.push(Layer::Up(Conv2d::new(pb, &p, now, now, 3, 1, 1, 1.0)));
            }
        }
        debug_assert!(chs.is_empty());
        let tail_norm = GroupNorm::new(pb, &name("tail.0".into()), now);
        let tail = Conv2d::new(pb, &name("tail.2".into()), now, c.in_ch, 3, 1, 1, 1e-5);
        UNet {
            head,
            down,
            middle,
            up,
            tail_norm,
            tail,
        }
    }

    /// x (N, in_ch, H, W), emb (N, edim) → (N, in_ch, H, W). H and W must be divisible by
    /// 2^(levels−1).
    pub fn forward<B: Backend>(&self, be: &B, p: &[B::T], x: &B::T, emb: &B::T) -> Result<B::T> {
        let mut h = self.head.forward(be, p, x)?;
        let mut skips = vec![h.clone()];
        for layer in &self.down {
            h = match layer {
                Layer::Res(r) => r.forward(be, p, &h, emb)?,
                Layer::Down(c) => c.forward(be, p, &h)?,
                Layer::Up(_) => unreachable!("no upsampling on the way down"),
            };
            skips.push(h.clone());
        }
        for r in &self.middle {
            h = r.forward(be, p, &h, emb)?;
        }
        for layer in &self.up {
            h = match layer {
                Layer::Res(r) => {
                    let skip = skips.pop().expect("one skip per down layer");
                    r.forward(be, p, &be.concat(&h, &skip)?, emb)?
                }
                Layer::Up(c) => c.forward(be, p, &be.upsample2x(&h)?)?,
                Layer::Down(_) => unreachable!("no downsampling on the way up"),
            };
        }
        let h = self.tail_norm.forward_silu(be, p, &h)?;
        self.tail.forward(be, p, &h)
    }
}

/// A score or prox network: embeddings + UNet, with its config.
pub struct Model {
    pub config: ModelConfig,
    time: ScalarEmbedding,
    lamb: Option<ScalarEmbedding>,
    unet: UNet,
    /// Parameter names in definition order (the reference's state_dict order).
    pub names: Vec<String>,
}

impl Model {
    /// Builds the model and its freshly initialised parameters (reproducible for `seed`).
    pub fn build(config: &ModelConfig, seed: u64) -> Result<(Model, ParamBuilder)> {
        config.validate()?;
        let c = &config.unet;
        let mut pb = ParamBuilder::new(seed);
        let edim = 4 * c.ch;
        let (time, lamb) = match config.kind {
            ModelKind::Score => (
                ScalarEmbedding::new(&mut pb, "time_embedding", c.ch, edim),
                None,
            ),
            ModelKind::Lpn => unreachable!("validate refuses LPN configs"),
            ModelKind::Prox => (
                ScalarEmbedding::new(&mut pb, "time_embedding", c.ch, edim / 2),
                Some(ScalarEmbedding::new(
                    &mut pb,
                    "lamb_embedding",
                    c.ch,
                    edim / 2,
                )),
            ),
        };
        let unet = UNet::new(&mut pb, "unet", c, edim);
        let names = pb.names().map(str::to_string).collect();
        Ok((
            Model {
                config: config.clone(),
                time,
                lamb,
                unet,
                names,
            },
            pb,
        ))
    }

    /// FLOPs of one forward on one `size`×`size` image (convolutions, linear layers and
    /// attention products; see [`crate::nn::flops`]), counted by running the forward on shapes.
    pub fn forward_flops(&self, size: usize) -> Result<f64> {
        Ok(self.forward_on_shapes(size)?.total())
    }

    /// Elements of the largest tensor one forward creates per input image of side `size`
    /// (a batch's largest tensor is this times the batch; the backward's are the same shapes).
    pub fn largest_tensor(&self, size: usize) -> Result<usize> {
        Ok(self.forward_on_shapes(size)?.largest())
    }

    /// One forward of a single image of side `size` on shapes only.
    fn forward_on_shapes(&self, size: usize) -> Result<crate::nn::flops::Flops> {
        let (_, pb) = Model::build(&self.config, 0)?;
        let params: Vec<Vec<usize>> = pb.into_params().into_iter().map(|p| p.1).collect();
        let be = crate::nn::flops::Flops::default();
        let x = vec![1, self.config.unet.in_ch, size, size];
        let lamb = (self.config.kind == ModelKind::Prox).then_some(&[0.5f32][..]);
        self.eps(&be, &params, &x, &[0.5], lamb)?;
        Ok(be)
    }

    /// The network output (predicted noise) for x (N, C, H, W), t (N) and, for a prox
    /// network, λ (N), with the configured [`Skip`].
    pub fn eps<B: Backend>(
        &self,
        be: &B,
        p: &[B::T],
        x: &B::T,
        t: &[f32],
        lamb: Option<&[f32]>,
    ) -> Result<B::T> {
        let s = be.shape(x).to_vec();
        let levels = self.config.unet.ch_mult.len() as u32;
        let div = 1usize << (levels - 1);
        if s.len() != 4 || s[1] != self.config.unet.in_ch || s[2] % div != 0 || s[3] % div != 0 {
            return Err(Error::shape(
                "unet",
                format!(
                    "input {s:?} must be (N, {}, H, W) with H and W divisible by {div}",
                    self.config.unet.in_ch
                ),
            ));
        }
        let n = s[0];
        if t.len() != n || lamb.is_some_and(|l| l.len() != n) {
            return Err(Error::shape(
                "unet",
                format!("{n} samples need {n} values of t (and of λ)"),
            ));
        }
        let temb = self.time.forward(be, p, &be.constant(&[n], t)?)?;
        let emb = match (&self.lamb, lamb) {
            (Some(le), Some(l)) => {
                be.concat_cols(&temb, &le.forward(be, p, &be.constant(&[n], l)?)?)?
            }
            (None, None) => temb,
            (Some(_), None) => return Err(Error::shape("unet", "a prox network needs λ")),
            (None, Some(_)) => return Err(Error::shape("unet", "a score network takes no λ")),
        };
        let out = self.unet.forward(be, p, x, &emb)?;
        match (self.config.unet.skip, lamb) {
            (Skip::Gaussian, Some(l)) => {
                let c: Vec<f32> = t
                    .iter()
                    .zip(l)
                    .map(|(&t, &l)| {
                        let v =
                            1.0 - self.config.sde.alpha(t as f64) * (1.0 - SKIP_SIGMA_DATA.powi(2));
                        ((l as f64).sqrt() / (v + l as f64)) as f32
                    })
                    .collect();
                be.add(&out, &be.mul(x, &be.constant(&[n, 1, 1, 1], &c)?)?)
            }
            _ => Ok(out),
        }
    }

    /// prox_{−λ ln p_t}(y) = y − √λ·g(y, t, λ) for per-sample t and λ.
    pub fn prox(&self, g: &Graph, p: &[Var], y: &Var, t: &[f32], lamb: &[f32]) -> Result<Var> {
        let n = y.shape()[0];
        if self.config.kind != ModelKind::Prox {
            return Err(Error::shape(
                "prox",
                "these weights are a score network: use `proxdm score`",
            ));
        }
        if t.len() != n || lamb.len() != n {
            return Err(Error::shape(
                "prox",
                format!("{n} samples need {n} values of t and λ"),
            ));
        }
        let e = g.engine();
        let eps = self.eps(&crate::nn::Gpu::inference(g), p, y, t, Some(lamb))?;
        let coef: Vec<f32> = lamb.iter().map(|l| -l.sqrt()).collect();
        let c = g.constant(Tensor::from_slice(e, &[n, 1, 1, 1], &coef)?);
        g.add(y, &g.mul(&eps, &c)?)
    }

    /// score(x, t) = −ε(x, t)/√(1−α(t)) for per-sample t.
    pub fn score(&self, g: &Graph, p: &[Var], x: &Var, t: &[f32]) -> Result<Var> {
        let n = x.shape()[0];
        if self.config.kind != ModelKind::Score {
            return Err(Error::shape(
                "score",
                "these weights are a prox network: use `proxdm prox`",
            ));
        }
        if t.len() != n {
            return Err(Error::shape(
                "score",
                format!("{n} samples need {n} values of t"),
            ));
        }
        let e = g.engine();
        let eps = self.eps(&crate::nn::Gpu::inference(g), p, x, t, None)?;
        let coef: Vec<f32> = t
            .iter()
            .map(|&t| (-1.0 / (1.0 - self.config.sde.alpha(t as f64)).sqrt()) as f32)
            .collect();
        g.mul(
            &eps,
            &g.constant(Tensor::from_slice(e, &[n, 1, 1, 1], &coef)?),
        )
    }

    /// Parameters as uploaded leaves of `g`.
    pub fn vars(&self, g: &Graph, store: &ParamStore) -> Vec<Var> {
        store.vars(g)
    }
}
