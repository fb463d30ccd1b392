//! Differentiable ops on [`Var`]s. Each forward runs a kernel from `crate::ops`; each backward
//! is written with these same ops, so gradients are themselves differentiable. The few whose
//! backward is a fused kernel (group norm, softmax, embedding, losses) say so when asked for a
//! second derivative.

use std::rc::Rc;

use super::{BackwardFn, Graph, Var};
use crate::error::{Error, Result};
use crate::ops::elementwise::{self as ew, UnaryOp};
use crate::ops::loss::Loss;
use crate::ops::{
    attention, channel, conv2d, embedding, group_norm, loss, matmul, noise, reduce, softmax,
    upsample,
};
use crate::tensor::Tensor;

/// A backward for nodes created by fused backward kernels: differentiating them again fails.
fn not_differentiable(name: &'static str) -> BackwardFn {
    Rc::new(move |_, _, _| Err(Error::NotDifferentiable(name)))
}

fn bw(f: impl Fn(&Graph, &[Var], &Var) -> Result<Vec<Option<Var>>> + 'static) -> BackwardFn {
    Rc::new(f)
}

/// The gradient of input `k`, computed only when the reverse pass needs it.
fn when(g: &Graph, k: usize, f: impl FnOnce() -> Result<Var>) -> Result<Option<Var>> {
    if g.needs(k) { f().map(Some) } else { Ok(None) }
}

impl Graph {
    // ---- elementwise -------------------------------------------------------------------

    /// a + b (broadcasting).
    pub fn add(&self, a: &Var, b: &Var) -> Result<Var> {
        let t = ew::add(a.tensor(), b.tensor())?;
        // da = sum_to(dc), db = sum_to(dc)
        Ok(self.record(
            "add",
            t,
            &[a, b],
            bw(|g, i, d| {
                Ok(vec![
                    Some(g.sum_to(d, i[0].shape())?),
                    Some(g.sum_to(d, i[1].shape())?),
                ])
            }),
        ))
    }

    /// a - b (broadcasting).
    pub fn sub(&self, a: &Var, b: &Var) -> Result<Var> {
        let t = ew::sub(a.tensor(), b.tensor())?;
        // da = sum_to(dc), db = -sum_to(dc)
        Ok(self.record(
            "sub",
            t,
            &[a, b],
            bw(|g, i, d| {
                let db = g.scale(&g.sum_to(d, i[1].shape())?, -1.0)?;
                Ok(vec![Some(g.sum_to(d, i[0].shape())?), Some(db)])
            }),
        ))
    }

    /// a ⊙ b (broadcasting).
    pub fn mul(&self, a: &Var, b: &Var) -> Result<Var> {
        let t = ew::mul(a.tensor(), b.tensor())?;
        // da = sum_to(dc ⊙ b), db = sum_to(dc ⊙ a)
        Ok(self.record(
            "mul",
            t,
            &[a, b],
            bw(|g, i, d| {
                Ok(vec![
                    when(g, 0, || g.sum_to(&g.mul(d, &i[1])?, i[0].shape()))?,
                    when(g, 1, || g.sum_to(&g.mul(d, &i[0])?, i[1].shape()))?,
                ])
            }),
        ))
    }

    /// a·x
    pub fn scale(&self, x: &Var, a: f32) -> Result<Var> {
        self.unary(x, UnaryOp::Affine { a, b: 0.0 })
    }

    /// y = f(x) for an elementwise map.
    pub fn unary(&self, x: &Var, op: UnaryOp) -> Result<Var> {
        let t = ew::unary(x.tensor(), op)?;
        // dx = dy ⊙ f'(x)
        Ok(self.record(
            "unary",
            t,
            &[x],
            bw(move |g, i, d| Ok(vec![Some(g.unary_grad(&i[0], d, op)?)])),
        ))
    }

    pub fn silu(&self, x: &Var) -> Result<Var> {
        self.unary(x, UnaryOp::Silu)
    }

    pub fn softplus(&self, x: &Var, beta: f32) -> Result<Var> {
        self.unary(x, UnaryOp::Softplus { beta })
    }

