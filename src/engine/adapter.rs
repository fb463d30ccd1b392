//! Adapter discovery and choice: which GPU (or software device) proxdm runs on, and why.

use crate::error::{Error, Result};

/// What the user asked for: a back end and/or a substring of the adapter name.
#[derive(Clone, Debug, Default)]
pub struct AdapterRequest {
    /// `vulkan`, `metal`, `dx12` or `gl`; `None` means any.
    pub backend: Option<String>,
    /// Case-insensitive substring of the adapter name; `None` means any.
    pub name: Option<String>,
}

impl AdapterRequest {
    /// Reads `PROXDM_BACKEND` and `PROXDM_ADAPTER`.
    pub fn from_env() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        AdapterRequest {
            backend: get("PROXDM_BACKEND"),
            name: get("PROXDM_ADAPTER"),
        }
    }

    /// CLI flags override the environment.
    pub fn with_overrides(mut self, backend: Option<String>, name: Option<String>) -> Self {
        if backend.is_some() {
            self.backend = backend;
        }
        if name.is_some() {
            self.name = name;
        }
        self
    }

    /// The wgpu back ends this request allows.
    pub fn backends(&self) -> Result<wgpu::Backends> {
        match self
            .backend
            .as_deref()
            .map(|s| s.trim().to_ascii_lowercase())
        {
            None => Ok(wgpu::Backends::all()),
            Some(b) => match b.as_str() {
                "vulkan" | "vk" => Ok(wgpu::Backends::VULKAN),
                "metal" | "mtl" => Ok(wgpu::Backends::METAL),
                "dx12" | "d3d12" => Ok(wgpu::Backends::DX12),
                "gl" | "gles" | "opengl" => Ok(wgpu::Backends::GL),
                other => Err(Error::NoAdapter {
                    reason: format!("unknown back end '{other}'"),
                    hint: "PROXDM_BACKEND / --backend takes one of: vulkan, metal, dx12, gl".into(),
                }),
            },
        }
    }
}

/// Everything `proxdm info` shows about one adapter.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    pub downlevel: wgpu::DownlevelCapabilities,
    /// `None` when the adapter can run our shaders, else what is missing.
    pub unsupported: Option<String>,
}

/// Limits below which proxdm's kernels cannot run.
pub const MIN_STORAGE_BUFFERS_PER_STAGE: u32 = 6;
pub const MIN_INVOCATIONS_PER_WORKGROUP: u32 = 256;

/// Why an adapter cannot run proxdm, if it cannot.
pub fn check_support(
    limits: &wgpu::Limits,
    downlevel: &wgpu::DownlevelCapabilities,
) -> Option<String> {
    let mut missing = Vec::new();
    if !downlevel
        .flags
        .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
    {
        missing.push("compute shaders".to_string());
    }
    if limits.max_storage_buffers_per_shader_stage < MIN_STORAGE_BUFFERS_PER_STAGE {
        missing.push(format!(
            "{} storage buffers per stage (has {})",
            MIN_STORAGE_BUFFERS_PER_STAGE, limits.max_storage_buffers_per_shader_stage
        ));
    }
    if limits.max_compute_invocations_per_workgroup < MIN_INVOCATIONS_PER_WORKGROUP {
        missing.push(format!(
            "{} invocations per workgroup (has {})",
            MIN_INVOCATIONS_PER_WORKGROUP, limits.max_compute_invocations_per_workgroup
        ));
    }
    if missing.is_empty() {
        None
    } else {
        Some(missing.join(", "))
    }
}

/// Preference order: a real GPU first, then virtual, then CPU (software) devices.
pub fn device_type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 1,
        wgpu::DeviceType::Other => 0,
    }
}

/// Vulkan/Metal/DX12 before GL: GL compute in wgpu is the least capable path.
fn backend_rank(b: wgpu::Backend) -> u32 {
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 1,
        _ => 0,
    }
}

