//! Elementwise ops: unary maps (scale, SiLU, softplus_β, sigmoid, abs, sign, exp, square),
//! broadcast add/sub/mul (bias and embedding adds are broadcasts), and in-place axpby.

use bytemuck::{Pod, Zeroable};

use super::{coalesce, pad4, reduce, strides4, u32x4};
use crate::engine::{Kernel, Shader};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub static SHADER: Shader = Shader::new(
    "elementwise",
    include_str!("../../shaders/elementwise.wgsl"),
);
const UNARY: Kernel = Kernel::new(&SHADER, "unary");
const UNARY_BACKWARD: Kernel = Kernel::new(&SHADER, "unary_backward");
const UNARY_BACKWARD2: Kernel = Kernel::new(&SHADER, "unary_backward2");
const BINARY: Kernel = Kernel::new(&SHADER, "binary");
const AXPBY: Kernel = Kernel::new(&SHADER, "axpby");

/// Mirrors `Params` in elementwise.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    n: u32,
    op: u32,
    alpha: f32,
    beta: f32,
    shape: [u32; 4], // output shape, left-padded to 4D
    sa: [u32; 4],    // strides of a over the output index (0 = broadcast)
    sb: [u32; 4],    // strides of b over the output index (0 = broadcast)
}

/// Unary maps. Codes match the WGSL `switch`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// a·x + b
    Affine {
        a: f32,
        b: f32,
    },
    /// x·σ(x)
    Silu,
    /// (1/β) ln(1 + e^{βx})
    Softplus {
        beta: f32,
    },
    Sigmoid,
    Abs,
    Sign,
    Exp,
    Square,
    /// `value` where x > threshold, else 0 (dropout masks); zero derivative.
    Step {
        threshold: f32,
        value: f32,
    },
    /// max(x, 0) (the LPN's clip of its non-negative weights).
    Relu,
}

impl UnaryOp {
    fn code(self) -> (u32, f32, f32) {
        match self {
            UnaryOp::Affine { a, b } => (0, a, b),
            UnaryOp::Silu => (1, 0.0, 0.0),
            UnaryOp::Softplus { beta } => (2, beta, 0.0),
            UnaryOp::Sigmoid => (3, 0.0, 0.0),
            UnaryOp::Abs => (4, 0.0, 0.0),
            UnaryOp::Sign => (5, 0.0, 0.0),
            UnaryOp::Exp => (6, 0.0, 0.0),
            UnaryOp::Square => (7, 0.0, 0.0),
            UnaryOp::Step { threshold, value } => (8, threshold, value),
            UnaryOp::Relu => (9, 0.0, 0.0),
        }
    }
}

/// Broadcast binary ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
}

fn unary_params(n: usize, op: UnaryOp) -> Params {
    let (code, alpha, beta) = op.code();
    Params {
        n: n as u32,
        op: code,
        alpha,
        beta,
        ..Default::default()
    }
}

/// y = f(x)
pub fn unary(x: &Tensor, op: UnaryOp) -> Result<Tensor> {
    let e = x.engine();
    let y = Tensor::uninit(e, x.shape())?;
    let p = unary_params(x.numel(), op);
    e.dispatch(UNARY, &p, &[x, &y], e.grid(x.numel(), 256))?;
    Ok(y)
}

/// dx = dy · f'(x)
pub fn unary_backward(x: &Tensor, dy: &Tensor, op: UnaryOp) -> Result<Tensor> {
    same_shape("unary_backward", x, dy)?;
    let e = x.engine();
    let dx = Tensor::uninit(e, x.shape())?;
    let p = unary_params(x.numel(), op);
    e.dispatch(UNARY_BACKWARD, &p, &[x, dy, &dx], e.grid(x.numel(), 256))?;
    Ok(dx)
}

/// dx = g · f''(x): the second derivative, for double backward through unary maps.
pub fn unary_backward2(x: &Tensor, g: &Tensor, op: UnaryOp) -> Result<Tensor> {
    same_shape("unary_backward2", x, g)?;
    let e = x.engine();
    let dx = Tensor::uninit(e, x.shape())?;
    let p = unary_params(x.numel(), op);
    e.dispatch(UNARY_BACKWARD2, &p, &[x, g, &dx], e.grid(x.numel(), 256))?;
    Ok(dx)
}

/// y = a·x
pub fn scale(x: &Tensor, a: f32) -> Result<Tensor> {
    unary(x, UnaryOp::Affine { a, b: 0.0 })
}

pub fn silu(x: &Tensor) -> Result<Tensor> {
    unary(x, UnaryOp::Silu)
}

