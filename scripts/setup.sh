#!/usr/bin/env bash
# Installs what calq needs on Debian 12 (as root; skipped when already present) and builds it
# in Release into ${CALQ_BUILD_DIR:-build}.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake g++ make ccache libtorch-dev libgtest-dev libbenchmark-dev libcli11-dev
          nlohmann-json3-dev libfmt-dev zlib1g-dev dataset-fashion-mnist
          libopenblas0-openmp
          libonnx-dev libprotobuf-dev libstb-dev
          libonnx-testdata python3-onnx python3-torch python3-torchvision python3-numpy
          clang libclang-rt-14-dev)
# ONNX import (docs/onnx.md): libonnx/protobuf to read models, libstb for image folders.
# Tests: ONNX's backend node test data, PyTorch/torchvision to export reference models, clang
# with libFuzzer/ASan/UBSan for tests/fuzz; ONNX Runtime from npm (below) as a reference.
# libopenblas0-openmp: Debian's libtorch calls the system BLAS, which is the slow reference
# implementation unless an optimized one is installed (2.4x faster training measured here).
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v node > /dev/null || ! command -v npm > /dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends nodejs npm
fi
if [ ! -d tests/ort/node_modules/onnxruntime-node ]; then
  (cd tests/ort && npm ci --ignore-scripts --no-audit --no-fund)
fi

build="${CALQ_BUILD_DIR:-build}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j"$(nproc)"
