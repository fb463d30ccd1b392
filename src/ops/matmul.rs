//! Batched matrix product with transposes and a scale, its backward, and Linear (x·Wᵀ + b).

use bytemuck::{Pod, Zeroable};

use super::{elementwise, reduce};
use crate::engine::tune::shape_key;
use crate::engine::{Kernel, Shader, Variant};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub static SHADER: Shader = Shader::new("matmul", include_str!("../../shaders/matmul.wgsl"));
/// The [`Variant::Sg8`] kernel: same params and bindings, 16 × 256 outputs per workgroup.
pub static SHADER_SG8: Shader = Shader::new(
    "matmul_sg",
    concat!(
        include_str!("../../shaders/sg_common.wgsl"),
        include_str!("../../shaders/matmul_sg.wgsl")
    ),
);
const MAIN: Kernel = Kernel::new(&SHADER, "main");
const MAIN_SG8: Kernel = Kernel::new(&SHADER_SG8, "main");
const MAIN4_SG8: Kernel = Kernel::new(&SHADER_SG8, "main4");

/// Mirrors `Params` in matmul.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    trans_a: u32,
    trans_b: u32,
    alpha: f32,
    _pad0: u32,
    stride_a: u32, // elements between batches of a (0 = one matrix shared by all)
    stride_b: u32,
    stride_c: u32,
    _pad1: u32,
}

/// (batch, rows, cols) of a rank-2 (batch 1, shared) or rank-3 tensor.
fn dims(op: &'static str, t: &Tensor) -> Result<(Option<usize>, usize, usize)> {
    match *t.shape() {
        [r, c] => Ok((None, r, c)),
        [b, r, c] => Ok((Some(b), r, c)),
        ref s => Err(Error::shape(
            op,
            format!("operand {s:?} must be (rows, cols) or (batch, rows, cols)"),
        )),
    }
}

/// C = alpha · op(A) · op(B). A is (M, K) or (batch, M, K) ((K, M) when transposed), B likewise
/// (K, N); a rank-2 operand is shared by every batch. Output (batch, M, N), or (M, N).
pub fn matmul(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool, alpha: f32) -> Result<Tensor> {
    matmul_variant(None, a, b, trans_a, trans_b, alpha)
}

/// [`matmul`] with the kernel variant fixed (`None`: the engine picks, see [`crate::engine::Engine::pick`]).
pub fn matmul_variant(
    variant: Option<Variant>,
    a: &Tensor,
    b: &Tensor,
    trans_a: bool,
    trans_b: bool,
    alpha: f32,
) -> Result<Tensor> {
    let (ba, ra, ca) = dims("matmul", a)?;
    let (bb, rb, cb) = dims("matmul", b)?;
    let (m, k) = if trans_a { (ca, ra) } else { (ra, ca) };
    let (k2, n) = if trans_b { (cb, rb) } else { (rb, cb) };
    let batch = match (ba, bb) {
        (Some(x), Some(y)) if x != y => None,
        (x, y) => Some(x.or(y)),
    };
    let (Some(batch), true) = (batch, k == k2) else {
        return Err(Error::shape(
            "matmul",
            format!(
                "a {:?}{} and b {:?}{} do not multiply",
                a.shape(),
                if trans_a { "ᵀ" } else { "" },
                b.shape(),
                if trans_b { "ᵀ" } else { "" }
            ),
        ));
    };
    let e = a.engine();
    let shape: Vec<usize> = match batch {
        Some(bn) => vec![bn, m, n],
        None => vec![m, n],
    };
    let c = Tensor::uninit(e, &shape)?;
    let nb = batch.unwrap_or(1);
    let p = Params {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        batch: nb as u32,
        trans_a: trans_a as u32,
        trans_b: trans_b as u32,
        alpha,
        stride_a: if ba.is_some() { (m * k) as u32 } else { 0 },
        stride_b: if bb.is_some() { (k * n) as u32 } else { 0 },
        stride_c: (m * n) as u32,
        ..Default::default()
    };
    if k == 0 {
        return Tensor::zeros(e, &shape);
    }
    let run = |v: Variant| match v {
        Variant::Portable => e.dispatch(
            MAIN,
            &p,
            &[a, b, &c],
            [n.div_ceil(32) as u32, m.div_ceil(32) as u32, nb as u32],
        ),
        // vec4 rows: no transposes, K and N (hence every batch stride) multiples of 4.
        Variant::Sg8 if !trans_a && !trans_b && k % 4 == 0 && n % 4 == 0 => e.dispatch(
            MAIN4_SG8,
            &p,
            &[a, b, &c],
            [n.div_ceil(256) as u32, m.div_ceil(16) as u32, nb as u32],
        ),
        Variant::Sg8 => e.dispatch(
            MAIN_SG8,
            &p,
            &[a, b, &c],
            [n.div_ceil(256) as u32, m.div_ceil(16) as u32, nb as u32],
        ),
    };
    let v = match variant {
        Some(v) => v,
        None => {
            let dims = [nb, m, n, k, trans_a as usize, trans_b as usize];
            e.pick(&shape_key("matmul", &dims), run)?
        }
    };
    run(v)?;
    Ok(c)
}