pub(crate) fn new_instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    // Validation layers are for wgpu development, not for our users.
    desc.flags = wgpu::InstanceFlags::empty();
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu finds for the requested back ends, with what we need to know of each.
pub fn enumerate(
    request: &AdapterRequest,
) -> Result<(wgpu::Instance, Vec<(wgpu::Adapter, AdapterReport)>)> {
    let instance = new_instance(request.backends()?);
    let adapters = pollster::block_on(instance.enumerate_adapters(request.backends()?));
    let reports = adapters
        .into_iter()
        .map(|a| {
            let limits = a.limits();
            let downlevel = a.get_downlevel_capabilities();
            let r = AdapterReport {
                info: a.get_info(),
                features: a.features(),
                unsupported: check_support(&limits, &downlevel),
                limits,
                downlevel,
            };
            (a, r)
        })
        .collect();
    Ok((instance, reports))
}

/// Index of the adapter proxdm would use among `reports`, or an error explaining why none fits.
pub fn choose(request: &AdapterRequest, reports: &[AdapterReport]) -> Result<usize> {
    if reports.is_empty() {
        return Err(no_adapter_error(request));
    }
    let want = request.name.as_ref().map(|s| s.to_lowercase());
    let matching: Vec<usize> = (0..reports.len())
        .filter(|&i| {
            want.as_ref()
                .is_none_or(|w| reports[i].info.name.to_lowercase().contains(w))
        })
        .collect();
    if matching.is_empty() {
        let names: Vec<String> = reports
            .iter()
            .map(|r| format!("'{}' ({:?})", r.info.name, r.info.backend))
            .collect();
        return Err(Error::NoAdapter {
            reason: format!(
                "no adapter name contains '{}'",
                request.name.as_deref().unwrap_or("")
            ),
            hint: format!("available: {}; run `proxdm info`", names.join(", ")),
        });
    }
    let usable: Vec<usize> = matching
        .iter()
        .copied()
        .filter(|&i| reports[i].unsupported.is_none())
        .collect();
    if usable.is_empty() {
        let r = &reports[matching[0]];
        return Err(Error::Unsupported {
            adapter: r.info.name.clone(),
            missing: r.unsupported.clone().unwrap_or_default(),
            hint:
                "use a Vulkan, Metal or DX12 adapter (see `proxdm info`); on Linux without a GPU \
                   install Mesa's lavapipe: scripts/setup.sh does it on Debian 12"
                    .into(),
        });
    }
    // Highest (device type, back end, storage binding size) wins; ties keep enumeration order.
    let best = usable
        .iter()
        .copied()
        .max_by_key(|&i| {
            let r = &reports[i];
            (
                device_type_rank(r.info.device_type),
                backend_rank(r.info.backend),
                std::cmp::Reverse(i),
            )
        })
        .expect("usable is not empty");
    Ok(best)
}

fn no_adapter_error(request: &AdapterRequest) -> Error {
    let scope = match &request.backend {
        Some(b) => format!("for back end '{b}'"),
        None => "for any back end (Vulkan, Metal, DX12, GL)".into(),
    };
    let hint = if request.backend.is_some() {
        "that back end has no adapter on this machine: run `proxdm info` without --backend \
         (and without PROXDM_BACKEND) to see the ones that do"
    } else if cfg!(target_os = "linux") {
        "install a Vulkan driver. Without a GPU, Mesa's software driver lavapipe works: \
         `bash scripts/setup.sh` installs it on Debian 12 (mesa-vulkan-drivers from \
         bookworm-backports); elsewhere install mesa-vulkan-drivers (Debian/Ubuntu), \
         mesa-vulkan-drivers + vulkan-loader (Fedora) or vulkan-swrast (Arch)"
    } else if cfg!(target_os = "macos") {
        "Metal should always be present on macOS; check that the machine is not a VM without GPU"
    } else {
        "install or update the GPU driver (DX12 or Vulkan)"
    };
    Error::NoAdapter {
        reason: format!("wgpu found no adapter {scope}"),
        hint: hint.into(),
    }
}

/// The optional features proxdm uses when an adapter has them.
pub fn wanted_features(available: wgpu::Features) -> wgpu::Features {
    let wanted = wgpu::Features::SUBGROUP | wgpu::Features::SHADER_F16;
    available & wanted
}

