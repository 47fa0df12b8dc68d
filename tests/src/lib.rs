//! Shared helpers of the test suites: the onnxruntime oracle cases, a seeded generator, named
//! tolerances, and a way to re-seal forged `.ember` files (recompute their checksums).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Tolerances, by name, used across the suites.
pub mod tol {
    /// Float path (no quantization) against onnxruntime: relative L2 error.
    pub const FLOAT_REL_L2: f64 = 1e-5;
    /// INT8 outputs against float: cosine and Pearson correlation.
    pub const INT8_COSINE: f64 = 0.999;
    pub const INT8_PEARSON: f64 = 0.999;
}

/// A command for one of the workspace's binaries (`CARGO_BIN_EXE_*`), prefixed by
/// `EMBER_TEST_RUNNER` (e.g. a qemu command line) when the suite runs cross-compiled.
pub fn bin_command(path: &str) -> std::process::Command {
    match std::env::var("EMBER_TEST_RUNNER") {
        Ok(r) if !r.trim().is_empty() => {
            let mut parts = r.split_whitespace();
            let mut c = std::process::Command::new(parts.next().unwrap_or_default());
            c.args(parts).arg(path);
            c
        }
        _ => std::process::Command::new(path),
    }
}

/// Asserts a command-line failure: exit status 1, `needle` in stderr, no panic, and `out` (when
/// given) not created, with no temporary file left beside it.
pub fn cli_fails(o: &std::process::Output, needle: &str, out: Option<&Path>) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "expected exit 1; stderr: {err}");
    assert!(err.contains(needle), "stderr does not mention '{needle}': {err}");
    assert!(!err.contains("panicked") && !err.contains("internal error"), "panicked: {err}");
    if let Some(p) = out {
        assert!(!p.exists(), "{} was left behind", p.display());
        let Ok(dir) = std::fs::read_dir(p.parent().unwrap()) else { return };
        let leftovers: Vec<_> =
            dir.flatten().filter(|e| e.file_name().to_string_lossy().contains(".tmp")).collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}

/// Asserts a command-line success and returns its stdout.
pub fn cli_ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Folder holding the oracle cases (made by tests/oracle/make_cases.py). `EMBER_ORACLE_DIR`
/// points at a ready one; otherwise it is generated once per process under the target folder.
pub fn oracle_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(d) = std::env::var("EMBER_ORACLE_DIR") {
            let p = PathBuf::from(d);
            assert!(
                p.join("cases.json").exists(),
                "EMBER_ORACLE_DIR={} has no cases.json",
                p.display()
            );
            return p;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = std::env::temp_dir().join(format!("ember-oracle-{}", std::process::id()));
        let status = std::process::Command::new("python3")
            .arg(root.join("oracle/make_cases.py"))
            .arg(&out)
            .status()
            .expect(
                "python3 must be installed to run the oracle suites (see README: scripts/test.sh)",
            );
        assert!(
            status.success(),
            "tests/oracle/make_cases.py failed: are numpy, onnx and onnxruntime installed?"
        );
        out
    })
}

/// The case folder `name` under [`oracle_dir`].
pub fn case(name: &str) -> PathBuf {
    oracle_dir().join(name)
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn i8(&mut self) -> i8 {
        self.next_u64() as i8
    }
}

