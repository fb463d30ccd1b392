//! Reductions over chosen axes (sum, mean, sum of squares, L2 norm) with keep-dim shapes,
//! per-row and per-sample norms, and `sum_to` (the backward of broadcasting).

use bytemuck::{Pod, Zeroable};

use super::{coalesce, pad4, strides4, u32x4};
use crate::engine::{Kernel, Shader};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub static SHADER: Shader = Shader::new("reduce", include_str!("../../shaders/reduce.wgsl"));
const FORWARD: Kernel = Kernel::new(&SHADER, "forward");
const BACKWARD: Kernel = Kernel::new(&SHADER, "backward");

/// Mirrors `Params` in reduce.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    n: u32,
    op: u32,
    count: u32,
    scale: f32,
    strides: [u32; 4], // input element strides
    red: [u32; 4],     // extent of each reduced axis (1 if kept)
    kept: [u32; 4],    // output shape (1 on reduced axes)
    // forward's walk (see reduce.wgsl)
    ki: u32,
    ko: u32,
    kis: u32,
    parts: u32,
    ri: u32,
    so: u32,
    si: u32,
    per_part: u32,
    square: u32,
    finish: u32,
    _pad: [u32; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum = 0,
    Mean = 1,
    SumSq = 2,
    /// √(Σ x²)
    Norm = 3,
}

/// Builds params and the keep-dim output shape for reducing `shape` over `axes`.
fn plan(
    op_name: &'static str,
    shape: &[usize],
    axes: &[usize],
    op: ReduceOp,
) -> Result<(Params, Vec<usize>)> {
    let s = pad4(op_name, shape)?;
    let off = 4 - shape.len();
    let mut red = [1usize; 4];
    let mut kept = s;
    for &a in axes {
        if a >= shape.len() {
            return Err(Error::shape(
                op_name,
                format!("axis {a} out of range for shape {shape:?}"),
            ));
        }
        red[a + off] = s[a + off];
        kept[a + off] = 1;
    }
    let count: usize = red.iter().product();
    let out_shape = kept[off..].to_vec();
    Ok((
        Params {
            n: kept.iter().product::<usize>() as u32,
            op: op as u32,
            count: count as u32,
            scale: 1.0 / count.max(1) as f32,
            strides: u32x4(strides4(s)),
            red: u32x4(red),
            kept: u32x4(kept),
            ..Default::default()
        },
        out_shape,
    ))
}

/// Reduces `x` over `axes`; reduced axes stay with extent 1.
pub fn reduce(x: &Tensor, axes: &[usize], op: ReduceOp) -> Result<Tensor> {
    let (mut p, out_shape) = plan("reduce", x.shape(), axes, op)?;
    let e = x.engine();
    let y = Tensor::uninit(e, &out_shape)?;
    // Merge runs of kept and of reduced axes: the output strides (0 on reduced axes) keep the
    // two kinds apart, so at most two of each remain, alternating.
    let shape = p.red.map(|r| r as usize);
    let shape: [usize; 4] = std::array::from_fn(|i| shape[i] * p.kept[i] as usize);
    let ostr = strides4(p.kept.map(|k| k as usize));
    let ostr: [usize; 4] = std::array::from_fn(|i| if p.red[i] > 1 { 0 } else { ostr[i] });
    let (dims, [istr, ostr]) = coalesce(shape, [strides4(shape), ostr]);
    let (mut kept, mut red) = (vec![], vec![]);
    for d in 0..4 {
        if dims[d] > 1 {
            if ostr[d] == 0 { &mut red } else { &mut kept }.push((dims[d], istr[d]));
        }
    }
    let pair = |v: &[(usize, usize)]| match *v {
        [] => ((0, 0), (1, 0)),
        [inner] => ((1, 0), inner),
        [outer, inner] => (outer, inner),
        _ => unreachable!("alternating axes leave at most two of a kind"),
    };
    let ((_, ko), (ki, kis)) = pair(&kept);
    let ((_, so), (ri, si)) = pair(&red);
    let count = p.count as usize;
    let n = p.n as usize;
    // Few outputs with long reductions: split each into parts summed by a second pass.
    let parts = if count >= 1024 && n < 4096 {
        (4096 / n).min(count / 256).clamp(1, 1024)
    } else {
        1
    };
    let per_part = count.div_ceil(parts);
    let parts = count.div_ceil(per_part.max(1)).max(1);
    let square = (op == ReduceOp::SumSq || op == ReduceOp::Norm) as u32;
    let finish = match op {
        ReduceOp::Sum | ReduceOp::SumSq => 0,
        ReduceOp::Mean => 1,
        ReduceOp::Norm => 2,
    };
    p.ki = ki as u32;
    p.ko = ko as u32;
    p.kis = kis as u32;
    p.ri = ri as u32;
    p.so = so as u32;
    p.si = si as u32;
    p.square = square;
    p.parts = parts as u32;
    p.per_part = per_part as u32;
    if parts == 1 {
        p.finish = finish;
        e.dispatch(FORWARD, &p, &[x, &y], e.grid(n, 64))?;
        return Ok(y);
    }
    let partial = Tensor::uninit(e, &[n * parts])?;
    e.dispatch(FORWARD, &p, &[x, &partial], e.grid(n * parts, 64))?;
    let p2 = Params {
        n: n as u32,
        count: parts as u32,
        scale: p.scale,
        ki: n as u32,
        kis: parts as u32,
        parts: 1,
        ri: parts as u32,
        si: 1,
        per_part: parts as u32,
        finish,
        ..Default::default()
    };
    e.dispatch(FORWARD, &p2, &[&partial, &y], e.grid(n, 64))?;
    Ok(y)
}

