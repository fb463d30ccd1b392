//! Model weights as safetensors: tensor names, shapes and layouts are the reference PyTorch
//! `state_dict`'s (a `model.` prefix, as the reference's wrapper writes, is accepted); the
//! model config is JSON in the metadata under `proxdm.config`, so a file is self-contained.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::graph::ParamStore;
use crate::models::lpn::{Lpn, LpnConfig};
use crate::models::{Model, ModelConfig};
use crate::tensor::Tensor;

/// Metadata key holding the model config as JSON.
pub const CONFIG_KEY: &str = "proxdm.config";
/// Metadata key holding an LPN's config as JSON (instead of `proxdm.config`).
pub const LPN_KEY: &str = "proxdm.lpn";
/// Metadata key: what an LPN was trained for ("denoise σ=…" or "prox").
pub const TRAINED_KEY: &str = "proxdm.trained";

/// What a weight file holds, from its metadata.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// A score or prox UNet (or a file without proxdm metadata).
    Unet,
    /// A learned proximal network, and what it was trained for.
    Lpn(LpnConfig, Option<String>),
}

/// Reads only the metadata of a weight file to tell a UNet from an LPN.
pub fn kind(path: &Path) -> Result<Kind> {
    let bytes = super::read(path)?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| {
        bad(
            path,
            format!("not a valid safetensors file (or truncated): {e}"),
        )
    })?;
    let meta = meta.metadata().clone().unwrap_or_default();
    match meta.get(LPN_KEY) {
        Some(json) => Ok(Kind::Lpn(
            serde_json::from_str(json)
                .map_err(|e| bad(path, format!("unknown LPN config in metadata: {e}")))?,
            meta.get(TRAINED_KEY).cloned(),
        )),
        None => Ok(Kind::Unet),
    }
}

/// Writes an LPN's weights atomically, its config (and what it was trained for) in the metadata.
pub fn save_lpn(path: &Path, config: &LpnConfig, trained: &str, store: &ParamStore) -> Result<()> {
    let meta = HashMap::from([
        (
            LPN_KEY.to_string(),
            serde_json::to_string(config).expect("config serialises"),
        ),
        (TRAINED_KEY.to_string(), trained.to_string()),
    ]);
    super::write_atomic(path, &params_to_bytes(meta, store)?)
}

/// Loads an LPN: config from the metadata, every tensor checked, and its constrained weights
/// checked non-negative (a file that breaks convexity is refused).
pub fn load_lpn(path: &Path, engine: &Engine) -> Result<(Lpn, ParamStore)> {
    let bytes = super::read(path)?;
    let Kind::Lpn(config, _) = kind(path)? else {
        return Err(bad(
            path,
            format!("not an LPN (no '{LPN_KEY}' in the metadata): a UNet's weights"),
        ));
    };
    config.validate().map_err(|e| bad(path, e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        bad(
            path,
            format!("not a valid safetensors file (or truncated): {e}"),
        )
    })?;
    let (lpn, pb) = Lpn::build(&config, 0)?;
    let expected: Vec<(String, Vec<usize>)> = pb
        .into_params()
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect();
    let store = checked_tensors(path, &st, &expected, engine)?;
    let host: Vec<Vec<f32>> = store
        .tensors()
        .iter()
        .map(|t| t.to_vec())
        .collect::<Result<_>>()?;
    if let Some((name, i, v)) = lpn.check_nonneg(&host) {
        return Err(bad(
            path,
            format!(
                "{name}[{i}] = {v}: an LPN's weights on z must be ≥ 0 (ψ would not be convex, \
                 so f would not be a proximal operator)"
            ),
        ));
    }
    Ok((lpn, store))
}

