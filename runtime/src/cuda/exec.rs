//! [`CudaSession`]: one plan of a model on one GPU.
//!
//! Creation does all the work once: PTX loaded, weights placed (in place on an integrated GPU,
//! copied on a discrete one), arena and scratch allocated, every kernel launch of the plan
//! resolved to fixed device addresses ([`Launch`]) and captured as a CUDA graph. `run` copies
//! the inputs into the arena, launches the graph (or the launches one by one with
//! `EMBER_CUDA_GRAPH=0`), copies the outputs back and checks the index-error word. Nothing is
//! allocated per run.

use super::{driver_err, ptx_for, CudaError, DeviceInfo, PtxSource, PTX_META_KEY};
use crate::format::{DType, REF_NONE, REF_TENSOR};
use crate::model::{Model, Plan};
use crate::ops::{MatMulDims, Op};
use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use ember_kernels::cuda::KERNELS;
use ember_kernels::pack::{k4, k4n16_len};
use std::path::Path;
use std::string::{String, ToString};
use std::sync::Arc;
use std::vec::Vec;

/// The kernels' single parameter (`struct Args` in kernels/cuda/common.cuh).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub(crate) struct Args {
    pub p: [u64; 8],
    pub i: [i64; 28],
    pub f: [f32; 8],
}

// SAFETY: plain `repr(C)` data with the layout of common.cuh's `struct Args` (u64[8], i64[28],
// float[8]: 320 bytes, 8-byte aligned), passed to kernels by value.
unsafe impl DeviceRepr for Args {}

/// One kernel launch of the plan, with every address resolved.
#[derive(Clone, Debug)]
pub(crate) struct Launch {
    kernel: usize,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    args: Args,
}

/// How the weights reach the GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightsMode {
    /// Copied once to device memory (discrete GPU).
    Copied { bytes: usize },
    /// Used in place: the file's pages registered read-only with the driver (integrated GPU).
    InPlace { bytes: usize },
    /// Copied because registration was not possible (the reason).
    CopiedFallback { bytes: usize, why: String },
}

enum Weights {
    Device(CudaSlice<u8>),
    Registered { host: *mut core::ffi::c_void, dev: u64 },
}

pub struct CudaSession<'m, B: AsRef<[u8]>> {
    model: &'m Model<B>,
    plan: &'m Plan,
    info: DeviceInfo,
    stream: Arc<CudaStream>,
    funcs: Vec<CudaFunction>,
    weights: Weights,
    weights_mode: WeightsMode,
    arena: CudaSlice<u8>,
    _scratch: CudaSlice<u8>,
    err: CudaSlice<i32>,
    err_host: [i32; 4],
    launches: Vec<(usize, Launch)>,
    graph: Option<CudaGraph>,
    outputs: Vec<Vec<u8>>,
    ptx_source: PtxSource,
    notes: Vec<String>,
}

const THREADS: u32 = 256;

/// Blocks of a grid-stride kernel over `n` items.
fn blocks(n: usize) -> u32 {
    n.div_ceil(THREADS as usize).clamp(1, 8192) as u32
}

fn dims6(d: &[usize]) -> [i64; 6] {
    let mut o = [0i64; 6];
    for (o, v) in o.iter_mut().zip(d) {
        *o = *v as i64;
    }
    o
}