/// dx for y = reduce(x, axes, op) given dy (shape of y).
pub fn reduce_backward(
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    axes: &[usize],
    op: ReduceOp,
) -> Result<Tensor> {
    let (p, out_shape) = plan("reduce_backward", x.shape(), axes, op)?;
    if dy.shape() != out_shape.as_slice() || y.shape() != out_shape.as_slice() {
        return Err(Error::shape(
            "reduce_backward",
            format!(
                "dy {:?} and y {:?} must have the reduced shape {out_shape:?}",
                dy.shape(),
                y.shape()
            ),
        ));
    }
    let e = x.engine();
    let dx = Tensor::uninit(e, x.shape())?;
    e.dispatch(BACKWARD, &p, &[x, y, dy, &dx], e.grid(x.numel(), 256))?;
    Ok(dx)
}

pub fn sum(x: &Tensor, axes: &[usize]) -> Result<Tensor> {
    reduce(x, axes, ReduceOp::Sum)
}

pub fn mean(x: &Tensor, axes: &[usize]) -> Result<Tensor> {
    reduce(x, axes, ReduceOp::Mean)
}

/// L2 norm of each row (over the last axis).
pub fn row_norm(x: &Tensor) -> Result<Tensor> {
    let last = x.shape().len().saturating_sub(1);
    reduce(x, &[last], ReduceOp::Norm)
}

/// L2 norm of each sample (over every axis but the first).
pub fn sample_norm(x: &Tensor) -> Result<Tensor> {
    let axes: Vec<usize> = (1..x.shape().len()).collect();
    reduce(x, &axes, ReduceOp::Norm)
}

/// Broadcasts `x` to `shape` (x's shape must broadcast to it): the gradient of `sum_to`.
pub fn broadcast_to(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if x.shape() == shape {
        return Ok(x.clone());
    }
    let xs = x.shape();
    let bad = || {
        Error::shape(
            "broadcast_to",
            format!("{xs:?} cannot be broadcast to {shape:?}"),
        )
    };
    if xs.len() > shape.len() {
        return Err(bad());
    }
    let off = shape.len() - xs.len();
    let mut axes: Vec<usize> = (0..off).collect();
    for (i, &s) in xs.iter().enumerate() {
        if s != shape[off + i] {
            if s != 1 {
                return Err(bad());
            }
            axes.push(off + i);
        }
    }
    // The reduction's backward with op Sum copies dy to every input position.
    let (p, kept) = plan("broadcast_to", shape, &axes, ReduceOp::Sum)?;
    let dy = x.reshape(&kept)?;
    let e = x.engine();
    let out = Tensor::uninit(e, shape)?;
    e.dispatch(
        BACKWARD,
        &p,
        &[&dy, &dy, &dy, &out],
        e.grid(out.numel(), 256),
    )?;
    Ok(out)
}