fn bad(path: &Path, detail: impl Into<String>) -> Error {
    Error::Format {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

/// Serialises `store` (host copies of its tensors) with `config` in the metadata.
pub fn to_bytes(config: &ModelConfig, store: &ParamStore) -> Result<Vec<u8>> {
    let meta = HashMap::from([(
        CONFIG_KEY.to_string(),
        serde_json::to_string(config).expect("config serialises"),
    )]);
    params_to_bytes(meta, store)
}

/// Serialises `store` with `meta` (and `format: pt`) in the metadata.
pub fn params_to_bytes(meta: HashMap<String, String>, store: &ParamStore) -> Result<Vec<u8>> {
    let host: Vec<(String, Vec<usize>, Vec<u8>)> = store
        .names()
        .iter()
        .zip(store.tensors())
        .map(|(n, t)| {
            Ok((
                n.clone(),
                t.shape().to_vec(),
                bytemuck::cast_slice(&t.to_vec()?).to_vec(),
            ))
        })
        .collect::<Result<_>>()?;
    serialize_f32(&host, meta)
}

/// Serialises host tensors (name, shape, little-endian F32 bytes) with `meta` and `format: pt`.
fn serialize_f32(
    host: &[(String, Vec<usize>, Vec<u8>)],
    mut meta: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView<'_>)> = host
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).expect("shape matches data"),
            )
        })
        .collect();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::Gpu(format!("serialising weights: {e}")))
}

/// Writes the weights atomically (temporary file, then rename).
pub fn save(path: &Path, config: &ModelConfig, store: &ParamStore) -> Result<()> {
    super::write_atomic(path, &to_bytes(config, store)?)
}

/// Loads a model and its parameters. `config` is used when the file carries none (e.g. a
/// checkpoint converted from the reference); a config in the file wins.
pub fn load(
    path: &Path,
    engine: &Engine,
    config: Option<&ModelConfig>,
) -> Result<(Model, ParamStore)> {
    let bytes = super::read(path)?;
    parse(path, &bytes, engine, config)
}

/// [`load`] from bytes already read (`path` names the file in errors).
pub fn parse(
    path: &Path,
    bytes: &[u8],
    engine: &Engine,
    config: Option<&ModelConfig>,
) -> Result<(Model, ParamStore)> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| {
        bad(
            path,
            format!("not a valid safetensors file (or truncated): {e}"),
        )
    })?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        bad(
            path,
            format!("not a valid safetensors file (or truncated): {e}"),
        )
    })?;
    if meta
        .metadata()
        .as_ref()
        .is_some_and(|m| m.contains_key(LPN_KEY))
    {
        return Err(bad(
            path,
            "a learned proximal network (LPN), not a UNet: use it with `proxdm prox`, \
             `denoise`, `prior` or `toy --prox lpn`",
        ));
    }
    let config = match meta.metadata().as_ref().and_then(|m| m.get(CONFIG_KEY)) {
        Some(json) => serde_json::from_str::<ModelConfig>(json)
            .map_err(|e| bad(path, format!("unknown model config in metadata: {e}")))?,
        None => config.cloned().ok_or_else(|| {
            bad(
                path,
                format!("no model config in the metadata ('{CONFIG_KEY}'); pass one with --config"),
            )
        })?,
    };
    config.validate().map_err(|e| bad(path, e.to_string()))?;
    let (model, pb) = Model::build(&config, 0)?;
    let expected: Vec<(String, Vec<usize>)> = pb
        .into_params()
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect();
    let store = checked_tensors(path, &st, &expected, engine)?;
    Ok((model, store))
}

