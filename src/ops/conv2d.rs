//! 2D convolution (3×3 and 1×1 in the models; any size here), stride 1 or 2, zero padding,
//! with gradients w.r.t. input, weight and bias.

use bytemuck::{Pod, Zeroable};

use super::reduce;
use crate::engine::{Kernel, Shader};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub static SHADER: Shader = Shader::new("conv2d", include_str!("../../shaders/conv2d.wgsl"));
const FORWARD: Kernel = Kernel::new(&SHADER, "forward");
const BACKWARD_INPUT: Kernel = Kernel::new(&SHADER, "backward_input");
const BACKWARD_WEIGHT: Kernel = Kernel::new(&SHADER, "backward_weight");

/// Mirrors `Params` in conv2d.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default, Debug)]
struct Params {
    n: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    ho: u32,
    wo: u32,
    has_bias: u32,
}

/// Output extent of a convolution along one axis.
pub fn out_size(input: usize, kernel: usize, stride: usize, pad: usize) -> usize {
    (input + 2 * pad).saturating_sub(kernel) / stride + 1
}

fn plan(x: &[usize], w: &[usize], stride: usize, pad: usize) -> Result<Params> {
    let (&[n, cin, h, wd], &[cout, wcin, kh, kw]) = (x, w) else {
        return Err(Error::shape(
            "conv2d",
            format!("x {x:?} must be (N, Cin, H, W) and weight {w:?} (Cout, Cin, KH, KW)"),
        ));
    };
    if cin != wcin || stride == 0 || h + 2 * pad < kh || wd + 2 * pad < kw {
        return Err(Error::shape(
            "conv2d",
            format!("x {x:?} and weight {w:?} (stride {stride}, padding {pad}) do not fit"),
        ));
    }
    Ok(Params {
        n: n as u32,
        cin: cin as u32,
        h: h as u32,
        w: wd as u32,
        cout: cout as u32,
        kh: kh as u32,
        kw: kw as u32,
        stride: stride as u32,
        pad: pad as u32,
        ho: out_size(h, kh, stride, pad) as u32,
        wo: out_size(wd, kw, stride, pad) as u32,
        has_bias: 0,
    })
}

/// y = conv(x, weight) + bias. x (N, Cin, H, W), weight (Cout, Cin, KH, KW), bias (Cout).
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let mut p = plan(x.shape(), weight.shape(), stride, pad)?;
    let e = x.engine();
    let b = match bias {
        Some(b) if b.shape() == [p.cout as usize] => {
            p.has_bias = 1;
            b
        }
        Some(b) => {
            return Err(Error::shape(
                "conv2d",
                format!("bias {:?} must be ({})", b.shape(), p.cout),
            ));
        }
        None => weight, // bound but unread
    };
    let y = Tensor::uninit(
        e,
        &[p.n as usize, p.cout as usize, p.ho as usize, p.wo as usize],
    )?;
    let n = (p.n * p.cout.div_ceil(4) * p.ho * p.wo) as usize;
    e.dispatch(FORWARD, &p, &[x, weight, b, &y], e.grid(n, 64))?;
    Ok(y)
}

fn check_dy(p: &Params, dy: &Tensor) -> Result<()> {
    let want = [p.n as usize, p.cout as usize, p.ho as usize, p.wo as usize];
    if dy.shape() != want {
        return Err(Error::shape(
            "conv2d_backward",
            format!("dy {:?} must be {want:?}", dy.shape()),
        ));
    }
    Ok(())
}

/// dx (shape `x_shape`) for y = conv2d(x, weight): the transposed convolution of dy.
pub fn conv2d_input_grad(
    dy: &Tensor,
    weight: &Tensor,
    x_shape: &[usize],
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let p = plan(x_shape, weight.shape(), stride, pad)?;
    check_dy(&p, dy)?;
    let e = dy.engine();
    let dx = Tensor::uninit(e, x_shape)?;
    e.dispatch(
        BACKWARD_INPUT,
        &p,
        &[weight, dy, &dx],
        e.grid(dx.numel(), 64),
    )?;
    Ok(dx)
}