pub fn softplus(x: &Tensor, beta: f32) -> Result<Tensor> {
    unary(x, UnaryOp::Softplus { beta })
}

pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    unary(x, UnaryOp::Sigmoid)
}

pub fn exp(x: &Tensor) -> Result<Tensor> {
    unary(x, UnaryOp::Exp)
}

pub fn abs(x: &Tensor) -> Result<Tensor> {
    unary(x, UnaryOp::Abs)
}

pub fn sign(x: &Tensor) -> Result<Tensor> {
    unary(x, UnaryOp::Sign)
}

pub(crate) fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!("shapes {:?} and {:?} must be equal", a.shape(), b.shape()),
        ));
    }
    Ok(())
}

/// NumPy broadcasting of two shapes (rank ≤ 4).
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let (pa, pb) = (pad4(op, a)?, pad4(op, b)?);
    let mut out = Vec::with_capacity(rank);
    for i in 4 - rank..4 {
        let (x, y) = (pa[i], pb[i]);
        if x != y && x != 1 && y != 1 {
            return Err(Error::shape(
                op,
                format!(
                    "shapes {a:?} and {b:?} do not broadcast (axis {} is {x} vs {y})",
                    i + rank - 4
                ),
            ));
        }
        out.push(x.max(y));
    }
    Ok(out)
}

/// Strides of `s` read through the broadcast output shape `out` (0 on broadcast axes).
fn broadcast_strides(s: [usize; 4], out: [usize; 4]) -> [usize; 4] {
    let st = strides4(s);
    std::array::from_fn(|i| if s[i] == 1 && out[i] != 1 { 0 } else { st[i] })
}

/// Elements of the innermost merged axis one invocation of `binary` covers (RUN in the WGSL).
const BINARY_RUN: usize = 32;

/// c = a (op) b with broadcasting.
pub fn binary(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    let name = match op {
        BinaryOp::Add => "add",
        BinaryOp::Sub => "sub",
        BinaryOp::Mul => "mul",
    };
    let shape = broadcast_shape(name, a.shape(), b.shape())?;
    let out4 = pad4(name, &shape)?;
    let e = a.engine();
    let c = Tensor::uninit(e, &shape)?;
    let sa = broadcast_strides(pad4(name, a.shape())?, out4);
    let sb = broadcast_strides(pad4(name, b.shape())?, out4);
    let (shape4, [sa, sb]) = coalesce(out4, [sa, sb]);
    let runs = shape4[0] * shape4[1] * shape4[2] * shape4[3].div_ceil(BINARY_RUN);
    let p = Params {
        n: runs as u32,
        op: op as u32,
        shape: u32x4(shape4),
        sa: u32x4(sa),
        sb: u32x4(sb),
        ..Default::default()
    };
    e.dispatch(BINARY, &p, &[a, b, &c], e.grid(runs, 64))?;
    Ok(c)
}

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Add)
}

pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Sub)
}

pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Mul)
}

/// Gradients of c = a (op) b: (da, db), each summed back to its operand's shape.
pub fn binary_backward(
    a: &Tensor,
    b: &Tensor,
    dc: &Tensor,
    op: BinaryOp,
) -> Result<(Tensor, Tensor)> {
    match op {
        // da = dc, db = ±dc
        BinaryOp::Add | BinaryOp::Sub => {
            let da = reduce::sum_to(dc, a.shape())?;
            let mut db = reduce::sum_to(dc, b.shape())?;
            if op == BinaryOp::Sub {
                db = scale(&db, -1.0)?;
            }
            Ok((da, db))
        }
        // da = dc·b, db = dc·a
        BinaryOp::Mul => Ok((
            reduce::sum_to(&mul(dc, b)?, a.shape())?,
            reduce::sum_to(&mul(dc, a)?, b.shape())?,
        )),
    }
}

/// Adds a per-channel bias (C) or a per-sample embedding (N, C) to x (N, C, H, W).
pub fn add_channel(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let s = x.shape();
    if s.len() != 4 {
        return Err(Error::shape(
            "add_channel",
            format!("x {s:?} must be (N, C, H, W)"),
        ));
    }
    let b = match bias.shape() {
        [c] if *c == s[1] => bias.reshape(&[1, *c, 1, 1])?,
        [n, c] if *n == s[0] && *c == s[1] => bias.reshape(&[*n, *c, 1, 1])?,
        other => {
            return Err(Error::shape(
                "add_channel",
                format!("x {s:?} takes a bias (C) or embedding (N, C), got {other:?}"),
            ));
        }
    };
    add(x, &b)
}

