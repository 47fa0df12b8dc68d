//! Hot-row cache against direct lookups and against a page-granular cache of the same budget.
//!
//! cargo bench -p ember-benches --bench rowcache -- [--rows 4194304] [--d 64] [--lookups 2000000]
//!     [--file PATH (reused when it exists)]
//!
//! One row-wise INT8 table (`rows × d`, f16 scale and offset per row) served by a
//! `GatherRowsI8` plan of batch 64, with Zipf-distributed ids (exponent 0.9 and 1.1, popular
//! ids scattered over the table as real ones are). For each memory budget it prints the row
//! cache's hit rate (LRU and LFU, 8 ways) beside the hit rate an LRU cache of 4 KiB pages of
//! the same bytes would get — what the OS page cache can do for a mapped table under that
//! budget — and the time per lookup direct and through the cache. By default the model is in
//! memory (the table resident); with `--file PATH` it is written there and memory-mapped, so
//! that under a memory limit (a cgroup) the table's pages really come and go.

use ember_runtime::format::writer::{PlanSpec, SigSpec, Writer};
use ember_runtime::format::*;
use ember_runtime::rowcache::RowCache;
use ember_runtime::{AlignedBuf, CachePolicy, DType, Model, RowCacheConfig, Session};
use std::time::Instant;

const BATCH: usize = 64;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} needs a number")))
        .unwrap_or(default)
}

