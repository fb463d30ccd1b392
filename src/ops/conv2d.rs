//! 2D convolution (3×3 and 1×1 in the models; any size here), stride 1 or 2, zero padding,
//! with gradients w.r.t. input, weight and bias.

use bytemuck::{Pod, Zeroable};

use super::reduce;
use crate::engine::tune::shape_key;
use crate::engine::{Kernel, Shader, Variant};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub static SHADER: Shader = Shader::new("conv2d", include_str!("../../shaders/conv2d.wgsl"));
/// The [`Variant::Sg8`] kernels: same params and bindings, implicit matrix products.
pub static SHADER_SG8: Shader = Shader::with_defaults(
    "conv2d_sg",
    concat!(
        include_str!("../../shaders/sg_common.wgsl"),
        include_str!("../../shaders/conv2d_sg.wgsl")
    ),
    "const STRIDE: u32 = 1u;",
);

/// The three passes; each has a portable and a subgroup kernel of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
    InputGrad,
    WeightGrad,
}

impl Pass {
    fn entry(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::InputGrad => "backward_input",
            Pass::WeightGrad => "backward_weight",
        }
    }
}

/// Records `pass` with the tensors in binding order, the variant picked by the engine unless
/// `variant` fixes it.
fn launch(variant: Option<Variant>, pass: Pass, p: &Params, tensors: &[&Tensor]) -> Result<()> {
    let e = tensors[0].engine();
    let run = |v: Variant| match v {
        Variant::Portable => {
            let items = match pass {
                Pass::Forward => p.n * p.cout.div_ceil(4) * p.ho * p.wo,
                Pass::InputGrad => p.n * p.cin * p.h * p.w,
                Pass::WeightGrad => p.cout * p.cin * p.kh * p.kw,
            };
            let kernel = Kernel::new(&SHADER, pass.entry());
            e.dispatch(kernel, p, tensors, e.grid(items as usize, 64))
        }
        Variant::Sg8 => {
            // (columns, rows): 256 columns (64 for the weight gradient) and 16 rows per
            // workgroup.
            let (cols, rows) = match pass {
                Pass::Forward => (p.n * p.ho * p.wo, p.cout),
                Pass::InputGrad => (p.n * p.h * p.w, p.cin),
                Pass::WeightGrad => ((p.cin * p.kh * p.kw).div_ceil(64) * 256, p.cout),
            };
            let mut groups = [cols.div_ceil(256), rows.div_ceil(16), 1];
            let defs = format!("const STRIDE: u32 = {}u;", p.stride);
            // 3x3 stride 1 with rows of whole 4-pixel groups: the sliding-window kernel.
            let k3s1 = p.kh == 3 && p.kw == 3 && p.stride == 1;
            let k1 = p.kh == 1 && p.kw == 1 && p.stride == 1 && p.pad == 0;
            let hw4 = (p.h * p.w).is_multiple_of(4);
            let entry = match pass {
                Pass::Forward if k1 && hw4 => "forward1",
                Pass::InputGrad if k1 && hw4 => "backward_input1",
                Pass::Forward if k3s1 && p.wo.is_multiple_of(4) => "forward3",
                Pass::InputGrad if k3s1 && p.w.is_multiple_of(4) => "backward_input3",
                Pass::WeightGrad if k3s1 && p.wo.is_multiple_of(4) => {
                    // 16 lanes per workgroup, one (ci, ky) each.
                    groups[0] = (p.cin * 3).div_ceil(16);
                    "backward_weight3"
                }
                _ => pass.entry(),
            };
            let kernel = Kernel::new(&SHADER_SG8, entry);
            e.dispatch_with(kernel, &defs, p, tensors, groups)
        }
    };
    let v = match variant {
        Some(v) => v,
        None => {
            let dims = [p.n, p.cin, p.h, p.w, p.cout, p.kh, p.kw, p.stride, p.pad];
            let dims = dims.map(|d| d as usize);
            e.pick(&shape_key(&format!("conv2d.{}", pass.entry()), &dims), run)?
        }
    };
    run(v)
}

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
    conv2d_variant(None, x, weight, bias, stride, pad)
}

