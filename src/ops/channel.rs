//! Channel concat and split of NCHW tensors (the UNet's skip connections); each is the other's
//! backward.

use bytemuck::{Pod, Zeroable};

use crate::engine::{Kernel, Shader};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub static SHADER: Shader = Shader::new("channel", include_str!("../../shaders/channel.wgsl"));
const COPY: Kernel = Kernel::new(&SHADER, "copy");

/// Mirrors `Params` in channel.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    n: u32,
    c: u32,  // channels copied
    hw: u32, // H*W
    c_src: u32,
    c_dst: u32,
    src_off: u32,
    dst_off: u32,
    _pad: u32,
}

fn copy_channels(
    src: &Tensor,
    src_off: usize,
    dst: &Tensor,
    dst_off: usize,
    c: usize,
) -> Result<()> {
    let (s, d) = (src.shape(), dst.shape());
    let p = Params {
        n: s[0] as u32,
        c: c as u32,
        hw: (s[2] * s[3]) as u32,
        c_src: s[1] as u32,
        c_dst: d[1] as u32,
        src_off: src_off as u32,
        dst_off: dst_off as u32,
        _pad: 0,
    };
    let e = src.engine();
    e.dispatch(COPY, &p, &[src, dst], e.grid(s[0] * c * s[2] * s[3], 256))
}

/// (N, Ca + Cb, H, W) from a (N, Ca, H, W) and b (N, Cb, H, W).
pub fn concat(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (sa, sb) = (a.shape(), b.shape());
    if sa.len() != 4 || sb.len() != 4 || sa[0] != sb[0] || sa[2..] != sb[2..] {
        return Err(Error::shape(
            "concat",
            format!("a {sa:?} and b {sb:?} must be (N, C, H, W) with equal N, H, W"),
        ));
    }
    let out = Tensor::uninit(a.engine(), &[sa[0], sa[1] + sb[1], sa[2], sa[3]])?;
    copy_channels(a, 0, &out, 0, sa[1])?;
    copy_channels(b, 0, &out, sa[1], sb[1])?;
    Ok(out)
}

/// Splits x (N, C, H, W) into its first `c1` channels and the rest.
pub fn split(x: &Tensor, c1: usize) -> Result<(Tensor, Tensor)> {
    let s = x.shape();
    if s.len() != 4 || c1 > s[1] {
        return Err(Error::shape(
            "split",
            format!("x {s:?} cannot be split after channel {c1}"),
        ));
    }
    let e = x.engine();
    let a = Tensor::uninit(e, &[s[0], c1, s[2], s[3]])?;
    let b = Tensor::uninit(e, &[s[0], s[1] - c1, s[2], s[3]])?;
    copy_channels(x, 0, &a, 0, c1)?;
    copy_channels(x, c1, &b, 0, s[1] - c1)?;
    Ok((a, b))
}

/// Channels `start .. start + len` of x (N, C, H, W).
pub fn slice(x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    let s = x.shape();
    if s.len() != 4 || start + len > s[1] {
        return Err(Error::shape(
            "slice",
            format!("x {s:?} has no channels {start}..{}", start + len),
        ));
    }
    let out = Tensor::uninit(x.engine(), &[s[0], len, s[2], s[3]])?;
    copy_channels(x, start, &out, 0, len)?;
    Ok(out)
}

/// Zeros of (N, `channels`, H, W) with `x` written at channel `start`: the backward of slice.
pub fn unslice(x: &Tensor, start: usize, channels: usize) -> Result<Tensor> {
    let s = x.shape();
    if s.len() != 4 || start + s[1] > channels {
        return Err(Error::shape(
            "unslice",
            format!("x {s:?} does not fit at channel {start} of {channels}"),
        ));
    }
    let out = Tensor::zeros(x.engine(), &[s[0], channels, s[2], s[3]])?;
    copy_channels(x, 0, &out, start, s[1])?;
    Ok(out)
}

/// (da, db) for out = concat(a, b): the split of dout.
pub fn concat_backward(dout: &Tensor, ca: usize) -> Result<(Tensor, Tensor)> {
    split(dout, ca)
}

/// dx for (a, b) = split(x, c1): the concat of (da, db).
pub fn split_backward(da: &Tensor, db: &Tensor) -> Result<Tensor> {
    concat(da, db)
}

/// CPU reference in f64.
pub mod cpu {
    /// Concatenation along channels of (n, ca, hw) and (n, cb, hw).
    pub fn concat(a: &[f64], b: &[f64], n: usize, ca: usize, cb: usize, hw: usize) -> Vec<f64> {
        (0..n)
            .flat_map(|i| {
                a[i * ca * hw..(i + 1) * ca * hw]
                    .iter()
                    .chain(&b[i * cb * hw..(i + 1) * cb * hw])
                    .copied()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn concat_and_split_are_inverse_and_match_cpu() {
        for (k, &(n, ca, cb, h, w)) in [(1, 1, 1, 1, 1), (2, 3, 5, 4, 7), (3, 64, 32, 3, 3)]
            .iter()
            .enumerate()
        {
            let a = rounded(&rand_vec(n * ca * h * w, k as u64, -1.0, 1.0));
            let b = rounded(&rand_vec(n * cb * h * w, 10 + k as u64, -1.0, 1.0));
            let (ta, tb) = (upload(&[n, ca, h, w], &a), upload(&[n, cb, h, w], &b));
            let c = concat(&ta, &tb).unwrap();
            let want = cpu::concat(&a, &b, n, ca, cb, h * w);
            assert_close("concat", &c.to_vec().unwrap(), &want, 0.0, 0.0);
            // Backward: split of dout. FD of <w, concat(a, b)> w.r.t. a is the a-part of w.
            check_grad(
                "concat da",
                &a,
                |a| cpu::concat(a, &b, n, ca, cb, h * w),
                |_, g| {
                    (0..n)
                        .flat_map(|i| g[i * (ca + cb) * h * w..][..ca * h * w].to_vec())
                        .collect()
                },
            );
            let (da, db) = concat_backward(&c, ca).unwrap();
            assert_close("split a", &da.to_vec().unwrap(), &a, 0.0, 0.0);
            assert_close("split b", &db.to_vec().unwrap(), &b, 0.0, 0.0);
            assert_close(
                "split backward",
                &split_backward(&da, &db).unwrap().to_vec().unwrap(),
                &want,
                0.0,
                0.0,
            );
        }
        let err = concat(
            &upload(&[1, 2, 3, 3], &[0.0; 18]),
            &upload(&[1, 2, 4, 3], &[0.0; 24]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("concat") && err.contains("[1, 2, 3, 3]") && err.contains("[1, 2, 4, 3]"),
            "{err}"
        );
    }
}
