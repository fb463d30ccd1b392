//! PNG images in and out as f32 in [-1, 1], channels first: grey (1 channel) or colour (3).
//!
//! Reading accepts every PNG colour type and depth: palettes are expanded, 16-bit samples keep
//! their precision, alpha is dropped; grey-with-alpha becomes 1 channel, RGB(A) 3.

use std::path::Path;

use crate::error::{Error, Result};

/// One image, (C, H, W), values in [-1, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

fn bad(path: &Path, detail: impl Into<String>) -> Error {
    Error::Format {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

/// Reads a PNG file.
pub fn read_png(path: &Path) -> Result<Image> {
    let bytes = super::read(path)?;
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND);
    let mut reader = dec
        .read_info()
        .map_err(|e| bad(path, format!("not a readable PNG: {e}")))?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(path, format!("corrupt PNG data: {e}")))?;
    let (h, w) = (info.height as usize, info.width as usize);
    let (stored, c) = match info.color_type {
        png::ColorType::Grayscale => (1, 1),
        png::ColorType::GrayscaleAlpha => (2, 1),
        png::ColorType::Rgb => (3, 3),
        png::ColorType::Rgba => (4, 3),
        png::ColorType::Indexed => return Err(bad(path, "palette was not expanded")),
    };
    let sample = |i: usize| -> f32 {
        match info.bit_depth {
            png::BitDepth::Sixteen => {
                u16::from_be_bytes([buf[2 * i], buf[2 * i + 1]]) as f32 / 65535.0
            }
            _ => buf[i] as f32 / 255.0,
        }
    };
    let mut data = vec![0.0f32; c * h * w];
    for p in 0..h * w {
        for ch in 0..c {
            data[ch * h * w + p] = sample(p * stored + ch) * 2.0 - 1.0;
        }
    }
    Ok(Image { c, h, w, data })
}

/// Writes an image (1 or 3 channels, values clamped to [-1, 1]) as an 8-bit PNG, atomically.
pub fn write_png(path: &Path, image: &Image) -> Result<()> {
    let Image { c, h, w, data } = image;
    let (c, h, w) = (*c, *h, *w);
    let color = match c {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        _ => {
            return Err(bad(
                path,
                format!("a PNG needs 1 or 3 channels, the image has {c}"),
            ));
        }
    };
    if data.len() != c * h * w {
        return Err(bad(
            path,
            format!("{} values for a {c}×{h}×{w} image", data.len()),
        ));
    }
    let mut px = vec![0u8; c * h * w];
    for p in 0..h * w {
        for ch in 0..c {
            let v = data[ch * h * w + p];
            px[p * c + ch] = ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
        }
    }
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, w as u32, h as u32);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc
            .write_header()
            .map_err(|e| bad(path, format!("PNG: {e}")))?;
        wr.write_image_data(&px)
            .map_err(|e| bad(path, format!("PNG: {e}")))?;
    }
    super::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("proxdm-image-{}-{name}", std::process::id()))
    }

    #[test]
    fn grey_and_colour_round_trip_to_8_bits() {
        for c in [1, 3] {
            let (h, w) = (5, 7);
            let data: Vec<f32> = (0..c * h * w)
                .map(|i| ((i * 37 % 255) as f32 / 255.0) * 2.0 - 1.0)
                .collect();
            let img = Image { c, h, w, data };
            let p = tmp(&format!("rt{c}.png"));
            write_png(&p, &img).unwrap();
            let back = read_png(&p).unwrap();
            std::fs::remove_file(&p).ok();
            assert_eq!((back.c, back.h, back.w), (c, h, w));
            for (a, b) in img.data.iter().zip(&back.data) {
                assert!((a - b).abs() <= 1.0 / 255.0, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn sixteen_bit_grey_alpha_keeps_precision_and_drops_alpha() {
        let p = tmp("ga16.png");
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, 2, 1);
            enc.set_color(png::ColorType::GrayscaleAlpha);
            enc.set_depth(png::BitDepth::Sixteen);
            let mut wr = enc.write_header().unwrap();
            // Pixel 0: grey 0x8000, alpha 0; pixel 1: grey 0xFFFF, alpha 0xFFFF.
            wr.write_image_data(&[0x80, 0x00, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF])
                .unwrap();
        }
        std::fs::write(&p, &bytes).unwrap();
        let img = read_png(&p).unwrap();
        std::fs::remove_file(&p).ok();
        assert_eq!((img.c, img.h, img.w), (1, 1, 2));
        assert!((img.data[0] - (32768.0 / 65535.0 * 2.0 - 1.0)).abs() < 1e-6);
        assert_eq!(img.data[1], 1.0);
    }

    #[test]
    fn a_file_that_is_not_a_png_is_refused_by_name() {
        let p = tmp("not.png");
        std::fs::write(&p, b"hello").unwrap();
        let e = read_png(&p).unwrap_err().to_string();
        std::fs::remove_file(&p).ok();
        assert!(e.contains("not.png") && e.contains("PNG"), "{e}");
    }
}
