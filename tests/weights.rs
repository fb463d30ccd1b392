//! Weight files: round trip, the reference's `model.` prefix, every bad-file case refused with a
//! message that names the problem, and averaging files of one model.

use std::collections::HashMap;
use std::path::Path;

use proxdm::graph::Graph;
use proxdm::io::weights::{self, CONFIG_KEY};
use proxdm::models::{Model, ModelConfig, ModelKind, UNetConfig};
use proxdm::{Engine, Tensor};
use safetensors::{Dtype, tensor::TensorView};

fn engine() -> Engine {
    Engine::new().unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
}

fn cfg() -> ModelConfig {
    ModelConfig {
        kind: ModelKind::Prox,
        unet: UNetConfig {
            ch: 32,
            ch_mult: vec![1, 1],
            attn: vec![],
            num_res_blocks: 1,
            dropout: 0.0,
            in_ch: 1,
            ..Default::default()
        },
        sde: Default::default(),
    }
}

/// The model's tensors as (name, shape, bytes), to build files by hand.
fn host_params(seed: u64) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let (_, pb) = Model::build(&cfg(), seed).unwrap();
    pb.into_params()
        .into_iter()
        .map(|(n, s, v)| (n, s, bytemuck::cast_slice(&v).to_vec()))
        .collect()
}

fn file(
    params: &[(String, Vec<usize>, Vec<u8>)],
    dtype: Dtype,
    meta: Option<HashMap<String, String>>,
) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = params
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, meta).unwrap()
}

/// The tensors with the head's 3×3 kernel flattened to 9: a wrong shape, same data.
fn head_flattened(params: &[(String, Vec<usize>, Vec<u8>)]) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let mut shaped = params.to_vec();
    let head = shaped
        .iter_mut()
        .find(|p| p.0 == "unet.head.weight")
        .unwrap();
    let s = head.1.clone();
    head.1 = vec![s[0], s[1], s[2] * s[3]];
    shaped
}

fn meta() -> Option<HashMap<String, String>> {
    Some(HashMap::from([(
        CONFIG_KEY.to_string(),
        serde_json::to_string(&cfg()).unwrap(),
    )]))
}

fn load_err(bytes: &[u8], config: Option<&ModelConfig>) -> String {
    match weights::parse(Path::new("w.safetensors"), bytes, &engine(), config) {
        Ok(_) => panic!("a bad file was accepted"),
        Err(e) => e.to_string(),
    }
}

fn prox_out(e: &Engine, model: &Model, store: &proxdm::graph::ParamStore) -> Vec<f32> {
    let g = Graph::inference(e);
    let p = store.vars(&g);
    let x: Vec<f32> = (0..2 * 8 * 8)
        .map(|i| ((i * 37) % 17) as f32 / 8.0 - 1.0)
        .collect();
    let xv = g.constant(Tensor::from_slice(e, &[2, 1, 8, 8], &x).unwrap());
    model
        .prox(&g, &p, &xv, &[0.2, 0.7], &[0.05, 0.3])
        .unwrap()
        .tensor()
        .to_vec()
        .unwrap()
}

