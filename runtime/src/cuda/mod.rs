//! The CUDA backend (feature `cuda`): a [`CudaSession`] runs one plan of a [`crate::Model`] on an
//! NVIDIA GPU through cudarc, with the driver and NVRTC loaded at run time (the binary builds and
//! runs without CUDA installed; [`probe`] then reports "no CUDA device").
//!
//! Kernels are the CUDA C sources of `ember_kernels::cuda`, as PTX: embedded in the `.ember`
//! file by `quantize --board/--cuda-arch` (tensors `cuda.ptx.sm_XY`, metadata `cuda.kernels`
//! = the sources' hash), else compiled by NVRTC at first load and cached beside the model
//! ([`ptx_for`]). Weights are used in place on an integrated GPU (the mapped file registered
//! read-only with the driver) and copied once to a discrete GPU. Each session captures its plan
//! once as a CUDA graph; a run is then: inputs in, one graph launch, outputs out.

mod exec;
mod ptx;

pub use exec::{CudaSession, WeightsMode};
pub use ptx::{compile_ptx, nvrtc_present, ptx_for, PtxSource, PTX_META_KEY, PTX_TENSOR_PREFIX};

use cudarc::driver::{result, sys};
use std::fmt;
use std::string::{String, ToString};

/// Where `ember run/bench/serve` execute: `cpu`, `cuda[:N]` or `auto` (the GPU when one is
/// usable, else the CPU, saying so).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda(usize),
    Auto,
}

impl DeviceChoice {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "auto" => Ok(Self::Auto),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(std::format!("unknown device '{s}' (expected cpu, cuda, cuda:N or auto)")),
            },
        }
    }
}

#[derive(Debug)]
pub enum CudaError {
    /// No usable GPU: the driver library is absent, it reports no device, or the ordinal is
    /// out of range.
    NoDevice(String),
    /// NVRTC is absent or rejected the sources.
    Compile(String),
    /// A driver call failed.
    Driver(String),
    /// The model cannot run on this backend (names the op or the problem).
    Model(String),
    /// A run failed (wrong inputs, an index out of range).
    Run(crate::Error),
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDevice(why) => write!(f, "no CUDA device: {why}"),
            Self::Compile(why) => write!(f, "CUDA kernel compilation: {why}"),
            Self::Driver(why) => write!(f, "CUDA driver: {why}"),
            Self::Model(why) => write!(f, "CUDA backend: {why}"),
            Self::Run(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CudaError {}

pub(crate) fn driver_err(what: &str) -> impl Fn(result::DriverError) -> CudaError + '_ {
    move |e| CudaError::Driver(std::format!("{what}: {e:?}"))
}

/// What [`probe`] found.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability as major·10 + minor (87 for Orin).
    pub sm: u32,
    /// Shares DRAM with the CPU (Jetson): weights are used in place.
    pub integrated: bool,
    pub total_mem: usize,
}

/// Whether the CUDA driver library can be loaded (never panics).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its known names; nothing is called.
    unsafe { sys::is_culib_present() }
}

/// Finds GPU `ordinal` and reads its properties, or says why there is none. Never panics:
/// cudarc panics when a library or symbol is missing, so the calls run under `catch_unwind`
/// after the library was found.
pub fn probe(ordinal: usize) -> Result<DeviceInfo, CudaError> {
    if !driver_present() {
        return Err(CudaError::NoDevice(
            "the CUDA driver library (libcuda.so) is not installed or not on the library path"
                .to_string(),
        ));
    }
    let found = std::panic::catch_unwind(|| -> Result<DeviceInfo, CudaError> {
        result::init().map_err(|e| CudaError::NoDevice(std::format!("cuInit failed: {e:?}")))?;
        let count = result::device::get_count()
            .map_err(|e| CudaError::NoDevice(std::format!("cuDeviceGetCount failed: {e:?}")))?
            as usize;
        if count == 0 {
            return Err(CudaError::NoDevice("the driver reports no GPU".to_string()));
        }
        if ordinal >= count {
            return Err(CudaError::NoDevice(std::format!(
                "cuda:{ordinal} requested, the driver reports {count} GPU(s) (cuda:0..cuda:{})",
                count - 1
            )));
        }
        let dev = result::device::get(ordinal as i32).map_err(driver_err("cuDeviceGet"))?;
        let attr = |a: sys::CUdevice_attribute| {
            // SAFETY: `dev` is a valid device handle from cuDeviceGet.
            unsafe { result::device::get_attribute(dev, a) }.map_err(driver_err("attribute"))
        };
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let integrated = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_INTEGRATED)? != 0;
        let name = result::device::get_name(dev).unwrap_or_else(|_| "unknown".to_string());
        // SAFETY: `dev` is a valid device handle.
        let total_mem = unsafe { result::device::total_mem(dev) }.unwrap_or(0);
        Ok(DeviceInfo { ordinal, name, sm: (major * 10 + minor) as u32, integrated, total_mem })
    });
    found.unwrap_or_else(|_| {
        Err(CudaError::NoDevice(
            "the CUDA driver library lacks a required entry point (driver too old?)".to_string(),
        ))
    })
}

/// Resolves a [`DeviceChoice`]: `Ok(Some(info))` for a usable GPU, `Ok(None)` for the CPU, and
/// for `auto` without a GPU `Ok(None)` with the reason in `fallback` (callers print it:
/// nothing falls back silently). `cuda[:N]` without a GPU is an error.
pub fn select(
    choice: DeviceChoice,
    fallback: &mut Option<String>,
) -> Result<Option<DeviceInfo>, CudaError> {
    match choice {
        DeviceChoice::Cpu => Ok(None),
        DeviceChoice::Cuda(n) => probe(n).map(Some),
        DeviceChoice::Auto => match probe(0) {
            Ok(d) => Ok(Some(d)),
            Err(e) => {
                *fallback = Some(std::format!("{e}; running on the CPU"));
                Ok(None)
            }
        },
    }
}