/// Sums a batched gradient over the batch when its operand was shared (rank 2).
fn unbatch(g: Tensor, like: &Tensor) -> Result<Tensor> {
    if like.shape().len() == 2 && g.shape().len() == 3 {
        let s = g.shape().to_vec();
        reduce::sum(&g, &[0])?.reshape(&s[1..])
    } else {
        Ok(g)
    }
}

/// (dA, dB) for C = alpha · op(A) · op(B).
pub fn matmul_backward(
    a: &Tensor,
    b: &Tensor,
    dc: &Tensor,
    trans_a: bool,
    trans_b: bool,
    alpha: f32,
) -> Result<(Tensor, Tensor)> {
    // The batched product may need each operand broadcast over the batch of dc.
    let (da, db) = match (trans_a, trans_b) {
        // C = A B:     dA = dC Bᵀ,   dB = Aᵀ dC
        (false, false) => (
            matmul(dc, b, false, true, alpha)?,
            matmul(a, dc, true, false, alpha)?,
        ),
        // C = A Bᵀ:    dA = dC B,    dB = dCᵀ A
        (false, true) => (
            matmul(dc, b, false, false, alpha)?,
            matmul(dc, a, true, false, alpha)?,
        ),
        // C = Aᵀ B:    dA = B dCᵀ,   dB = A dC
        (true, false) => (
            matmul(b, dc, false, true, alpha)?,
            matmul(a, dc, false, false, alpha)?,
        ),
        // C = Aᵀ Bᵀ:   dA = Bᵀ dCᵀ,  dB = dCᵀ Aᵀ
        (true, true) => (
            matmul(b, dc, true, true, alpha)?,
            matmul(dc, a, true, true, alpha)?,
        ),
    };
    Ok((unbatch(da, a)?, unbatch(db, b)?))
}

/// y = x Wᵀ + b for x (N, in), W (out, in), b (out).
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
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
    let y = matmul(x, w, false, true, 1.0)?;
    match bias {
        Some(b) if b.shape() == [w.shape()[0]] => elementwise::add(&y, b),
        Some(b) => Err(Error::shape(
            "linear",
            format!("bias {:?} must be ({})", b.shape(), w.shape()[0]),
        )),
        None => Ok(y),
    }
}

/// (dx, dW, db) for y = x Wᵀ + b.
pub fn linear_backward(x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let dx = matmul(dy, w, false, false, 1.0)?; // dx = dy W
    let dw = matmul(dy, x, true, false, 1.0)?; // dW = dyᵀ x
    let db = reduce::sum(dy, &[0])?.reshape(&[w.shape()[0]])?; // db = Σ_rows dy
    Ok((dx, dw, db))
}

