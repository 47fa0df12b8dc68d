//! Hot-row caches on a real matrix-factorization model (row-wise INT8 and INT4 tables): served
//! through a cache far smaller than the tables, every output has the bits of the uncached run,
//! the counters add up, skewed traffic hits, and small tables are left direct.

use ember_quantize::HostTensor;
use ember_runtime::{CachePolicy, Model, RowCacheConfig, Session};
use ember_tests::Rng;
use std::collections::BTreeMap;

const USERS: usize = 3000;
const ITEMS: usize = 500;
const K: usize = 32;

/// The model quantized with `bits`-bit tables, batch 16.
fn model(bits: u32) -> Vec<u8> {
    let mut r = Rng::new(7);
    let mut v = |n: usize| (0..n).map(|_| r.f32() * 0.3).collect::<Vec<f32>>();
    let (p, q, bu, bi) = (v(USERS * K), v(ITEMS * K), v(USERS), v(ITEMS));
    let onnx = ember_cli::mf_model::onnx_bytes(K, &p, &q, &bu, &bi, (3.5, 0.5, 5.0));
    let mut calib = BTreeMap::new();
    calib.insert("user".to_string(), HostTensor::i64(vec![64], (0..64).collect()));
    calib.insert("item".to_string(), HostTensor::i64(vec![64], (0..64).collect()));
    let opts = ember_quantize::Options {
        bits: 8,
        embedding_bits: Some(bits),
        group: 16,
        batches: vec![16],
        ..Default::default()
    };
    ember_quantize::quantize(&onnx, &calib, &opts, &mut |_, _, _| {}).unwrap().0
}

/// Ids drawn log-uniformly (≈ Zipf 1: a few rows take most lookups), hashed so that the hot
/// rows are spread over the table as real popular ids are.
fn skewed(r: &mut Rng, n: usize) -> i64 {
    let u = r.below(1 << 30) as f64 / (1u64 << 30) as f64;
    let rank = ((n as f64).powf(u) - 1.0) as u64;
    (rank.wrapping_mul(0x9E37_79B9_7F4A_7C15) % n as u64) as i64
}

fn bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn cached_tables_serve_the_same_bits_and_count_hits() {
    for bits in [8u32, 4] {
        let file = model(bits);
        let m = Model::parse(ember_runtime::AlignedBuf::from_bytes(&file)).unwrap();
        let mut plain = Session::new(&m, 16).unwrap();
        for policy in [CachePolicy::Lru, CachePolicy::Lfu] {
            let mut cached = Session::new(&m, 16).unwrap();
            // Rows are cached as stored: 36 bytes in INT8 (32 codes, f16 scale and offset),
            // 24 in INT4 (16 bytes of codes, two groups' scales and offsets). The user table (3000 rows: 108 KB in INT8,
            // 72 KB in INT4) exceeds it; the item table (500 rows: 18 KB in INT8, 12 KB in
            // INT4) exceeds it only in INT8.
            let cfg = RowCacheConfig { bytes: 16 << 10, policy, ways: 4 };
            let ops = cached.set_row_cache(cfg).unwrap();
            assert_eq!(ops.len(), if bits == 8 { 2 } else { 1 }, "{bits}-bit: {ops:?}");
            let names = m.op_names(16);
            let mut r = Rng::new(11);
            let mut lookups = 0u64;
            for _ in 0..200 {
                let u: Vec<i64> = (0..16).map(|_| skewed(&mut r, USERS)).collect();
                let i: Vec<i64> = (0..16).map(|_| skewed(&mut r, ITEMS)).collect();
                let (u, i) = (bytes(&u), bytes(&i));
                plain.run(&[&u, &i]).unwrap();
                cached.run(&[&u, &i]).unwrap();
                let (a, b) = (plain.output_f32(0).unwrap(), cached.output_f32(0).unwrap());
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{bits}-bit {policy:?}: cached {b:?} vs direct {a:?}");
                lookups += 16;
            }
            let stats = cached.row_cache_stats();
            // The user table's cache (450-680 of 3000 rows) must have given rows up.
            assert!(stats.iter().any(|(_, st)| st.evictions > 0), "{stats:?}");
            for (op, st) in stats {
                assert_eq!(st.hits + st.misses, lookups, "op {op} ({})", names[op]);
                assert!(st.misses >= st.evictions, "{st:?}");
                let row_bytes = if bits == 8 { K + 4 } else { K / 2 + 4 * (K / 16) };
                assert_eq!(st.capacity, (16 << 10) / row_bytes / 4 * 4, "{st:?}");
                // 450-680 of 3000 rows under ≈ Zipf(1) traffic: over a third of lookups hit.
                assert!(st.hit_rate() > 0.35, "{bits}-bit {policy:?} op {op}: {st:?}");
            }
            // A bad id fails the batch the same way, and leaves the cache as it was.
            let good: Vec<i64> = (0..16).map(|j| j * 7).collect();
            let mut bad = good.clone();
            bad[9] = USERS as i64;
            let (gi, bu) = (bytes(&good), bytes(&bad));
            let (e1, e2) = (plain.run(&[&bu, &gi]), cached.run(&[&bu, &gi]));
            assert!(e1.is_err() && e1 == e2, "{e1:?} vs {e2:?}");
            plain.run(&[&gi, &gi]).unwrap();
            cached.run(&[&gi, &gi]).unwrap();
            assert_eq!(plain.output(0), cached.output(0), "after a failed batch");
            cached.reset_row_cache_stats();
            assert!(cached.row_cache_stats().iter().all(|(_, s)| s.hits + s.misses == 0));
        }
        // A budget above every table's size caches nothing; zero removes the caches.
        let mut s = Session::new(&m, 16).unwrap();
        let cfg = RowCacheConfig { bytes: 1 << 30, ..Default::default() };
        assert!(s.set_row_cache(cfg).unwrap().is_empty());
        let cfg = RowCacheConfig { bytes: 1 << 10, ..Default::default() };
        assert_eq!(s.set_row_cache(cfg).unwrap().len(), 2, "both tables exceed 1 KiB");
        assert!(s.set_row_cache(RowCacheConfig { bytes: 0, ..cfg }).unwrap().is_empty());
        assert!(s.row_cache_stats().is_empty());
    }
}