/// Sums `x` down to `shape` (which must broadcast to x's shape): the gradient of a broadcast.
pub fn sum_to(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if x.shape() == shape {
        return Ok(x.clone());
    }
    let xs = x.shape();
    if shape.len() > xs.len() {
        return Err(Error::shape(
            "sum_to",
            format!("{xs:?} cannot be summed to {shape:?}"),
        ));
    }
    let off = xs.len() - shape.len();
    let mut axes: Vec<usize> = (0..off).collect();
    for (i, &s) in shape.iter().enumerate() {
        if s != xs[off + i] {
            if s != 1 {
                return Err(Error::shape(
                    "sum_to",
                    format!("{xs:?} cannot be summed to {shape:?}"),
                ));
            }
            axes.push(off + i);
        }
    }
    reduce(x, &axes, ReduceOp::Sum)?.reshape(shape)
}

/// CPU references in f64.
pub mod cpu {
    use super::ReduceOp;

    /// Reduces a 4D-padded `x` of shape `s` over the axes flagged in `red`.
    pub fn reduce(x: &[f64], s: [usize; 4], red: [bool; 4], op: ReduceOp) -> Vec<f64> {
        let kept: [usize; 4] = std::array::from_fn(|i| if red[i] { 1 } else { s[i] });
        let mut out = vec![0.0; kept.iter().product()];
        let mut count = vec![0usize; out.len()];
        for (i, &v) in x.iter().enumerate() {
            let o = out_index(i, s, kept);
            out[o] += if matches!(op, ReduceOp::SumSq | ReduceOp::Norm) {
                v * v
            } else {
                v
            };
            count[o] += 1;
        }
        for (o, c) in out.iter_mut().zip(count) {
            match op {
                ReduceOp::Mean => *o /= c as f64,
                ReduceOp::Norm => *o = o.sqrt(),
                _ => {}
            }
        }
        out
    }

    pub fn reduce_backward(
        x: &[f64],
        s: [usize; 4],
        red: [bool; 4],
        op: ReduceOp,
        dy: &[f64],
    ) -> Vec<f64> {
        let kept: [usize; 4] = std::array::from_fn(|i| if red[i] { 1 } else { s[i] });
        let y = reduce(x, s, red, op);
        let count = (x.len() / y.len().max(1)) as f64;
        x.iter()
            .enumerate()
            .map(|(i, &v)| {
                let o = out_index(i, s, kept);
                match op {
                    ReduceOp::Sum => dy[o],
                    ReduceOp::Mean => dy[o] / count,
                    ReduceOp::SumSq => 2.0 * v * dy[o],
                    ReduceOp::Norm => dy[o] * v / y[o],
                }
            })
            .collect()
    }