impl<'m, B: AsRef<[u8]>> CudaSession<'m, B> {
    /// Creates a session for the plan of `batch` on the GPU `info` (from [`super::probe`]).
    /// `model_path` locates the PTX cache; `None` compiles in memory when needed.
    pub fn new(
        model: &'m Model<B>,
        batch: usize,
        info: DeviceInfo,
        model_path: Option<&Path>,
    ) -> Result<Self, CudaError> {
        let idx = model.plan_index(batch).ok_or_else(|| {
            CudaError::Model(std::format!(
                "no plan for batch {batch} (the model has {:?})",
                model.batch_sizes()
            ))
        })?;
        let plan = &model.plans[idx];
        if !model.patches.is_empty() {
            return Err(CudaError::Model(
                "the model has an overlay applied, which the CUDA backend does not read yet: \
                 run it with --device cpu"
                    .into(),
            ));
        }
        let no_kernel = |op: &Op| match op {
            Op::LinearI8 { inv_scale, .. } if *inv_scale == 0.0 => {
                Some("quantizes its activations dynamically per row")
            }
            Op::LinearF32 { w_f16: true, .. } => Some("has f16 weights"),
            _ => None,
        };
        if let Some((i, what)) =
            plan.ops.iter().enumerate().find_map(|(i, op)| no_kernel(op).map(|w| (i, w)))
        {
            return Err(CudaError::Model(std::format!(
                "op {i} ({}) {what}, which has no CUDA kernel yet: run this model with --device cpu",
                model.op_names(batch).get(i).copied().unwrap_or("linear")
            )));
        }
        let mut notes = Vec::new();
        let embedded: Vec<(u32, &[u8])> = model
            .tensors
            .iter()
            .filter_map(|t| {
                let sm = t.name.strip_prefix(super::PTX_TENSOR_PREFIX)?.parse::<u32>().ok()?;
                Some((sm, model.tensor_bytes(t)))
            })
            .collect();
        let (ptx, ptx_source) =
            ptx_for(&embedded, model.meta(PTX_META_KEY), model_path, info.sm, &mut notes)?;
        let ctx = CudaContext::new(info.ordinal).map_err(driver_err("context"))?;
        let stream = ctx.new_stream().map_err(driver_err("stream"))?;
        let module = ctx.load_module(Ptx::from_src(ptx)).map_err(driver_err("loading the PTX"))?;
        let funcs = KERNELS
            .iter()
            .map(|k| module.load_function(k).map_err(driver_err(k)))
            .collect::<Result<Vec<_>, _>>()?;
        let (weights, weights_mode) = place_weights(&ctx, &stream, model.bytes(), &info)?;
        let arena =
            stream.alloc_zeros::<u8>(plan.arena_size.max(64)).map_err(driver_err("arena"))?;
        let scratch_len = plan.ops.iter().map(scratch_bytes).max().unwrap_or(0).max(64);
        let scratch = stream.alloc_zeros::<u8>(scratch_len).map_err(driver_err("scratch"))?;
        let err = stream.alloc_zeros::<i32>(4).map_err(driver_err("error word"))?;
        let base = Bases {
            weights: match &weights {
                Weights::Device(s) => s.device_ptr(&stream).0,
                Weights::Registered { dev, .. } => *dev,
            },
            arena: arena.device_ptr(&stream).0,
            scratch: scratch.device_ptr(&stream).0,
            err: err.device_ptr(&stream).0,
        };
        let mma = info.sm >= 72 && std::env::var("EMBER_CUDA_GEMM").as_deref() != Ok("dp4a");
        let mut launches = Vec::new();
        for (i, (op, rec)) in plan.ops.iter().zip(&plan.records).enumerate() {
            let out = rec.outputs[0];
            for l in plan_op(op, i, out, model, plan, &base, mma) {
                launches.push((i, l));
            }
        }
        let outputs =
            plan.outputs.iter().map(|v| std::vec![0u8; plan.values[*v as usize].nbytes]).collect();
        let mut s = CudaSession {
            model,
            plan,
            info,
            stream,
            funcs,
            weights,
            weights_mode,
            arena,
            _scratch: scratch,
            err,
            err_host: [0; 4],
            launches,
            graph: None,
            outputs,
            ptx_source,
            notes,
        };
        if std::env::var("EMBER_CUDA_GRAPH").as_deref() != Ok("0") {
            s.graph = s.capture()?;
        }
        Ok(s)
    }