/// dweight (shape `w_shape`) for y = conv2d(x, weight).
pub fn conv2d_weight_grad(
    x: &Tensor,
    dy: &Tensor,
    w_shape: &[usize],
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let p = plan(x.shape(), w_shape, stride, pad)?;
    check_dy(&p, dy)?;
    let e = x.engine();
    let dw = Tensor::uninit(e, w_shape)?;
    e.dispatch(BACKWARD_WEIGHT, &p, &[x, dy, &dw], e.grid(dw.numel(), 64))?;
    Ok(dw)
}

/// (dx, dweight, dbias) for y = conv2d(x, weight, bias, stride, pad).
pub fn conv2d_backward(
    x: &Tensor,
    weight: &Tensor,
    dy: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dx = conv2d_input_grad(dy, weight, x.shape(), stride, pad)?;
    let dw = conv2d_weight_grad(x, dy, weight.shape(), stride, pad)?;
    // dbias[co] = Σ_{n,oy,ox} dy
    let db = reduce::sum(dy, &[0, 2, 3])?.reshape(&[weight.shape()[0]])?;
    Ok((dx, dw, db))
}

/// CPU references in f64.
pub mod cpu {
    /// Shapes as (N, Cin, H, W) and (Cout, Cin, KH, KW); returns y (N, Cout, Ho, Wo).
    pub fn conv2d(
        x: &[f64],
        xs: [usize; 4],
        w: &[f64],
        ws: [usize; 4],
        b: Option<&[f64]>,
        stride: usize,
        pad: usize,
    ) -> Vec<f64> {
        let [n, cin, h, wd] = xs;
        let [cout, _, kh, kw] = ws;
        let ho = super::out_size(h, kh, stride, pad);
        let wo = super::out_size(wd, kw, stride, pad);
        let mut y = vec![0.0; n * cout * ho * wo];
        for ni in 0..n {
            for co in 0..cout {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut s = b.map_or(0.0, |b| b[co]);
                        for ci in 0..cin {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * stride + ky) as isize - pad as isize;
                                    let ix = (ox * stride + kx) as isize - pad as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    s += x[((ni * cin + ci) * h + iy as usize) * wd + ix as usize]
                                        * w[((co * cin + ci) * kh + ky) * kw + kx];
                                }
                            }
                        }
                        y[((ni * cout + co) * ho + oy) * wo + ox] = s;
                    }
                }
            }
        }
        y
    }

    /// (dx, dw, db) by scattering each output gradient back through the forward's sums.
    pub fn conv2d_backward(
        x: &[f64],
        xs: [usize; 4],
        w: &[f64],
        ws: [usize; 4],
        dy: &[f64],
        stride: usize,
        pad: usize,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let [n, cin, h, wd] = xs;
        let [cout, _, kh, kw] = ws;
        let ho = super::out_size(h, kh, stride, pad);
        let wo = super::out_size(wd, kw, stride, pad);
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; cout]);
        for ni in 0..n {
            for co in 0..cout {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let g = dy[((ni * cout + co) * ho + oy) * wo + ox];
                        db[co] += g;
                        for ci in 0..cin {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * stride + ky) as isize - pad as isize;
                                    let ix = (ox * stride + kx) as isize - pad as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let xi = ((ni * cin + ci) * h + iy as usize) * wd + ix as usize;
                                    let wi = ((co * cin + ci) * kh + ky) * kw + kx;
                                    dx[xi] += g * w[wi];
                                    dw[wi] += g * x[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
        (dx, dw, db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    // (N, Cin, H, W, Cout, K, stride, pad): 3×3 and 1×1, stride 1 and 2, odd sizes.
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize);
    const CASES: [Case; 6] = [
        (1, 1, 5, 5, 1, 3, 1, 1),
        (2, 3, 7, 6, 5, 3, 1, 1),
        (2, 3, 9, 7, 6, 3, 2, 1),
        (3, 4, 5, 5, 7, 1, 1, 0),
        (1, 5, 8, 8, 3, 3, 2, 1),
        (2, 2, 6, 5, 3, 3, 1, 0),
    ];

    #[test]
    fn conv2d_forward_and_backward_match_cpu() {
        for (k, &(n, cin, h, w, cout, ks, s, pad)) in CASES.iter().enumerate() {
            let what = format!("conv2d x({n},{cin},{h},{w}) w({cout},{cin},{ks},{ks}) s{s} p{pad}");
            let (xs, ws) = ([n, cin, h, w], [cout, cin, ks, ks]);
            let x = rounded(&rand_vec(n * cin * h * w, k as u64, -1.0, 1.0));
            let wt = rounded(&rand_vec(cout * cin * ks * ks, 10 + k as u64, -1.0, 1.0));
            let b = rounded(&rand_vec(cout, 20 + k as u64, -1.0, 1.0));
            let (tx, tw, tb) = (upload(&xs, &x), upload(&ws, &wt), upload(&[cout], &b));
            let y = conv2d(&tx, &tw, Some(&tb), s, pad).unwrap();
            let want = cpu::conv2d(&x, xs, &wt, ws, Some(&b), s, pad);
            assert_close(&what, &y.to_vec().unwrap(), &want, 1e-5, 1e-5);
            let y0 = conv2d(&tx, &tw, None, s, pad).unwrap();
            assert_close(
                &what,
                &y0.to_vec().unwrap(),
                &cpu::conv2d(&x, xs, &wt, ws, None, s, pad),
                1e-5,
                1e-5,
            );

            let dy = rounded(&rand_vec(want.len(), 30 + k as u64, -1.0, 1.0));
            // CPU backward vs finite differences (x, weight, bias).
            check_grad(
                &format!("{what} dx"),
                &x,
                |x| cpu::conv2d(x, xs, &wt, ws, Some(&b), s, pad),
                |x, g| cpu::conv2d_backward(x, xs, &wt, ws, g, s, pad).0,
            );
            check_grad(
                &format!("{what} dw"),
                &wt,
                |w| cpu::conv2d(&x, xs, w, ws, Some(&b), s, pad),
                |w, g| cpu::conv2d_backward(&x, xs, w, ws, g, s, pad).1,
            );
            check_grad(
                &format!("{what} db"),
                &b,
                |b| cpu::conv2d(&x, xs, &wt, ws, Some(b), s, pad),
                |_, g| cpu::conv2d_backward(&x, xs, &wt, ws, g, s, pad).2,
            );
            // GPU backward vs CPU backward.
            let (dx, dw, db) = conv2d_backward(&tx, &tw, &upload(y.shape(), &dy), s, pad).unwrap();
            let (wdx, wdw, wdb) = cpu::conv2d_backward(&x, xs, &wt, ws, &dy, s, pad);
            assert_close(
                &format!("{what} dx"),
                &dx.to_vec().unwrap(),
                &wdx,
                1e-5,
                1e-5,
            );
            assert_close(
                &format!("{what} dw"),
                &dw.to_vec().unwrap(),
                &wdw,
                1e-5,
                1e-5,
            );
            assert_close(
                &format!("{what} db"),
                &db.to_vec().unwrap(),
                &wdb,
                1e-5,
                1e-5,
            );
        }
    }

    #[test]
    fn conv2d_rejects_mismatched_channels() {
        let x = upload(&[1, 3, 4, 4], &[0.0; 48]);
        let w = upload(&[2, 4, 3, 3], &[0.0; 72]);
        let err = conv2d(&x, &w, None, 1, 1).unwrap_err().to_string();
        assert!(
            err.contains("conv2d") && err.contains("[1, 3, 4, 4]") && err.contains("[2, 4, 3, 3]"),
            "{err}"
        );
    }
}