/// One-line names of the limits `proxdm info` prints, with their values.
pub fn limit_lines(l: &wgpu::Limits) -> Vec<(&'static str, String)> {
    vec![
        (
            "max_storage_buffer_binding_size",
            human_bytes(l.max_storage_buffer_binding_size),
        ),
        ("max_buffer_size", human_bytes(l.max_buffer_size)),
        (
            "max_storage_buffers_per_shader_stage",
            l.max_storage_buffers_per_shader_stage.to_string(),
        ),
        (
            "max_compute_workgroup_size",
            format!(
                "{}x{}x{}",
                l.max_compute_workgroup_size_x,
                l.max_compute_workgroup_size_y,
                l.max_compute_workgroup_size_z
            ),
        ),
        (
            "max_compute_invocations_per_workgroup",
            l.max_compute_invocations_per_workgroup.to_string(),
        ),
        (
            "max_compute_workgroups_per_dimension",
            l.max_compute_workgroups_per_dimension.to_string(),
        ),
        (
            "max_compute_workgroup_storage_size",
            human_bytes(l.max_compute_workgroup_storage_size as u64),
        ),
        (
            "min_uniform_buffer_offset_alignment",
            l.min_uniform_buffer_offset_alignment.to_string(),
        ),
    ]
}

/// `1.5 GiB`-style sizes.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, t: wgpu::DeviceType, backend: wgpu::Backend, ok: bool) -> AdapterReport {
        AdapterReport {
            info: wgpu::AdapterInfo {
                name: name.into(),
                vendor: 0,
                device: 0,
                device_type: t,
                device_pci_bus_id: String::new(),
                driver: String::new(),
                driver_info: String::new(),
                backend,
                subgroup_min_size: 0,
                subgroup_max_size: 0,
                transient_saves_memory: None,
                limit_bucket: None,
            },
            limits: wgpu::Limits::default(),
            features: wgpu::Features::empty(),
            downlevel: wgpu::DownlevelCapabilities::default(),
            unsupported: if ok {
                None
            } else {
                Some("compute shaders".into())
            },
        }
    }

    #[test]
    fn prefers_discrete_gpu_and_honours_name_filter() {
        let rs = vec![
            report(
                "llvmpipe (LLVM 19)",
                wgpu::DeviceType::Cpu,
                wgpu::Backend::Vulkan,
                true,
            ),
            report(
                "NVIDIA RTX",
                wgpu::DeviceType::DiscreteGpu,
                wgpu::Backend::Vulkan,
                true,
            ),
            report(
                "Intel UHD",
                wgpu::DeviceType::IntegratedGpu,
                wgpu::Backend::Vulkan,
                true,
            ),
        ];
        assert_eq!(choose(&AdapterRequest::default(), &rs).unwrap(), 1);
        let req = AdapterRequest {
            backend: None,
            name: Some("LLVM".into()),
        };
        assert_eq!(choose(&req, &rs).unwrap(), 0);
        let req = AdapterRequest {
            backend: None,
            name: Some("amd".into()),
        };
        let e = choose(&req, &rs).unwrap_err().to_string();
        assert!(e.contains("'amd'") && e.contains("NVIDIA RTX"), "{e}");
    }

    #[test]
    fn unsupported_and_missing_adapters_explain_themselves() {
        let e = choose(&AdapterRequest::default(), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no usable GPU adapter") && e.contains("hint"),
            "{e}"
        );
        let rs = vec![report(
            "old",
            wgpu::DeviceType::IntegratedGpu,
            wgpu::Backend::Gl,
            false,
        )];
        let e = choose(&AdapterRequest::default(), &rs)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot run") && e.contains("compute shaders"),
            "{e}"
        );
        let bad = AdapterRequest {
            backend: Some("cuda".into()),
            name: None,
        };
        assert!(
            bad.backends()
                .unwrap_err()
                .to_string()
                .contains("vulkan, metal, dx12, gl")
        );
    }

    #[test]
    fn support_check_reads_limits() {
        let mut l = wgpu::Limits::default();
        let d = wgpu::DownlevelCapabilities::default();
        assert!(check_support(&l, &d).is_none());
        l.max_storage_buffers_per_shader_stage = 2;
        assert!(check_support(&l, &d).unwrap().contains("storage buffers"));
    }
}
