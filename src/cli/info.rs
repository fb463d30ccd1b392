//! `proxdm info`: every adapter wgpu finds, what it offers, and which one proxdm would use.

use std::fmt::Write;

use crate::engine::adapter::{self, AdapterRequest};
use crate::error::Result;

/// The report `proxdm info` prints.
pub fn report(request: &AdapterRequest) -> Result<String> {
    let (_instance, found) = adapter::enumerate(request)?;
    let reports: Vec<_> = found.into_iter().map(|(_, r)| r).collect();
    let chosen = adapter::choose(request, &reports);
    let mut s = String::new();
    let filter = match (&request.backend, &request.name) {
        (None, None) => String::new(),
        (b, n) => format!(
            " (filter: backend={}, name contains={})",
            b.as_deref().unwrap_or("any"),
            n.as_deref().unwrap_or("any")
        ),
    };
    let _ = writeln!(
        s,
        "proxdm {} — {} adapter(s){filter}",
        env!("CARGO_PKG_VERSION"),
        reports.len()
    );
    for (i, r) in reports.iter().enumerate() {
        let mark = if chosen.as_ref().ok() == Some(&i) {
            "*"
        } else {
            " "
        };
        let inf = &r.info;
        let _ = writeln!(s, "\n{mark} [{i}] {}", inf.name);
        let _ = writeln!(s, "      backend      {:?}", inf.backend);
        let _ = writeln!(s, "      device type  {:?}", inf.device_type);
        let _ = writeln!(s, "      driver       {} {}", inf.driver, inf.driver_info);
        let _ = writeln!(
            s,
            "      vendor/dev   {:#06x}/{:#06x}",
            inf.vendor, inf.device
        );
        for (k, v) in adapter::limit_lines(&r.limits) {
            let _ = writeln!(s, "      {k:<40} {v}");
        }
        let feats: Vec<&str> = [
            (wgpu::Features::SUBGROUP, "subgroups"),
            (wgpu::Features::SHADER_F16, "shader-f16"),
            (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
        ]
        .iter()
        .filter(|(f, _)| r.features.contains(*f))
        .map(|(_, n)| *n)
        .collect();
        let used: Vec<&str> = [
            (wgpu::Features::SUBGROUP, "subgroups"),
            (wgpu::Features::SHADER_F16, "shader-f16"),
        ]
        .iter()
        .filter(|(f, _)| adapter::wanted_features(r.features).contains(*f))
        .map(|(_, n)| *n)
        .collect();
        let _ = writeln!(
            s,
            "      optional features: {} (proxdm enables: {})",
            if feats.is_empty() {
                "none".into()
            } else {
                feats.join(", ")
            },
            if used.is_empty() {
                "none".into()
            } else {
                used.join(", ")
            }
        );
        if r.info.subgroup_max_size > 0 {
            let _ = writeln!(
                s,
                "      subgroup size  {}..{}",
                r.info.subgroup_min_size, r.info.subgroup_max_size
            );
        }
        match &r.unsupported {
            None => {
                // Mirrors Engine::has_sg8 (the device enables subgroups when the adapter has them).
                let sg8 = r.features.contains(wgpu::Features::SUBGROUP)
                    && r.info.subgroup_min_size == 8
                    && r.info.subgroup_max_size == 8;
                let _ = writeln!(
                    s,
                    "      runs proxdm  yes; kernel variants: portable{}",
                    if sg8 {
                        ", sg8 (tuned per shape, PROXDM_TUNE)"
                    } else {
                        ""
                    }
                );
            }
            Some(m) => {
                let _ = writeln!(s, "      runs proxdm  no: lacks {m}");
            }
        }
    }
    match chosen {
        Ok(i) => {
            let _ = writeln!(
                s,
                "\n* = chosen: [{i}] {} ({:?})",
                reports[i].info.name, reports[i].info.backend
            );
            let _ = writeln!(
                s,
                "  choose another with --backend/--adapter or PROXDM_BACKEND/PROXDM_ADAPTER"
            );
            Ok(s)
        }
        Err(e) => {
            // Print what was found, then fail with the reason and the fix.
            print!("{s}");
            Err(e)
        }
    }
}