    /// dy ⊙ f'(x), itself differentiable: d/d(dy) = G ⊙ f'(x), d/dx = G ⊙ dy ⊙ f''(x).
    pub fn unary_grad(&self, x: &Var, dy: &Var, op: UnaryOp) -> Result<Var> {
        let t = ew::unary_backward(x.tensor(), dy.tensor(), op)?;
        Ok(self.record(
            "unary_grad",
            t,
            &[x, dy],
            bw(move |g, i, d| {
                Ok(vec![
                    when(g, 0, || g.unary_grad2(&i[0], &g.mul(d, &i[1])?, op))?,
                    when(g, 1, || g.unary_grad(&i[0], d, op))?,
                ])
            }),
        ))
    }

    /// g ⊙ f''(x) (third derivatives are not supported).
    fn unary_grad2(&self, x: &Var, gv: &Var, op: UnaryOp) -> Result<Var> {
        let t = ew::unary_backward2(x.tensor(), gv.tensor(), op)?;
        Ok(self.record(
            "unary_grad2",
            t,
            &[x, gv],
            not_differentiable("unary (third derivative)"),
        ))
    }

    // ---- shapes and reductions ---------------------------------------------------------

    /// Same values, new shape.
    pub fn reshape(&self, x: &Var, shape: &[usize]) -> Result<Var> {
        let t = x.tensor().reshape(shape)?;
        Ok(self.record(
            "reshape",
            t,
            &[x],
            bw(|g, i, d| Ok(vec![Some(g.reshape(d, i[0].shape())?)])),
        ))
    }

    /// Σ over `axes` (kept with extent 1).
    pub fn sum(&self, x: &Var, axes: &[usize]) -> Result<Var> {
        let t = reduce::sum(x.tensor(), axes)?;
        // dx = broadcast(dy)
        Ok(self.record(
            "sum",
            t,
            &[x],
            bw(|g, i, d| Ok(vec![Some(g.broadcast_to(d, i[0].shape())?)])),
        ))
    }

    /// Mean over `axes` (kept with extent 1).
    pub fn mean(&self, x: &Var, axes: &[usize]) -> Result<Var> {
        let s = self.sum(x, axes)?;
        let count = x.tensor().numel() / s.tensor().numel().max(1);
        self.scale(&s, 1.0 / count as f32)
    }

    /// Sum of every element, shape [1].
    pub fn sum_all(&self, x: &Var) -> Result<Var> {
        let flat = self.reshape(x, &[x.tensor().numel()])?;
        self.sum(&flat, &[0])
    }

    /// Sums `x` down to `shape` (the backward of broadcasting).
    pub fn sum_to(&self, x: &Var, shape: &[usize]) -> Result<Var> {
        if x.shape() == shape {
            return Ok(x.clone());
        }
        let t = reduce::sum_to(x.tensor(), shape)?;
        Ok(self.record(
            "sum_to",
            t,
            &[x],
            bw(|g, i, d| Ok(vec![Some(g.broadcast_to(d, i[0].shape())?)])),
        ))
    }

    /// Broadcasts `x` to `shape`.
    pub fn broadcast_to(&self, x: &Var, shape: &[usize]) -> Result<Var> {
        if x.shape() == shape {
            return Ok(x.clone());
        }
        let t = reduce::broadcast_to(x.tensor(), shape)?;
        Ok(self.record(
            "broadcast_to",
            t,
            &[x],
            bw(|g, i, d| Ok(vec![Some(g.sum_to(d, i[0].shape())?)])),
        ))
    }

    // ---- linear algebra ----------------------------------------------------------------