#[test]
fn bench_cycles_the_input_and_reports_the_caches() {
    let d = std::env::temp_dir().join(format!("ember-rowcache-{}", std::process::id()));
    // A directory of an earlier run with the same process id would hold its outputs.
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let (m, ids) = (d.join("mf.ember"), d.join("ids.npz"));
    std::fs::write(&m, model(8)).unwrap();
    let mut r = Rng::new(3);
    let n = 16 * 40;
    let mut a = BTreeMap::new();
    a.insert(
        "user".to_string(),
        HostTensor::i64(vec![n], (0..n).map(|_| skewed(&mut r, USERS)).collect()),
    );
    a.insert(
        "item".to_string(),
        HostTensor::i64(vec![n], (0..n).map(|_| skewed(&mut r, ITEMS)).collect()),
    );
    ember_quantize::npz::write_npz(&ids, &a).unwrap();
    let bench = |extra: &[&str]| {
        let mut c = ember_tests::bin_command(env!("CARGO_BIN_EXE_ember"));
        c.arg("bench").arg(&m).arg("--input").arg(&ids);
        c.args(["--batch", "16", "--iters", "80", "--warmup", "5", "--threads", "1"]);
        c.args(extra).output().unwrap()
    };
    let out =
        ember_tests::cli_ok(&bench(&["--row-cache", "16K", "--row-cache-policy", "lru", "--json"]));
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["input_batches"], 40, "{j}");
    let caches = j["row_cache"].as_array().expect("row_cache array");
    assert_eq!(caches.len(), 2, "{j}");
    for c in caches {
        let (h, mi) = (c["hits"].as_u64().unwrap(), c["misses"].as_u64().unwrap());
        assert_eq!(h + mi, 80 * 16, "the timed runs' lookups only: {c}");
        assert_eq!(c["policy"], "lru");
        let rate = c["hit_rate"].as_f64().unwrap();
        assert!(rate > 0.3 && rate <= 1.0, "{c}");
    }
    // Without the flag no cache and no key; a budget above the tables caches nothing, said so.
    let j: serde_json::Value =
        serde_json::from_str(&ember_tests::cli_ok(&bench(&["--json"]))).unwrap();
    assert!(j.get("row_cache").is_none(), "{j}");
    let o = bench(&["--row-cache", "1G"]);
    ember_tests::cli_ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("none cached"));
    // Bad values are usage errors (clap's exit status 2) that name the problem.
    for (args, needle) in [
        (&["--row-cache", "12Q"][..], "unknown size suffix 'Q'"),
        (&["--row-cache", "1M", "--row-cache-policy", "mru"][..], "not lru or lfu"),
    ] {
        let o = bench(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&d);
}
