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
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_proxdm"))
        .args(["average", "--out"])
        .args([&out, &pa, &pb, &pb])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&run.stderr)
    );
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
