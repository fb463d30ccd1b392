//! Kernel benchmarks: each timed iteration records the op, submits and waits for the GPU, so the
//! time is the device's. Throughput is reported in FLOP/s (criterion's "elements" are FLOPs).
//! Sampler throughput is reported in samples/s (elements = samples).
//! `cargo bench` runs them on the adapter `proxdm info` marks (PROXDM_BACKEND/PROXDM_ADAPTER).
//! Matmul and convolutions are timed in every kernel variant the adapter runs (`[portable]`,
//! `[sg8]`), so the tuner's choice can be checked.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use proxdm::diffusion::oracles::Mixture;
use proxdm::diffusion::samplers::{initial_noise, sample_prox, sample_score};
use proxdm::diffusion::{Sde, toy};
use proxdm::ops::{conv2d, matmul};
use proxdm::{Engine, Tensor};

fn filled(e: &Engine, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    Tensor::from_slice(e, shape, &v).unwrap()
}

fn benches(c: &mut Criterion) {
    let e = Engine::new().expect("benchmarks need an adapter: run scripts/setup.sh");
    let info = &e.adapter().info;
    let mut g = c.benchmark_group(format!("{} ({:?})", info.name, info.backend));
    g.sample_size(10);
    for v in e.variants() {
        let tag = v.name();
        for n in [256usize, 1024] {
            let (a, b) = (filled(&e, &[n, n]), filled(&e, &[n, n]));
            g.throughput(Throughput::Elements(2 * (n * n * n) as u64));
            g.bench_function(format!("matmul {n}^3 [{tag}]"), |bench| {
                bench.iter(|| {
                    let c = matmul::matmul_variant(Some(v), &a, &b, false, false, 1.0).unwrap();
                    e.sync().unwrap();
                    c
                })
            });
        }
        for (n, ci, hw, co) in [(16usize, 64usize, 32usize, 64usize), (16, 128, 16, 128)] {
            let x = filled(&e, &[n, ci, hw, hw]);
            let w = filled(&e, &[co, ci, 3, 3]);
            let dy = filled(&e, &[n, co, hw, hw]);
            let flops = 2 * n * co * hw * hw * ci * 9;
            let shape = format!("[{n},{ci},{hw},{hw}]->{co}");
            g.throughput(Throughput::Elements(flops as u64));
            g.bench_function(format!("conv2d 3x3 {shape} [{tag}]"), |bench| {
                bench.iter(|| {
                    let y = conv2d::conv2d_variant(Some(v), &x, &w, None, 1, 1).unwrap();
                    e.sync().unwrap();
                    y
                })
            });
            g.bench_function(format!("conv2d 3x3 grad input {shape} [{tag}]"), |bench| {
                bench.iter(|| {
                    let dx = conv2d::conv2d_input_grad_variant(Some(v), &dy, &w, x.shape(), 1, 1)
                        .unwrap();
                    e.sync().unwrap();
                    dx
                })
            });
            g.bench_function(format!("conv2d 3x3 grad weight {shape} [{tag}]"), |bench| {
                bench.iter(|| {
                    let dw = conv2d::conv2d_weight_grad_variant(Some(v), &x, &dy, w.shape(), 1, 1)
                        .unwrap();
                    e.sync().unwrap();
                    dw
                })
            });
        }
    }
    g.finish();

    // Samplers on the 2D toy target with the exact oracle: 1000 samples × 40 steps.
    let mut g = c.benchmark_group(format!("samplers 1000 x 40 steps, {}", info.name));
    g.sample_size(10);
    let pts = toy::dataset("swissroll", 200, 0).unwrap();
    let flat: Vec<f32> = pts
        .iter()
        .flat_map(|p| [p[0] as f32, p[1] as f32])
        .collect();
    let sde = Sde::default();
    let mix = Mixture::new(sde, Tensor::from_slice(&e, &[200, 2], &flat).unwrap());
    g.throughput(Throughput::Elements(1000));
    for (name, s) in toy::all_samplers() {
        g.bench_function(name, |bench| {
            bench.iter(|| {
                let x = initial_noise(&e, &[1000, 2], 0).unwrap();
                let out = match s {
                    toy::ToySampler::Score(k) => sample_score(&mix, &sde, k, 40, x, 0).unwrap(),
                    toy::ToySampler::Prox(k) => sample_prox(&mix, &sde, k, 40, x, 0).unwrap(),
                    toy::ToySampler::Tweedie(_) => unreachable!("not in all_samplers"),
                };
                e.sync().unwrap();
                out
            })
        });
    }
    g.finish();
}

criterion_group!(kernels, benches);
criterion_main!(kernels);