/// [`conv2d`] with the kernel variant fixed (`None`: the engine picks).
pub fn conv2d_variant(
    variant: Option<Variant>,
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
    launch(variant, Pass::Forward, &p, &[x, weight, b, &y])?;
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
    conv2d_input_grad_variant(None, dy, weight, x_shape, stride, pad)
}

/// [`conv2d_input_grad`] with the kernel variant fixed (`None`: the engine picks).
pub fn conv2d_input_grad_variant(
    variant: Option<Variant>,
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
    launch(variant, Pass::InputGrad, &p, &[weight, dy, &dx])?;
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
    conv2d_weight_grad_variant(None, x, dy, w_shape, stride, pad)
}

/// [`conv2d_weight_grad`] with the kernel variant fixed (`None`: the engine picks).
pub fn conv2d_weight_grad_variant(
    variant: Option<Variant>,
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
    launch(variant, Pass::WeightGrad, &p, &[x, dy, &dw])?;
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

    /// Every kernel variant the adapter runs, against the CPU forward and backward (whose
    /// gradients are checked by finite differences above), on the small cases and on shapes
    /// with several 16-channel row blocks and 256-pixel column blocks.
    #[test]
    fn conv2d_variants_match_cpu() {
        let big: [Case; 6] = [
            (2, 18, 12, 13, 20, 3, 1, 1),
            // Wo a multiple of 4: the sliding-window 3x3 kernels.
            (2, 18, 6, 8, 20, 3, 1, 1),
            (1, 5, 6, 10, 17, 3, 1, 0),
            (1, 17, 11, 9, 19, 3, 2, 1),
            (3, 33, 6, 7, 9, 1, 1, 0),
            (2, 20, 4, 5, 18, 1, 1, 0), // H·W a multiple of 4: the pointwise kernels
        ];
        let e = crate::engine::Engine::shared().unwrap();
        for (k, &(n, cin, h, w, cout, ks, s, pad)) in CASES.iter().chain(&big).enumerate() {
            let (xs, ws) = ([n, cin, h, w], [cout, cin, ks, ks]);
            let x = rounded(&rand_vec(n * cin * h * w, 40 + k as u64, -1.0, 1.0));
            let wt = rounded(&rand_vec(cout * cin * ks * ks, 50 + k as u64, -1.0, 1.0));
            let b = rounded(&rand_vec(cout, 60 + k as u64, -1.0, 1.0));
            let (tx, tw, tb) = (upload(&xs, &x), upload(&ws, &wt), upload(&[cout], &b));
            let want = cpu::conv2d(&x, xs, &wt, ws, Some(&b), s, pad);
            let dy = rounded(&rand_vec(want.len(), 70 + k as u64, -1.0, 1.0));
            let (wdx, wdw, _) = cpu::conv2d_backward(&x, xs, &wt, ws, &dy, s, pad);
            let dyt = upload(
                &[n, cout, out_size(h, ks, s, pad), out_size(w, ks, s, pad)],
                &dy,
            );
            for v in e.variants() {
                let what = format!(
                    "conv2d [{}] x({n},{cin},{h},{w}) w({cout},{cin},{ks},{ks}) s{s} p{pad}",
                    v.name()
                );
                let y = conv2d_variant(Some(v), &tx, &tw, Some(&tb), s, pad).unwrap();
                assert_close(&what, &y.to_vec().unwrap(), &want, 1e-4, 1e-5);
                let dx = conv2d_input_grad_variant(Some(v), &dyt, &tw, &xs, s, pad).unwrap();
                assert_close(
                    &format!("{what} dx"),
                    &dx.to_vec().unwrap(),
                    &wdx,
                    1e-4,
                    1e-5,
                );
                let dw = conv2d_weight_grad_variant(Some(v), &tx, &dyt, &ws, s, pad).unwrap();
                assert_close(
                    &format!("{what} dw"),
                    &dw.to_vec().unwrap(),
                    &wdw,
                    1e-4,
                    1e-5,
                );
            }
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
