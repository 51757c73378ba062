#!/usr/bin/env bash
# The one entry point for every benchmark suite.
#
#   bench/run.sh SUITE [--json FILE] [more flags for the suite's binary]
#
# Build folder: $CALQ_BUILD_DIR when set (the suite's target is built there if out of date);
# otherwise <repo>/build, configured as Release and built first.
# To add a suite: add bench/<suite>_bench.cpp (bench/CMakeLists.txt builds it as
# calq_<suite>_bench) and a case below.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
valid_suites="kernels observers workflow compare deploy distributed"

usage() {
  echo "usage: bench/run.sh SUITE [--json FILE] [suite flags]; valid suites: ${valid_suites}" >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
suite="$1"
shift

case "${suite}" in
  kernels)
    # fake-quant kernels: calq vs ATen vs roofline, 1 thread and all threads
    target="calq_kernels_bench"
    ;;
  observers)
    # observers: per-batch update of every observer, qparams from a 2048-bin histogram, and
    # PyTorch's MinMaxObserver / HistogramObserver (via /usr/bin/python3) on the same tensor
    target="calq_observers_bench"
    ;;
  workflow)
    # zoo ResNet, batch 64: training step float vs QAT (fake_quant, lsq, pact), calibration
    # batch (min_max, percentile) vs float inference, and PyTorch eager-mode QAT / calibration
    # of the same model (via /usr/bin/python3), 1 thread and all threads
    target="calq_workflow_bench"
    ;;
  compare)
    # calq run vs the same workflow in PyTorch eager mode (bench/compare_pytorch.py), same
    # data, epochs, seed and threads; accuracy and time side by side
    target="calq_cli"
    ;;
  deploy)
    # zoo models: latency and peak memory of calq's simulation, calq's integer engine, ONNX
    # Runtime on the float and the QDQ model; calq quantize on a ResNet-18-sized ONNX model at
    # 3x224x224: peak memory with 1,000 vs 4,000 calibration images, calibration vs calq's
    # float inference, ONNX Runtime latency of the int8 export vs the float model
    # (bench/deploy.py)
    target="calq_cli calq_deploy_bench calq_deploy_zoo_bench"
    ;;
  distributed)
    # data-parallel QAT: parameters and bytes all-reduced per step of every zoo model, QAT
    # step time at 1 process x 1 and 2 threads and 2 processes x 1 thread (same global batch),
    # all-reduce time between 2 local processes (docs/distributed.md)
    target="calq_distributed_bench"
    ;;
  -h | --help)
    usage
    ;;
  *)
    echo "bench/run.sh: unknown suite '${suite}'; valid suites: ${valid_suites}" >&2
    exit 2
    ;;
esac

jobs="${CALQ_BUILD_JOBS:-2}"
if [[ -n "${CALQ_BUILD_DIR:-}" ]]; then
  build="${CALQ_BUILD_DIR}"
  [[ -f "${build}/CMakeCache.txt" ]] || {
    echo "bench/run.sh: CALQ_BUILD_DIR=${build} is not a configured build folder" >&2
    exit 2
  }
else
  build="${root}/build"
  cmake -S "${root}" -B "${build}" -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "${build}" --target ${target} -j "${jobs}"

if [[ "${suite}" == deploy ]]; then
  exec /usr/bin/python3 "${root}/bench/deploy.py" --build "${build}" "$@"
fi
if [[ "${suite}" == compare ]]; then
  exec /usr/bin/python3 "${root}/bench/compare.py" --calq "${build}/calq" "$@"
fi
exec "${build}/bench/${target}" "$@"
