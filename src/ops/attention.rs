//! Self-attention over the H·W tokens of a feature map: O = V · softmax(QᵀK/√C)ᵀ.
//! A composite of matmul and softmax (no kernel of its own); the backward composes theirs.

use super::{matmul, softmax};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// What the backward needs from the forward.
pub struct AttentionSaved {
    /// Attention weights (B, T, T), rows summing to 1.
    pub probs: Tensor,
    pub scale: f32,
}

/// Checks q, k, v are all (B, C, T); returns the logit scale 1/√C.
pub fn check_shapes(q: &[usize], k: &[usize], v: &[usize]) -> Result<f32> {
    if q.len() != 3 || k != q || v != q {
        return Err(Error::shape(
            "attention",
            format!("q {q:?}, k {k:?} and v {v:?} must all be (B, C, T)"),
        ));
    }
    Ok(1.0 / (q[1] as f32).sqrt())
}

/// q, k, v (B, C, T) → out (B, C, T) with out[:, :, i] = Σ_j P[i, j] v[:, :, j],
/// P = softmax_j(q_iᵀ k_j / √C).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, AttentionSaved)> {
    let scale = check_shapes(q.shape(), k.shape(), v.shape())?;
    let logits = matmul::matmul(q, k, true, false, scale)?; // (B, T, T) = scale · qᵀ k
    let probs = softmax::softmax(&logits)?;
    let out = matmul::matmul(v, &probs, false, true, 1.0)?; // (B, C, T) = v · Pᵀ
    Ok((out, AttentionSaved { probs, scale }))
}

/// (dq, dk, dv) for out = attention(q, k, v).
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    saved: &AttentionSaved,
    dout: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (dv, dprobs) = matmul::matmul_backward(v, &saved.probs, dout, false, true, 1.0)?;
    let dlogits = softmax::softmax_backward(&saved.probs, &dprobs)?;
    let (dq, dk) = matmul::matmul_backward(q, k, &dlogits, true, false, saved.scale)?;
    Ok((dq, dk, dv))
}

/// CPU reference in f64.
pub mod cpu {
    /// q, k, v (b, c, t) → out (b, c, t).
    pub fn attention(q: &[f64], k: &[f64], v: &[f64], b: usize, c: usize, t: usize) -> Vec<f64> {
        let scale = 1.0 / (c as f64).sqrt();
        let mut out = vec![0.0; b * c * t];
        for bi in 0..b {
            let at = |x: &[f64], ch: usize, tok: usize| x[(bi * c + ch) * t + tok];
            for i in 0..t {
                let logits: Vec<f64> = (0..t)
                    .map(|j| scale * (0..c).map(|ch| at(q, ch, i) * at(k, ch, j)).sum::<f64>())
                    .collect();
                let p = super::super::softmax::cpu::softmax(&logits, t);
                for ch in 0..c {
                    out[(bi * c + ch) * t + i] = (0..t).map(|j| p[j] * at(v, ch, j)).sum();
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn attention_matches_cpu_and_finite_differences() {
        for (k, &(b, c, t)) in [(1, 1, 1), (2, 3, 5), (1, 8, 17)].iter().enumerate() {
            let n = b * c * t;
            let q = rounded(&rand_vec(n, k as u64, -1.0, 1.0));
            let kk = rounded(&rand_vec(n, 10 + k as u64, -1.0, 1.0));
            let v = rounded(&rand_vec(n, 20 + k as u64, -1.0, 1.0));
            let (tq, tk, tv) = (
                upload(&[b, c, t], &q),
                upload(&[b, c, t], &kk),
                upload(&[b, c, t], &v),
            );
            let (out, saved) = attention(&tq, &tk, &tv).unwrap();
            let want = cpu::attention(&q, &kk, &v, b, c, t);
            assert_close("attention", &out.to_vec().unwrap(), &want, 1e-5, 1e-6);
            let dout = rounded(&rand_vec(n, 30 + k as u64, -1.0, 1.0));
            let (dq, dk, dv) =
                attention_backward(&tq, &tk, &tv, &saved, &upload(&[b, c, t], &dout)).unwrap();
            // Finite differences of the CPU forward, for each input.
            assert_close(
                "attention dq",
                &dq.to_vec().unwrap(),
                &fd_grad(&q, &dout, |x| cpu::attention(x, &kk, &v, b, c, t)),
                1e-4,
                1e-5,
            );
            assert_close(
                "attention dk",
                &dk.to_vec().unwrap(),
                &fd_grad(&kk, &dout, |x| cpu::attention(&q, x, &v, b, c, t)),
                1e-4,
                1e-5,
            );
            assert_close(
                "attention dv",
                &dv.to_vec().unwrap(),
                &fd_grad(&v, &dout, |x| cpu::attention(&q, &kk, x, b, c, t)),
                1e-4,
                1e-5,
            );
        }
    }
}