/// In place: y ← α·x + β·y.
pub fn axpby(alpha: f32, x: &Tensor, beta: f32, y: &Tensor) -> Result<()> {
    same_shape("axpby", x, y)?;
    if x.same_storage(y) {
        return Err(Error::shape("axpby", "x and y must not share storage"));
    }
    let e = x.engine();
    let p = Params {
        n: x.numel() as u32,
        alpha,
        beta,
        ..Default::default()
    };
    e.dispatch(AXPBY, &p, &[x, y], e.grid(x.numel(), 256))
}

/// In place: y ← α·x + y.
pub fn axpy(alpha: f32, x: &Tensor, y: &Tensor) -> Result<()> {
    axpby(alpha, x, 1.0, y)
}

/// CPU references in f64.
pub mod cpu {
    use super::{BinaryOp, UnaryOp};

    pub fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    pub fn unary(x: f64, op: UnaryOp) -> f64 {
        match op {
            UnaryOp::Affine { a, b } => a as f64 * x + b as f64,
            UnaryOp::Silu => x * sigmoid(x),
            UnaryOp::Softplus { beta } => {
                let b = beta as f64;
                (1.0 + (b * x).exp()).ln() / b
            }
            UnaryOp::Sigmoid => sigmoid(x),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Sign => {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            }
            UnaryOp::Exp => x.exp(),
            UnaryOp::Square => x * x,
            UnaryOp::Step { threshold, value } => {
                if x > threshold as f64 {
                    value as f64
                } else {
                    0.0
                }
            }
            UnaryOp::Relu => x.max(0.0),
        }
    }

    /// f'(x)
    pub fn unary_grad(x: f64, op: UnaryOp) -> f64 {
        match op {
            UnaryOp::Affine { a, .. } => a as f64,
            UnaryOp::Silu => sigmoid(x) * (1.0 + x * (1.0 - sigmoid(x))),
            UnaryOp::Softplus { beta } => sigmoid(beta as f64 * x),
            UnaryOp::Sigmoid => sigmoid(x) * (1.0 - sigmoid(x)),
            UnaryOp::Abs => unary(x, UnaryOp::Sign),
            UnaryOp::Sign => 0.0,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Square => 2.0 * x,
            UnaryOp::Step { .. } => 0.0,
            UnaryOp::Relu => unary(
                x,
                UnaryOp::Step {
                    threshold: 0.0,
                    value: 1.0,
                },
            ),
        }
    }

    /// f''(x)
    pub fn unary_grad2(x: f64, op: UnaryOp) -> f64 {
        let s = sigmoid(x);
        match op {
            UnaryOp::Silu => s * (1.0 - s) * (2.0 + x * (1.0 - 2.0 * s)),
            UnaryOp::Softplus { beta } => {
                let b = beta as f64;
                let s = sigmoid(b * x);
                b * s * (1.0 - s)
            }
            UnaryOp::Sigmoid => s * (1.0 - s) * (1.0 - 2.0 * s),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Square => 2.0,
            _ => 0.0,
        }
    }

    /// Calls `f(output index, a index, b index)` for every element of the broadcast output.
    fn each(sa: [usize; 4], sb: [usize; 4], mut f: impl FnMut(usize, usize, usize)) -> [usize; 4] {
        let out: [usize; 4] = std::array::from_fn(|i| sa[i].max(sb[i]));
        let at = |s: [usize; 4], i: [usize; 4]| -> usize {
            let j: [usize; 4] = std::array::from_fn(|k| if s[k] == 1 { 0 } else { i[k] });
            ((j[0] * s[1] + j[1]) * s[2] + j[2]) * s[3] + j[3]
        };
        let mut o = 0;
        for i0 in 0..out[0] {
            for i1 in 0..out[1] {
                for i2 in 0..out[2] {
                    for i3 in 0..out[3] {
                        let i = [i0, i1, i2, i3];
                        f(o, at(sa, i), at(sb, i));
                        o += 1;
                    }
                }
            }
        }
        out
    }

    /// c = a (op) b with broadcasting over 4D-padded shapes.
    pub fn binary(a: &[f64], sa: [usize; 4], b: &[f64], sb: [usize; 4], op: BinaryOp) -> Vec<f64> {
        let mut c = Vec::new();
        each(sa, sb, |_, i, j| {
            c.push(match op {
                BinaryOp::Add => a[i] + b[j],
                BinaryOp::Sub => a[i] - b[j],
                BinaryOp::Mul => a[i] * b[j],
            })
        });
        c
    }