    /// alpha · op(a) · op(b), batched (see [`matmul::matmul`]).
    pub fn matmul(&self, a: &Var, b: &Var, ta: bool, tb: bool, alpha: f32) -> Result<Var> {
        let t = matmul::matmul(a.tensor(), b.tensor(), ta, tb, alpha)?;
        Ok(self.record(
            "matmul",
            t,
            &[a, b],
            bw(move |g, i, d| {
                let (a, b) = (&i[0], &i[1]);
                let da = when(g, 0, || match (ta, tb) {
                    // C = A B:    dA = dC Bᵀ
                    (false, false) => g.matmul(d, b, false, true, alpha),
                    // C = A Bᵀ:   dA = dC B
                    (false, true) => g.matmul(d, b, false, false, alpha),
                    // C = Aᵀ B:   dA = B dCᵀ
                    (true, false) => g.matmul(b, d, false, true, alpha),
                    // C = Aᵀ Bᵀ:  dA = Bᵀ dCᵀ
                    (true, true) => g.matmul(b, d, true, true, alpha),
                })?;
                let db = when(g, 1, || match (ta, tb) {
                    // C = A B:    dB = Aᵀ dC
                    (false, false) => g.matmul(a, d, true, false, alpha),
                    // C = A Bᵀ:   dB = dCᵀ A
                    (false, true) => g.matmul(d, a, true, false, alpha),
                    // C = Aᵀ B:   dB = A dC
                    (true, false) => g.matmul(a, d, false, false, alpha),
                    // C = Aᵀ Bᵀ:  dB = dCᵀ Aᵀ
                    (true, true) => g.matmul(d, a, true, true, alpha),
                })?;
                Ok(vec![
                    da.map(|da| g.unbatch(da, a)).transpose()?,
                    db.map(|db| g.unbatch(db, b)).transpose()?,
                ])
            }),
        ))
    }

    /// Sums a batched gradient over the batch when its operand was shared (rank 2).
    fn unbatch(&self, grad: Var, like: &Var) -> Result<Var> {
        if like.shape().len() == 2 && grad.shape().len() == 3 {
            let s = grad.shape().to_vec();
            self.reshape(&self.sum(&grad, &[0])?, &s[1..])
        } else {
            Ok(grad)
        }
    }

    /// x Wᵀ + b for x (N, in), W (out, in), b (out).
    pub fn linear(&self, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
        if x.shape().len() != 2 || w.shape().len() != 2 || x.shape()[1] != w.shape()[1] {
            return Err(Error::shape(
                "linear",
                format!(
                    "x {:?} must be (N, in) and W {:?} (out, in)",
                    x.shape(),
                    w.shape()
                ),
            ));
        }
        let y = self.matmul(x, w, false, true, 1.0)?;
        match b {
            Some(b) => self.add(&y, b),
            None => Ok(y),
        }
    }

    /// 2D convolution with optional bias.
    pub fn conv2d(
        &self,
        x: &Var,
        w: &Var,
        b: Option<&Var>,
        stride: usize,
        pad: usize,
    ) -> Result<Var> {
        let t = conv2d::conv2d(x.tensor(), w.tensor(), b.map(|b| b.tensor()), stride, pad)?;
        let inputs: Vec<&Var> = [Some(x), Some(w), b].into_iter().flatten().collect();
        Ok(self.record(
            "conv2d",
            t,
            &inputs,
            bw(move |g, i, d| {
                let (x, w) = (&i[0], &i[1]);
                let mut grads = vec![
                    when(g, 0, || g.conv2d_input_grad(d, w, x.shape(), stride, pad))?,
                    when(g, 1, || g.conv2d_weight_grad(x, d, w.shape(), stride, pad))?,
                ];
                if i.len() == 3 {
                    // dbias = Σ_{n,h,w} dy
                    grads.push(when(g, 2, || {
                        g.reshape(&g.sum(d, &[0, 2, 3])?, i[2].shape())
                    })?);
                }
                Ok(grads)
            }),
        ))
    }

    /// dx of a convolution (a transposed convolution of dy); linear in dy and in w.
    pub fn conv2d_input_grad(
        &self,
        dy: &Var,
        w: &Var,
        x_shape: &[usize],
        stride: usize,
        pad: usize,
    ) -> Result<Var> {
        let t = conv2d::conv2d_input_grad(dy.tensor(), w.tensor(), x_shape, stride, pad)?;
        Ok(self.record(
            "conv2d_input_grad",
            t,
            &[dy, w],
            bw(move |g, i, d| {
                // d/d(dy) = conv(G, w);  d/dw = weight_grad(G, dy)
                Ok(vec![
                    when(g, 0, || g.conv2d(d, &i[1], None, stride, pad))?,
                    when(g, 1, || {
                        g.conv2d_weight_grad(d, &i[0], i[1].shape(), stride, pad)
                    })?,
                ])
            }),
        ))
    }