/// CPU references in f64.
pub mod cpu {
    /// C (M, N) = alpha · op(A) · op(B) for one matrix pair stored row-major.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        a: &[f64],
        b: &[f64],
        m: usize,
        n: usize,
        k: usize,
        ta: bool,
        tb: bool,
        alpha: f64,
    ) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for kk in 0..k {
                    let x = if ta { a[kk * m + i] } else { a[i * k + kk] };
                    let y = if tb { b[j * k + kk] } else { b[kk * n + j] };
                    s += x * y;
                }
                c[i * n + j] = alpha * s;
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn matmul_all_transposes_and_batches_match_cpu_with_gradients() {
        // (batch_a, batch_b, m, n, k): awkward sizes, shared operands, batch 1 and > 1.
        let cases = [
            (None, None, 1, 1, 1),
            (None, None, 37, 29, 45),
            (Some(3), Some(3), 5, 33, 7),
            (Some(2), None, 9, 70, 13),
            (None, Some(2), 17, 4, 31),
            (Some(1), Some(1), 64, 64, 64),
            // K and N multiples of 4 (the vec4 kernel when not transposed), with a shared
            // operand on either side and several 256-column blocks.
            (Some(3), None, 21, 300, 12),
            (None, Some(2), 5, 8, 4),
        ];
        for (ci, &(ba, bb, m, n, k)) in cases.iter().enumerate() {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let what = format!("matmul {ba:?}/{bb:?} m{m} n{n} k{k} ta{ta} tb{tb}");
                let sa = if ta { [k, m] } else { [m, k] };
                let sb = if tb { [n, k] } else { [k, n] };
                let shape_a: Vec<usize> = ba.iter().copied().chain(sa).collect();
                let shape_b: Vec<usize> = bb.iter().copied().chain(sb).collect();
                let na = ba.unwrap_or(1);
                let nbat = ba.or(bb).unwrap_or(1);
                let nb = bb.unwrap_or(1);
                let a = rounded(&rand_vec(na * m * k, ci as u64, -1.0, 1.0));
                let b = rounded(&rand_vec(nb * k * n, 100 + ci as u64, -1.0, 1.0));
                let alpha = 0.75;
                let fwd = |a: &[f64], b: &[f64]| -> Vec<f64> {
                    (0..nbat)
                        .flat_map(|i| {
                            let ai = if ba.is_some() {
                                &a[i * m * k..(i + 1) * m * k]
                            } else {
                                a
                            };
                            let bi = if bb.is_some() {
                                &b[i * k * n..(i + 1) * k * n]
                            } else {
                                b
                            };
                            cpu::matmul(ai, bi, m, n, k, ta, tb, alpha)
                        })
                        .collect()
                };
                let (tag, tbg) = (upload(&shape_a, &a), upload(&shape_b, &b));
                let c = matmul(&tag, &tbg, ta, tb, alpha as f32).unwrap();
                let want = fwd(&a, &b);
                assert_close(&what, &c.to_vec().unwrap(), &want, 1e-5, 1e-5);
                for v in tag.engine().variants() {
                    let c = matmul_variant(Some(v), &tag, &tbg, ta, tb, alpha as f32).unwrap();
                    let what = format!("{what} [{}]", v.name());
                    assert_close(&what, &c.to_vec().unwrap(), &want, 1e-5, 1e-5);
                }
                // GPU backward vs finite differences of the CPU forward (the matmul backward is
                // composed of matmuls, so the CPU forward is its reference).
                let dc = rounded(&rand_vec(want.len(), 200 + ci as u64, -1.0, 1.0));
                let (da, db) =
                    matmul_backward(&tag, &tbg, &upload(c.shape(), &dc), ta, tb, alpha as f32)
                        .unwrap();
                assert_eq!(da.shape(), tag.shape());
                assert_eq!(db.shape(), tbg.shape());
                if a.len() * want.len() < 200_000 {
                    assert_close(
                        &format!("{what} dA"),
                        &da.to_vec().unwrap(),
                        &fd_grad(&a, &dc, |x| fwd(x, &b)),
                        1e-4,
                        1e-4,
                    );
                    assert_close(
                        &format!("{what} dB"),
                        &db.to_vec().unwrap(),
                        &fd_grad(&b, &dc, |x| fwd(&a, x)),
                        1e-4,
                        1e-4,
                    );
                }
            }
        }
    }

    #[test]
    fn linear_matches_cpu_with_gradients() {
        let (n, fin, fout) = (5, 19, 11);
        let x = rounded(&rand_vec(n * fin, 1, -1.0, 1.0));
        let w = rounded(&rand_vec(fout * fin, 2, -1.0, 1.0));
        let b = rounded(&rand_vec(fout, 3, -1.0, 1.0));
        let (tx, tw, tb) = (
            upload(&[n, fin], &x),
            upload(&[fout, fin], &w),
            upload(&[fout], &b),
        );
        let y = linear(&tx, &tw, Some(&tb)).unwrap();
        let mut want = cpu::matmul(&x, &w, n, fout, fin, false, true, 1.0);
        want.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v += b[i % fout]);
        assert_close("linear", &y.to_vec().unwrap(), &want, 1e-5, 1e-6);
        let dy = rounded(&rand_vec(n * fout, 4, -1.0, 1.0));
        let (dx, dw, db) = linear_backward(&tx, &tw, &upload(&[n, fout], &dy)).unwrap();
        assert_close(
            "linear dx",
            &dx.to_vec().unwrap(),
            &cpu::matmul(&dy, &w, n, fin, fout, false, false, 1.0),
            1e-5,
            1e-6,
        );
        assert_close(
            "linear dW",
            &dw.to_vec().unwrap(),
            &cpu::matmul(&dy, &x, fout, fin, n, true, false, 1.0),
            1e-5,
            1e-6,
        );
        let want_db: Vec<f64> = (0..fout)
            .map(|j| (0..n).map(|i| dy[i * fout + j]).sum())
            .collect();
        assert_close("linear db", &db.to_vec().unwrap(), &want_db, 1e-5, 1e-6);
        let err = linear(
            &tx,
            &upload(&[fout, fin + 1], &vec![0.0; fout * (fin + 1)]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("linear") && err.contains("[5, 19]") && err.contains("[11, 20]"),
            "{err}"
        );
    }
}