    /// (da, db) for c = a (op) b: da[i] = Σ dc ∂c/∂a[i] over the outputs that read a[i].
    pub fn binary_backward(
        a: &[f64],
        sa: [usize; 4],
        b: &[f64],
        sb: [usize; 4],
        dc: &[f64],
        op: BinaryOp,
    ) -> (Vec<f64>, Vec<f64>) {
        let (mut da, mut db) = (vec![0.0; a.len()], vec![0.0; b.len()]);
        each(sa, sb, |o, i, j| {
            let (ga, gb) = match op {
                BinaryOp::Add => (1.0, 1.0),
                BinaryOp::Sub => (1.0, -1.0),
                BinaryOp::Mul => (b[j], a[i]),
            };
            da[i] += dc[o] * ga;
            db[j] += dc[o] * gb;
        });
        (da, db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    const OPS: [UnaryOp; 10] = [
        UnaryOp::Relu,
        UnaryOp::Step {
            threshold: 0.3,
            value: 2.0,
        },
        UnaryOp::Affine { a: -1.5, b: 0.25 },
        UnaryOp::Silu,
        UnaryOp::Softplus { beta: 10.0 },
        UnaryOp::Sigmoid,
        UnaryOp::Abs,
        UnaryOp::Sign,
        UnaryOp::Exp,
        UnaryOp::Square,
    ];

    #[test]
    fn unary_forward_and_backward_match_cpu() {
        for (k, &n) in [1usize, 257, 3001].iter().enumerate() {
            // Keep |x| away from 0 so abs/sign are differentiable where we check them.
            let x: Vec<f64> = rand_vec(n, k as u64, 0.05, 3.0)
                .iter()
                .zip(rand_vec(n, 99 + k as u64, 0.0, 1.0))
                .map(|(v, s)| if s < 0.5 { -v } else { *v })
                .collect();
            let x = rounded(&x);
            let dy = rand_vec(n, 7 + k as u64, -1.0, 1.0);
            let tx = upload(&[n], &x);
            let tdy = upload(&[n], &dy);
            for op in OPS {
                let y = unary(&tx, op).unwrap().to_vec().unwrap();
                let want: Vec<f64> = x.iter().map(|&v| cpu::unary(v, op)).collect();
                assert_close(&format!("{op:?} forward"), &y, &want, 2e-6, 1e-6);
                let dx = unary_backward(&tx, &tdy, op).unwrap().to_vec().unwrap();
                let want: Vec<f64> = x
                    .iter()
                    .zip(&dy)
                    .map(|(&v, &g)| g * cpu::unary_grad(v, op))
                    .collect();
                assert_close(&format!("{op:?} backward"), &dx, &want, 2e-6, 1e-6);
                let d2 = unary_backward2(&tx, &tdy, op).unwrap().to_vec().unwrap();
                let want: Vec<f64> = x
                    .iter()
                    .zip(&dy)
                    .map(|(&v, &g)| g * cpu::unary_grad2(v, op))
                    .collect();
                assert_close(&format!("{op:?} second derivative"), &d2, &want, 1e-5, 1e-5);
            }
        }
    }

    #[test]
    fn unary_cpu_gradients_match_finite_differences() {
        let x: Vec<f64> = rand_vec(40, 3, 0.1, 2.0)
            .iter()
            .enumerate()
            .map(|(i, v)| if i % 2 == 0 { -v } else { *v })
            .collect();
        for op in OPS {
            check_grad(
                &format!("{op:?}"),
                &x,
                |x| x.iter().map(|&v| cpu::unary(v, op)).collect(),
                |x, w| {
                    x.iter()
                        .zip(w)
                        .map(|(&v, &g)| g * cpu::unary_grad(v, op))
                        .collect()
                },
            );
            // f'' against finite differences of f'.
            check_grad(
                &format!("{op:?} second derivative"),
                &x,
                |x| x.iter().map(|&v| cpu::unary_grad(v, op)).collect(),
                |x, w| {
                    x.iter()
                        .zip(w)
                        .map(|(&v, &g)| g * cpu::unary_grad2(v, op))
                        .collect()
                },
            );
        }
    }

    #[test]
    fn softplus_is_stable_for_large_inputs() {
        let t = Tensor::from_slice(&engine(), &[4], &[-100.0, -5.0, 5.0, 100.0]).unwrap();
        let y = softplus(&t, 10.0).unwrap().to_vec().unwrap();
        let want: Vec<f64> = [-100.0, -5.0, 5.0, 100.0]
            .iter()
            .map(|&v| cpu::unary(v, UnaryOp::Softplus { beta: 10.0 }))
            .collect();
        assert_close("softplus extremes", &y, &want, 1e-6, 1e-30);
    }

    #[test]
    fn broadcast_binary_matches_cpu_with_gradients() {
        let cases: [(&[usize], &[usize]); 6] = [
            (&[2, 3, 5, 7], &[3, 1, 1]),    // per-channel bias
            (&[2, 3, 5, 7], &[2, 3, 1, 1]), // per-sample embedding
            (&[1, 1, 3, 70], &[1, 1, 3, 70]),
            (&[4, 1, 9], &[5, 1]), // both sides broadcast
            (&[7], &[1]),
            (&[3, 100], &[3, 1]), // runs longer than one invocation's, b fixed along them
        ];
        for (k, (sa, sb)) in cases.iter().enumerate() {
            let (pa, pb) = (pad4("t", sa).unwrap(), pad4("t", sb).unwrap());
            let a = rounded(&rand_vec(pa.iter().product(), 10 + k as u64, -2.0, 2.0));
            let b = rounded(&rand_vec(pb.iter().product(), 20 + k as u64, -2.0, 2.0));
            let (ta, tb) = (upload(sa, &a), upload(sb, &b));
            for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul] {
                let what = format!("{op:?} {sa:?} {sb:?}");
                let c = binary(&ta, &tb, op).unwrap();
                let want = cpu::binary(&a, pa, &b, pb, op);
                assert_close(&what, &c.to_vec().unwrap(), &want, 1e-6, 1e-6);
                // CPU backward against finite differences, for each operand.
                check_grad(
                    &what,
                    &a,
                    |a| cpu::binary(a, pa, &b, pb, op),
                    |a, w| cpu::binary_backward(a, pa, &b, pb, w, op).0,
                );
                check_grad(
                    &what,
                    &b,
                    |b| cpu::binary(&a, pa, b, pb, op),
                    |b, w| cpu::binary_backward(&a, pa, b, pb, w, op).1,
                );
                // GPU backward against the CPU backward.
                let dc = rounded(&rand_vec(want.len(), 30 + k as u64, -1.0, 1.0));
                let (da, db) = binary_backward(&ta, &tb, &upload(c.shape(), &dc), op).unwrap();
                assert_eq!((da.shape(), db.shape()), (*sa, *sb));
                let (wa, wb) = cpu::binary_backward(&a, pa, &b, pb, &dc, op);
                assert_close(
                    &format!("{what} da"),
                    &da.to_vec().unwrap(),
                    &wa,
                    1e-5,
                    1e-5,
                );
                assert_close(
                    &format!("{what} db"),
                    &db.to_vec().unwrap(),
                    &wb,
                    1e-5,
                    1e-5,
                );
            }
        }
    }

    #[test]
    fn add_channel_and_axpby() {
        let e = engine();
        let x = rounded(&rand_vec(2 * 3 * 4, 1, -1.0, 1.0));
        let bias = rounded(&rand_vec(3, 2, -1.0, 1.0));
        let y = add_channel(&upload(&[2, 3, 2, 2], &x), &upload(&[3], &bias))
            .unwrap()
            .to_vec()
            .unwrap();
        let want: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v + bias[(i / 4) % 3])
            .collect();
        assert_close("bias add", &y, &want, 1e-6, 1e-6);
        let err = add_channel(&upload(&[2, 3, 2, 2], &x), &upload(&[4], &[0.0; 4]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("add_channel") && err.contains("[2, 3, 2, 2]") && err.contains("[4]"),
            "{err}"
        );

        let a = rounded(&rand_vec(1000, 3, -1.0, 1.0));
        let b = rounded(&rand_vec(1000, 4, -1.0, 1.0));
        let tb = upload(&[1000], &b);
        axpby(0.5, &upload(&[1000], &a), -2.0, &tb).unwrap();
        let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| 0.5 * x - 2.0 * y).collect();
        assert_close("axpby", &tb.to_vec().unwrap(), &want, 1e-6, 1e-6);
        let t = Tensor::zeros(&e, &[3]).unwrap();
        assert!(axpy(1.0, &t, &t).is_err());
    }

    #[test]
    fn mismatched_shapes_name_op_and_both_shapes() {
        let a = upload(&[2, 3], &[0.0; 6]);
        let b = upload(&[4, 3], &[0.0; 12]);
        let err = add(&a, &b).unwrap_err().to_string();
        assert!(
            err.starts_with("add:") && err.contains("[2, 3]") && err.contains("[4, 3]"),
            "{err}"
        );
        let err = unary_backward(&a, &b, UnaryOp::Silu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unary_backward") && err.contains("[2, 3]") && err.contains("[4, 3]"),
            "{err}"
        );
    }
}