    fn launch_all(&self) -> Result<(), CudaError> {
        for (op, l) in &self.launches {
            let mut b = self.stream.launch_builder(&self.funcs[l.kernel]);
            b.arg(&l.args);
            let cfg = LaunchConfig { grid_dim: l.grid, block_dim: l.block, shared_mem_bytes: 0 };
            // SAFETY: every kernel takes one `Args` by value; the addresses in it point into the
            // weights, arena, scratch and error buffers this session owns, at offsets and sizes
            // validated by the plan (`ops::prepare`) and sized by `scratch_bytes`.
            unsafe { b.launch(cfg) }.map_err(|e| {
                CudaError::Driver(std::format!(
                    "launching {} for op {op}: {e:?}",
                    KERNELS[l.kernel]
                ))
            })?;
        }
        Ok(())
    }

    fn capture(&self) -> Result<Option<CudaGraph>, CudaError> {
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(driver_err("begin graph capture"))?;
        let launched = self.launch_all();
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(driver_err("end graph capture"))?;
        launched?;
        Ok(graph)
    }

    /// Runs the plan on `inputs` (one byte slice per signature input, batch-major).
    pub fn run(&mut self, inputs: &[&[u8]]) -> Result<(), CudaError> {
        let plan = self.plan;
        if inputs.len() != plan.inputs.len() {
            return Err(CudaError::Run(crate::Error::InputCount {
                expected: plan.inputs.len(),
                got: inputs.len(),
            }));
        }
        for (i, (id, data)) in plan.inputs.iter().zip(inputs).enumerate() {
            let v = &plan.values[*id as usize];
            if data.len() != v.nbytes {
                return Err(CudaError::Run(crate::Error::InputSize {
                    input: i,
                    expected: v.nbytes,
                    got: data.len(),
                }));
            }
            let mut dst = self.arena.slice_mut(v.offset..v.offset + v.nbytes);
            self.stream.memcpy_htod(*data, &mut dst).map_err(driver_err("input copy"))?;
        }
        match &self.graph {
            Some(g) => g.launch().map_err(driver_err("graph launch"))?,
            None => self.launch_all()?,
        }
        for (o, id) in self.outputs.iter_mut().zip(&plan.outputs) {
            let v = &plan.values[*id as usize];
            let src = self.arena.slice(v.offset..v.offset + v.nbytes);
            self.stream.memcpy_dtoh(&src, &mut o[..]).map_err(driver_err("output copy"))?;
        }
        self.stream
            .memcpy_dtoh(&self.err, &mut self.err_host[..])
            .map_err(driver_err("error word"))?;
        self.stream.synchronize().map_err(driver_err("synchronize"))?;
        if self.err_host[0] != 0 {
            self.stream.memset_zeros(&mut self.err).map_err(driver_err("error reset"))?;
            let op = self.err_host[1] as usize;
            let index = (self.err_host[2] as u32 as i64) | ((self.err_host[3] as i64) << 32);
            let bound = match plan.ops.get(op) {
                Some(Op::Gather { dim, .. }) => *dim,
                Some(Op::GatherRowsI8 { rows, .. }) | Some(Op::GatherRowsI4 { rows, .. }) => *rows,
                _ => 0,
            };
            return Err(CudaError::Run(crate::Error::IndexOutOfRange { op, index, bound }));
        }
        Ok(())
    }

    /// Bytes of output `i` after `run`.
    pub fn output(&self, i: usize) -> &[u8] {
        &self.outputs[i]
    }

    /// Output `i` as f32, if it is an f32 output.
    pub fn output_f32(&self, i: usize) -> Option<&[f32]> {
        let v = &self.plan.values[self.plan.outputs[i] as usize];
        if v.dtype != DType::F32 {
            return None;
        }
        bytemuck::try_cast_slice(&self.outputs[i]).ok()
    }

