//! Deepening a trained UNet without changing what it computes (Net2DeeperNet, Chen et al.
//! 2016): more ResBlocks per level, each new block starting as the identity, so a larger network
//! continues from a trained smaller one instead of from scratch.
//!
//! With `k` blocks per level the down path of level `i` pushes the skips b₀ … b_{k−1} (then the
//! downsampled map, or the head's output for level 0 further up the stack), and the up path of
//! level `i` runs `k + 1` blocks that pop b_{k−1} … b₀ and then that earlier skip. Going to
//! `k' > k` blocks:
//! - down blocks j < k keep their weights; the new ones (j ≥ k) add a zero residual (their last
//!   conv, and their attention's output projection, are zero), so b_j = b_{k−1} for j ≥ k;
//! - up block 0 keeps its weights (it pops b_{k'−1} = b_{k−1}, what it popped before); up blocks
//!   1 … k'−k are new: their 1×1 shortcut passes the running features through and drops the
//!   concatenated skip, their residual is zero; old up block m ≥ 1 becomes block m + k'−k and
//!   pops b_{k−1−m} as before.
//!
//! Every other weight of a new block keeps its fresh initialisation, so gradients reach the new
//! blocks from the first step (through the zeroed output conv).

use super::Model;
use super::unet::ModelConfig;
use crate::error::{Error, Result};

/// One parameter on the host: name, shape, values.
pub type HostParam = (String, Vec<usize>, Vec<f32>);

/// Where a layer of the deepened network takes its weights from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Source {
    /// The layer with this index in the old network's `downblocks` / `upblocks`.
    Old(usize),
    /// A new ResBlock, initialised as the identity.
    New,
}

/// For each layer of the deepened down path (resp. up path), its source.
fn layer_sources(levels: usize, k: usize, k2: usize) -> (Vec<Source>, Vec<Source>) {
    let (mut down, mut old) = (Vec::new(), 0);
    for i in 0..levels {
        for j in 0..k2 {
            if j < k {
                down.push(Source::Old(old));
                old += 1;
            } else {
                down.push(Source::New);
            }
        }
        if i + 1 != levels {
            down.push(Source::Old(old)); // the downsampling conv
            old += 1;
        }
    }
    let (mut up, mut old) = (Vec::new(), 0);
    for i in (0..levels).rev() {
        let level_start = old;
        for m in 0..=k2 {
            if m == 0 {
                up.push(Source::Old(level_start));
            } else if m <= k2 - k {
                up.push(Source::New);
            } else {
                up.push(Source::Old(level_start + m - (k2 - k)));
            }
        }
        old = level_start + k + 1;
        if i != 0 {
            up.push(Source::Old(old)); // the upsampling conv
            old += 1;
        }
    }
    (down, up)
}

/// The deepened config and parameters: `old` (the parameters of `config`, in any order) moved
/// to a network with `blocks` ResBlocks per level, new blocks initialised as the identity and
/// otherwise from `seed`. The result computes the same function as the original, in the new
/// network's definition order.
pub fn deepen(
    config: &ModelConfig,
    old: &[HostParam],
    blocks: usize,
    seed: u64,
) -> Result<(ModelConfig, Vec<HostParam>)> {
    config.validate()?;
    let k = config.unet.num_res_blocks;
    if blocks <= k {
        return Err(Error::Config(format!(
            "--blocks {blocks}: the network already has {k} ResBlock(s) per level; deepening \
             needs more"
        )));
    }
    let mut new_config = config.clone();
    new_config.unet.num_res_blocks = blocks;
    let (_, old_pb) = Model::build(config, 0)?;
    let expected: Vec<(String, Vec<usize>)> = old_pb
        .into_params()
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect();
    let by_name: std::collections::HashMap<&str, &HostParam> =
        old.iter().map(|p| (p.0.as_str(), p)).collect();
    for (name, shape) in &expected {
        match by_name.get(name.as_str()) {
            Some(p) if &p.1 == shape => {}
            Some(p) => {
                return Err(Error::Config(format!(
                    "{name}: shape {:?}, but the file's config builds {shape:?}",
                    p.1
                )));
            }
            None => return Err(Error::Config(format!("missing tensor {name}"))),
        }
    }
    if old.len() != expected.len() {
        return Err(Error::Config(format!(
            "{} tensors, but the file's config builds {}",
            old.len(),
            expected.len()
        )));
    }
    let (down, up) = layer_sources(config.unet.ch_mult.len(), k, blocks);
    let (_, new_pb) = Model::build(&new_config, seed)?;
    let mut out = Vec::new();
    for (name, shape, fresh) in new_pb.into_params() {
        let layer = ["unet.downblocks.", "unet.upblocks."]
            .iter()
            .zip([&down, &up])
            .find_map(|(prefix, sources)| {
                let rest = name.strip_prefix(prefix)?;
                let (index, tail) = rest.split_once('.')?;
                let index: usize = index.parse().ok()?;
                Some((*prefix, sources[index], tail.to_string()))
            });
        let values = match layer {
            None => by_name[name.as_str()].2.clone(),
            Some((prefix, Source::Old(i), tail)) => {
                let from = format!("{prefix}{i}.{tail}");
                match by_name.get(from.as_str()) {
                    Some(p) if p.1 == shape => p.2.clone(),
                    _ => {
                        return Err(Error::Config(format!(
                            "deepening maps {from} to {name} {shape:?}, which it does not fit \
                             (a bug in proxdm: please report it)"
                        )));
                    }
                }
            }
            Some((_, Source::New, tail)) => {
                if tail.starts_with("block2.3.") || tail.starts_with("attn.proj.") {
                    vec![0.0; fresh.len()]
                } else if tail == "shortcut.weight" {
                    // (out, in, 1, 1): the identity on the first `out` input channels (the
                    // running features), zero on the concatenated skip.
                    let (cout, cin) = (shape[0], shape[1]);
                    let mut w = vec![0.0; cout * cin];
                    for o in 0..cout {
                        w[o * cin + o] = 1.0;
                    }
                    w
                } else if tail == "shortcut.bias" {
                    vec![0.0; fresh.len()]
                } else {
                    fresh
                }
            }
        };
        out.push((name, shape, values));
    }
    Ok((new_config, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_keep_the_old_layers_in_order() {
        use Source::*;
        // Two levels, 1 → 2 blocks. Old down: res0, down1, res2; old up: res0, res1, up2, res3,
        // res4.
        let (down, up) = layer_sources(2, 1, 2);
        assert_eq!(down, [Old(0), New, Old(1), Old(2), New]);
        assert_eq!(up, [Old(0), New, Old(1), Old(2), Old(3), New, Old(4)]);
        // 2 → 4 blocks on one level: old up res0 res1 res2.
        let (down, up) = layer_sources(1, 2, 4);
        assert_eq!(down, [Old(0), Old(1), New, New]);
        assert_eq!(up, [Old(0), New, New, Old(1), Old(2)]);
    }
}
