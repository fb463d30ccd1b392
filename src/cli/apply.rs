//! `proxdm init`, `prox`, `score`, `randn` and `average`: write a fresh model, apply a network
//! to a batch from a `.npy` file, make Gaussian inputs, average weight files.

use std::path::Path;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::io::{npy, weights};
use crate::models::{Model, ModelConfig};
use crate::tensor::Tensor;

/// Reads a model config from TOML (or JSON, by extension).
pub fn read_config(path: &Path) -> Result<ModelConfig> {
    let text = String::from_utf8(crate::io::read(path)?).map_err(|_| Error::Format {
        path: path.display().to_string(),
        detail: "not UTF-8 text".into(),
    })?;
    let cfg: ModelConfig = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| Error::Format {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?
    } else {
        toml::from_str(&text).map_err(|e| Error::Format {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?
    };
    cfg.validate().map_err(|e| Error::Format {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    Ok(cfg)
}

/// Writes a freshly initialised model; returns a one-line summary.
pub fn init(engine: &Engine, config: &Path, out: &Path, seed: u64) -> Result<String> {
    let cfg = read_config(config)?;
    let (model, pb) = Model::build(&cfg, seed)?;
    let store = pb.finish(engine)?;
    weights::save(out, &cfg, &store)?;
    Ok(format!(
        "wrote {} ({:?} network, {} tensors, {} parameters, seed {seed})",
        out.display(),
        cfg.kind,
        model.names.len(),
        store.numel()
    ))
}

/// Which network application.
pub enum Apply {
    /// prox_{−λ ln p_t}
    Prox { t: f32, lambda: f32 },
    /// ∇ ln p_t
    Score { t: f32 },
}

/// Applies the network in `weights_path` to every sample of `input`, `batch` at a time.
pub fn apply(
    engine: &Engine,
    weights_path: &Path,
    config: Option<&Path>,
    input: &Path,
    out: &Path,
    what: Apply,
    batch: usize,
) -> Result<String> {
    let cfg = config.map(read_config).transpose()?;
    let (model, store) = weights::load(weights_path, engine, cfg.as_ref())?;
    let x = npy::read(input)?;
    let c = &model.config.unet;
    if x.shape.len() != 4 || x.shape[1] != c.in_ch {
        return Err(Error::Format {
            path: input.display().to_string(),
            detail: format!(
                "array {:?} must be (N, {}, H, W) for this model",
                x.shape, c.in_ch
            ),
        });
    }
    match what {
        Apply::Prox { t, lambda } if !(0.0..=1.0).contains(&t) || lambda <= 0.0 => {
            return Err(Error::shape(
                "prox",
                format!("need 0 ≤ t ≤ 1 and λ > 0, got t = {t}, λ = {lambda}"),
            ));
        }
        Apply::Score { t } if !(t > 0.0 && t <= 1.0) => {
            return Err(Error::shape(
                "score",
                format!("need 0 < t ≤ 1 (the score at t = 0 is undefined), got {t}"),
            ));
        }
        _ => {}
    }
    let per = x.shape[1..].iter().product::<usize>();
    let mut result = Vec::with_capacity(x.data.len());
    for chunk in x.data.chunks(per * batch.max(1)) {
        let n = chunk.len() / per;
        let mut shape = x.shape.clone();
        shape[0] = n;
        let g = Graph::inference(engine);
        let p = store.vars(&g);
        let xv = g.constant(Tensor::from_slice(engine, &shape, chunk)?);
        let y = match what {
            Apply::Prox { t, lambda } => model.prox(&g, &p, &xv, &vec![t; n], &vec![lambda; n])?,
            Apply::Score { t } => model.score(&g, &p, &xv, &vec![t; n])?,
        };
        result.extend(y.tensor().to_vec()?);
    }
    npy::write(
        out,
        &npy::Array {
            shape: x.shape.clone(),
            data: result,
        },
    )?;
    Ok(format!("wrote {} {:?}", out.display(), x.shape))
}

/// Writes standard Gaussian draws of `shape` (Philox, reproducible for `seed`) to `out`.
pub fn randn(engine: &Engine, shape: &[usize], seed: u64, out: &Path) -> Result<String> {
    let t = crate::ops::noise::randn(engine, shape, seed, 0)?;
    npy::write(
        out,
        &npy::Array {
            shape: shape.to_vec(),
            data: t.to_vec()?,
        },
    )?;
    Ok(format!("wrote {} {shape:?}", out.display()))
}

/// `proxdm average`: the element-wise mean of weight files of one model, written atomically.
pub fn average(inputs: &[std::path::PathBuf], out: &Path) -> Result<String> {
    let paths: Vec<&Path> = inputs.iter().map(|p| p.as_path()).collect();
    let bytes = weights::average(&paths)?;
    crate::io::write_atomic(out, &bytes)?;
    Ok(format!(
        "wrote {}: the mean of {} weight files",
        out.display(),
        inputs.len()
    ))
}

/// `proxdm deepen`: a weight file with more ResBlocks per level, the same function, written
/// atomically.
pub fn deepen(input: &Path, blocks: usize, seed: u64, out: &Path) -> Result<String> {
    let bytes = weights::deepen(input, blocks, seed)?;
    crate::io::write_atomic(out, &bytes)?;
    Ok(format!(
        "wrote {}: {} deepened to {blocks} ResBlock(s) per level, new blocks the identity",
        out.display(),
        input.display()
    ))
}