    /// dW of a convolution; linear in x and in dy.
    pub fn conv2d_weight_grad(
        &self,
        x: &Var,
        dy: &Var,
        w_shape: &[usize],
        stride: usize,
        pad: usize,
    ) -> Result<Var> {
        let t = conv2d::conv2d_weight_grad(x.tensor(), dy.tensor(), w_shape, stride, pad)?;
        Ok(self.record(
            "conv2d_weight_grad",
            t,
            &[x, dy],
            bw(move |g, i, d| {
                // d/dx = input_grad(dy, G);  d/d(dy) = conv(x, G)
                Ok(vec![
                    when(g, 0, || {
                        g.conv2d_input_grad(&i[1], d, i[0].shape(), stride, pad)
                    })?,
                    when(g, 1, || g.conv2d(&i[0], d, None, stride, pad))?,
                ])
            }),
        ))
    }

    // ---- feature-map ops ---------------------------------------------------------------

    /// Nearest ×2 upsampling.
    pub fn upsample2x(&self, x: &Var) -> Result<Var> {
        let t = upsample::upsample2x(x.tensor())?;
        Ok(self.record(
            "upsample2x",
            t,
            &[x],
            bw(|g, _, d| Ok(vec![Some(g.upsample2x_backward(d)?)])),
        ))
    }

    /// Sum over 2×2 blocks (the backward of upsampling); its own backward is upsampling.
    pub fn upsample2x_backward(&self, dy: &Var) -> Result<Var> {
        let t = upsample::upsample2x_backward(dy.tensor())?;
        Ok(self.record(
            "upsample2x_backward",
            t,
            &[dy],
            bw(|g, _, d| Ok(vec![Some(g.upsample2x(d)?)])),
        ))
    }

    /// Channel concat of (N, Ca, H, W) and (N, Cb, H, W).
    pub fn concat(&self, a: &Var, b: &Var) -> Result<Var> {
        let t = channel::concat(a.tensor(), b.tensor())?;
        Ok(self.record(
            "concat",
            t,
            &[a, b],
            bw(|g, i, d| {
                let (ca, cb) = (i[0].shape()[1], i[1].shape()[1]);
                Ok(vec![
                    Some(g.slice_channels(d, 0, ca)?),
                    Some(g.slice_channels(d, ca, cb)?),
                ])
            }),
        ))
    }

    /// Channels start..start+len.
    pub fn slice_channels(&self, x: &Var, start: usize, len: usize) -> Result<Var> {
        let t = channel::slice(x.tensor(), start, len)?;
        Ok(self.record(
            "slice_channels",
            t,
            &[x],
            bw(move |g, i, d| {
                let t = channel::unslice(d.tensor(), start, i[0].shape()[1])?;
                // unslice is linear; its backward is this slice again.
                Ok(vec![Some(g.record(
                    "unslice",
                    t,
                    &[d],
                    bw(move |g, _, dd| Ok(vec![Some(g.slice_channels(dd, start, len)?)])),
                ))])
            }),
        ))
    }

    /// Group normalisation with affine γ, β.
    pub fn group_norm(&self, x: &Var, gamma: &Var, beta: &Var, groups: usize) -> Result<Var> {
        self.group_norm_act(x, gamma, beta, groups, false)
    }

    /// Group normalisation then SiLU, fused (one pass forward, one backward).
    pub fn group_norm_silu(&self, x: &Var, gamma: &Var, beta: &Var, groups: usize) -> Result<Var> {
        self.group_norm_act(x, gamma, beta, groups, true)
    }

