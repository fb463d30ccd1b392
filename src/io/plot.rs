//! A small raster plotter for PNG figures: scatter panels and a line chart, with a built-in
//! 5×7 bitmap font (upper case, digits, a few symbols), so figures need no font files.

use std::path::Path;

use crate::error::{Error, Result};

pub type Rgb = [u8; 3];

pub const PALETTE: [Rgb; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
];

/// An RGB image being drawn.
pub struct Canvas {
    pub w: usize,
    pub h: usize,
    px: Vec<u8>,
}

fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'B' => [30, 17, 17, 30, 17, 17, 30],
        'C' => [14, 17, 16, 16, 16, 17, 14],
        'D' => [28, 18, 17, 17, 17, 18, 28],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'J' => [7, 2, 2, 2, 2, 18, 12],
        'K' => [17, 18, 20, 24, 20, 18, 17],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 17, 25, 21, 19, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'Q' => [14, 17, 17, 17, 21, 18, 13],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'T' => [31, 4, 4, 4, 4, 4, 4],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'V' => [17, 17, 17, 17, 17, 10, 4],
        'W' => [17, 17, 17, 21, 21, 21, 10],
        'X' => [17, 17, 10, 4, 10, 17, 17],
        'Y' => [17, 17, 17, 10, 4, 4, 4],
        'Z' => [31, 1, 2, 4, 8, 16, 31],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        ',' => [0, 0, 0, 0, 12, 4, 8],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '/' => [0, 1, 2, 4, 8, 16, 0],
        _ => [0; 7],
    }
}

impl Canvas {
    pub fn new(w: usize, h: usize, bg: Rgb) -> Self {
        Canvas {
            w,
            h,
            px: bg.iter().copied().cycle().take(w * h * 3).collect(),
        }
    }

    pub fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    pub fn rect(&mut self, x0: i64, y0: i64, w: i64, h: i64, c: Rgb) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.set(x, y, c);
            }
        }
    }

    pub fn dot(&mut self, x: f64, y: f64, r: i64, c: Rgb) {
        let (cx, cy) = (x.round() as i64, y.round() as i64);
        for dy in -r..=r {
            for dx in -r..=r {
                if dx * dx + dy * dy <= r * r {
                    self.set(cx + dx, cy + dy, c);
                }
            }
        }
    }

    /// A line `width` pixels thick.
    pub fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), width: i64, c: Rgb) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for k in 0..=n {
            let t = k as f64 / n as f64;
            self.dot(x0 + t * (x1 - x0), y0 + t * (y1 - y0), width / 2, c);
        }
    }

    /// Text at (x, y) (top left), `scale` pixels per font pixel.
    pub fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            let ox = x + k as i64 * 6 * scale;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (16 >> col) != 0 {
                        self.rect(ox + col * scale, y + row as i64 * scale, scale, scale, c);
                    }
                }
            }
        }
    }

    /// Width in pixels of `s` drawn at `scale`.
    pub fn text_width(s: &str, scale: i64) -> i64 {
        s.chars().count() as i64 * 6 * scale
    }

    /// A line chart of `series` (name, (x, y) points; y > 0) in `area` = (x, y, w, h): a log₁₀
    /// y axis with a grid line per decade, x ticks at `ticks`, labels, and a legend to the right
    /// of the area (series take the palette's colours in order).
    pub fn log_chart(
        &mut self,
        (x0, y0, cw, ch): (i64, i64, i64, i64),
        series: &[(String, Vec<(f64, f64)>)],
        ticks: &[f64],
        xlabel: &str,
        ylabel: &str,
    ) {
        let (black, grey) = ([0, 0, 0], [200, 200, 200]);
        let vals = series
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.1))
            .filter(|v| *v > 0.0);
        let (ymin, ymax) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v.log10()), b.max(v.log10()))
        });
        let (ymin, ymax) = if ymin.is_finite() {
            (ymin.floor(), ymax.ceil().max(ymin.floor() + 1.0))
        } else {
            (-3.0, 0.0)
        };
        let lo = ticks.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = ticks.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let px = |s: f64, v: f64| -> (f64, f64) {
            let fx = if hi > lo { (s - lo) / (hi - lo) } else { 0.5 };
            (
                x0 as f64 + fx * cw as f64,
                (y0 + ch) as f64 - (v.log10() - ymin) / (ymax - ymin) * ch as f64,
            )
        };
        self.rect(x0, y0 + ch, cw, 2, black);
        self.rect(x0, y0, 2, ch, black);
        for e in ymin as i64..=ymax as i64 {
            let (_, y) = px(lo, 10f64.powi(e as i32));
            self.rect(x0, y as i64, cw, 1, grey);
            self.text(8, y as i64 - 7, &format!("1E{e}"), 2, black);
        }
        for &s in ticks {
            let (x, _) = px(s, 1.0);
            self.rect(x as i64, y0 + ch, 1, 6, black);
            let t = format!("{s}");
            self.text(
                x as i64 - Canvas::text_width(&t, 2) / 2,
                y0 + ch + 10,
                &t,
                2,
                black,
            );
        }
        self.text(x0 + cw / 2 - 50, y0 + ch + 32, xlabel, 2, black);
        self.text(x0, y0 - 22, ylabel, 2, black);
        for (k, (name, points)) in series.iter().enumerate() {
            let col = PALETTE[k % 8];
            let mut pts: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.1 > 0.0)
                .map(|p| px(p.0, p.1))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            for pair in pts.windows(2) {
                self.line(pair[0], pair[1], 3, col);
            }
            for &p in &pts {
                self.dot(p.0, p.1, 4, col);
            }
            let ly = y0 + 10 + 26 * k as i64;
            self.rect(x0 + cw + 30, ly + 4, 24, 6, col);
            self.text(x0 + cw + 62, ly, name, 2, col);
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, self.w as u32, self.h as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut wr = enc
                .write_header()
                .map_err(|e| Error::Gpu(format!("PNG: {e}")))?;
            wr.write_image_data(&self.px)
                .map_err(|e| Error::Gpu(format!("PNG: {e}")))?;
        }
        super::write_atomic(path, &bytes)
    }

    pub fn pixel(&self, x: usize, y: usize) -> Rgb {
        let i = (y * self.w + x) * 3;
        [self.px[i], self.px[i + 1], self.px[i + 2]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawing_and_png_round_trip() {
        let mut c = Canvas::new(40, 20, [255; 3]);
        c.text(1, 1, "W2", 1, [0, 0, 0]);
        c.dot(30.0, 10.0, 2, [255, 0, 0]);
        assert_eq!(c.pixel(30, 10), [255, 0, 0]);
        assert_eq!(c.pixel(1, 1), [0, 0, 0]); // top-left pixel of 'W'
        assert_eq!(c.pixel(39, 19), [255; 3]);
        let p = std::env::temp_dir().join(format!("proxdm-plot-{}.png", std::process::id()));
        c.save(&p).unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&p).unwrap()));
        let r = dec.read_info().unwrap();
        assert_eq!((r.info().width, r.info().height), (40, 20));
        std::fs::remove_file(&p).ok();
    }
}
