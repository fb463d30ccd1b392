//! The `proxdm` binary end to end: init → randn → prox / score, and clear errors.

use std::path::PathBuf;
use std::process::Command;

use proxdm::io::npy;

fn run(args: &[&str]) -> (bool, String) {
    run_env(args, &[])
}

/// `run` with extra environment variables.
fn run_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_proxdm"))
        .args(args)
        .env("XDG_RUNTIME_DIR", "/tmp")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A path in a directory of its own per test (tests run in parallel).
fn tmp(name: &str) -> PathBuf {
    let test = std::thread::current()
        .name()
        .unwrap_or("main")
        .replace("::", "-");
    let d = std::env::temp_dir().join(format!("proxdm-cli-{}-{test}", std::process::id()));
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

#[test]
fn toy_experiment_writes_table_figure_and_samples() {
    let (csv, png, dir) = (tmp("toy.csv"), tmp("toy.png"), tmp("samples"));
    let p = |q: &PathBuf| q.to_str().unwrap().to_string();
    let (ok, out) = run(&[
        "toy",
        "--dataset",
        "moons",
        "--samples",
        "200",
        "--steps",
        "5,10",
        "--seed",
        "3",
        "--out",
        &p(&csv),
        "--plot",
        &p(&png),
        "--save-samples",
        &p(&dir),
    ]);
    assert!(ok, "{out}");
    for name in [
        "score-em",
        "score-em-denoise-1e-3",
        "score-em-denoise-1e-5",
        "score-ode",
        "prox-hybrid",
        "prox-backward",
    ] {
        assert!(out.contains(name), "table lacks {name}:\n{out}");
    }
    assert!(
        out.contains("not converged to |residual| < 1e-6: 0"),
        "{out}"
    );
    let table = std::fs::read_to_string(&csv).unwrap();
    // 6 samplers × 2 step counts; backward at 5 steps is undefined (empty cells).
    assert_eq!(table.lines().count(), 13, "{table}");
    assert!(table.contains("prox-backward,5,,,0"), "{table}");
    let w2: Vec<f64> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(3).and_then(|v| v.parse().ok()))
        .collect();
    assert_eq!(w2.len(), 11);
    assert!(w2.iter().all(|v| v.is_finite() && *v >= 0.0));
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);
    assert!(dir.join("prox-hybrid-5.csv").exists());
    // A dataset name that does not exist, and a malformed CSV, are clear errors.
    let (ok, out) = run(&["toy", "--dataset", "spiral"]);
    assert!(
        !ok && out.contains("unknown dataset 'spiral'") && out.contains("swissroll"),
        "{out}"
    );
    let bad = tmp("bad.csv");
    std::fs::write(&bad, "a,b\n1,2\n").unwrap();
    let (ok, out) = run(&["toy", "--points", &p(&bad)]);
    assert!(!ok && out.contains("must name columns x and y"), "{out}");
    std::fs::remove_dir_all(csv.parent().unwrap()).ok();
}

/// The paper's argument for proximal matching, on the 2D oracle: the same hybrid and backward
/// samplers driven by the exact posterior *mean* (Tweedie's formula on the exact score) instead
/// of the exact prox (the mode) land far from the target in few steps. Measured on moons with
/// 1000 samples, seeds 0, 3 and 5: W1 of the MMSE sampler is ≥ 2.6× the prox sampler's at 5
/// steps, ≥ 2.0× (hybrid) and ≥ 1.5× (backward) at 10; with 300 samples the 10-step ratio
/// fell to 1.2 on some seeds, hence the larger sample.
#[test]
fn toy_prox_samplers_beat_their_mmse_counterparts_in_few_steps() {
    let csv = tmp("toy-mmse.csv");
    let (ok, out) = run(&[
        "toy",
        "--dataset",
        "moons",
        "--samples",
        "1000",
        "--seed",
        "0",
        "--samplers",
        "prox-hybrid,tweedie-hybrid,prox-backward,tweedie-backward",
        "--steps",
        "5,10",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let w1 = |sampler: &str, steps: &str| -> Option<f64> {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("{sampler},{steps},")))
            .unwrap_or_else(|| panic!("no {sampler} at {steps}:\n{text}"));
        row.split(',').nth(2).unwrap().parse().ok()
    };
    for (map, mmse, steps, ratio) in [
        ("prox-hybrid", "tweedie-hybrid", "5", 2.0),
        ("prox-hybrid", "tweedie-hybrid", "10", 1.3),
        ("prox-backward", "tweedie-backward", "10", 1.3),
    ] {
        let (a, b) = (w1(map, steps).unwrap(), w1(mmse, steps).unwrap());
        assert!(b > ratio * a, "{steps} steps: {mmse} W1 {b} vs {map} {a}");
    }
    // Undefined below 10 steps for the MMSE backward sampler too.
    assert_eq!(w1("tweedie-backward", "5"), None, "{text}");
    std::fs::remove_dir_all(csv.parent().unwrap()).ok();
}

