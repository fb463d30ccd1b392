//! Nearest-neighbour ×2 upsampling (the UNet's UpSample before its 3×3 conv) and its backward.

use bytemuck::{Pod, Zeroable};

use crate::engine::{Kernel, Shader};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub static SHADER: Shader = Shader::new("upsample", include_str!("../../shaders/upsample.wgsl"));
const FORWARD: Kernel = Kernel::new(&SHADER, "forward");
const BACKWARD: Kernel = Kernel::new(&SHADER, "backward");

/// Mirrors `Params` in upsample.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    n: u32, // N*C planes
    h: u32, // input height
    w: u32, // input width
    _pad: u32,
}

/// y (N, C, 2H, 2W) from x (N, C, H, W).
pub fn upsample2x(x: &Tensor) -> Result<Tensor> {
    let &[n, c, h, w] = x.shape() else {
        return Err(Error::shape(
            "upsample2x",
            format!("x {:?} must be (N, C, H, W)", x.shape()),
        ));
    };
    let e = x.engine();
    let y = Tensor::uninit(e, &[n, c, 2 * h, 2 * w])?;
    let p = Params {
        n: (n * c) as u32,
        h: h as u32,
        w: w as u32,
        _pad: 0,
    };
    e.dispatch(FORWARD, &p, &[x, &y], e.grid(y.numel(), 256))?;
    Ok(y)
}

/// dx (N, C, H, W) from dy (N, C, 2H, 2W).
pub fn upsample2x_backward(dy: &Tensor) -> Result<Tensor> {
    let &[n, c, h2, w2] = dy.shape() else {
        return Err(Error::shape(
            "upsample2x_backward",
            format!("dy {:?} must be (N, C, 2H, 2W)", dy.shape()),
        ));
    };
    if h2 % 2 != 0 || w2 % 2 != 0 {
        return Err(Error::shape(
            "upsample2x_backward",
            format!("dy {:?} has odd height or width", dy.shape()),
        ));
    }
    let e = dy.engine();
    let dx = Tensor::uninit(e, &[n, c, h2 / 2, w2 / 2])?;
    let p = Params {
        n: (n * c) as u32,
        h: (h2 / 2) as u32,
        w: (w2 / 2) as u32,
        _pad: 0,
    };
    e.dispatch(BACKWARD, &p, &[dy, &dx], e.grid(dx.numel(), 256))?;
    Ok(dx)
}

/// CPU references in f64.
pub mod cpu {
    pub fn upsample2x(x: &[f64], planes: usize, h: usize, w: usize) -> Vec<f64> {
        let mut y = vec![0.0; planes * 4 * h * w];
        for pl in 0..planes {
            for oy in 0..2 * h {
                for ox in 0..2 * w {
                    y[(pl * 2 * h + oy) * 2 * w + ox] = x[(pl * h + oy / 2) * w + ox / 2];
                }
            }
        }
        y
    }

    pub fn upsample2x_backward(dy: &[f64], planes: usize, h: usize, w: usize) -> Vec<f64> {
        let mut dx = vec![0.0; planes * h * w];
        for pl in 0..planes {
            for oy in 0..2 * h {
                for ox in 0..2 * w {
                    dx[(pl * h + oy / 2) * w + ox / 2] += dy[(pl * 2 * h + oy) * 2 * w + ox];
                }
            }
        }
        dx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn upsample_matches_cpu_with_gradients() {
        for (k, &(n, c, h, w)) in [(1, 1, 1, 1), (2, 3, 5, 7), (3, 5, 16, 9)]
            .iter()
            .enumerate()
        {
            let x = rounded(&rand_vec(n * c * h * w, k as u64, -1.0, 1.0));
            let tx = upload(&[n, c, h, w], &x);
            let y = upsample2x(&tx).unwrap();
            assert_eq!(y.shape(), &[n, c, 2 * h, 2 * w]);
            assert_close(
                "upsample",
                &y.to_vec().unwrap(),
                &cpu::upsample2x(&x, n * c, h, w),
                0.0,
                0.0,
            );
            check_grad(
                "upsample",
                &x,
                |x| cpu::upsample2x(x, n * c, h, w),
                |_, g| cpu::upsample2x_backward(g, n * c, h, w),
            );
            let dy = rounded(&rand_vec(y.numel(), 10 + k as u64, -1.0, 1.0));
            let dx = upsample2x_backward(&upload(y.shape(), &dy)).unwrap();
            assert_close(
                "upsample backward",
                &dx.to_vec().unwrap(),
                &cpu::upsample2x_backward(&dy, n * c, h, w),
                1e-6,
                1e-6,
            );
        }
        let err = upsample2x(&upload(&[2, 3], &[0.0; 6]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("upsample2x") && err.contains("[2, 3]"),
            "{err}"
        );
    }
}