#[test]
fn save_load_round_trip_gives_identical_outputs() {
    let e = engine();
    let (model, pb) = Model::build(&cfg(), 4).unwrap();
    let store = pb.finish(&e).unwrap();
    let dir = std::env::temp_dir().join(format!("proxdm-w-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.safetensors");
    weights::save(&path, &cfg(), &store).unwrap();
    let (model2, store2) = weights::load(&path, &e, None).unwrap();
    assert_eq!(model2.config, cfg());
    assert_eq!(model2.names, model.names);
    assert_eq!(prox_out(&e, &model, &store), prox_out(&e, &model2, &store2));
    // No temporary file is left behind by the atomic write.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn reference_checkpoints_with_model_prefix_and_no_metadata_load_with_a_config() {
    let params: Vec<_> = host_params(2)
        .into_iter()
        .map(|(n, s, b)| (format!("model.{n}"), s, b))
        .collect();
    let bytes = file(&params, Dtype::F32, None);
    let err = load_err(&bytes, None);
    assert!(
        err.contains("no model config") && err.contains("--config"),
        "{err}"
    );
    let (m, store) = weights::parse(
        Path::new("ref.safetensors"),
        &bytes,
        &engine(),
        Some(&cfg()),
    )
    .unwrap();
    assert_eq!(store.len(), m.names.len());
}

#[test]
fn bad_files_are_refused_with_the_reason() {
    let good = host_params(3);
    // Not safetensors at all, and a truncated one.
    assert!(load_err(b"this is not a weight file", None).contains("not a valid safetensors file"));
    let full = file(&good, Dtype::F32, meta());
    assert!(load_err(&full[..full.len() / 2], None).contains("not a valid safetensors file"));
    // A missing tensor.
    let missing: Vec<_> = good
        .iter()
        .filter(|p| p.0 != "unet.head.bias")
        .cloned()
        .collect();
    let err = load_err(&file(&missing, Dtype::F32, meta()), None);
    assert!(
        err.contains("1 missing tensor") && err.contains("unet.head.bias"),
        "{err}"
    );
    // An unexpected tensor.
    let mut extra = good.clone();
    extra.push(("unet.extra.weight".into(), vec![2], vec![0u8; 8]));
    let err = load_err(&file(&extra, Dtype::F32, meta()), None);
    assert!(
        err.contains("unexpected tensor") && err.contains("unet.extra.weight"),
        "{err}"
    );
    // A wrong shape.
    let err = load_err(&file(&head_flattened(&good), Dtype::F32, meta()), None);
    assert!(
        err.contains("unet.head.weight: shape [32, 1, 9], expected [32, 1, 3, 3]"),
        "{err}"
    );
    // A wrong dtype (same bytes read as i32).
    let err = load_err(&file(&good, Dtype::I32, meta()), None);
    assert!(err.contains("dtype I32, expected F32"), "{err}");
    // An unknown config.
    let bad_meta = Some(HashMap::from([(
        CONFIG_KEY.to_string(),
        r#"{"kind":"gan"}"#.to_string(),
    )]));
    let err = load_err(&file(&good, Dtype::F32, bad_meta), None);
    assert!(
        err.contains("unknown model config") && err.contains("gan"),
        "{err}"
    );
    let bad_arch = Some(HashMap::from([(
        CONFIG_KEY.to_string(),
        r#"{"kind":"prox","unet":{"ch":48}}"#.to_string(),
    )]));
    let err = load_err(&file(&good, Dtype::F32, bad_arch), None);
    assert!(err.contains("multiple of 32"), "{err}");
    // Non-finite values.
    let mut nan = good.clone();
    nan[0].2[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let err = load_err(&file(&nan, Dtype::F32, meta()), None);
    assert!(err.contains("not finite"), "{err}");
}

/// The floats of a tensor's little-endian bytes.
fn floats(bytes: &[u8]) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(bytes)
}

/// Runs the proxdm binary with `args`, asserting it succeeds; its standard output.
fn run_proxdm(args: &[&std::ffi::OsStr]) -> String {
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_proxdm"))
        .args(args)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    said
}

/// `weights::average` and `proxdm average`: each tensor is the element-wise mean of the files'
/// (checked against the mean taken here in f64), a file listed twice counts twice, the result
/// loads as the same model and lists its inputs; files of different models are refused.
#[test]
fn averaged_weights_are_the_mean_of_the_files() {
    let dir = std::env::temp_dir().join(format!("proxdm-avg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let (a, b) = (host_params(5), host_params(6));
    let pa = write("a.safetensors", &file(&a, Dtype::F32, meta()));
    let pb = write("b.safetensors", &file(&b, Dtype::F32, meta()));
    let out = dir.join("mean.safetensors");
    let said = run_proxdm(&[
        "average".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
        pa.as_os_str(),
        pb.as_os_str(),
        pb.as_os_str(),
    ]);
    assert!(said.contains("the mean of 3 weight files"), "{said}");
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), a.len());
    for ((name, shape, xa), (_, _, xb)) in a.iter().zip(&b) {
        let view = st.tensor(name).unwrap();
        assert_eq!(view.shape(), shape.as_slice(), "{name}");
        let want: Vec<f32> = floats(xa)
            .iter()
            .zip(floats(xb))
            .map(|(&x, y)| ((x as f64 + 2.0 * y as f64) / 3.0) as f32)
            .collect();
        assert_eq!(floats(view.data()), want, "{name}");
    }
    let (_, meta_read) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let listed = &meta_read.metadata().as_ref().unwrap()[weights::AVERAGED_KEY];
    assert!(
        listed.starts_with("mean of 3: ") && listed.contains("b.safetensors"),
        "{listed}"
    );
    let (model, store) = weights::parse(&out, &bytes, &engine(), None).unwrap();
    assert_eq!((model.config, store.len()), (cfg(), a.len()));
    // An averaged file averages again with a plain one: the list of inputs is not the model.
    let twice = weights::average(&[&out, &pa]).unwrap();
    let st2 = safetensors::SafeTensors::deserialize(&twice).unwrap();
    assert_eq!(st2.len(), a.len());

    let err = |paths: &[&Path]| match weights::average(paths) {
        Ok(_) => panic!("averaging {paths:?} was accepted"),
        Err(e) => e.to_string(),
    };
    let e = err(&[&pa]);
    assert!(e.contains("at least two weight files, got 1"), "{e}");
    let e = err(&[&pa, &dir.join("none.safetensors")]);
    assert!(e.contains("none.safetensors"), "{e}");
    let other = ModelConfig {
        unet: UNetConfig {
            dropout: 0.1,
            ..cfg().unet
        },
        ..cfg()
    };
    let other_meta = Some(HashMap::from([(
        CONFIG_KEY.to_string(),
        serde_json::to_string(&other).unwrap(),
    )]));
    let pc = write("c.safetensors", &file(&b, Dtype::F32, other_meta));
    let e = err(&[&pa, &pc]);
    assert!(
        e.contains("c.safetensors") && e.contains("model config (metadata) differs"),
        "{e}"
    );
    let fewer: Vec<_> = b
        .iter()
        .filter(|p| p.0 != "unet.head.bias")
        .cloned()
        .collect();
    let pd = write("d.safetensors", &file(&fewer, Dtype::F32, meta()));
    let e = err(&[&pa, &pd]);
    assert!(
        e.contains("0 more") && e.contains("1 fewer (unet.head.bias)"),
        "{e}"
    );
    let pe = write(
        "e.safetensors",
        &file(&head_flattened(&b), Dtype::F32, meta()),
    );
    let e = err(&[&pa, &pe]);
    assert!(
        e.contains("unet.head.weight: shape [32, 1, 9], but [32, 1, 3, 3]"),
        "{e}"
    );
    let mut nan = b.clone();
    nan[0].2[..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let pf = write("f.safetensors", &file(&nan, Dtype::F32, meta()));
    let e = err(&[&pa, &pf]);
    assert!(
        e.contains("f.safetensors") && e.contains("not finite"),
        "{e}"
    );
    // The refused runs wrote nothing.
    assert!(!dir.join("none.safetensors").exists());
    std::fs::remove_dir_all(&dir).ok();
}

/// `proxdm deepen`: the output loads as the deeper network, keeps every trained tensor under its
/// new name, records its source, and computes what the input did on the GPU; a file that is
/// already as deep, has no config or is an LPN is refused with the reason.
#[test]
fn deepened_file_loads_and_computes_the_same_prox() {
    let e = engine();
    let dir = std::env::temp_dir().join(format!("proxdm-deepen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = host_params(8);
    let pa = dir.join("a.safetensors");
    std::fs::write(&pa, file(&a, Dtype::F32, meta())).unwrap();
    let out = dir.join("deep.safetensors");
    let args = ["deepen", "--blocks", "2", "--seed", "3", "--out"];
    let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    args.extend([out.as_os_str(), pa.as_os_str()]);
    let said = run_proxdm(&args);
    assert!(
        said.contains("deepened to 2 ResBlock(s) per level"),
        "{said}"
    );
    let bytes = std::fs::read(&out).unwrap();
    let (deep, deep_store) = weights::parse(&out, &bytes, &e, None).unwrap();
    assert_eq!(deep.config.unet.num_res_blocks, 2);
    assert_eq!(
        ModelConfig {
            unet: UNetConfig {
                num_res_blocks: 1,
                ..deep.config.unet.clone()
            },
            ..deep.config.clone()
        },
        cfg()
    );
    let (_, meta_read) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let source = &meta_read.metadata().as_ref().unwrap()[weights::DEEPENED_KEY];
    assert!(
        source.contains("a.safetensors") && source.contains("seed 3"),
        "{source}"
    );
    // Two levels, one block: down = [res 0, down 1, res 2], up = [res 0, res 1, up 2, res 3,
    // res 4]. Two blocks: down = [res 0, new, down 2, res 3, new], up = [res 0, new, res 2,
    // up 3, res 4, new, res 6].
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let moved = [
        ("unet.head.weight", "unet.head.weight"),
        (
            "unet.downblocks.0.block1.2.weight",
            "unet.downblocks.0.block1.2.weight",
        ),
        (
            "unet.downblocks.1.main.weight",
            "unet.downblocks.2.main.weight",
        ),
        (
            "unet.downblocks.2.block2.3.weight",
            "unet.downblocks.3.block2.3.weight",
        ),
        (
            "unet.upblocks.1.shortcut.weight",
            "unet.upblocks.2.shortcut.weight",
        ),
        ("unet.upblocks.2.main.weight", "unet.upblocks.3.main.weight"),
        (
            "unet.upblocks.4.block1.0.bias",
            "unet.upblocks.6.block1.0.bias",
        ),
        (
            "lamb_embedding.embedding_mlp.0.weight",
            "lamb_embedding.embedding_mlp.0.weight",
        ),
    ];
    for (from, to) in moved {
        let src = &a
            .iter()
            .find(|p| p.0 == from)
            .unwrap_or_else(|| panic!("{from}"))
            .2;
        assert_eq!(
            st.tensor(to).unwrap().data(),
            src.as_slice(),
            "{from} → {to}"
        );
    }
    for new in [
        "unet.downblocks.1.block2.3.weight",
        "unet.upblocks.5.block2.3.bias",
    ] {
        assert!(
            floats(st.tensor(new).unwrap().data())
                .iter()
                .all(|&v| v == 0.0),
            "{new}"
        );
    }
    let (model, store) = weights::parse(&pa, &std::fs::read(&pa).unwrap(), &e, None).unwrap();
    let (x, y) = (
        prox_out(&e, &model, &store),
        prox_out(&e, &deep, &deep_store),
    );
    let diff = x
        .iter()
        .zip(&y)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff <= 1e-6, "the deepened prox differs by {diff}");

    let err = |path: &Path, blocks: usize| match weights::deepen(path, blocks, 0) {
        Ok(_) => panic!("deepening {path:?} to {blocks} was accepted"),
        Err(e) => e.to_string(),
    };
    let e1 = err(&pa, 1);
    assert!(e1.contains("already has 1 ResBlock(s) per level"), "{e1}");
    let pn = dir.join("noconfig.safetensors");
    std::fs::write(&pn, file(&a, Dtype::F32, None)).unwrap();
    let e2 = err(&pn, 2);
    assert!(e2.contains("no model config in the metadata"), "{e2}");
    let pd = dir.join("fewer.safetensors");
    std::fs::write(&pd, file(&a[1..], Dtype::F32, meta())).unwrap();
    let e3 = err(&pd, 2);
    assert!(
        e3.contains("fewer.safetensors") && e3.contains("missing tensor"),
        "{e3}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