/// Recomputes every checksum of an `.ember` file whose bytes were edited, so that the reader's
/// structural checks (not just its CRCs) are exercised. Leaves unreadable headers alone.
pub fn reseal(b: &mut [u8]) {
    if b.len() < 64 {
        return;
    }
    let n = u32::from_le_bytes([b[12], b[13], b[14], b[15]]) as usize;
    let table_end = 64 + n.min(64) * 32;
    if table_end > b.len() {
        return;
    }
    for i in 0..n.min(64) {
        let e = 64 + i * 32;
        let off = u64::from_le_bytes(b[e + 8..e + 16].try_into().unwrap_or([0; 8]));
        let len = u64::from_le_bytes(b[e + 16..e + 24].try_into().unwrap_or([0; 8]));
        if let Some(end) = off.checked_add(len).filter(|x| *x <= b.len() as u64) {
            let crc = crc32fast::hash(&b[off as usize..end as usize]);
            b[e + 24..e + 28].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let tcrc = crc32fast::hash(&b[64..table_end]);
    b[24..28].copy_from_slice(&tcrc.to_le_bytes());
    let hcrc = crc32fast::hash(&b[..28]);
    b[28..32].copy_from_slice(&hcrc.to_le_bytes());
}

/// Section table entries of an `.ember` file: (kind, offset, length).
pub fn sections(b: &[u8]) -> Vec<(u32, usize, usize)> {
    let n = u32::from_le_bytes([b[12], b[13], b[14], b[15]]) as usize;
    (0..n)
        .map(|i| {
            let e = 64 + i * 32;
            let kind = u32::from_le_bytes(b[e..e + 4].try_into().unwrap_or([0; 4]));
            let off = u64::from_le_bytes(b[e + 8..e + 16].try_into().unwrap_or([0; 8])) as usize;
            let len = u64::from_le_bytes(b[e + 16..e + 24].try_into().unwrap_or([0; 8])) as usize;
            (kind, off, len)
        })
        .collect()
}

/// Builds ONNX models in Rust (through the prost types), for tests that need no Python.
pub mod onnx_build {
    use ember_quantize::onnx::*;
    use prost::Message;

    pub fn tensor_f32(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
        TensorProto {
            name: Some(name.into()),
            dims: dims.to_vec(),
            data_type: Some(1),
            float_data: v.to_vec(),
            ..Default::default()
        }
    }
    pub fn tensor_i64(name: &str, dims: &[i64], v: &[i64]) -> TensorProto {
        TensorProto {
            name: Some(name.into()),
            dims: dims.to_vec(),
            data_type: Some(7),
            int64_data: v.to_vec(),
            ..Default::default()
        }
    }
    /// A tensor value; a dim of -1 is symbolic ("N" for the first, "D{i}" for others).
    pub fn value(name: &str, elem: i32, dims: &[i64]) -> ValueInfoProto {
        use tensor_shape_proto::{dimension::Value, Dimension};
        let dim = dims
            .iter()
            .enumerate()
            .map(|(i, d)| Dimension {
                value: Some(if *d < 0 {
                    Value::DimParam(if i == 0 { "N".into() } else { format!("D{i}") })
                } else {
                    Value::DimValue(*d)
                }),
                ..Default::default()
            })
            .collect();
        ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(elem),
                    shape: Some(TensorShapeProto { dim }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
    pub fn node(
        op: &str,
        name: &str,
        ins: &[&str],
        outs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> NodeProto {
        NodeProto {
            op_type: Some(op.into()),
            name: Some(name.into()),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: outs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        }
    }
    pub fn attr_int(name: &str, v: i64) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            r#type: Some(2),
            i: Some(v),
            ..Default::default()
        }
    }
    pub fn model(
        nodes: Vec<NodeProto>,
        inputs: Vec<ValueInfoProto>,
        outputs: Vec<ValueInfoProto>,
        inits: Vec<TensorProto>,
    ) -> Vec<u8> {
        ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(GraphProto {
                node: nodes,
                input: inputs,
                output: outputs,
                initializer: inits,
                name: Some("g".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }
}

/// The real MiniLM-L3 export and its oracle folder (calib.npz, eval.npz, expected.npz).
/// The model comes from `EMBER_MINILM`, else the cache that scripts/setup.sh fills; the oracle is
/// generated under [`oracle_dir`] when missing.
pub fn minilm() -> (PathBuf, PathBuf) {
    static DIR: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIR.get_or_init(|| {
        let model = std::env::var("EMBER_MINILM").map(PathBuf::from).unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            let cache = std::env::var("EMBER_CACHE").unwrap_or(format!("{home}/.cache/ember"));
            PathBuf::from(cache).join("minilm/paraphrase-MiniLM-L3-v2.onnx")
        });
        assert!(
            model.exists(),
            "{} is missing: run scripts/setup.sh (it fetches the pinned MiniLM export)",
            model.display()
        );
        let dir = oracle_dir().join("minilm");
        if !dir.join("expected.npz").exists() {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let ok = std::process::Command::new("python3")
                .arg(root.join("oracle/minilm.py"))
                .arg(&model)
                .arg(&dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "tests/oracle/minilm.py failed (tokenizers and onnxruntime installed?)");
        }
        (model, dir)
    })
    .clone()
}
