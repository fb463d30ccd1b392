//! GPU tensors: a shape and a pooled f32 storage buffer (contiguous, row-major; NCHW images).

use std::sync::Arc;

use crate::engine::Engine;
use crate::error::{Error, Result};

/// The pooled buffer behind one or more tensors; returned to the pool when the last user drops.
pub(crate) struct Storage {
    engine: Engine,
    buffer: Option<wgpu::Buffer>,
    class: u64,
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            self.engine.release(self.class, b);
        }
    }
}

/// An f32 tensor on the GPU. Cloning shares the buffer; reshaping is free.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Arc<Storage>,
}

/// Number of elements of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    fn alloc(engine: &Engine, shape: &[usize], for_upload: bool) -> Result<Tensor> {
        let bytes = (numel(shape).max(1) * 4) as u64;
        let (buffer, class) = engine.alloc(bytes, for_upload)?;
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Arc::new(Storage {
                engine: engine.clone(),
                buffer: Some(buffer),
                class,
            }),
        })
    }

    /// A tensor whose content is undefined until a kernel writes it.
    pub fn uninit(engine: &Engine, shape: &[usize]) -> Result<Tensor> {
        Tensor::alloc(engine, shape, false)
    }

    /// A tensor of zeros (cleared on the GPU, in recording order).
    pub fn zeros(engine: &Engine, shape: &[usize]) -> Result<Tensor> {
        let t = Tensor::alloc(engine, shape, false)?;
        let size = (t.numel().max(1) * 4) as u64;
        engine.record(|enc| enc.clear_buffer(t.buffer(), 0, Some(size)));
        Ok(t)
    }

    /// Uploads `data` (length must equal the shape's element count).
    pub fn from_slice(engine: &Engine, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        if data.len() != numel(shape) {
            return Err(Error::shape(
                "upload",
                format!(
                    "shape {shape:?} holds {} values, {} given",
                    numel(shape),
                    data.len()
                ),
            ));
        }
        let t = Tensor::alloc(engine, shape, true)?;
        if !data.is_empty() {
            engine.write_buffer(t.buffer(), 0, bytemuck::cast_slice(data));
        }
        Ok(t)
    }

    /// A tensor filled with `value`.
    pub fn full(engine: &Engine, shape: &[usize], value: f32) -> Result<Tensor> {
        Tensor::from_slice(engine, shape, &vec![value; numel(shape)])
    }

    /// Overwrites this tensor's content from the host. Submits pending work first, because a
    /// host write lands before the next submit's commands.
    pub fn write(&self, data: &[f32]) -> Result<()> {
        if data.len() != self.numel() {
            return Err(Error::shape(
                "write",
                format!(
                    "tensor {:?} holds {} values, {} given",
                    self.shape,
                    self.numel(),
                    data.len()
                ),
            ));
        }
        let e = self.engine();
        if e.has_pending() {
            e.flush()?;
        }
        e.write_buffer(self.buffer(), 0, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Copies the tensor to the host (submits pending work and waits for it).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        if self.numel() == 0 {
            return Ok(Vec::new());
        }
        let bytes = self
            .engine()
            .read_buffer(self.buffer(), (self.numel() * 4) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!("tensor {:?} is not a scalar", self.shape),
            ));
        }
        Ok(self.to_vec()?[0])
    }

    /// Same buffer, new shape with the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "{:?} ({} values) cannot become {:?}",
                    self.shape,
                    self.numel(),
                    shape
                ),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: self.storage.clone(),
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    pub fn engine(&self) -> &Engine {
        &self.storage.engine
    }

    /// Whether two tensors share one buffer.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.storage
            .buffer
            .as_ref()
            .expect("live tensor has a buffer")
    }

    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buffer(),
            offset: 0,
            size: wgpu::BufferSize::new((self.numel().max(1) * 4) as u64),
        })
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?}", self.shape)
    }
}
