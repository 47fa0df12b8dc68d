//! PTX for the running GPU: embedded in the model, cached beside it, or compiled by NVRTC.
//!
//! Embedded PTX is the tensor `cuda.ptx.sm_XY` (u8 bytes of the PTX text), valid when the
//! model's `cuda.kernels` metadata equals [`ember_kernels::cuda::source_hash`] (PTX from other
//! kernel sources is ignored, and the reason reported). PTX for compute capability X.Y runs on
//! any GPU of X.Y or newer (the driver JIT-compiles it), so the newest embedded arch not above
//! the device's is chosen. Without one, NVRTC compiles the sources for the device and the result
//! is cached as `MODEL.cuda-sm_XY-HASH.ptx` (written to a temp file, synced, renamed).

use super::CudaError;
use cudarc::nvrtc;
use ember_kernels::cuda::{source_hash, ARCHS, SOURCES};
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::vec::Vec;

/// Name prefix of embedded PTX tensors (`cuda.ptx.sm_87`).
pub const PTX_TENSOR_PREFIX: &str = "cuda.ptx.sm_";
/// Metadata key holding the hex source hash the embedded PTX was built from.
pub const PTX_META_KEY: &str = "cuda.kernels";

/// Whether NVRTC can be loaded (never panics).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the NVRTC library by its known names; nothing is called.
    unsafe { nvrtc::sys::is_culib_present() }
}

/// `compute_XY` for a supported SM (NVRTC wants a `'static` name).
fn arch_name(sm: u32) -> Option<&'static str> {
    Some(match sm {
        61 => "compute_61",
        70 => "compute_70",
        72 => "compute_72",
        75 => "compute_75",
        80 => "compute_80",
        86 => "compute_86",
        87 => "compute_87",
        89 => "compute_89",
        90 => "compute_90",
        _ => return None,
    })
}

/// The whole program: every source of `ember_kernels::cuda::SOURCES`, in order.
pub fn program() -> String {
    let mut s = String::new();
    for (name, src) in SOURCES {
        s.push_str(&std::format!("// ---- {name}\n{src}\n"));
    }
    s
}

/// Compiles every kernel to PTX for `sm` (e.g. 87) with NVRTC.
pub fn compile_ptx(sm: u32) -> Result<String, CudaError> {
    let arch = arch_name(sm).ok_or_else(|| {
        CudaError::Compile(std::format!("unsupported architecture sm_{sm} (supported: {ARCHS:?})"))
    })?;
    if !nvrtc_present() {
        return Err(CudaError::Compile(
            "NVRTC (libnvrtc.so.12) not found: install the CUDA toolkit or PyPI \
             nvidia-cuda-nvrtc-cu12 and put its lib directory on LD_LIBRARY_PATH"
                .to_string(),
        ));
    }
    let src = program();
    let compiled = std::panic::catch_unwind(move || {
        let opts = nvrtc::CompileOptions {
            arch: Some(arch),
            name: Some("ember_kernels.cu".to_string()),
            options: std::vec!["--std=c++14".to_string()],
            ..Default::default()
        };
        nvrtc::compile_ptx_with_opts(src, opts)
    });
    match compiled {
        Ok(Ok(ptx)) => Ok(ptx.to_src()),
        Ok(Err(nvrtc::CompileError::CompileError { log, .. })) => Err(CudaError::Compile(
            std::format!("NVRTC rejected the sources for sm_{sm}:\n{}", log.to_string_lossy()),
        )),
        Ok(Err(e)) => Err(CudaError::Compile(std::format!("NVRTC failed for sm_{sm}: {e}"))),
        Err(_) => Err(CudaError::Compile(
            "the NVRTC library lacks a required entry point (too old?)".to_string(),
        )),
    }
}

/// Where a session's PTX came from (reported by `ember run --device cuda`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PtxSource {
    /// Embedded in the model, built for `sm_{0}`.
    Embedded(u32),
    /// Read from the cache file beside the model.
    Cache(PathBuf),
    /// Compiled now by NVRTC; cached at the path when it could be written.
    Compiled(Option<PathBuf>),
}

/// Cache file of the PTX for `sm` beside `model`.
pub fn cache_path(model: &Path, sm: u32) -> PathBuf {
    let mut name = model.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(std::format!(".cuda-sm_{sm}-{:016x}.ptx", source_hash()));
    model.with_file_name(name)
}

/// PTX for a GPU of compute capability `sm`: embedded (`embedded` lists the model's
/// `(sm, ptx bytes)` and `kernels_meta` its `cuda.kernels` value), cached beside `model_path`,
/// or compiled now. `notes` receives why embedded PTX was not used, if it was not.
pub fn ptx_for(
    embedded: &[(u32, &[u8])],
    kernels_meta: Option<&str>,
    model_path: Option<&Path>,
    sm: u32,
    notes: &mut Vec<String>,
) -> Result<(String, PtxSource), CudaError> {
    let want = std::format!("{:016x}", source_hash());
    if !embedded.is_empty() {
        if kernels_meta != Some(want.as_str()) {
            notes.push(std::format!(
                "embedded PTX ignored: built from other kernel sources ({} vs {want})",
                kernels_meta.unwrap_or("none")
            ));
        } else if let Some((arch, bytes)) =
            embedded.iter().filter(|(a, _)| *a <= sm).max_by_key(|(a, _)| *a)
        {
            let text = core::str::from_utf8(bytes).map_err(|_| {
                CudaError::Model(std::format!("embedded PTX sm_{arch} is not text"))
            })?;
            return Ok((text.to_string(), PtxSource::Embedded(*arch)));
        } else {
            let archs: Vec<u32> = embedded.iter().map(|(a, _)| *a).collect();
            notes.push(std::format!(
                "embedded PTX is for {archs:?}, all newer than this GPU (sm_{sm})"
            ));
        }
    }
    let cache = model_path.map(|p| cache_path(p, sm));
    if let Some(c) = &cache {
        if let Ok(text) = std::fs::read_to_string(c) {
            if text.contains(".entry") {
                return Ok((text, PtxSource::Cache(c.clone())));
            }
        }
    }
    let text = compile_ptx(sm).map_err(|e| match e {
        CudaError::Compile(why) => CudaError::Compile(std::format!(
            "the model carries no usable PTX for sm_{sm} and it cannot be built here ({why}); \
             re-quantize with --board or --cuda-arch sm_{sm} on a host with NVRTC"
        )),
        other => other,
    })?;
    let written = cache.filter(|c| write_atomic(c, text.as_bytes()).is_ok());
    Ok((text, PtxSource::Compiled(written)))
}

/// Writes `bytes` to `path` through a synced temp file and a rename: never a partial file.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(std::format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    let done = f.write_all(bytes).and_then(|_| f.sync_all());
    drop(f);
    if let Err(e) = done.and_then(|_| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}