    pub fn batch(&self) -> usize {
        self.plan.batch
    }
    pub fn device(&self) -> &DeviceInfo {
        &self.info
    }
    pub fn weights_mode(&self) -> &WeightsMode {
        &self.weights_mode
    }
    pub fn ptx_source(&self) -> &PtxSource {
        &self.ptx_source
    }
    /// Why embedded PTX was not used, and similar remarks for the user.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
    /// Kernel launches per run and whether they run as one CUDA graph.
    pub fn launches(&self) -> (usize, bool) {
        (self.launches.len(), self.graph.is_some())
    }
    pub fn model(&self) -> &Model<B> {
        self.model
    }
}

impl<B: AsRef<[u8]>> Drop for CudaSession<'_, B> {
    fn drop(&mut self) {
        self.graph = None;
        let _ = self.stream.synchronize();
        if let Weights::Registered { host, .. } = self.weights {
            // SAFETY: `host` was registered by `place_weights` and is unregistered once, after
            // the stream finished every kernel that could read it.
            let _ = unsafe { sys::cuMemHostUnregister(host) };
        }
    }
}

/// Device addresses of the session's buffers.
struct Bases {
    weights: u64,
    arena: u64,
    scratch: u64,
    err: u64,
}

fn place_weights(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
    bytes: &[u8],
    info: &DeviceInfo,
) -> Result<(Weights, WeightsMode), CudaError> {
    let len = bytes.len();
    let mut why = String::new();
    if info.integrated && std::env::var("EMBER_CUDA_WEIGHTS").as_deref() != Ok("copy") {
        let ro = ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED,
            )
            .unwrap_or(0);
        let page = 4096usize;
        let ptr = bytes.as_ptr() as *mut core::ffi::c_void;
        if ro == 0 {
            why = "the driver cannot register read-only host memory".to_string();
        } else if !(bytes.as_ptr() as usize).is_multiple_of(page) {
            why = "the model bytes are not page-aligned (not memory-mapped)".to_string();
        } else {
            let flags = sys::CU_MEMHOSTREGISTER_DEVICEMAP | sys::CU_MEMHOSTREGISTER_READ_ONLY;
            // SAFETY: `ptr` is the page-aligned start of the model's memory map, which stays
            // mapped for the session's lifetime (the session borrows the model); the length is
            // rounded up to whole pages, all inside the mapping; read-only registration never
            // writes to it. Unregistered in `Drop`.
            let r = unsafe { sys::cuMemHostRegister_v2(ptr, len.div_ceil(page) * page, flags) };
            if r == sys::CUresult::CUDA_SUCCESS {
                let mut dev: sys::CUdeviceptr = 0;
                // SAFETY: `ptr` was just registered with DEVICEMAP; `dev` receives its address.
                let r = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, ptr, 0) };
                if r == sys::CUresult::CUDA_SUCCESS {
                    let w = Weights::Registered { host: ptr, dev };
                    return Ok((w, WeightsMode::InPlace { bytes: len }));
                }
                // SAFETY: registered above, not used by any kernel yet.
                let _ = unsafe { sys::cuMemHostUnregister(ptr) };
                why = std::format!("cuMemHostGetDevicePointer: {r:?}");
            } else {
                why = std::format!("cuMemHostRegister: {r:?}");
            }
        }
    }
    let dev = stream.clone_htod(bytes).map_err(driver_err("copying the weights"))?;
    let mode = if why.is_empty() {
        WeightsMode::Copied { bytes: len }
    } else {
        WeightsMode::CopiedFallback { bytes: len, why }
    };
    Ok((Weights::Device(dev), mode))
}

/// Device scratch an op needs: quantized activations (and, for MatMulI8, the packed second
/// operand and its column sums), 256-byte aligned parts.
fn scratch_bytes(op: &Op) -> usize {
    match op {
        Op::LinearI8 { m, k, .. } | Op::LinearI4 { m, k, .. } | Op::LinearI4M { m, k, .. } => {
            m * k4(*k)
        }
        Op::MatMulI8 { d, .. } => matmul_i8_parts(d).3,
        _ => 0,
    }
}

