//! The device layer: adapter choice, buffer pool, pipeline cache and command recording.
//!
//! Work is recorded into one command encoder and submitted when the caller flushes (once per
//! logical step) or reads a tensor back. Kernel parameters go into a uniform ring buffer at
//! dynamic offsets, so recording a dispatch creates no buffers.

pub mod adapter;
pub mod pool;
pub mod shader;
pub mod tune;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub use adapter::{AdapterReport, AdapterRequest};
pub use pool::PoolStats;
pub use shader::{Kernel, Shader, SlotKind};
pub use tune::{TuneMode, Variant};

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use pool::Pool;
use shader::Pipeline;
use tune::Tuner;

/// Bytes of the uniform ring that holds kernel params between two submits.
const UNIFORM_RING_BYTES: u64 = 4 << 20;
/// Largest params struct a kernel may take.
pub const MAX_PARAMS_BYTES: u64 = 256;
/// How long a wait for the GPU may take before it is called hung.
const WAIT_TIMEOUT: Duration = Duration::from_secs(600);
/// A wait polls in slices of this length and adds them up, so that time the process spent
/// stopped (Ctrl-Z, SIGSTOP) is not counted against `WAIT_TIMEOUT`.
const WAIT_SLICE: Duration = Duration::from_secs(5);

/// The time one timed-out slice adds to a wait: what it took, but at most two slices, since
/// a slice that took longer was a process stopped mid-wait (a software driver's threads stop
/// with it), not a GPU at work.
fn slice_charge(took: Duration) -> Duration {
    took.min(2 * WAIT_SLICE)
}

/// A handle on one GPU device. Cheap to clone; all clones share the device.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) report: AdapterReport,
    pub(crate) limits: wgpu::Limits,
    pub(crate) features: wgpu::Features,
    pub(crate) pool: Mutex<Pool>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
    rec: Mutex<Recorder>,
    uniform: wgpu::Buffer,
    uniform_align: u64,
    errors: Arc<Mutex<Vec<String>>>,
    lost: Arc<Mutex<Option<String>>>,
    pub(crate) tuner: Tuner,
    /// Whether pipelines are compiled with naga's runtime checks ([`shader::shader_checks`]).
    shader_checks: bool,
    /// Per-kernel (dispatches, seconds) when profiling (see [`Engine::set_profiling`]).
    profile: Mutex<Option<BTreeMap<String, (u64, f64)>>>,
}

/// (shader name, entry point, specialisation defines).
type PipelineKey = (&'static str, &'static str, String);

struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    uniform_offset: u64,
    /// Dispatches recorded since the engine was made (for tests and benchmarks).
    dispatches: u64,
    submits: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of our locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    /// Opens the adapter chosen by `PROXDM_BACKEND` / `PROXDM_ADAPTER`, else the best one.
    pub fn new() -> Result<Engine> {
        Engine::with_request(&AdapterRequest::from_env())
    }

    /// Opens the adapter chosen by `request`.
    pub fn with_request(request: &AdapterRequest) -> Result<Engine> {
        let (_instance, mut found) = adapter::enumerate(request)?;
        let reports: Vec<AdapterReport> = found.iter().map(|(_, r)| r.clone()).collect();
        let i = adapter::choose(request, &reports)?;
        let (adapter, report) = found.swap_remove(i);
        Engine::open(adapter, report)
    }

    fn open(adapter: wgpu::Adapter, report: AdapterReport) -> Result<Engine> {
        let tune = TuneMode::from_env()?;
        let shader_checks = shader::shader_checks(report.info.backend)?;
        // The adapter's real limits: the 128 MiB default storage binding must not cap us.
        let limits = adapter.limits();
        let features = adapter::wanted_features(adapter.features());
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("proxdm"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|source| Error::RequestDevice {
            adapter: report.info.name.clone(),
            source,
        })?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let lost = Arc::new(Mutex::new(None));
        {
            let errors = errors.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                lock(&errors).push(e.to_string());
            }));
            let lost = lost.clone();
            device.set_device_lost_callback(move |reason, msg| {
                let why = match reason {
                    wgpu::DeviceLostReason::Destroyed => "the device was destroyed".to_string(),
                    _ => format!("{reason:?}"),
                };
                *lock(&lost) = Some(if msg.is_empty() {
                    why
                } else {
                    format!("{why}: {msg}")
                });
            });
        }
        let uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("proxdm params ring"),
            size: UNIFORM_RING_BYTES,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let uniform_align = (limits.min_uniform_buffer_offset_alignment as u64).max(16);
        let report_info = report.info.clone();
        Ok(Engine {
            inner: Arc::new(Inner {
                device,
                queue,
                report,
                limits,
                features,
                pool: Mutex::new(Pool::default()),
                pipelines: Mutex::new(HashMap::new()),
                rec: Mutex::new(Recorder {
                    encoder: None,
                    uniform_offset: 0,
                    dispatches: 0,
                    submits: 0,
                }),
                uniform,
                uniform_align,
                errors,
                lost,
                tuner: Tuner::new(tune, &report_info),
                shader_checks,
                profile: Mutex::new(None),
            }),
        })
    }

    /// One engine per process, opened on first use (tests and the CLI share it).
    pub fn shared() -> Result<Engine> {
        static SHARED: OnceLock<std::result::Result<Engine, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Engine::new().map_err(|e| e.to_string()))
            .clone()
            .map_err(Error::Shared)
    }

    /// The adapter this engine runs on.
    pub fn adapter(&self) -> &AdapterReport {
        &self.inner.report
    }

    /// The limits the device was opened with.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    /// Bytes of the largest tensor this adapter can hold: its largest storage binding (or
    /// buffer, when smaller).
    pub fn max_binding(&self) -> u64 {
        let l = &self.inner.limits;
        l.max_storage_buffer_binding_size.min(l.max_buffer_size)
    }

    /// Optional features enabled on the device (subgroups, shader-f16 when present).
    pub fn features(&self) -> wgpu::Features {
        self.inner.features
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// Buffer pool counters.
    pub fn pool_stats(&self) -> PoolStats {
        lock(&self.inner.pool).stats
    }

    /// Frees the pool's idle buffers.
    pub fn trim_pool(&self) {
        lock(&self.inner.pool).trim();
    }

    /// (dispatches recorded, submits made) since the engine was opened.
    pub fn counters(&self) -> (u64, u64) {
        let r = lock(&self.inner.rec);
        (r.dispatches, r.submits)
    }

    /// Compiles (or fetches from the cache) the pipeline of `kernel` with `defs`.
    pub(crate) fn pipeline(&self, kernel: Kernel, defs: &str) -> Result<Arc<Pipeline>> {
        let key = (kernel.shader.name, kernel.entry, defs.to_string());
        if let Some(p) = lock(&self.inner.pipelines).get(&key) {
            return Ok(p.clone());
        }
        let p = Arc::new(shader::build_pipeline(
            &self.inner.device,
            kernel,
            defs,
            self.inner.shader_checks,
        )?);
        self.check_errors()?;
        lock(&self.inner.pipelines).insert(key, p.clone());
        Ok(p)
    }

    /// Number of pipelines compiled so far.
    pub fn pipeline_count(&self) -> usize {
        lock(&self.inner.pipelines).len()
    }

    /// A buffer of at least `bytes`, from the pool when one is free.
    pub(crate) fn alloc(&self, bytes: u64, for_upload: bool) -> Result<(wgpu::Buffer, u64)> {
        let max = self.max_binding();
        if bytes > max {
            return Err(Error::Gpu(format!(
                "a tensor of {} exceeds this adapter's largest storage binding ({}); use a smaller batch",
                adapter::human_bytes(bytes),
                adapter::human_bytes(max)
            )));
        }
        let class = pool::size_class(bytes).min(max.max(4));
        if let Some(b) = lock(&self.inner.pool).take(class, for_upload) {
            return Ok((b, class));
        }
        let buffer = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: class,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut pool = lock(&self.inner.pool);
        pool.stats.created += 1;
        pool.stats.bytes_created += class;
        Ok((buffer, class))
    }

    pub(crate) fn release(&self, class: u64, buffer: wgpu::Buffer) {
        lock(&self.inner.pool).put(class, buffer);
    }

    /// Records `kernel` over `groups` workgroups with `params` and `tensors` bound in binding
    /// order (the params struct to the `var<uniform>` binding, the tensors to the storage ones).
    pub fn dispatch<P: bytemuck::Pod>(
        &self,
        kernel: Kernel,
        params: &P,
        tensors: &[&Tensor],
        groups: [u32; 3],
    ) -> Result<()> {
        self.dispatch_with(kernel, "", params, tensors, groups)
    }

    /// Starts (or stops and clears) profiling: every dispatch then runs alone, the device
    /// synchronised before and after it, and its time is added to its kernel's total. Slow;
    /// for finding where a step's time goes (`proxdm bench --profile`).
    pub fn set_profiling(&self, on: bool) {
        *lock(&self.inner.profile) = on.then(BTreeMap::new);
    }

    /// Per kernel ("shader::entry"): dispatches and seconds since profiling started, slowest
    /// first.
    pub fn profile(&self) -> Vec<(String, u64, f64)> {
        let mut v: Vec<_> = lock(&self.inner.profile)
            .iter()
            .flatten()
            .map(|(k, &(n, t))| (k.clone(), n, t))
            .collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2));
        v
    }

    /// [`Engine::dispatch`] with specialisation constants prepended to the shader.
    pub fn dispatch_with<P: bytemuck::Pod>(
        &self,
        kernel: Kernel,
        defs: &str,
        params: &P,
        tensors: &[&Tensor],
        groups: [u32; 3],
    ) -> Result<()> {
        if lock(&self.inner.profile).is_none() {
            return self.record_dispatch(kernel, defs, params, tensors, groups);
        }
        self.sync()?;
        let start = std::time::Instant::now();
        self.record_dispatch(kernel, defs, params, tensors, groups)?;
        self.sync()?;
        let secs = start.elapsed().as_secs_f64();
        if let Some(map) = lock(&self.inner.profile).as_mut() {
            let e = map
                .entry(format!("{}::{}", kernel.shader.name, kernel.entry))
                .or_default();
            e.0 += 1;
            e.1 += secs;
        }
        Ok(())
    }

    fn record_dispatch<P: bytemuck::Pod>(
        &self,
        kernel: Kernel,
        defs: &str,
        params: &P,
        tensors: &[&Tensor],
        groups: [u32; 3],
    ) -> Result<()> {
        if groups.contains(&0) {
            return Ok(());
        }
        let max_groups = self.inner.limits.max_compute_workgroups_per_dimension;
        assert!(
            groups.iter().all(|&g| g <= max_groups),
            "{}::{}: {groups:?} workgroups exceed the limit {max_groups}",
            kernel.shader.name,
            kernel.entry
        );
        let pipe = self.pipeline(kernel, defs)?;
        let storage = pipe
            .slots
            .iter()
            .filter(|s| s.1 != SlotKind::Uniform)
            .count();
        assert_eq!(
            storage,
            tensors.len(),
            "{}::{} binds {storage} tensors, {} given",
            kernel.shader.name,
            kernel.entry,
            tensors.len()
        );
        let bytes = bytemuck::bytes_of(params);
        assert!(bytes.len() as u64 <= MAX_PARAMS_BYTES);
        let inner = &*self.inner;
        let mut rec = lock(&inner.rec);
        if rec.uniform_offset + MAX_PARAMS_BYTES > UNIFORM_RING_BYTES {
            self.submit_locked(&mut rec)?;
        }
        let offset = rec.uniform_offset;
        rec.uniform_offset += (bytes.len().max(16) as u64).next_multiple_of(inner.uniform_align);
        if !bytes.is_empty() {
            // Padded to 16 bytes: WGSL uniform structs round up to 16.
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(16), 0);
            inner.queue.write_buffer(&inner.uniform, offset, &padded);
        }
        let mut t = tensors.iter();
        let entries: Vec<wgpu::BindGroupEntry> =
            pipe.slots
                .iter()
                .map(|&(binding, kind)| {
                    let resource = match kind {
                        SlotKind::Uniform => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &inner.uniform,
                            offset: 0,
                            size: wgpu::BufferSize::new(
                                bytes.len().next_multiple_of(16).max(16) as u64
                            ),
                        }),
                        _ => t.next().expect("counted above").binding(),
                    };
                    wgpu::BindGroupEntry { binding, resource }
                })
                .collect();
        let bind = inner.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipe.layout,
            entries: &entries,
        });
        let has_uniform = pipe.slots.iter().any(|s| s.1 == SlotKind::Uniform);
        let encoder = rec.encoder.get_or_insert_with(|| {
            inner
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipe.pipeline);
            let dyn_offsets = [offset as u32];
            pass.set_bind_group(0, &bind, if has_uniform { &dyn_offsets } else { &[] });
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        rec.dispatches += 1;
        Ok(())
    }

    /// Runs `f` on the current command encoder (creating one if needed), in recording order.
    pub(crate) fn record<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        let mut rec = lock(&self.inner.rec);
        let encoder = rec.encoder.get_or_insert_with(|| {
            self.inner
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        });
        f(encoder)
    }

    /// Submits everything recorded so far (one submit). Does not wait.
    pub fn flush(&self) -> Result<()> {
        let mut rec = lock(&self.inner.rec);
        self.submit_locked(&mut rec)?;
        Ok(())
    }

    fn submit_locked(&self, rec: &mut Recorder) -> Result<Option<wgpu::SubmissionIndex>> {
        let Some(encoder) = rec.encoder.take() else {
            rec.uniform_offset = 0;
            return Ok(None);
        };
        let index = self.inner.queue.submit([encoder.finish()]);
        rec.uniform_offset = 0;
        rec.submits += 1;
        lock(&self.inner.pool).settle();
        self.check_errors()?;
        Ok(Some(index))
    }

    /// Submits pending work and blocks until the GPU has finished all of it.
    pub fn sync(&self) -> Result<()> {
        self.flush()?;
        self.wait(None)
    }

    pub(crate) fn wait(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        let mut waited = Duration::ZERO;
        loop {
            let start = Instant::now();
            let r = self.inner.device.poll(wgpu::PollType::Wait {
                submission_index: index.clone(),
                timeout: Some(WAIT_SLICE),
            });
            self.check_errors()?;
            match r {
                Ok(_) => return Ok(()),
                Err(wgpu::PollError::Timeout) => {
                    waited += slice_charge(start.elapsed());
                    if waited >= WAIT_TIMEOUT {
                        return Err(Error::Timeout {
                            seconds: WAIT_TIMEOUT.as_secs(),
                        });
                    }
                }
                Err(e) => return Err(Error::Gpu(e.to_string())),
            }
        }
    }

    /// Reports (and clears) errors wgpu raised asynchronously, and device loss.
    pub(crate) fn check_errors(&self) -> Result<()> {
        if !lock(&self.inner.errors).is_empty() {
            // Errors often follow a device loss whose callback runs on the next poll: run it, so
            // the user is told the cause rather than its symptoms.
            let _ = self.inner.device.poll(wgpu::PollType::Poll);
        }
        if let Some(msg) = lock(&self.inner.lost).clone() {
            return Err(Error::DeviceLost(msg));
        }
        let mut errs = lock(&self.inner.errors);
        if errs.is_empty() {
            Ok(())
        } else {
            let msg = errs.join("\n");
            errs.clear();
            Err(Error::Gpu(msg))
        }
    }

    /// Copies `bytes` bytes of `src` to the host: one submit and one wait.
    pub(crate) fn read_buffer(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let inner = &*self.inner;
        let size = bytes.max(4).next_multiple_of(4);
        let staging = inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("proxdm readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let index = {
            let mut rec = lock(&inner.rec);
            let encoder = rec.encoder.get_or_insert_with(|| {
                inner
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
            });
            encoder.copy_buffer_to_buffer(src, 0, &staging, 0, size);
            self.submit_locked(&mut rec)?
        };
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait(index)?;
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Gpu(format!("reading a tensor back failed: {e}"))),
            Err(_) => {
                self.check_errors()?;
                return Err(Error::Gpu("reading a tensor back did not complete".into()));
            }
        }
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Gpu(format!("mapping a readback buffer failed: {e}")))?;
        let out = view[..bytes as usize].to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// Host-to-device write of `data` into `dst` at `offset` bytes, ordered before the next
    /// submit. Callers must only write buffers no unsubmitted command uses.
    pub(crate) fn write_buffer(&self, dst: &wgpu::Buffer, offset: u64, data: &[u8]) {
        self.inner.queue.write_buffer(dst, offset, data);
    }

    /// Whether commands are recorded but not yet submitted.
    pub(crate) fn has_pending(&self) -> bool {
        lock(&self.inner.rec).encoder.is_some()
    }

    /// Workgroup grid for `n` invocations of `wg` threads: spills into y past the per-dimension
    /// limit. Kernels recover the flat index with `flat_index` from the prelude.
    pub fn grid(&self, n: usize, wg: u32) -> [u32; 3] {
        let groups = (n as u64).div_ceil(wg as u64).max(1);
        let maxd = self.inner.limits.max_compute_workgroups_per_dimension as u64;
        if groups <= maxd {
            [groups as u32, 1, 1]
        } else {
            let y = groups.div_ceil(maxd);
            let x = groups.div_ceil(y);
            [x as u32, y as u32, 1]
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner.report.info;
        write!(
            f,
            "Engine({} / {:?} / {})",
            i.name, i.backend, i.driver_info
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_stopped_mid_wait_does_not_count_as_gpu_time() {
        // A process stopped for 13 minutes mid-slice is charged two slices, not 13 minutes.
        assert_eq!(slice_charge(Duration::from_secs(780)), 2 * WAIT_SLICE);
        // Slices that time out on time still add up to the timeout.
        let (mut waited, mut slices) = (Duration::ZERO, 0);
        while waited < WAIT_TIMEOUT {
            waited += slice_charge(WAIT_SLICE + Duration::from_millis(1));
            slices += 1;
        }
        assert_eq!(slices, 120);
    }
}
