//! Engine behaviour on a real adapter (lavapipe in CI): recording without submits, buffer reuse,
//! the params ring, workgroup grids past the per-dimension limit, and clear errors.

use proxdm::ops::{elementwise, matmul, reduce};
use proxdm::{Engine, Tensor};

/// A private engine, so counters are not disturbed by tests running in parallel.
fn engine() -> Engine {
    Engine::new().unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
}

#[test]
fn ops_are_recorded_and_submitted_once_per_flush() {
    let e = engine();
    let x = Tensor::from_slice(&e, &[4, 8], &[0.5; 32]).unwrap();
    let (d0, s0) = e.counters();
    let mut y = x.clone();
    for _ in 0..20 {
        y = elementwise::silu(&y).unwrap();
    }
    let (d1, s1) = e.counters();
    assert_eq!(d1 - d0, 20, "20 dispatches recorded");
    assert_eq!(s1, s0, "nothing submitted before a flush or read");
    e.flush().unwrap();
    assert_eq!(e.counters().1, s0 + 1, "one submit for the whole step");
    // A read-back submits (nothing pending now, but the copy itself) once more and gives the
    // value of silu applied 20 times.
    let mut want = 0.5f64;
    for _ in 0..20 {
        want /= 1.0 + (-want).exp();
    }
    let got = y.to_vec().unwrap();
    assert!((got[0] as f64 - want).abs() < 1e-6, "{} vs {want}", got[0]);
    assert_eq!(e.counters().1, s0 + 2);
}

#[test]
fn buffer_pool_reuses_buffers_across_steps() {
    let e = engine();
    let x = Tensor::from_slice(&e, &[16, 32], &vec![0.1; 512]).unwrap();
    let w = Tensor::from_slice(&e, &[24, 32], &vec![0.2; 768]).unwrap();
    let step = || {
        let y = matmul::linear(&x, &w, None).unwrap();
        let z = elementwise::silu(&y).unwrap();
        let s = reduce::sum(&z, &[0, 1]).unwrap();
        e.flush().unwrap();
        s
    };
    step();
    step();
    let after_warmup = e.pool_stats().created;
    for _ in 0..50 {
        step();
    }
    let stats = e.pool_stats();
    assert_eq!(
        stats.created, after_warmup,
        "no buffer growth across 50 steps: {stats:?}"
    );
    assert!(stats.reused >= 150, "{stats:?}");
    let s = step().item().unwrap();
    let silu = |v: f64| v / (1.0 + (-v).exp());
    let want = 16.0 * 24.0 * silu(32.0 * 0.1 * 0.2);
    assert!((s as f64 - want).abs() < 1e-3 * want, "{s} vs {want}");
}

#[test]
fn params_ring_overflow_submits_and_stays_correct() {
    let e = engine();
    let x = Tensor::from_slice(&e, &[3], &[1.0, 2.0, 3.0]).unwrap();
    let acc = Tensor::zeros(&e, &[3]).unwrap();
    // More dispatches than the 4 MiB ring holds at 256-byte slots (16384).
    for _ in 0..20_000 {
        elementwise::axpy(0.5, &x, &acc).unwrap();
    }
    assert_eq!(acc.to_vec().unwrap(), vec![10_000.0, 20_000.0, 30_000.0]);
}

#[test]
fn grids_spill_past_the_per_dimension_workgroup_limit() {
    let e = engine();
    let maxd = e.limits().max_compute_workgroups_per_dimension as usize;
    let n = maxd * 256 + 1000;
    let g = e.grid(n, 256);
    assert!(
        g[1] > 1 && (g[0] as usize) * (g[1] as usize) * 256 >= n,
        "{g:?}"
    );
    let x = Tensor::full(&e, &[n], 2.0).unwrap();
    let y = elementwise::scale(&x, 1.5).unwrap().to_vec().unwrap();
    assert_eq!(y.len(), n);
    assert!(y.iter().all(|&v| v == 3.0), "every element written once");
}

#[test]
fn host_writes_wait_for_recorded_work() {
    let e = engine();
    let x = Tensor::from_slice(&e, &[4], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    let y = elementwise::scale(&x, 10.0).unwrap();
    // Overwriting x after recording y = 10x must not change y.
    x.write(&[0.0; 4]).unwrap();
    assert_eq!(y.to_vec().unwrap(), vec![10.0, 20.0, 30.0, 40.0]);
    assert_eq!(x.to_vec().unwrap(), vec![0.0; 4]);
    let err = x.write(&[0.0; 3]).unwrap_err().to_string();
    assert!(err.contains("write") && err.contains("[4]"), "{err}");
}

#[test]
fn adapter_report_and_limits_are_the_adapters_own() {
    let e = engine();
    let r = e.adapter();
    assert!(!r.info.name.is_empty());
    assert!(r.unsupported.is_none());
    // The device was opened with the adapter's limits, not the 128 MiB default binding.
    assert_eq!(
        e.limits().max_storage_buffer_binding_size,
        r.limits.max_storage_buffer_binding_size
    );
}

#[test]
fn unknown_adapter_name_is_a_clear_error() {
    let req = proxdm::engine::AdapterRequest {
        backend: None,
        name: Some("no-such-gpu-xyz".into()),
    };
    let err = Engine::with_request(&req).unwrap_err().to_string();
    assert!(
        err.contains("no-such-gpu-xyz") && err.contains("proxdm info"),
        "{err}"
    );
}

#[test]
fn a_lost_device_gives_an_error_not_a_hang() {
    let e = engine();
    let x = Tensor::from_slice(&e, &[4], &[1.0; 4]).unwrap();
    assert_eq!(x.to_vec().unwrap(), vec![1.0; 4]);
    e.device().destroy();
    let r = elementwise::scale(&x, 2.0).and_then(|y| y.to_vec());
    let err = r
        .expect_err("work on a destroyed device must fail")
        .to_string();
    assert!(err.contains("lost") || err.contains("destroyed"), "{err}");
}