/// (quantized a bytes per head, packed b bytes per head, offset of the sums, total bytes).
fn matmul_i8_parts(d: &MatMulDims) -> (usize, usize, usize, usize) {
    let qa = d.m * k4(d.k);
    let pb = k4n16_len(d.n, d.k);
    let sums = (d.batch * (qa + pb)).next_multiple_of(256);
    (qa, pb, sums, sums + d.batch * d.n * 4)
}

fn kernel(name: &str) -> usize {
    KERNELS.iter().position(|k| *k == name).expect("kernel named in ember_kernels::cuda::KERNELS")
}

/// The launches of op `index` (writing value `out`).
fn plan_op<B: AsRef<[u8]>>(
    op: &Op,
    index: usize,
    out: u32,
    model: &Model<B>,
    plan: &Plan,
    b: &Bases,
    mma: bool,
) -> Vec<Launch> {
    let addr = |r: u32| -> u64 {
        if r == REF_NONE {
            0
        } else if r & REF_TENSOR != 0 {
            b.weights + model.tensors[(r & !REF_TENSOR) as usize].offset as u64
        } else {
            b.arena + plan.values[r as usize].offset as u64
        }
    };
    let ov = &plan.values[out as usize];
    let o = addr(out);
    let grid_stride = |k: &str, n: usize, args: Args| Launch {
        kernel: kernel(k),
        grid: (blocks(n), 1, 1),
        block: (THREADS, 1, 1),
        args,
    };
    let mut a = Args::default();
    let mut v = Vec::new();
    let i8_gemm = |args: Args, m: usize, n: usize, heads: usize| {
        if mma {
            Launch {
                kernel: kernel("ember_linear_i8_mma"),
                grid: (n.div_ceil(16) as u32, m.div_ceil(32) as u32, heads as u32),
                block: (128, 1, 1),
                args,
            }
        } else {
            Launch {
                kernel: kernel("ember_linear_i8_dp4a"),
                grid: (n.div_ceil(16) as u32, m.div_ceil(64) as u32, heads as u32),
                block: (16, 16, 1),
                args,
            }
        }
    };
    match op {
        Op::LinearF32 { x, w, bias, m, k, n, act, .. } => {
            a.p[..4].copy_from_slice(&[addr(*x), addr(*w), addr(*bias), o]);
            a.i[..8].copy_from_slice(&[*m as i64, *k as i64, *n as i64, 1, 0, 0, 1, *act as i64]);
            a.f[0] = 1.0;
            v.push(gemm_f32(a, *m, *n, 1));
        }
        Op::LinearI8 { x, w, w_sum, scale, bias, mult, m, k, n, act, inv_scale, zp, .. } => {
            let lda = k4(*k);
            v.push(quantize(addr(*x), addr(*mult), b.scratch, *m, *k, *zp, 1, 0, 0, *inv_scale));
            a.p[..6].copy_from_slice(&[
                b.scratch,
                addr(*w),
                addr(*w_sum),
                addr(*scale),
                addr(*bias),
                o,
            ]);
            a.i[..7].copy_from_slice(&[
                *m as i64,
                *k as i64,
                *n as i64,
                lda as i64,
                *zp as i64,
                *act as i64,
                0,
            ]);
            v.push(i8_gemm(a, *m, *n, 1));
        }
        Op::LinearI4 {
            x,
            w,
            gsum,
            gscale,
            bias,
            mult,
            m,
            k,
            n,
            act,
            inv_scale,
            zp,
            group,
            x_scale,
            ..
        } => {
            let lda = k4(*k);
            v.push(quantize(addr(*x), addr(*mult), b.scratch, *m, *k, *zp, 1, 0, 0, *inv_scale));
            a.p[..6].copy_from_slice(&[
                b.scratch,
                addr(*w),
                addr(*gsum),
                addr(*gscale),
                addr(*bias),
                o,
            ]);
            a.i[..7].copy_from_slice(&[
                *m as i64,
                *k as i64,
                *n as i64,
                lda as i64,
                *zp as i64,
                *act as i64,
                *group as i64,
            ]);
            a.f[0] = *x_scale;
            v.push(Launch {
                kernel: kernel("ember_linear_i4_dp4a"),
                grid: (n.div_ceil(16) as u32, m.div_ceil(64) as u32, 1),
                block: (16, 16, 1),
                args: a,
            });
        }
        Op::LinearI4M {
            x,
            w,
            gmul,
            w_sum,
            scale,
            bias,
            mult,
            m,
            k,
            n,
            act,
            inv_scale,
            zp,
            group,
            ..
        } => {
            let lda = k4(*k);
            v.push(quantize(addr(*x), addr(*mult), b.scratch, *m, *k, *zp, 1, 0, 0, *inv_scale));
            a.p[..7].copy_from_slice(&[
                b.scratch,
                addr(*w),
                addr(*gmul),
                addr(*w_sum),
                addr(*scale),
                addr(*bias),
                o,
            ]);
            a.i[..7].copy_from_slice(&[
                *m as i64,
                *k as i64,
                *n as i64,
                lda as i64,
                *zp as i64,
                *act as i64,
                *group as i64,
            ]);
            v.push(Launch {
                kernel: kernel("ember_linear_i4m_dp4a"),
                grid: (n.div_ceil(16) as u32, m.div_ceil(64) as u32, 1),
                block: (16, 16, 1),
                args: a,
            });
        }
        Op::MatMulF32 { a: x, b: y, d } => {
            a.p[..4].copy_from_slice(&[addr(*x), addr(*y), 0, o]);
            a.i[..8].copy_from_slice(&[
                d.m as i64,
                d.k as i64,
                d.n as i64,
                d.batch as i64,
                d.a_bs as i64,
                d.b_bs as i64,
                d.b_t as i64,
                0,
            ]);
            a.f[0] = d.alpha;
            v.push(gemm_f32(a, d.m, d.n, d.batch));
        }
        Op::MatMulI8 { a: x, b: y, d, a_inv, a_zp, b_inv, out_scale, .. } => {
            let (qa, pb, sums_at, _) = matmul_i8_parts(d);
            let (qa_at, pb_at) = (b.scratch, b.scratch + (d.batch * qa) as u64);
            let sums = b.scratch + sums_at as u64;
            v.push(quantize(addr(*x), 0, qa_at, d.m, d.k, *a_zp, d.batch, d.a_bs, qa, *a_inv));
            let mut pk = Args::default();
            pk.p[..3].copy_from_slice(&[addr(*y), pb_at, sums]);
            pk.i[..6].copy_from_slice(&[
                d.k as i64,
                d.n as i64,
                d.b_t as i64,
                d.batch as i64,
                d.b_bs as i64,
                pb as i64,
            ]);
            pk.f[0] = *b_inv;
            v.push(grid_stride("ember_pack_b_i8", d.batch * d.n.div_ceil(16) * 16, pk));
            a.p[..6].copy_from_slice(&[qa_at, pb_at, sums, 0, 0, o]);
            a.i[..11].copy_from_slice(&[
                d.m as i64,
                d.k as i64,
                d.n as i64,
                k4(d.k) as i64,
                *a_zp as i64,
                0,
                1,
                qa as i64,
                pb as i64,
                d.n as i64,
                (d.m * d.n) as i64,
            ]);
            a.f[0] = *out_scale;
            v.push(i8_gemm(a, d.m, d.n, d.batch));
        }
        Op::Binary { a: x, b: y, kind, dtype, rank, out: od, sa, sb, .. } => {
            let total = ov.nbytes / dtype.size();
            a.p[..3].copy_from_slice(&[addr(*x), addr(*y), o]);
            a.i[..3].copy_from_slice(&[total as i64, *kind as i64, *rank as i64]);
            a.i[3..9].copy_from_slice(&dims6(&od[..*rank]));
            a.i[9..15].copy_from_slice(&dims6(&sa[..*rank]));
            a.i[15..21].copy_from_slice(&dims6(&sb[..*rank]));
            let k = if *dtype == DType::F32 { "ember_binary_f32" } else { "ember_binary_i64" };
            v.push(grid_stride(k, total, a));
        }
        Op::Unary { x, kind, a: pa, b: pb } => {
            let n = ov.nbytes / 4;
            a.p[..2].copy_from_slice(&[addr(*x), o]);
            a.i[..2].copy_from_slice(&[n as i64, *kind as i64]);
            a.f[..2].copy_from_slice(&[*pa, *pb]);
            v.push(grid_stride("ember_unary", n, a));
        }
        Op::LayerNorm { x, scale, bias, rows, d, eps } => {
            a.p[..4].copy_from_slice(&[addr(*x), addr(*scale), addr(*bias), o]);
            a.i[..2].copy_from_slice(&[*rows as i64, *d as i64]);
            a.f[0] = *eps;
            v.push(row_launch("ember_layer_norm", *rows, a));
        }
        Op::Expand { x, elem, rank, out: od, strides }
        | Op::Transpose { x, elem, rank, out: od, src_strides: strides } => {
            let total = ov.nbytes / elem.max(&1);
            a.p[..2].copy_from_slice(&[addr(*x), o]);
            a.i[..3].copy_from_slice(&[total as i64, *elem as i64, *rank as i64]);
            a.i[3..9].copy_from_slice(&dims6(&od[..*rank]));
            a.i[9..15].copy_from_slice(&dims6(&strides[..*rank]));
            v.push(grid_stride("ember_strided_copy", total, a));
        }
        Op::Softmax { x, outer, n, inner, mask, rank, rows, mstrides } => {
            if *inner == 1 {
                a.p[..3].copy_from_slice(&[addr(*x), addr(*mask), o]);
                a.i[..3].copy_from_slice(&[*outer as i64, *n as i64, *rank as i64]);
                a.i[3..9].copy_from_slice(&dims6(&rows[..*rank]));
                a.i[9..15].copy_from_slice(&dims6(&mstrides[..*rank]));
                v.push(row_launch("ember_softmax_rows", *outer, a));
            } else {
                a.p[..2].copy_from_slice(&[addr(*x), o]);
                a.i[..3].copy_from_slice(&[*outer as i64, *n as i64, *inner as i64]);
                v.push(grid_stride("ember_softmax_strided", outer * inner, a));
            }
        }
        Op::Gather { data, idx, idx64, outer, dim, inner_bytes, n_idx } => {
            a.p[..4].copy_from_slice(&[addr(*data), addr(*idx), o, b.err]);
            a.i[..6].copy_from_slice(&[
                *outer as i64,
                *dim as i64,
                *inner_bytes as i64,
                *n_idx as i64,
                *idx64 as i64,
                index as i64,
            ]);
            v.push(grid_stride("ember_gather", outer * n_idx * inner_bytes, a));
        }
        Op::GatherRowsI8 { table, scale, bias, idx, idx64, rows, d, n_idx }
        | Op::GatherRowsI4 { table, scale, bias, idx, idx64, rows, d, n_idx, .. } => {
            let (k, group) = match op {
                Op::GatherRowsI4 { group, .. } => ("ember_gather_rows_i4", *group),
                _ => ("ember_gather_rows_i8", 0),
            };
            let p = [addr(*table), addr(*scale), addr(*bias), addr(*idx), o, b.err];
            a.p[..6].copy_from_slice(&p);
            let i = [*rows, *d, *n_idx, *idx64 as usize, index, group];
            for (dst, v) in a.i.iter_mut().zip(i) {
                *dst = v as i64;
            }
            v.push(grid_stride(k, n_idx * d, a));
        }
        Op::Concat { inputs, n, outer, chunks } => {
            let total: usize = chunks[..*n].iter().sum();
            let mut pos = 0;
            for j in 0..*n {
                let mut c = Args::default();
                c.p[..2].copy_from_slice(&[addr(inputs[j]), o]);
                c.i[..4].copy_from_slice(&[
                    *outer as i64,
                    chunks[j] as i64,
                    total as i64,
                    pos as i64,
                ]);
                v.push(grid_stride("ember_concat_part", outer * chunks[j], c));
                pos += chunks[j];
            }
        }
        Op::Copy { x } => {
            let nb = ov.nbytes as i64;
            a.p[..2].copy_from_slice(&[addr(*x), o]);
            a.i[..4].copy_from_slice(&[1, nb, nb, 0]);
            v.push(grid_stride("ember_concat_part", ov.nbytes, a));
        }
        Op::Reduce { x, mean, rank, dims, out_strides, count } => {
            let n_out = ov.nbytes / 4;
            let mut z = Args::default();
            z.p[0] = o;
            z.i[0] = n_out as i64;
            v.push(grid_stride("ember_fill_f32", n_out, z));
            let total: usize = dims[..*rank].iter().product();
            a.p[..2].copy_from_slice(&[addr(*x), o]);
            a.i[..2].copy_from_slice(&[total as i64, *rank as i64]);
            a.i[2..8].copy_from_slice(&dims6(&dims[..*rank]));
            a.i[8..14].copy_from_slice(&dims6(&out_strides[..*rank]));
            a.f[0] = if *mean { 1.0 / *count as f32 } else { 1.0 };
            v.push(grid_stride("ember_reduce_add", total, a));
        }
        Op::Cast { x, from, to } => {
            let n = ov.nbytes / to.size();
            a.p[..2].copy_from_slice(&[addr(*x), o]);
            a.i[..3].copy_from_slice(&[n as i64, *from as i64, *to as i64]);
            v.push(grid_stride("ember_cast", n, a));
        }
        // Built only by the CPU schedule (`ops::fuse`); the CUDA executor takes `plan.ops`,
        // the plan as written, whose ops all come from `prepare`.
        Op::AttentionF32 { .. } => unreachable!("fused attention in a plan as written"),
        Op::AddLayerNorm { .. } => unreachable!("fused add and norm in a plan as written"),
    }
    // Zero-sized outputs launch nothing (a grid of zero blocks is invalid).
    if ov.nbytes == 0 {
        v.clear();
    }
    v
}

