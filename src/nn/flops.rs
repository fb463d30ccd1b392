//! A backend that runs a layer's forward on shapes only and counts its floating-point work
//! (2 per multiply-add of convolutions, linear layers and attention products; elementwise ops
//! and normalisations are not counted). The models' FLOP figures come from their own code.
//! It also records the largest tensor the forward creates (attention's L × L logits included),
//! which bounds what a batch needs of the adapter's largest storage binding.

use std::cell::Cell;

use super::Backend;
use crate::error::{Error, Result};
use crate::ops::conv2d::out_size;

/// Counts FLOPs of the ops a forward performs; tensors are their shapes.
#[derive(Default)]
pub struct Flops {
    count: Cell<f64>,
    largest: Cell<usize>,
}

impl Flops {
    pub fn total(&self) -> f64 {
        self.count.get()
    }

    /// Elements of the largest tensor seen so far.
    pub fn largest(&self) -> usize {
        self.largest.get()
    }

    fn seen(&self, shape: Vec<usize>) -> Vec<usize> {
        self.largest
            .set(self.largest.get().max(shape.iter().product()));
        shape
    }

    fn add_flops(&self, f: usize) {
        self.count.set(self.count.get() + f as f64);
    }
}

fn rank(op: &'static str, s: &[usize], r: usize) -> Result<()> {
    if s.len() == r {
        Ok(())
    } else {
        Err(Error::shape(op, format!("{s:?} must have rank {r}")))
    }
}

impl Backend for Flops {
    type T = Vec<usize>;
    fn shape<'a>(&self, x: &'a Vec<usize>) -> &'a [usize] {
        x
    }
    fn add(&self, a: &Vec<usize>, b: &Vec<usize>) -> Result<Vec<usize>> {
        Ok(self.seen(if a.len() >= b.len() {
            a.clone()
        } else {
            b.clone()
        }))
    }
    fn silu(&self, x: &Vec<usize>) -> Result<Vec<usize>> {
        Ok(x.clone())
    }
    fn reshape(&self, _: &Vec<usize>, shape: &[usize]) -> Result<Vec<usize>> {
        Ok(shape.to_vec())
    }
    fn linear(&self, x: &Vec<usize>, w: &Vec<usize>, _: Option<&Vec<usize>>) -> Result<Vec<usize>> {
        rank("linear", x, 2)?;
        self.add_flops(2 * x[0] * w[0] * w[1]);
        Ok(self.seen(vec![x[0], w[0]]))
    }
    fn conv2d(
        &self,
        x: &Vec<usize>,
        w: &Vec<usize>,
        _: Option<&Vec<usize>>,
        stride: usize,
        pad: usize,
    ) -> Result<Vec<usize>> {
        rank("conv2d", x, 4)?;
        let (ho, wo) = (
            out_size(x[2], w[2], stride, pad),
            out_size(x[3], w[3], stride, pad),
        );
        self.add_flops(2 * x[0] * w[0] * ho * wo * w[1] * w[2] * w[3]);
        Ok(self.seen(vec![x[0], w[0], ho, wo]))
    }
    fn group_norm(
        &self,
        x: &Vec<usize>,
        _: &Vec<usize>,
        _: &Vec<usize>,
        _: usize,
    ) -> Result<Vec<usize>> {
        Ok(x.clone())
    }
    fn upsample2x(&self, x: &Vec<usize>) -> Result<Vec<usize>> {
        rank("upsample2x", x, 4)?;
        Ok(self.seen(vec![x[0], x[1], 2 * x[2], 2 * x[3]]))
    }
    fn concat(&self, a: &Vec<usize>, b: &Vec<usize>) -> Result<Vec<usize>> {
        rank("concat", a, 4)?;
        Ok(self.seen(vec![a[0], a[1] + b[1], a[2], a[3]]))
    }
    fn attention(&self, q: &Vec<usize>, k: &Vec<usize>, _: &Vec<usize>) -> Result<Vec<usize>> {
        // q, k, v: (B, L, C); logits B·L·L·C multiply-adds, output as many again.
        rank("attention", q, 3)?;
        self.add_flops(2 * 2 * q[0] * q[1] * k[1] * q[2]);
        self.seen(vec![q[0], q[1], k[1]]);
        Ok(q.clone())
    }
    fn sinusoidal_embedding(&self, s: &Vec<usize>, dim: usize) -> Result<Vec<usize>> {
        Ok(vec![s[0], dim])
    }
    fn concat_cols(&self, a: &Vec<usize>, b: &Vec<usize>) -> Result<Vec<usize>> {
        Ok(self.seen(vec![a[0], a[1] + b[1]]))
    }
    fn dropout(&self, x: &Vec<usize>, _: f32, _: u32) -> Result<Vec<usize>> {
        Ok(x.clone())
    }
    fn constant(&self, shape: &[usize], _: &[f32]) -> Result<Vec<usize>> {
        Ok(self.seen(shape.to_vec()))
    }
    fn softplus(&self, x: &Vec<usize>, _: f32) -> Result<Vec<usize>> {
        Ok(x.clone())
    }
    fn sigmoid(&self, x: &Vec<usize>) -> Result<Vec<usize>> {
        Ok(x.clone())
    }
    fn scale(&self, x: &Vec<usize>, _: f32) -> Result<Vec<usize>> {
        Ok(x.clone())
    }
    fn mul(&self, a: &Vec<usize>, b: &Vec<usize>) -> Result<Vec<usize>> {
        self.add(a, b)
    }
    fn sum_rows(&self, x: &Vec<usize>) -> Result<Vec<usize>> {
        Ok(vec![x[0], 1])
    }
}
