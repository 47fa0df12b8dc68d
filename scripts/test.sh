#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script):
#   1. set-up (idempotent installs), formatting and lints;
#   2. the workspace tests on this machine (onnxruntime oracles included);
#   3. the no_std core built for a Cortex-M7 (thumbv7em-none-eabihf);
#   4. the workspace tests cross-compiled for aarch64 under qemu-user, twice: `-cpu max`
#      (dotprod and i8mm present) and `-cpu cortex-a57` (NEON only, fallback paths).
# Set EMBER_SKIP_AARCH64=1 to skip step 4 locally.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
echo "== fmt and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --workspace --all-targets --locked --target aarch64-unknown-linux-gnu -- -D warnings

export EMBER_ORACLE_DIR="$PWD/target/oracle"
echo "== oracle cases (onnxruntime) -> $EMBER_ORACLE_DIR"
python3 tests/oracle/make_cases.py "$EMBER_ORACLE_DIR"
export EMBER_MINILM="${EMBER_CACHE:-$HOME/.cache/ember}/minilm/paraphrase-MiniLM-L3-v2.onnx"
python3 tests/oracle/minilm.py "$EMBER_MINILM" "$EMBER_ORACLE_DIR/minilm"

# NVRTC from PyPI: the CUDA kernels must compile to PTX for every architecture (no GPU needed).
NVRTC_LIB=$(python3 -c "import nvidia.cuda_nvrtc as m; print(list(m.__path__)[0] + '/lib')")
echo "== tests (host)"
host_expect=""
if grep -q avx512_vnni /proc/cpuinfo 2>/dev/null; then host_expect=i8_gemm_avx512vnni,i8_gemm_avx2,i4_gemm_avx512vnni,i4_gemm_avx2,i4m_gemm_avx512vnni,i4m_gemm_avx2
elif grep -q avx2 /proc/cpuinfo 2>/dev/null; then host_expect=i8_gemm_avx2,i4_gemm_avx2,i4m_gemm_avx2; fi
LD_LIBRARY_PATH="$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" EMBER_REQUIRE_NVRTC=1 \
  EMBER_EXPECT_KERNELS="$host_expect" cargo test --workspace --locked

echo "== no_std core for thumbv7em-none-eabihf"
cargo build --locked -p ember-kernels -p ember-runtime --no-default-features --target thumbv7em-none-eabihf

if [ "${EMBER_SKIP_AARCH64:-0}" != 1 ]; then
  QEMU="qemu-aarch64 -L /usr/aarch64-linux-gnu"
  for cpu in max cortex-a57; do
    echo "== tests (aarch64 under qemu, -cpu $cpu)"
    # The kernel variants each CPU model must run (the twin tests fail if one is missing).
    if [ "$cpu" = max ]; then expect=i8_gemm_i8mm,i8_gemm_dotprod,i8_gemm_neon,i4_gemm_i8mm,i4_gemm_dotprod,i4m_gemm_i8mm,i4m_gemm_dotprod; else expect=i8_gemm_neon,i4_gemm_neon,i4m_gemm_neon; fi
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$QEMU -cpu $cpu" EMBER_TEST_RUNNER="$QEMU -cpu $cpu" \
      EMBER_EXPECT_KERNELS="$expect" cargo test --workspace --locked --target aarch64-unknown-linux-gnu
  done
fi
echo "== all tests passed"