/// `train` on a generated MNIST-format fixture, `--resume`, then `sample` from the run's EMA
/// weights: a grid of the right size, the same for the same seed, different for another.
#[test]
fn train_resume_and_sample_end_to_end() {
    let dir = tmp("train");
    let data = dir.join("mnist");
    proxdm::io::datasets::write_fixture(&data, "train", 16, 1).unwrap();
    let cfg = dir.join("tiny.toml");
    std::fs::write(
        &cfg,
        "kind = \"prox\"\n[unet]\nch = 32\nch_mult = [1, 1]\nattn = []\nnum_res_blocks = 1\n\
         [train]\nbatch = 4\niters = 5\nl1_iters = 2\ncheckpoint_every = 2\n",
    )
    .unwrap();
    let run_dir = dir.join("run");
    let (d, c, r) = (
        data.to_str().unwrap(),
        cfg.to_str().unwrap(),
        run_dir.to_str().unwrap(),
    );
    let (ok, out) = run(&[
        "train",
        "--config",
        c,
        "--data",
        d,
        "--out",
        r,
        "--max-steps",
        "3",
        "--quiet",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("trained steps 0..3 of 5"), "{out}");
    // Starting again over an existing run is refused; --resume continues it.
    let (ok, out) = run(&["train", "--config", c, "--data", d, "--out", r]);
    assert!(!ok && out.contains("--resume"), "{out}");
    let (ok, out) = run(&["train", "--data", d, "--out", r, "--resume", "--quiet"]);
    assert!(ok && out.contains("trained steps 3..5 of 5"), "{out}");
    let log = std::fs::read_to_string(run_dir.join("log.csv")).unwrap();
    assert_eq!(log.lines().count(), 6, "header + 5 steps:\n{log}");
    assert!(
        log.lines().nth(3).unwrap().contains(",pm,1,"),
        "step 3 is proximal matching:\n{log}"
    );

    let w = run_dir.join("model.safetensors");
    let png = |name: &str, seed: &str| {
        let p = dir.join(name);
        let (ok, out) = run(&[
            "sample",
            "--weights",
            w.to_str().unwrap(),
            "--n",
            "5",
            "--steps",
            "5",
            "--seed",
            seed,
            "--out",
            p.to_str().unwrap(),
        ]);
        assert!(ok, "{out}");
        std::fs::read(p).unwrap()
    };
    let (a, b, other) = (png("a.png", "3"), png("b.png", "3"), png("c.png", "4"));
    assert_eq!(a, b, "same seed, same images");
    assert_ne!(a, other, "another seed, other images");
    // 5 images: a 3 × 2 grid of 32-pixel images with 2-pixel gaps → 104 × 70.
    let dec = png::Decoder::new(std::io::Cursor::new(&a))
        .read_info()
        .unwrap();
    assert_eq!((dec.info().width, dec.info().height), (104, 70));
    // A score sampler on prox weights is refused, naming both.
    let (ok, out) = run(&[
        "sample",
        "--weights",
        w.to_str().unwrap(),
        "--sampler",
        "score-ode",
    ]);
    assert!(
        !ok && out.contains("score-ode") && out.contains("Prox"),
        "{out}"
    );
}

/// `train --init`: a new run starts from given weights (with a zero learning rate its exported
/// weights are those weights, where the seed's initialisation would differ); weights of another
/// network and `--init` with `--resume` are refused with a reason.
#[test]
fn train_init_starts_from_given_weights() {
    let dir = tmp("train-init");
    let data = dir.join("mnist");
    proxdm::io::datasets::write_fixture(&data, "train", 16, 1).unwrap();
    let unet =
        "kind = \"prox\"\n[unet]\nch = 32\nch_mult = [1, 1]\nattn = []\nnum_res_blocks = 1\n";
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let first = write(
        "first.toml",
        format!("{unet}[train]\nbatch = 4\niters = 3\nl1_iters = 2\nl1_lr = 1e-2\n"),
    );
    // Stage 2: another seed (other initialisation, batches and noise), no dropout (a rate
    // holds no weights, so it may differ from the file's), nothing learned.
    let frozen = write(
        "frozen.toml",
        format!(
            "{unet}dropout = 0.0\n[train]\nbatch = 4\niters = 2\nl1_iters = 1\nseed = 7\n\
             l1_lr = 0.0\npm_lr = 0.0\n"
        ),
    );
    let d = data.to_str().unwrap();
    let out_dir = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let (ok, out) = run(&[
        "train",
        "--config",
        &first,
        "--data",
        d,
        "--out",
        &out_dir("a"),
        "--quiet",
    ]);
    assert!(ok, "{out}");
    let w = dir.join("a").join("model.safetensors");
    let w = w.to_str().unwrap();
    let (ok, out) = run(&[
        "train",
        "--config",
        &frozen,
        "--data",
        d,
        "--out",
        &out_dir("b"),
        "--init",
        w,
        "--quiet",
    ]);
    assert!(ok && out.contains("starting from the weights"), "{out}");
    let (ok, out) = run(&[
        "train",
        "--config",
        &frozen,
        "--data",
        d,
        "--out",
        &out_dir("c"),
        "--quiet",
    ]);
    assert!(ok, "{out}");
    let tensors = |run: &str| -> Vec<(String, Vec<f32>)> {
        let bytes = std::fs::read(dir.join(run).join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut v: Vec<(String, Vec<f32>)> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| {
                let x = t
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()));
                (n, x.collect())
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let max_diff = |a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]| {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .flat_map(|((na, x), (nb, y))| {
                assert_eq!(na, nb);
                x.iter().zip(y).map(|(p, q)| (p - q).abs())
            })
            .fold(0.0f32, f32::max)
    };
    let (a, b, c) = (tensors("a"), tensors("b"), tensors("c"));
    assert!(
        max_diff(&a, &b) < 1e-6,
        "--init kept the weights: {}",
        max_diff(&a, &b)
    );
    assert!(
        max_diff(&a, &c) > 1e-3,
        "without --init the seed's initialisation differs"
    );
    // Resuming the --init run keeps exporting the plain EMA (the file's weights, not debiased
    // against the seed's initialisation).
    let (ok, out) = run(&[
        "train",
        "--data",
        d,
        "--out",
        &out_dir("b"),
        "--resume",
        "--quiet",
    ]);
    assert!(ok, "{out}");
    assert!(max_diff(&a, &tensors("b")) < 1e-6);
    // Another network (channel multipliers [1, 2]) is refused, naming both.
    let other = std::fs::read_to_string(&frozen)
        .unwrap()
        .replace("[1, 1]", "[1, 2]");
    let other = write("other.toml", other);
    let (ok, out) = run(&[
        "train",
        "--config",
        &other,
        "--data",
        d,
        "--out",
        &out_dir("e"),
        "--init",
        w,
    ]);
    assert!(
        !ok && out.contains("--init") && out.contains("same network"),
        "{out}"
    );
    let (ok, out) = run(&[
        "train",
        "--data",
        d,
        "--out",
        &out_dir("b"),
        "--resume",
        "--init",
        w,
    ]);
    assert!(
        !ok && out.contains("--init") && out.contains("--resume"),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `classifier` then `eval` on a generated fixture: the table, CSV and plot, with every sampler
/// the weights can drive and nothing else.
#[test]
fn classifier_and_eval_end_to_end() {
    let dir = tmp("eval");
    let data = dir.join("mnist");
    proxdm::io::datasets::write_fixture(&data, "train", 64, 1).unwrap();
    proxdm::io::datasets::write_fixture(&data, "t10k", 32, 2).unwrap();
    let clf = dir.join("clf.safetensors");
    let d = data.to_str().unwrap();
    let (ok, out) = run(&[
        "classifier",
        "--data",
        d,
        "--out",
        clf.to_str().unwrap(),
        "--epochs",
        "1",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("test accuracy") && out.contains("(32 images)"),
        "{out}"
    );
    // Untrained tiny prox weights: the metric runs whatever the quality.
    let w = dir.join("tiny-prox.safetensors");
    let cfg = dir.join("tiny.toml");
    std::fs::write(
        &cfg,
        "kind = \"prox\"\n[unet]\nch = 32\nch_mult = [1, 1]\nattn = []\nnum_res_blocks = 1\n",
    )
    .unwrap();
    let (ok, out) = run(&[
        "init",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        w.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let (csv, png) = (dir.join("eval.csv"), dir.join("eval.png"));
    let (ok, out) = run(&[
        "eval",
        "--weights",
        w.to_str().unwrap(),
        "--classifier",
        clf.to_str().unwrap(),
        "--data",
        d,
        "--steps",
        "2,10",
        "--n",
        "8",
        "--batch",
        "4",
        "--out",
        csv.to_str().unwrap(),
        "--plot",
        png.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let rows: Vec<String> = std::fs::read_to_string(&csv)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    // The floor (8 real training images), prox-hybrid at 2 and 10 steps, prox-backward at 10
    // only (undefined below 10); no score sampler for prox weights.
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(
        rows[1].starts_with("mnist-train,real images,—,"),
        "{rows:?}"
    );
    assert!(rows[2].starts_with("tiny-prox,prox-hybrid,2,"), "{rows:?}");
    assert!(
        rows[4].starts_with("tiny-prox,prox-backward,10,"),
        "{rows:?}"
    );
    assert_eq!(
        rows[0],
        "weights,sampler,steps,fd,confidence,read,class_entropy,histogram"
    );
    let col = |r: &str, i: usize| -> f64 { r.split(',').nth(i).unwrap().parse().unwrap() };
    for r in &rows[1..] {
        // The read share counts whole samples of 8; confidence ≥ 0.1 (ten classes).
        let (conf, read) = (col(r, 4), col(r, 5));
        assert!((0.1..=1.0).contains(&conf), "{r}");
        assert!(
            (0.0..=1.0).contains(&read) && (read * 8.0).fract() == 0.0,
            "{r}"
        );
    }
    let fd = |r: &str| col(r, 3);
    let (floor, untrained) = (fd(&rows[1]), fd(&rows[2]));
    assert!(floor.is_finite() && floor >= 0.0 && untrained.is_finite());
    assert!(
        floor < untrained,
        "real images {floor} must score closer than an untrained network's {untrained}"
    );
    assert!(
        png::Decoder::new(std::io::Cursor::new(std::fs::read(&png).unwrap()))
            .read_info()
            .is_ok()
    );
    // `eval --denoise`: no classifier; a prox network and a score network (through Tweedie) at
    // each prox call of the 2-step grid, t = 0.5 then 0.
    let ws = dir.join("tiny-score.safetensors");
    let scfg = dir.join("tiny-score.toml");
    std::fs::write(
        &scfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("\"prox\"", "\"score\""),
    )
    .unwrap();
    let (ok, out) = run(&[
        "init",
        "--config",
        scfg.to_str().unwrap(),
        "--out",
        ws.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let both = format!("{},{}", w.display(), ws.display());
    let dcsv = dir.join("denoise.csv");
    let denoise = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            "--denoise",
            "--weights",
            &both,
            "--data",
            d,
            "--steps",
            "2",
            "--n",
            "8",
            "--batch",
            "4",
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    let (ok, out) = denoise(&["--out", dcsv.to_str().unwrap()]);
    assert!(ok, "{out}");
    let rows: Vec<Vec<String>> = std::fs::read_to_string(&dcsv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    for (r, (name, t)) in rows.iter().zip([
        ("prox net", 0.5),
        ("prox net", 0.0),
        ("score Tweedie", 0.5),
        ("score Tweedie", 0.0),
    ]) {
        let num = |i: usize| -> f64 { r[i].parse().unwrap() };
        assert_eq!((r[1].as_str(), num(3)), (name, t), "{r:?}");
        assert!(num(4) > 0.0 && num(5) > 0.0 && num(6).is_finite(), "{r:?}");
        // L1 ≤ √MSE (Jensen); the MSE given x₀ and v are parts of it.
        assert!(num(5) <= num(6).sqrt() + 1e-6, "{r:?}");
        assert!(
            num(7) >= 0.0 && num(8) >= 0.0 && num(7) + num(8) < 1.5 * num(6),
            "{r:?}"
        );
    }
    let (ok, out) = denoise(&["--plot", png.to_str().unwrap()]);
    assert!(!ok && out.contains("--denoise"), "{out}");
    // The prox sampler driven by a score network's MMSE denoiser takes score weights only.
    let grid = dir.join("tweedie.png");
    let tweedie = |weights: &PathBuf| {
        run(&[
            "sample",
            "--weights",
            weights.to_str().unwrap(),
            "--sampler",
            "tweedie-hybrid",
            "--steps",
            "2",
            "--n",
            "2",
            "--out",
            grid.to_str().unwrap(),
        ])
    };
    let (ok, out) = tweedie(&ws);
    assert!(ok && grid.exists(), "{out}");
    let (ok, out) = tweedie(&w);
    assert!(!ok && out.contains("needs score weights"), "{out}");
    // `eval --from-data`: the last K of N steps from noised training images, per sampler and
    // K (K above N skipped); K = 0 and --plot are refused before any work.
    let fcsv = dir.join("from-data.csv");
    let from = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            "--weights",
            &both,
            "--samplers",
            "prox-hybrid,score-ode",
            "--classifier",
            clf.to_str().unwrap(),
            "--data",
            d,
            "--steps",
            "2",
            "--n",
            "8",
            "--batch",
            "4",
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    let (ok, out) = from(&["--from-data", "1,2,3", "--out", fcsv.to_str().unwrap()]);
    assert!(ok, "{out}");
    let keys: Vec<String> = std::fs::read_to_string(&fcsv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').take(3).collect::<Vec<_>>().join(","))
        .collect();
    assert_eq!(
        keys,
        [
            "mnist-train,real images,—",
            "tiny-prox,prox-hybrid,1/2",
            "tiny-prox,prox-hybrid,2/2",
            "tiny-score,score-ode,1/2",
            "tiny-score,score-ode,2/2"
        ],
        "{out}"
    );
    let (ok, out) = from(&["--from-data", "0,1"]);
    assert!(!ok && out.contains("--from-data 0"), "{out}");
    let (ok, out) = from(&["--from-data", "1", "--plot", png.to_str().unwrap()]);
    assert!(!ok && out.contains("--from-data"), "{out}");
}

/// PROXDM_TUNE: `on` measures and writes the cache file under PROXDM_CACHE_DIR, `off` writes
/// nothing, an unknown value is refused naming the accepted ones.
#[test]
fn tuning_cache_follows_proxdm_tune() {
    let with_env = |tune: &str, cache: &std::path::Path| {
        run_env(
            &["smoke"],
            &[
                ("PROXDM_TUNE", tune.as_ref()),
                ("PROXDM_CACHE_DIR", cache.as_os_str()),
            ],
        )
    };
    let (on, off) = (tmp("tune-on"), tmp("tune-off"));
    let (ok, out) = with_env("on", &on);
    assert!(ok, "{out}");
    let has_sg8 = proxdm::Engine::shared().unwrap().has_sg8();
    let file = on.join("tune.json");
    if has_sg8 {
        let text = std::fs::read_to_string(&file).expect("tune.json written");
        assert!(text.contains("matmul/"), "{text}");
    }
    let (ok, out) = with_env("off", &off);
    assert!(ok, "{out}");
    assert!(!off.join("tune.json").exists());
    let (ok, out) = with_env("sometimes", &off);
    assert!(
        !ok && out.contains("PROXDM_TUNE") && out.contains("off, on or force"),
        "{out}"
    );
}

/// PROXDM_SHADER_CHECKS: the smoke test's kernels match their CPU references with naga's
/// runtime checks on and off (the default on Vulkan is off), and an unknown value is refused.
#[test]
fn shader_checks_on_and_off_give_the_cpu_reference() {
    let with_env = |checks: &str| run_env(&["smoke"], &[("PROXDM_SHADER_CHECKS", checks.as_ref())]);
    for checks in ["on", "off"] {
        let (ok, out) = with_env(checks);
        assert!(ok, "PROXDM_SHADER_CHECKS={checks}: {out}");
    }
    let (ok, out) = with_env("maybe");
    assert!(
        !ok && out.contains("PROXDM_SHADER_CHECKS") && out.contains("on or off"),
        "{out}"
    );
}

#[test]
fn lpn_train_prox_prior_and_denoise_end_to_end() {
    // 8×8 images (a bright bar), trained for a few steps as an LPN denoiser.
    let n = 32;
    let data: Vec<f32> = (0..n)
        .flat_map(|i| (0..64).map(move |p| if p % 8 == i % 8 { 1.0 } else { -1.0 }))
        .collect();
    let images = tmp("bars.npy");
    npy::write(
        &images,
        &npy::Array {
            shape: vec![n, 1, 8, 8],
            data,
        },
    )
    .unwrap();
    let cfg = tmp("lpn.toml");
    std::fs::write(
        &cfg,
        "kind = \"lpn\"\n[lpn]\narch = \"conv\"\nin_ch = 1\nsize = 8\nhidden = 4\n\
         [train]\nbatch = 8\niters = 6\nl1_iters = 3\nl1_lr = 1e-2\npm_lr = 1e-3\n\
         zeta_start = 0.64\nsigma = 0.2\ncheckpoint_every = 3\n",
    )
    .unwrap();
    let out = tmp("run");
    let (ok, text) = run(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--data",
        images.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("Lpn model"), "{text}");
    let w = out.join("model.safetensors");
    let ws = w.to_str().unwrap();
    // A finished run resumed: nothing to train, the exported weights are rewritten.
    std::fs::remove_file(&w).unwrap();
    let (ok, text) = run(&[
        "train",
        "--data",
        images.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--resume",
    ]);
    assert!(
        ok && text.contains("nothing to train") && w.is_file(),
        "{text}"
    );
    // prox: f = ∇ψ on a batch; a denoiser takes no (t, λ).
    let x = tmp("x.npy");
    npy::write(
        &x,
        &npy::Array {
            shape: vec![3, 1, 8, 8],
            data: (0..192).map(|i| (i % 7) as f32 / 7.0 - 0.5).collect(),
        },
    )
    .unwrap();
    let y = tmp("y.npy");
    let (ok, text) = run(&[
        "prox",
        "--weights",
        ws,
        "--input",
        x.to_str().unwrap(),
        "--out",
        y.to_str().unwrap(),
    ]);
    assert!(ok && text.contains("LPN"), "{text}");
    assert_eq!(npy::read(&y).unwrap().shape, vec![3, 1, 8, 8]);
    let (ok, text) = run(&[
        "prox",
        "--weights",
        ws,
        "--input",
        x.to_str().unwrap(),
        "--out",
        y.to_str().unwrap(),
        "--t",
        "0.5",
        "--lambda",
        "0.1",
    ]);
    assert!(!ok && text.contains("drop --t and --lambda"), "{text}");
    // prior: R at each point, converged.
    let r = tmp("r.npy");
    let (ok, text) = run(&[
        "prior",
        "--weights",
        ws,
        "--input",
        x.to_str().unwrap(),
        "--out",
        r.to_str().unwrap(),
    ]);
    assert!(ok && text.contains("3/3 converged"), "{text}");
    let rv = npy::read(&r).unwrap();
    assert_eq!(rv.shape, vec![3]);
    assert!(rv.data.iter().all(|v| v.is_finite()));
    // denoise: a PNG of the LPN's size, with noise added and PSNR reported.
    let png = tmp("clean.png");
    let img = proxdm::io::image::Image {
        c: 1,
        h: 8,
        w: 8,
        data: (0..64)
            .map(|p| if p % 8 == 3 { 1.0 } else { -1.0 })
            .collect(),
    };
    proxdm::io::image::write_png(&png, &img).unwrap();
    let den = tmp("den.png");
    let noisy = tmp("noisy.png");
    let (ok, text) = run(&[
        "denoise",
        "--weights",
        ws,
        "--input",
        png.to_str().unwrap(),
        "--sigma",
        "0.1",
        "--out",
        den.to_str().unwrap(),
        "--add-noise",
        "--noisy-out",
        noisy.to_str().unwrap(),
    ]);
    assert!(ok && text.contains("PSNR"), "{text}");
    // σ = 0.1 on [0, 1]: 20 dB in expectation (64 pixels: within ±1.5 dB).
    let db: f64 = text
        .split("noisy ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((db - 20.0).abs() < 1.5, "noisy PSNR {db}");
    assert_eq!(proxdm::io::image::read_png(&den).unwrap().h, 8);
    assert!(noisy.is_file());
    // A σ far from the trained one is flagged; an image of the wrong size is refused.
    let (ok, text) = run(&[
        "denoise",
        "--weights",
        ws,
        "--input",
        png.to_str().unwrap(),
        "--sigma",
        "0.4",
        "--out",
        den.to_str().unwrap(),
    ]);
    assert!(ok && text.contains("trained at σ = 0.1"), "{text}");
    let big = tmp("big.png");
    proxdm::io::image::write_png(
        &big,
        &proxdm::io::image::Image {
            c: 1,
            h: 9,
            w: 9,
            data: vec![0.0; 81],
        },
    )
    .unwrap();
    let (ok, text) = run(&[
        "denoise",
        "--weights",
        ws,
        "--input",
        big.to_str().unwrap(),
        "--sigma",
        "0.1",
        "--out",
        den.to_str().unwrap(),
    ]);
    assert!(
        !ok && text.contains("1×9×9") && text.contains("1×8×8"),
        "{text}"
    );
    // The test-set mode: mean PSNR over a (fixture) MNIST test split, centre-cropped to 8×8.
    let mnist = tmp("mnist");
    proxdm::io::datasets::write_fixture(&mnist, "t10k", 12, 1).unwrap();
    let grid = tmp("denoise-grid.png");
    let (ok, text) = run(&[
        "denoise",
        "--weights",
        ws,
        "--data",
        mnist.to_str().unwrap(),
        "--n",
        "12",
        "--sigma",
        "0.1",
        "--out",
        grid.to_str().unwrap(),
    ]);
    assert!(
        ok && text.contains("first 12 images (8×8)") && text.contains("mean PSNR noisy"),
        "{text}"
    );
    let g = proxdm::io::image::read_png(&grid).unwrap();
    assert_eq!(
        (g.w, g.h),
        (8 * 10 + 2, 3 * 10 + 2),
        "3 rows of 8 images with 2-pixel gaps"
    );
    // A denoising LPN is not a prox network for `sample`.
    let (ok, text) = run(&[
        "sample",
        "--weights",
        ws,
        "--n",
        "1",
        "--out",
        tmp("g.png").to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("use `proxdm denoise`"), "{text}");
    // A convolutional LPN conditioned on (t, λ) samples, deterministically per seed.
    let cfg = proxdm::models::lpn::LpnConfig {
        size: 8,
        hidden: 4,
        cond: true,
        emb: 8,
        ..Default::default()
    };
    let (_, pb) = proxdm::models::lpn::Lpn::build(&cfg, 3).unwrap();
    let e = proxdm::Engine::shared().unwrap();
    let cw = tmp("cond-lpn.safetensors");
    proxdm::io::weights::save_lpn(&cw, &cfg, "prox (hybrid)", &pb.finish(&e).unwrap()).unwrap();
    let draw = |seed: &str, name: &str| {
        let (g, v) = (tmp(&format!("{name}.png")), tmp(&format!("{name}.npy")));
        let (ok, text) = run(&[
            "sample",
            "--weights",
            cw.to_str().unwrap(),
            "--size",
            "8",
            "--steps",
            "5",
            "--n",
            "3",
            "--seed",
            seed,
            "--out",
            g.to_str().unwrap(),
            "--npy",
            v.to_str().unwrap(),
        ]);
        assert!(ok, "{text}");
        npy::read(&v).unwrap()
    };
    let (a, b, c) = (draw("1", "s1"), draw("1", "s1b"), draw("2", "s2"));
    assert_eq!(a.shape, vec![3, 1, 8, 8]);
    assert!(a.data == b.data && a.data != c.data);
    let (ok, text) = run(&[
        "sample",
        "--weights",
        cw.to_str().unwrap(),
        "--out",
        tmp("x.png").to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("--size 8"), "{text}");
    let (ok, text) = run(&[
        "sample",
        "--weights",
        cw.to_str().unwrap(),
        "--size",
        "8",
        "--sampler",
        "score-ode",
        "--out",
        tmp("x.png").to_str().unwrap(),
    ]);
    assert!(
        !ok && text.contains("prox-hybrid or prox-backward"),
        "{text}"
    );
    // Weights that break convexity are refused on load, naming the tensor.
    let e = proxdm::Engine::shared().unwrap();
    let (lpn, mut st) = proxdm::io::weights::load_lpn(&w, &e).unwrap();
    let i = lpn.nonneg[0];
    let mut v = st.tensors()[i].to_vec().unwrap();
    v[0] = -0.5;
    let shape = st.tensors()[i].shape().to_vec();
    st.set(i, proxdm::Tensor::from_slice(&e, &shape, &v).unwrap())
        .unwrap();
    let bad = tmp("bad.safetensors");
    proxdm::io::weights::save_lpn(&bad, &lpn.config, "denoise sigma=0.2", &st).unwrap();
    let (ok, text) = run(&[
        "prox",
        "--weights",
        bad.to_str().unwrap(),
        "--input",
        x.to_str().unwrap(),
        "--out",
        y.to_str().unwrap(),
    ]);
    assert!(
        !ok && text.contains("lin.1.weight[0] = -0.5") && text.contains("≥ 0"),
        "{text}"
    );
}

#[test]
fn toy_with_the_shipped_2d_lpn_adds_learned_prox_rows() {
    let (ok, text) = run(&[
        "toy",
        "--prox",
        "lpn",
        "--samplers",
        "prox-hybrid,prox-backward",
        "--steps",
        "5,10",
        "--samples",
        "64",
    ]);
    assert!(ok, "{text}");
    let row = |name: &str| -> Vec<String> {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row in\n{text}"))
            .split_whitespace()
            .skip(1)
            .map(str::to_string)
            .collect()
    };
    // The hybrid LPN sampler is defined at both step counts, the backward one from 10 steps.
    let w2: Vec<f64> = row("lpn-hybrid")
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(
        w2.len() == 2 && w2.iter().all(|v| v.is_finite() && *v > 0.0),
        "{text}"
    );
    assert_eq!(row("lpn-backward")[0], "—");
    let (ok, text) = run(&["toy", "--prox", "magic", "--steps", "5"]);
    assert!(!ok && text.contains("oracle or lpn"), "{text}");
    let (ok, text) = run(&[
        "toy",
        "--prox",
        "lpn",
        "--lpn-weights",
        "weights/mnist-classifier.safetensors",
    ]);
    assert!(!ok && text.contains("not an LPN"), "{text}");
}

#[test]
fn shipped_lpn_weights_run_through_prox_prior_and_denoise() {
    // The MNIST LPN denoiser: a synthetic 28×28 digit-like image (a ring), noise added.
    let w = "weights/mnist-lpn-denoiser.safetensors";
    let img = proxdm::io::image::Image {
        c: 1,
        h: 28,
        w: 28,
        data: (0..784)
            .map(|p| {
                let (y, x) = ((p / 28) as f32 - 13.5, (p % 28) as f32 - 13.5);
                let r = (x * x + y * y).sqrt();
                if (6.0..9.0).contains(&r) { 1.0 } else { -1.0 }
            })
            .collect(),
    };
    let png = tmp("ring.png");
    proxdm::io::image::write_png(&png, &img).unwrap();
    let out = tmp("ring-denoised.png");
    let (ok, text) = run(&[
        "denoise",
        "--weights",
        w,
        "--input",
        png.to_str().unwrap(),
        "--sigma",
        "0.1",
        "--add-noise",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let db = |key: &str| -> f64 {
        text.split(key)
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .trim_end_matches(',')
            .parse()
            .unwrap()
    };
    // The learned denoiser removes noise from a shape it never saw (a ring, not a digit).
    assert!(db("denoised ") > db("noisy ") + 3.0, "{text}");
    // prox (f = ∇ψ) and prior (R) on two images.
    let x = tmp("two.npy");
    let mut data = img.data.clone();
    data.extend(img.data.iter().map(|v| v * 0.5));
    npy::write(
        &x,
        &npy::Array {
            shape: vec![2, 1, 28, 28],
            data,
        },
    )
    .unwrap();
    let (ok, text) = run(&[
        "prox",
        "--weights",
        w,
        "--input",
        x.to_str().unwrap(),
        "--out",
        tmp("fx.npy").to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = run(&[
        "prior",
        "--weights",
        w,
        "--tol",
        "1e-3",
        "--input",
        x.to_str().unwrap(),
        "--out",
        tmp("rx.npy").to_str().unwrap(),
    ]);
    assert!(ok && text.contains("2/2 converged"), "{text}");
    // The 2D LPN on (t, λ): prox and prior at one (t, λ).
    let w2 = "weights/toy-lpn-swissroll.safetensors";
    let p = tmp("pts.npy");
    npy::write(
        &p,
        &npy::Array {
            shape: vec![3, 2],
            data: vec![0.5, -0.2, 0.0, 0.0, -1.0, 0.7],
        },
    )
    .unwrap();
    let (ok, text) = run(&[
        "prox",
        "--weights",
        w2,
        "--input",
        p.to_str().unwrap(),
        "--t",
        "0.3",
        "--lambda",
        "0.05",
        "--out",
        tmp("fp.npy").to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = run(&[
        "prior",
        "--weights",
        w2,
        "--input",
        p.to_str().unwrap(),
        "--t",
        "0.3",
        "--lambda",
        "0.05",
        "--out",
        tmp("rp.npy").to_str().unwrap(),
    ]);
    assert!(ok && text.contains("3/3 converged"), "{text}");
    let (ok, text) = run(&[
        "prox",
        "--weights",
        w2,
        "--input",
        p.to_str().unwrap(),
        "--out",
        tmp("fp.npy").to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("pass --t and --lambda"), "{text}");
}

/// `sample` with no --weights uses the shipped MNIST ProxDM weights: 10 hybrid steps give a
/// grid of the right size, the same images for the same seed and others for another, and
/// images the shipped classifier (trained separately, on real digits) reads as digits of
/// several classes with a confidence that pure noise does not get.
#[test]
fn sample_with_the_shipped_mnist_weights_gives_digits() {
    let sample = |seed: &str| {
        let (png, npy) = (tmp(&format!("s{seed}.png")), tmp(&format!("s{seed}.npy")));
        let (ok, out) = run(&[
            "sample",
            "--n",
            "16",
            "--steps",
            "10",
            "--seed",
            seed,
            "--out",
            png.to_str().unwrap(),
            "--npy",
            npy.to_str().unwrap(),
        ]);
        assert!(ok, "{out}");
        let arr = npy::read(&npy).unwrap();
        assert_eq!(arr.shape, vec![16, 1, 32, 32]);
        (std::fs::read(png).unwrap(), arr.data)
    };
    let (a, x) = sample("1");
    let (b, _) = sample("1");
    let (other, _) = sample("2");
    assert_eq!(a, b, "same seed, same images");
    assert_ne!(a, other, "another seed, other images");
    // 16 images: a 4 × 4 grid of 32-pixel images with 2-pixel gaps → 138 × 138.
    let dec = png::Decoder::new(std::io::Cursor::new(&a))
        .read_info()
        .unwrap();
    assert_eq!((dec.info().width, dec.info().height), (138, 138));

    let e = proxdm::Engine::new().unwrap();
    let scorer = proxdm::diffusion::metric::Scorer::load(
        std::path::Path::new("weights/mnist-classifier.safetensors"),
        &e,
    )
    .unwrap();
    let stats = |images: &[f32]| {
        let (_, probs) = scorer.evaluate(&e, images, 16).unwrap();
        let mut classes = std::collections::BTreeSet::new();
        let mut conf = 0.0;
        for p in probs.chunks(10) {
            let k = (0..10).max_by(|&i, &j| p[i].total_cmp(&p[j])).unwrap();
            classes.insert(k);
            conf += p[k] / 16.0;
        }
        (conf, classes.len())
    };
    let (conf, classes) = stats(&x);
    // The control: uniform noise in [-1, 1] of the same shape.
    let mut r = proxdm::diffusion::train::SplitMix::new(3);
    let noise: Vec<f32> = (0..x.len())
        .map(|_| r.uniform() as f32 * 2.0 - 1.0)
        .collect();
    let (noise_conf, _) = stats(&noise);
    // MNIST is dark background with bright strokes: most pixels near −1.
    let dark = x.iter().filter(|&&v| v < -0.5).count() as f64 / x.len() as f64;
    assert!(x.iter().all(|v| v.is_finite()), "samples must be finite");
    assert!(
        conf > noise_conf + 0.1 && classes >= 5 && dark > 0.75,
        "samples: confidence {conf:.3} over {classes} classes (noise: {noise_conf:.3}), \
         {dark:.3} of pixels dark"
    );
}