    fn group_norm_act(
        &self,
        x: &Var,
        gamma: &Var,
        beta: &Var,
        groups: usize,
        silu: bool,
    ) -> Result<Var> {
        let (t, stats) =
            group_norm::group_norm_act(x.tensor(), gamma.tensor(), beta.tensor(), groups, silu)?;
        Ok(self.record(
            if silu {
                "group_norm_silu"
            } else {
                "group_norm"
            },
            t,
            &[x, gamma, beta],
            bw(move |g, i, d| {
                let (dx, dg, db) = group_norm::group_norm_act_backward(
                    i[0].tensor(),
                    i[1].tensor(),
                    i[2].tensor(),
                    &stats,
                    d.tensor(),
                    groups,
                    silu,
                )?;
                let nd = || not_differentiable("group_norm");
                Ok(vec![
                    Some(g.record("group_norm_backward", dx, &[&i[0], d], nd())),
                    Some(g.record("group_norm_backward", dg, &[&i[0], d], nd())),
                    Some(g.record("group_norm_backward", db, &[&i[0], d], nd())),
                ])
            }),
        ))
    }

    /// Softmax over the last axis.
    pub fn softmax(&self, x: &Var) -> Result<Var> {
        let y = softmax::softmax(x.tensor())?;
        let saved = y.clone();
        Ok(self.record(
            "softmax",
            y,
            &[x],
            bw(move |g, _, d| {
                let dx = softmax::softmax_backward(&saved, d.tensor())?;
                Ok(vec![Some(g.record(
                    "softmax_backward",
                    dx,
                    &[d],
                    not_differentiable("softmax"),
                ))])
            }),
        ))
    }

    /// Self-attention: q, k, v (B, C, T) → v · softmax(qᵀk/√C)ᵀ, built from matmul and softmax.
    pub fn attention(&self, q: &Var, k: &Var, v: &Var) -> Result<Var> {
        let scale = attention::check_shapes(q.shape(), k.shape(), v.shape())?;
        let logits = self.matmul(q, k, true, false, scale)?;
        let probs = self.softmax(&logits)?;
        self.matmul(v, &probs, false, true, 1.0)
    }

    /// Sinusoidal embedding (N) → (N, dim).
    pub fn sinusoidal_embedding(&self, s: &Var, dim: usize) -> Result<Var> {
        let t = embedding::sinusoidal_embedding(s.tensor(), dim)?;
        Ok(self.record(
            "sinusoidal_embedding",
            t,
            &[s],
            bw(|g, i, d| {
                let ds = embedding::sinusoidal_embedding_backward(i[0].tensor(), d.tensor())?;
                Ok(vec![Some(g.record(
                    "embedding_backward",
                    ds,
                    &[d],
                    not_differentiable("sinusoidal_embedding"),
                ))])
            }),
        ))
    }

    /// Inverted dropout with rate `p`: the mask comes from uniform noise of (seed, stream).
    pub fn dropout(&self, x: &Var, p: f32, seed: u64, stream: u32) -> Result<Var> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        if p >= 1.0 {
            return Err(Error::shape("dropout", format!("rate {p} must be < 1")));
        }
        let u = Tensor::uninit(self.engine(), x.shape())?;
        noise::fill_uniform(&u, seed, stream, 0)?;
        let mask = ew::unary(
            &u,
            UnaryOp::Step {
                threshold: p,
                value: 1.0 / (1.0 - p),
            },
        )?;
        self.mul(x, &self.constant(mask))
    }

    /// Scalar loss (shape [1]) of `pred` against `target` (batch-first).
    pub fn loss(&self, kind: Loss, pred: &Var, target: &Var) -> Result<Var> {
        self.expected_loss(kind, pred, target, None)
    }

    /// [`Graph::loss`] averaged over Gaussian noise of variance `var` (B) added to the target,
    /// in closed form ([`loss::expected_loss`]).
    pub fn expected_loss(
        &self,
        kind: Loss,
        pred: &Var,
        target: &Var,
        var: Option<&Tensor>,
    ) -> Result<Var> {
        let (t, saved) = loss::expected_loss(kind, pred.tensor(), target.tensor(), var)?;
        Ok(self.record(
            "loss",
            t,
            &[pred, target],
            bw(move |g, i, d| {
                let dp =
                    loss::loss_backward(kind, i[0].tensor(), i[1].tensor(), &saved, d.tensor())?;
                // Targets are data: no gradient flows to them.
                Ok(vec![
                    Some(g.record("loss_backward", dp, &[d], not_differentiable("loss"))),
                    None,
                ])
            }),
        ))
    }
}
