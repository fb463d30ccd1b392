//! Kernel variants and the choice between them on the adapter in use.
//!
//! An op with several implementations (say the portable register-blocked matmul and the one for
//! 8-lane subgroups) asks [`Engine::pick`] which to run. The first time an (op, shape) is
//! seen on an adapter, every variant the adapter can run is timed on the op's real inputs and the
//! fastest is kept, in memory and in a small JSON file keyed by adapter, driver and backend, so
//! later processes skip the measurement. `PROXDM_TUNE` controls this:
//!
//! - `off`: no measuring and no file; the static rule ([`Engine::default_variant`]) decides.
//! - `on` (default): use the file's choice when present, measure and record it when not.
//! - `force`: measure again and overwrite the file's entries.
//!
//! The file is `$PROXDM_CACHE_DIR/tune.json`, else `$XDG_CACHE_HOME/proxdm/tune.json`, else
//! `~/.cache/proxdm/tune.json`. A file that cannot be read or parsed is ignored (and rewritten).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use super::Engine;
use crate::error::{Error, Result};

/// One implementation of an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Runs everywhere: one invocation per output block, no subgroup operations.
    Portable,
    /// Needs subgroups of exactly 8 lanes: operands shared by `subgroupBroadcast`.
    Sg8,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::Portable, Variant::Sg8];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Portable => "portable",
            Variant::Sg8 => "sg8",
        }
    }

    fn from_name(s: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == s)
    }
}

/// How variants are chosen (`PROXDM_TUNE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TuneMode {
    Off,
    On,
    Force,
}

impl TuneMode {
    /// Reads `PROXDM_TUNE`; an unknown value is an error naming the accepted ones.
    pub fn from_env() -> Result<TuneMode> {
        match std::env::var("PROXDM_TUNE").as_deref() {
            Err(_) | Ok("") | Ok("on") => Ok(TuneMode::On),
            Ok("off") => Ok(TuneMode::Off),
            Ok("force") => Ok(TuneMode::Force),
            Ok(other) => Err(Error::Config(format!(
                "PROXDM_TUNE={other:?}: expected off, on or force"
            ))),
        }
    }
}

/// The choices made so far on this adapter, and where they are kept.
pub(crate) struct Tuner {
    mode: TuneMode,
    /// File path and the adapter's key in it; `None` when there is no file (mode off, no home).
    file: Option<(PathBuf, String)>,
    choices: Mutex<BTreeMap<String, Variant>>,
}

type TuneFile = BTreeMap<String, BTreeMap<String, String>>;

fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("PROXDM_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("proxdm"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("proxdm"))
}

fn read_file(path: &PathBuf) -> TuneFile {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

impl Tuner {
    pub(crate) fn new(mode: TuneMode, info: &wgpu::AdapterInfo) -> Tuner {
        let key = format!(
            "{} | {} {} | {:?}",
            info.name, info.driver, info.driver_info, info.backend
        );
        let file = match mode {
            TuneMode::Off => None,
            _ => cache_dir().map(|d| (d.join("tune.json"), key)),
        };
        let mut choices = BTreeMap::new();
        if let (TuneMode::On, Some((path, key))) = (mode, &file)
            && let Some(saved) = read_file(path).remove(key)
        {
            for (k, v) in saved {
                if let Some(v) = Variant::from_name(&v) {
                    choices.insert(k, v);
                }
            }
        }
        Tuner {
            mode,
            file,
            choices: Mutex::new(choices),
        }
    }

    pub(crate) fn mode(&self) -> TuneMode {
        self.mode
    }

    /// Records a measured choice and rewrites the file (best effort: a read-only home only
    /// means the next process measures again).
    fn record(&self, key: &str, v: Variant) {
        super::lock(&self.choices).insert(key.to_string(), v);
        let Some((path, adapter)) = &self.file else {
            return;
        };
        let mut all = read_file(path);
        all.entry(adapter.clone())
            .or_default()
            .insert(key.to_string(), v.name().to_string());
        if let (Some(dir), Ok(text)) = (path.parent(), serde_json::to_string_pretty(&all)) {
            let _ = std::fs::create_dir_all(dir);
            let _ = crate::io::write_atomic(path, text.as_bytes());
        }
    }
}

/// The tuning key of one op at one shape: `op/d0xd1x…`. Choices are per exact shape: a coarse
/// class (log₂ of the work) let the first shape measured decide for very different ones — on
/// lavapipe the portable conv weight gradient won on a small 8×8 layer and then ran every
/// 16×16 and 32×32 layer 2–3× slower than the subgroup kernel. A model has a few dozen shapes,
/// each measured once per adapter.
pub fn shape_key(op: &str, dims: &[usize]) -> String {
    let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("{op}/{}", dims.join("x"))
}

impl Engine {
    /// Whether this adapter runs the [`Variant::Sg8`] kernels: subgroup operations enabled and
    /// subgroups of exactly 8 lanes.
    pub fn has_sg8(&self) -> bool {
        let info = &self.inner.report.info;
        self.inner.features.contains(wgpu::Features::SUBGROUP)
            && info.subgroup_min_size == 8
            && info.subgroup_max_size == 8
    }

    /// The variants this adapter can run.
    pub fn variants(&self) -> Vec<Variant> {
        Variant::ALL
            .into_iter()
            .filter(|&v| v == Variant::Portable || self.has_sg8())
            .collect()
    }

    /// The choice without measuring (`PROXDM_TUNE=off`): the subgroup kernels where they run.
    pub fn default_variant(&self) -> Variant {
        if self.has_sg8() {
            Variant::Sg8
        } else {
            Variant::Portable
        }
    }

    /// The variant to run for `key` (op, entry and shape, see [`shape_key`]). `run` records the op with the
    /// given variant; when a measurement is due each candidate is run once to compile and warm
    /// up, then timed over three runs (median), the device synchronised around each.
    pub fn pick(&self, key: &str, mut run: impl FnMut(Variant) -> Result<()>) -> Result<Variant> {
        let tuner = &self.inner.tuner;
        let candidates = self.variants();
        if candidates.len() == 1 || tuner.mode() == TuneMode::Off {
            return Ok(self.default_variant());
        }
        if let Some(&v) = super::lock(&tuner.choices).get(key) {
            return Ok(v);
        }
        self.sync()?;
        let mut best = (f64::INFINITY, self.default_variant());
        for v in candidates {
            run(v)?;
            self.sync()?;
            let mut t = [0.0f64; 3];
            for ti in &mut t {
                let start = Instant::now();
                run(v)?;
                self.sync()?;
                *ti = start.elapsed().as_secs_f64();
            }
            t.sort_by(f64::total_cmp);
            if t[1] < best.0 {
                best = (t[1], v);
            }
        }
        tuner.record(key, best.1);
        Ok(best.1)
    }

    /// The choices made or loaded so far, as (key, variant name), for `proxdm info`/`bench`.
    pub fn tuned(&self) -> Vec<(String, &'static str)> {
        super::lock(&self.inner.tuner.choices)
            .iter()
            .map(|(k, v)| (k.clone(), v.name()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_keys_tell_shapes_apart() {
        assert_eq!(shape_key("matmul", &[1, 2, 3]), "matmul/1x2x3");
        assert_ne!(shape_key("m", &[12, 3]), shape_key("m", &[1, 23]));
        assert_ne!(shape_key("m", &[2, 3]), shape_key("m", &[3, 2]));
    }

    #[test]
    fn variant_names_round_trip() {
        for v in Variant::ALL {
            assert_eq!(Variant::from_name(v.name()), Some(v));
        }
        assert_eq!(Variant::from_name("fast"), None);
    }
}