/// The tensors `expected` (name, shape) from a parsed file, in that order, refusing
/// unexpected, missing, non-F32, misshapen or non-finite ones (a `model.` prefix is accepted).
pub fn checked_tensors(
    path: &Path,
    st: &SafeTensors<'_>,
    expected: &[(String, Vec<usize>)],
    engine: &Engine,
) -> Result<ParamStore> {
    let shapes: HashMap<&str, &Vec<usize>> =
        expected.iter().map(|(n, s)| (n.as_str(), s)).collect();
    let mut found: HashMap<String, TensorView<'_>> = HashMap::new();
    let mut unexpected = Vec::new();
    for (name, view) in st.tensors() {
        let key = name.strip_prefix("model.").unwrap_or(&name).to_string();
        if shapes.contains_key(key.as_str()) {
            found.insert(key, view);
        } else {
            unexpected.push(name);
        }
    }
    if !unexpected.is_empty() {
        unexpected.sort();
        return Err(bad(
            path,
            format!(
                "{} unexpected tensor(s) for this config: {}",
                unexpected.len(),
                preview(&unexpected)
            ),
        ));
    }
    let mut missing: Vec<String> = expected
        .iter()
        .map(|(n, _)| n)
        .filter(|n| !found.contains_key(*n))
        .cloned()
        .collect();
    if !missing.is_empty() {
        missing.sort();
        return Err(bad(
            path,
            format!("{} missing tensor(s): {}", missing.len(), preview(&missing)),
        ));
    }
    let mut store = ParamStore::new();
    for (name, shape) in expected {
        let view = &found[name];
        if view.dtype() == Dtype::F32 && view.shape() != shape.as_slice() {
            return Err(bad(
                path,
                format!("{name}: shape {:?}, expected {shape:?}", view.shape()),
            ));
        }
        let data = finite_f32(path, name, view)?;
        store.insert(
            name.clone(),
            Tensor::from_slice(engine, view.shape(), &data)?,
        );
    }
    Ok(store)
}

fn preview(names: &[String]) -> String {
    let mut s = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        s.push_str(&format!(", … ({} more)", names.len() - 5));
    }
    s
}

/// Metadata key: the files a weight file is the mean of (written by [`average`]).
pub const AVERAGED_KEY: &str = "proxdm.averaged";

/// The element-wise mean of the tensors of several weight files of one model (a "model soup"
/// of runs from one starting point), as safetensors bytes with the first file's metadata and
/// the inputs listed under [`AVERAGED_KEY`]. Every file must carry the same model (metadata
/// other than `format` and [`AVERAGED_KEY`]), tensor names and shapes, all F32 and finite; the
/// sums are taken in f64. A file listed twice counts twice. Needs no GPU.
pub fn average(paths: &[&Path]) -> Result<Vec<u8>> {
    if paths.len() < 2 {
        return Err(Error::Config(format!(
            "averaging takes at least two weight files, got {}",
            paths.len()
        )));
    }
    let model_meta = |meta: &Option<HashMap<String, String>>| {
        let mut m = meta.clone().unwrap_or_default();
        m.remove("format");
        m.remove(AVERAGED_KEY);
        let mut v: Vec<(String, String)> = m.into_iter().collect();
        v.sort();
        v
    };
    let mut first_meta = None;
    let mut sums: Vec<(String, Vec<usize>, Vec<f64>)> = Vec::new();
    for &path in paths {
        let bytes = super::read(path)?;
        let (meta, st) = open(path, &bytes)?;
        let this = model_meta(&meta);
        let mut tensors: Vec<(String, TensorView<'_>)> = st.tensors();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let Some((first, first_model)) = &first_meta else {
            first_meta = Some((path, this));
            for (name, view) in &tensors {
                let data = finite_f32(path, name, view)?;
                let sum = data.iter().map(|&v| v as f64).collect();
                sums.push((name.clone(), view.shape().to_vec(), sum));
            }
            continue;
        };
        let first = first.display();
        if &this != first_model {
            return Err(bad(
                path,
                format!(
                    "its model config (metadata) differs from {first}'s: only weights of one \
                     model can be averaged"
                ),
            ));
        }
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        let expected: Vec<&str> = sums.iter().map(|(n, _, _)| n.as_str()).collect();
        if names != expected {
            let extra: Vec<String> = names
                .iter()
                .filter(|n| !expected.contains(n))
                .map(|n| n.to_string())
                .collect();
            let missing: Vec<String> = expected
                .iter()
                .filter(|n| !names.contains(n))
                .map(|n| n.to_string())
                .collect();
            return Err(bad(
                path,
                format!(
                    "its tensors differ from {first}'s: {} more ({}), {} fewer ({})",
                    extra.len(),
                    preview(&extra),
                    missing.len(),
                    preview(&missing)
                ),
            ));
        }
        for ((name, view), (_, shape, sum)) in tensors.iter().zip(&mut sums) {
            if view.shape() != shape.as_slice() {
                return Err(bad(
                    path,
                    format!("{name}: shape {:?}, but {shape:?} in {first}", view.shape()),
                ));
            }
            let data = finite_f32(path, name, view)?;
            for (s, v) in sum.iter_mut().zip(data) {
                *s += v as f64;
            }
        }
    }
    let n = paths.len() as f64;
    let host: Vec<(String, Vec<usize>, Vec<u8>)> = sums
        .into_iter()
        .map(|(name, shape, sum)| {
            let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
            (name, shape, bytemuck::cast_slice(&mean).to_vec())
        })
        .collect();
    let (_, model) = first_meta.expect("at least two files");
    let mut meta: HashMap<String, String> = model.into_iter().collect();
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    meta.insert(
        AVERAGED_KEY.to_string(),
        format!("mean of {}: {}", paths.len(), names.join(", ")),
    );
    serialize_f32(&host, meta)
}

