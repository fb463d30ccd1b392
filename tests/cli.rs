//! The `proxdm` binary end to end: init → randn → prox / score, and clear errors.

use std::path::PathBuf;
use std::process::Command;

use proxdm::io::npy;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_proxdm"))
        .args(args)
        .env("XDG_RUNTIME_DIR", "/tmp")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("proxdm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn init_randn_prox_and_score_work_end_to_end() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (w, s, x, y, sc) = (
        tmp("p.safetensors"),
        tmp("s.safetensors"),
        tmp("x.npy"),
        tmp("y.npy"),
        tmp("sc.npy"),
    );
    let p = |q: &PathBuf| q.to_str().unwrap().to_string();
    let (ok, out) = run(&[
        "init",
        "--config",
        &format!("{root}/configs/small.toml"),
        "--out",
        &p(&w),
        "--seed",
        "1",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = run(&[
        "randn",
        "--shape",
        "3,1,32,32",
        "--seed",
        "2",
        "--out",
        &p(&x),
    ]);
    assert!(ok, "{out}");
    let (ok, out) = run(&[
        "prox",
        "--weights",
        &p(&w),
        "--input",
        &p(&x),
        "--t",
        "0.5",
        "--lambda",
        "0.1",
        "--out",
        &p(&y),
        "--batch",
        "2",
    ]);
    assert!(ok, "{out}");
    let (xa, ya) = (npy::read(&x).unwrap(), npy::read(&y).unwrap());
    assert_eq!(ya.shape, vec![3, 1, 32, 32]);
    // A fresh prox network's last conv starts at gain 1e-5, so prox(y) ≈ y.
    assert!(
        xa.data
            .iter()
            .zip(&ya.data)
            .all(|(a, b)| (a - b).abs() < 1e-3)
    );
    assert!(xa.data.iter().zip(&ya.data).any(|(a, b)| a != b));

    let (ok, out) = run(&[
        "init",
        "--config",
        &format!("{root}/configs/small-score.toml"),
        "--out",
        &p(&s),
    ]);
    assert!(ok, "{out}");
    let (ok, out) = run(&[
        "score",
        "--weights",
        &p(&s),
        "--input",
        &p(&x),
        "--t",
        "0.3",
        "--out",
        &p(&sc),
    ]);
    assert!(ok, "{out}");
    assert_eq!(npy::read(&sc).unwrap().shape, vec![3, 1, 32, 32]);

    // Errors: a prox network given to `score`, a missing file, a bad t.
    let (ok, out) = run(&[
        "score",
        "--weights",
        &p(&w),
        "--input",
        &p(&x),
        "--t",
        "0.3",
        "--out",
        &p(&sc),
    ]);
    assert!(
        !ok && out.contains("use `proxdm prox`") && !out.contains("panicked"),
        "{out}"
    );
    let (ok, out) = run(&[
        "prox",
        "--weights",
        "/nonexistent.safetensors",
        "--input",
        &p(&x),
        "--t",
        "0.5",
        "--lambda",
        "0.1",
        "--out",
        &p(&y),
    ]);
    assert!(
        !ok && out.contains("/nonexistent.safetensors") && !out.contains("panicked"),
        "{out}"
    );
    let (ok, out) = run(&[
        "score",
        "--weights",
        &p(&s),
        "--input",
        &p(&x),
        "--t",
        "0",
        "--out",
        &p(&sc),
    ]);
    assert!(!ok && out.contains("0 < t"), "{out}");
    std::fs::remove_dir_all(w.parent().unwrap()).ok();
}