    fn out_index(i: usize, s: [usize; 4], kept: [usize; 4]) -> usize {
        let idx = [
            i / (s[1] * s[2] * s[3]),
            (i / (s[2] * s[3])) % s[1],
            (i / s[3]) % s[2],
            i % s[3],
        ];
        let j: [usize; 4] = std::array::from_fn(|k| if kept[k] == 1 { 0 } else { idx[k] });
        ((j[0] * kept[1] + j[1]) * kept[2] + j[2]) * kept[3] + j[3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    const OPS: [ReduceOp; 4] = [
        ReduceOp::Sum,
        ReduceOp::Mean,
        ReduceOp::SumSq,
        ReduceOp::Norm,
    ];

    #[test]
    fn reductions_match_cpu_and_finite_differences() {
        let cases: [(&[usize], &[usize]); 9] = [
            (&[3, 5, 7, 9], &[0, 2, 3]), // bias gradient shape: over N, H, W
            (&[3, 5, 7, 9], &[1, 2, 3]), // per sample
            (&[1, 4, 33], &[2]),         // per row
            (&[2, 3, 5, 7], &[0, 1, 2, 3]),
            (&[6, 1, 5], &[0]),
            (&[4000], &[0]), // long
            // Long reductions into few outputs: split into parts summed by a second pass.
            (&[6, 20, 16, 16], &[0, 2, 3]),
            (&[5, 3, 7, 90], &[0, 2, 3]),
            (&[2, 3, 1500], &[1, 2]),
        ];
        for (k, (shape, axes)) in cases.iter().enumerate() {
            let s4 = pad4("t", shape).unwrap();
            let off = 4 - shape.len();
            let mut red = [false; 4];
            axes.iter().for_each(|&a| red[a + off] = true);
            let x = rounded(&rand_vec(s4.iter().product(), k as u64, -1.0, 1.0));
            let tx = upload(shape, &x);
            for op in OPS {
                let what = format!("{op:?} {shape:?} over {axes:?}");
                let y = reduce(&tx, axes, op).unwrap();
                let want = cpu::reduce(&x, s4, red, op);
                // f32 summation error is relative to the sum of magnitudes, not to the sum.
                let abs: Vec<f64> = x.iter().map(|v| v.abs()).collect();
                let scale = cpu::reduce(&abs, s4, red, ReduceOp::Sum)
                    .iter()
                    .cloned()
                    .fold(0.0, f64::max);
                assert_close(&what, &y.to_vec().unwrap(), &want, 1e-5, 1e-6 * scale);
                if x.len() <= 1000 {
                    check_grad(
                        &what,
                        &x,
                        |x| cpu::reduce(x, s4, red, op),
                        |x, w| cpu::reduce_backward(x, s4, red, op, w),
                    );
                }
                let dy = rounded(&rand_vec(want.len(), 50 + k as u64, -1.0, 1.0));
                let dx = reduce_backward(&tx, &y, &upload(y.shape(), &dy), axes, op).unwrap();
                let want_dx = cpu::reduce_backward(&x, s4, red, op, &dy);
                assert_close(
                    &format!("{what} backward"),
                    &dx.to_vec().unwrap(),
                    &want_dx,
                    1e-5,
                    1e-6,
                );
            }
        }
    }

    #[test]
    fn norms_and_sum_to() {
        let x = rounded(&rand_vec(2 * 3 * 4, 5, -1.0, 1.0));
        let t = upload(&[2, 3, 4], &x);
        let rn = row_norm(&t).unwrap();
        assert_eq!(rn.shape(), &[2, 3, 1]);
        let want: Vec<f64> = x
            .chunks(4)
            .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
            .collect();
        assert_close("row norm", &rn.to_vec().unwrap(), &want, 1e-6, 1e-7);
        let sn = sample_norm(&t).unwrap();
        let want: Vec<f64> = x
            .chunks(12)
            .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
            .collect();
        assert_close("sample norm", &sn.to_vec().unwrap(), &want, 1e-6, 1e-7);
        let s = sum_to(&t, &[3, 1]).unwrap();
        assert_eq!(s.shape(), &[3, 1]);
        let want: Vec<f64> = (0..3)
            .map(|c| {
                (0..2)
                    .flat_map(|n| (0..4).map(move |w| (n, w)))
                    .map(|(n, w)| x[n * 12 + c * 4 + w])
                    .sum()
            })
            .collect();
        assert_close("sum_to", &s.to_vec().unwrap(), &want, 1e-6, 1e-6);
        let want = rounded(&want);
        let b = broadcast_to(&upload(&[3, 1], &want), &[2, 3, 4]).unwrap();
        let wb: Vec<f64> = (0..24).map(|i| want[(i / 4) % 3]).collect();
        assert_close("broadcast_to", &b.to_vec().unwrap(), &wb, 0.0, 0.0);
        let err = sum_to(&t, &[5, 1]).unwrap_err().to_string();
        assert!(
            err.contains("sum_to") && err.contains("[2, 3, 4]") && err.contains("[5, 1]"),
            "{err}"
        );
    }
}