/// Metadata key: the file a deepened weight file was grown from (written by [`deepen`]).
pub const DEEPENED_KEY: &str = "proxdm.deepened";

/// A UNet weight file deepened to `blocks` ResBlocks per level, new blocks starting as the
/// identity (see [`crate::models::deepen`]), as safetensors bytes: the same function, a larger
/// network to train on with `train --init`. The file must carry its config (metadata); other
/// metadata (e.g. [`AVERAGED_KEY`]) is kept and the source recorded under [`DEEPENED_KEY`].
/// Needs no GPU.
pub fn deepen(path: &Path, blocks: usize, seed: u64) -> Result<Vec<u8>> {
    let bytes = super::read(path)?;
    let (meta, st) = open(path, &bytes)?;
    let mut meta = meta.unwrap_or_default();
    if meta.contains_key(LPN_KEY) {
        return Err(bad(
            path,
            "a learned proximal network (LPN): only UNets deepen",
        ));
    }
    let config: ModelConfig = match meta.get(CONFIG_KEY) {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| bad(path, format!("unknown model config in metadata: {e}")))?,
        None => {
            return Err(bad(
                path,
                format!("no model config in the metadata ('{CONFIG_KEY}')"),
            ));
        }
    };
    let old: Vec<crate::models::deepen::HostParam> = st
        .tensors()
        .iter()
        .map(|(name, view)| {
            let key = name.strip_prefix("model.").unwrap_or(name).to_string();
            Ok((key, view.shape().to_vec(), finite_f32(path, name, view)?))
        })
        .collect::<Result<_>>()?;
    let (new_config, params) = crate::models::deepen::deepen(&config, &old, blocks, seed)
        .map_err(|e| bad(path, e.to_string()))?;
    meta.remove("format");
    meta.insert(
        CONFIG_KEY.to_string(),
        serde_json::to_string(&new_config).expect("config serialises"),
    );
    meta.insert(
        DEEPENED_KEY.to_string(),
        format!(
            "{} with {} ResBlock(s) per level, deepened to {blocks} (new blocks start as the \
             identity, seed {seed})",
            path.display(),
            config.unet.num_res_blocks
        ),
    );
    let host: Vec<(String, Vec<usize>, Vec<u8>)> = params
        .into_iter()
        .map(|(n, s, v)| (n, s, bytemuck::cast_slice(&v).to_vec()))
        .collect();
    serialize_f32(&host, meta)
}

/// A safetensors file's metadata and tensors, refusing bytes that are not one.
fn open<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> Result<(Option<HashMap<String, String>>, SafeTensors<'a>)> {
    let invalid = |e: safetensors::SafeTensorError| {
        bad(
            path,
            format!("not a valid safetensors file (or truncated): {e}"),
        )
    };
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(invalid)?;
    let st = SafeTensors::deserialize(bytes).map_err(invalid)?;
    Ok((meta.metadata().clone(), st))
}

/// A tensor's data as f32, refusing another dtype or a value that is not finite.
fn finite_f32(path: &Path, name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    if view.dtype() != Dtype::F32 {
        return Err(bad(
            path,
            format!("{name}: dtype {:?}, expected F32", view.dtype()),
        ));
    }
    let data: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(bad(
            path,
            format!("{name}: element {i} is {} (not finite)", data[i]),
        ));
    }
    Ok(data)
}
