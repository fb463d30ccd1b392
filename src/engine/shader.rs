//! WGSL sources, their naga reflection, and compiled pipelines keyed by shader + entry + defs.

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Helpers every kernel may use (flat invocation index over a 2D grid of workgroups).
pub const PRELUDE: &str = include_str!("../../shaders/common.wgsl");

/// One WGSL file of `shaders/`, prefixed by the shared prelude when compiled.
pub struct Shader {
    pub name: &'static str,
    body: &'static str,
    /// Specialisation constants used when a dispatch gives none (and by the portability test).
    defaults: &'static str,
    full: OnceLock<String>,
}

impl Shader {
    pub const fn new(name: &'static str, body: &'static str) -> Self {
        Shader::with_defaults(name, body, "")
    }

    /// A shader that needs specialisation constants (`const NAME: TYPE = VALUE;` lines), with
    /// the values to use when a dispatch gives none.
    pub const fn with_defaults(
        name: &'static str,
        body: &'static str,
        defaults: &'static str,
    ) -> Self {
        Shader {
            name,
            body,
            defaults,
            full: OnceLock::new(),
        }
    }

    /// The source as compiled without specialisation: default constants, prelude, the file.
    pub fn source(&self) -> &str {
        self.full
            .get_or_init(|| format!("{}\n{PRELUDE}\n{}", self.defaults, self.body))
    }

    /// Source with specialisation constants (`const NAME: TYPE = VALUE;` lines) prepended in
    /// place of the defaults.
    pub fn specialised(&self, defs: &str) -> String {
        if defs.is_empty() {
            self.source().to_string()
        } else {
            format!("{defs}\n{PRELUDE}\n{}", self.body)
        }
    }

    /// Whether the shader uses subgroup operations (runs only where the adapter has them).
    pub fn uses_subgroups(&self) -> bool {
        self.body.contains("subgroup")
    }
}

/// A kernel: an entry point of a shader, plus specialisation constants (may be empty).
#[derive(Clone, Copy)]
pub struct Kernel {
    pub shader: &'static Shader,
    pub entry: &'static str,
}

impl Kernel {
    pub const fn new(shader: &'static Shader, entry: &'static str) -> Self {
        Kernel { shader, entry }
    }
}

/// What a binding of group 0 is, as declared in WGSL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    /// `var<uniform>`: the op's params struct, bound at a dynamic offset of the uniform ring.
    Uniform,
    /// `var<storage, read>`.
    StorageRead,
    /// `var<storage, read_write>`.
    StorageReadWrite,
}

/// Parses and validates WGSL with naga; the error names the shader and carries naga's report.
pub fn parse_and_validate(
    name: &str,
    source: &str,
) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| Error::Shader {
        shader: name.to_string(),
        message: e.emit_to_string(source),
    })?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .map_err(|e| Error::Shader {
        shader: name.to_string(),
        message: e.emit_to_string(source),
    })?;
    Ok((module, info))
}

/// The group-0 bindings an entry point actually uses, in binding order.
pub fn reflect_slots(
    shader: &str,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    entry: &str,
) -> Result<Vec<(u32, SlotKind)>> {
    let idx = module
        .entry_points
        .iter()
        .position(|e| e.name == entry)
        .ok_or_else(|| Error::Shader {
            shader: shader.to_string(),
            message: format!("no entry point named '{entry}'"),
        })?;
    let fi = info.get_entry_point(idx);
    let mut slots = Vec::new();
    for (handle, var) in module.global_variables.iter() {
        let Some(binding) = &var.binding else {
            continue;
        };
        if fi[handle].is_empty() {
            continue;
        }
        if binding.group != 0 {
            return Err(Error::Shader {
                shader: shader.to_string(),
                message: format!(
                    "binding group {} used; proxdm kernels use group 0 only",
                    binding.group
                ),
            });
        }
        let kind = match var.space {
            naga::AddressSpace::Uniform => SlotKind::Uniform,
            naga::AddressSpace::Storage { access } => {
                if access.contains(naga::StorageAccess::STORE) {
                    SlotKind::StorageReadWrite
                } else {
                    SlotKind::StorageRead
                }
            }
            other => {
                return Err(Error::Shader {
                    shader: shader.to_string(),
                    message: format!("unsupported binding address space {other:?}"),
                });
            }
        };
        slots.push((binding.binding, kind));
    }
    slots.sort_by_key(|s| s.0);
    Ok(slots)
}

/// A compiled compute pipeline with the layout of its bindings.
pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub slots: Vec<(u32, SlotKind)>,
}

/// Compiles `kernel` (with `defs`) for `device`, with naga's runtime checks if `checks`
/// ([`shader_checks`]).
pub fn build_pipeline(
    device: &wgpu::Device,
    kernel: Kernel,
    defs: &str,
    checks: bool,
) -> Result<Pipeline> {
    let source = kernel.shader.specialised(defs);
    let name = kernel.shader.name;
    let (module, info) = parse_and_validate(name, &source)?;
    let slots = reflect_slots(name, &module, &info, kernel.entry)?;
    let entries: Vec<wgpu::BindGroupLayoutEntry> = slots
        .iter()
        .map(|&(binding, kind)| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match kind {
                    SlotKind::Uniform => wgpu::BufferBindingType::Uniform,
                    SlotKind::StorageRead => wgpu::BufferBindingType::Storage { read_only: true },
                    SlotKind::StorageReadWrite => {
                        wgpu::BufferBindingType::Storage { read_only: false }
                    }
                },
                has_dynamic_offset: kind == SlotKind::Uniform,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    let label = format!("{name}::{}", kernel.entry);
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(&label),
        entries: &entries,
    });
    let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&label),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some(name),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    };
    let sm = if checks {
        device.create_shader_module(desc)
    } else {
        // SAFETY: every access of our kernels is guarded and every loop bounded by the kernel
        // itself (see `shader_checks`); each kernel is tested against its CPU reference.
        unsafe { device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
    };
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&label),
        layout: Some(&pl),
        module: &sm,
        entry_point: Some(kernel.entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &[],
            // Our kernels initialise their workgroup memory themselves.
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    Ok(Pipeline {
        pipeline,
        layout,
        slots,
    })
}

/// Whether naga adds its own runtime checks to our kernels (`PROXDM_SHADER_CHECKS`).
///
/// The checks are index clamps on fixed-size arrays, buffer bounds checks where the driver has
/// no robust buffer access, and a counter on every loop against infinite ones. Our kernels
/// guard every access themselves and every loop is bounded (each is tested against its CPU
/// reference), so the checks only cost time: 6-7% of a training step on lavapipe
/// (docs/PERFORMANCE.md). By default they are off on Vulkan, whose drivers keep buffer access
/// in bounds themselves (wgpu enables robust buffer access), and on for the other back ends.
/// `PROXDM_SHADER_CHECKS=on` forces them on (e.g. to debug a kernel), `off` forces them off.
pub fn shader_checks(backend: wgpu::Backend) -> Result<bool> {
    match std::env::var("PROXDM_SHADER_CHECKS").as_deref() {
        Err(_) | Ok("") => Ok(backend != wgpu::Backend::Vulkan),
        Ok("on") => Ok(true),
        Ok("off") => Ok(false),
        Ok(other) => Err(Error::Config(format!(
            "PROXDM_SHADER_CHECKS={other:?}: expected on or off"
        ))),
    }
}