fn gemm_f32(args: Args, m: usize, n: usize, heads: usize) -> Launch {
    Launch {
        kernel: kernel("ember_gemm_f32"),
        grid: (n.div_ceil(16) as u32, m.div_ceil(16) as u32, heads as u32),
        block: (16, 16, 1),
        args,
    }
}

fn row_launch(k: &str, rows: usize, args: Args) -> Launch {
    Launch { kernel: kernel(k), grid: (rows.max(1) as u32, 1, 1), block: (THREADS, 1, 1), args }
}

/// `ember_quantize_rows` of `heads` [m, k] f32 matrices into s8 rows of stride k4(k).
#[allow(clippy::too_many_arguments)]
fn quantize(
    x: u64,
    mult: u64,
    q: u64,
    m: usize,
    k: usize,
    zp: i32,
    heads: usize,
    x_stride: usize,
    q_stride: usize,
    inv: f32,
) -> Launch {
    let mut a = Args::default();
    a.p[..3].copy_from_slice(&[x, mult, q]);
    a.i[..7].copy_from_slice(&[
        m as i64,
        k as i64,
        k4(k) as i64,
        zp as i64,
        heads as i64,
        x_stride as i64,
        q_stride as i64,
    ]);
    a.f[0] = inv;
    Launch {
        kernel: kernel("ember_quantize_rows"),
        grid: (blocks(heads * m * k4(k) / 4), 1, 1),
        block: (THREADS, 1, 1),
        args: a,
    }
}
