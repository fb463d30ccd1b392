//! NumPy `.npy` arrays of float32 (float64 is accepted on read and converted), C order.

use std::path::Path;

use crate::error::{Error, Result};

/// An array read from or written to `.npy`.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

fn bad(path: &Path, detail: impl Into<String>) -> Error {
    Error::Format {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

/// The value of `'key':` in a header dict, up to the next top-level comma or brace.
fn field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

/// Parses `.npy` bytes (`path` only names the file in errors).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Array> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad(path, "not a .npy file (no \\x93NUMPY magic)"));
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(path, format!("unsupported .npy version {v}"))),
    };
    let header = bytes
        .get(hstart..hstart + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad(path, "truncated or unreadable header"))?;
    let descr = field(header, "descr")
        .ok_or_else(|| bad(path, "header has no 'descr'"))?
        .trim_matches(['\'', '"']);
    if field(header, "fortran_order") != Some("False") {
        return Err(bad(
            path,
            "Fortran-ordered arrays are not supported; save with np.ascontiguousarray",
        ));
    }
    let shape_s = field(header, "shape").ok_or_else(|| bad(path, "header has no 'shape'"))?;
    let shape: Vec<usize> = shape_s
        .trim_matches(['(', ')'])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| bad(path, format!("bad shape {shape_s}")))
        })
        .collect::<Result<_>>()?;
    let n: usize = shape.iter().product();
    let body = &bytes[hstart + hlen..];
    let data: Vec<f32> = match descr {
        "<f4" | "|f4" => {
            if body.len() < n * 4 {
                return Err(bad(
                    path,
                    format!(
                        "truncated: shape {shape:?} needs {} bytes, {} present",
                        n * 4,
                        body.len()
                    ),
                ));
            }
            body[..n * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        "<f8" => {
            if body.len() < n * 8 {
                return Err(bad(
                    path,
                    format!(
                        "truncated: shape {shape:?} needs {} bytes, {} present",
                        n * 8,
                        body.len()
                    ),
                ));
            }
            body[..n * 8]
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect()
        }
        other => {
            return Err(bad(
                path,
                format!("dtype {other} is not supported; use float32 ('<f4')"),
            ));
        }
    };
    Ok(Array { shape, data })
}

pub fn read(path: &Path) -> Result<Array> {
    parse(path, &super::read(path)?)
}

/// `.npy` (version 1.0, '<f4', C order) bytes of `a`.
pub fn to_bytes(a: &Array) -> Vec<u8> {
    let dims: Vec<String> = a.shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so the data starts on a 64-byte boundary; the header ends with a newline.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(a.data.iter().flat_map(|v| v.to_le_bytes()));
    out
}

/// Writes `a` atomically.
pub fn write(path: &Path, a: &Array) -> Result<()> {
    super::write_atomic(path, &to_bytes(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_numpy_headers() {
        let a = Array {
            shape: vec![2, 1, 3],
            data: vec![1.0, -2.5, 3.0, 0.0, 1e-8, 7.0],
        };
        let b = to_bytes(&a);
        assert_eq!((b.len() - a.data.len() * 4) % 64, 0);
        assert_eq!(parse(Path::new("x"), &b).unwrap(), a);
        // A header as numpy 1.x writes it for float64 (2,).
        let mut np = b"\x93NUMPY\x01\x00".to_vec();
        let h = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }          \n";
        np.extend_from_slice(&(h.len() as u16).to_le_bytes());
        np.extend_from_slice(h.as_bytes());
        np.extend(1.5f64.to_le_bytes());
        np.extend((-2.0f64).to_le_bytes());
        assert_eq!(
            parse(Path::new("x"), &np).unwrap(),
            Array {
                shape: vec![2],
                data: vec![1.5, -2.0]
            }
        );
    }

    #[test]
    fn bad_files_are_named_and_explained() {
        let p = Path::new("in.npy");
        assert!(
            parse(p, b"hello")
                .unwrap_err()
                .to_string()
                .contains("in.npy: not a .npy file")
        );
        let a = Array {
            shape: vec![4],
            data: vec![0.0; 4],
        };
        let b = to_bytes(&a);
        let e = parse(p, &b[..b.len() - 3]).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("[4]"), "{e}");
        let mut bi = b.clone();
        let at = bi.windows(3).position(|w| w == b"<f4").unwrap();
        bi[at + 1] = b'i';
        let e = parse(p, &bi).unwrap_err().to_string();
        assert!(e.contains("<i4") && e.contains("float32"), "{e}");
    }
}