struct Xs(u64);
impl Xs {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A `GatherRowsI8` model over a random `rows × d` table.
fn model(rows: usize, d: usize) -> Vec<u8> {
    let mut r = Xs(0x1234_5678);
    let mut w = Writer::new();
    let table: Vec<u8> = (0..rows * d).map(|_| r.next() as u8).collect();
    let h = |v: f32| half::f16::from_f32(v).to_bits().to_le_bytes();
    let scales: Vec<u8> = (0..rows).flat_map(|i| h(0.01 + (i % 7) as f32 * 1e-3)).collect();
    let offs: Vec<u8> = (0..rows).flat_map(|i| h((i % 5) as f32 * 0.1)).collect();
    let qp = TensorRole::QuantParam;
    let (ur, ud) = (rows as u32, d as u32);
    let tt =
        w.tensor("table", DType::I8, &[ur, ud], TensorRole::EmbeddingI8Rowwise, REF_NONE, &table);
    let ts = w.tensor("scale", DType::F16, &[ur], qp, REF_NONE, &scales);
    let tb = w.tensor("bias", DType::F16, &[ur], qp, REF_NONE, &offs);
    w.input(SigSpec { name: "id".into(), dtype: DType::I64, dims: vec![] });
    w.output(SigSpec { name: "e".into(), dtype: DType::F32, dims: vec![ud] });
    let rec = |dt: DType, dims: &[u32], off: u64| {
        let mut dd = [0; MAX_RANK];
        dd[..dims.len()].copy_from_slice(dims);
        let nbytes = dims.iter().product::<u32>() as u64 * dt.size() as u64;
        ValueRecord { dtype: dt as u32, rank: dims.len() as u32, dims: dd, offset: off, nbytes }
    };
    let mut op = OpRecord {
        opcode: OpCode::GatherRowsI8 as u16,
        n_inputs: 4,
        n_outputs: 1,
        ..Default::default()
    };
    op.inputs[..4].copy_from_slice(&[tt, ts, tb, 0]);
    op.outputs[0] = 1;
    let b = BATCH as u32;
    w.plan(PlanSpec {
        batch: b,
        arena_size: 8 * BATCH as u64 + 4 * (BATCH * d) as u64,
        inputs: vec![0],
        outputs: vec![1],
        values: vec![rec(DType::I64, &[b], 0), rec(DType::F32, &[b, ud], 8 * BATCH as u64)],
        ops: vec![op],
    });
    w.finish()
}

/// `n` ids, Zipf(`s`) over `rows` ranks (inverse CDF), rank r placed at a hashed row.
fn zipf(rows: usize, s: f64, n: usize, seed: u64) -> Vec<i64> {
    let mut cdf = Vec::with_capacity(rows);
    let mut acc = 0.0;
    for r in 1..=rows {
        acc += (r as f64).powf(-s);
        cdf.push(acc);
    }
    let mut x = Xs(seed);
    (0..n)
        .map(|_| {
            let u = x.unit() * acc;
            let rank = cdf.partition_point(|c| *c < u).min(rows - 1) as u64;
            // An odd multiplier is a bijection modulo a power of two; otherwise close enough.
            (rank.wrapping_mul(0x9E37_79B9_7F4A_7C15) % rows as u64) as i64
        })
        .collect()
}

/// Seconds for every batch of `ids` through `s`.
fn serve<B: AsRef<[u8]>>(s: &mut Session<B>, ids: &[i64]) -> f64 {
    let t = Instant::now();
    for chunk in ids.chunks_exact(BATCH) {
        let b: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
        s.run(&[&b]).expect("run");
        std::hint::black_box(s.output(0));
    }
    t.elapsed().as_secs_f64()
}

/// Hit rate of an LRU cache of 4 KiB pages of the table holding `budget` bytes.
fn page_hit_rate(ids: &[i64], d: usize, budget: usize) -> f64 {
    let mut pages = RowCache::new(1, budget / 4096, 8, CachePolicy::Lru).expect("pages");
    for id in ids {
        pages.get((*id as usize * d / 4096) as u32, |_| {});
    }
    pages.stats().hit_rate()
}

fn main() {
    let (rows, d, lookups) = (arg("--rows", 1 << 22), arg("--d", 64), arg("--lookups", 2_000_000));
    let args: Vec<String> = std::env::args().collect();
    let path = args.iter().position(|a| a == "--file").and_then(|i| args.get(i + 1)).cloned();
    let t = Instant::now();
    // A file already there is reused (so that a run under a memory limit need not build it).
    let reuse = path.as_ref().is_some_and(|p| std::path::Path::new(p).exists());
    let file = if reuse { Vec::new() } else { model(rows, d) };
    println!(
        "table {rows} x {d} INT8 ({:.0} MB with scales), batch {BATCH}, {lookups} lookups per run (built in {:.1} s){}",
        (rows * (d + 4)) as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        path.as_ref().map(|p| format!(", mapped from {p}")).unwrap_or_default()
    );
    match path {
        Some(p) => {
            if !reuse {
                std::fs::write(&p, &file).expect("write the model");
            }
            drop(file);
            let m = ember_runtime::load_file_with(
                std::path::Path::new(&p),
                ember_runtime::Verify::Structure,
            )
            .expect("model");
            measure(&m, rows, d, lookups);
        }
        None => {
            let m = Model::parse(AlignedBuf::from_bytes(&file)).expect("model");
            drop(file);
            measure(&m, rows, d, lookups);
        }
    }
}

fn measure<B: AsRef<[u8]>>(m: &Model<B>, rows: usize, d: usize, lookups: usize) {
    let mut direct = Session::new(m, BATCH).expect("session");
    for s in [0.9, 1.1] {
        let ids = zipf(rows, s, lookups, 7);
        let warm = zipf(rows, s, lookups / 4, 8);
        serve(&mut direct, &warm);
        let td = serve(&mut direct, &ids);
        println!("zipf {s}: direct {:.1} ns/lookup", td / lookups as f64 * 1e9);
        for budget in [8usize << 20, 32 << 20] {
            let pages = page_hit_rate(&ids, d, budget);
            let mut line = format!(
                "  budget {:>3} MB: 4 KiB-page LRU hit rate {:>5.1}%",
                budget >> 20,
                pages * 100.0
            );
            for policy in [CachePolicy::Lru, CachePolicy::Lfu] {
                let mut c = Session::new(m, BATCH).expect("session");
                c.set_row_cache(RowCacheConfig { bytes: budget, policy, ways: 8 }).expect("cache");
                serve(&mut c, &warm);
                c.reset_row_cache_stats();
                let tc = serve(&mut c, &ids);
                let st = c.row_cache_stats()[0].1;
                line += &format!(
                    " | row {} {:>5.1}% ({} rows) {:.1} ns/lookup",
                    policy.name(),
                    st.hit_rate() * 100.0,
                    st.capacity,
                    tc / lookups as f64 * 1e9
                );
            }
            println!("{line}");
        }
    }
}
