#!/usr/bin/env bash
# Installs what calq needs on Debian 12 (as root; skipped when already present) and builds it
# in Release into ${CALQ_BUILD_DIR:-build}.
#
#   bash scripts/setup.sh main   # what `calq run` needs: the library and the command line only
#   bash scripts/setup.sh test   # everything: tests, benchmarks and their references (default)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-test}"

# libopenblas0-openmp: Debian's libtorch calls the system BLAS, which is the slow reference
# implementation unless an optimized one is installed (2.4x faster training measured here).
# libonnx/protobuf read and write ONNX models (docs/onnx.md, docs/deploy.md); libstb decodes
# image folders. libgloo-dev: the headers of the collectives library behind LibTorch's
# ProcessGroupGloo (calq --nproc, calq::distributed); the library itself comes with libtorch.
packages=(cmake g++ make ccache libtorch-dev libcli11-dev nlohmann-json3-dev libfmt-dev
          zlib1g-dev dataset-fashion-mnist libopenblas0-openmp libonnx-dev libprotobuf-dev
          libstb-dev libgloo-dev)
case "${mode}" in
  main)
    cmake_flags=(-DCALQ_BUILD_TESTS=OFF -DCALQ_BUILD_BENCH=OFF)
    targets=(--target calq_cli)
    ;;
  test)
    # Tests: GoogleTest, Google Benchmark, ONNX's backend node test data, PyTorch/torchvision
    # to export reference models, clang with libFuzzer/ASan/UBSan for tests/fuzz.
    packages+=(libgtest-dev libbenchmark-dev libonnx-testdata python3-onnx python3-torch
               python3-torchvision python3-numpy clang libclang-rt-14-dev)
    cmake_flags=(-DCALQ_BUILD_TESTS=ON -DCALQ_BUILD_BENCH=ON)
    targets=()
    ;;
  *) echo "scripts/setup.sh: unknown mode '${mode}'; valid modes: main, test" >&2; exit 2 ;;
esac

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

# ONNX Runtime (CPU) from npm, driven by tools/ort/run.js: calq run's deployment check and the
# tests' reference.
if ! command -v node > /dev/null || ! command -v npm > /dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends nodejs npm
fi
if [ ! -d tools/ort/node_modules/onnxruntime-node ]; then
  (cd tools/ort && npm ci --ignore-scripts --no-audit --no-fund)
fi

build="${CALQ_BUILD_DIR:-build}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release "${cmake_flags[@]}"
cmake --build "$build" -j"$(nproc)" "${targets[@]}"
