#!/usr/bin/env bash
# Builds calq's fuzz targets with clang (libFuzzer + AddressSanitizer + UBSan) and runs each
# for SECONDS seconds; exits non-zero on the first crash (or, with FUZZ_KEEP_GOING=1, runs
# in fork mode through crashes and reports how many there were).
#
#   tests/fuzz/run.sh SECONDS [OUT_DIR]        (OUT_DIR default: build/fuzz)
#   FUZZ_IMPORT=1 also builds fuzz_import (needs build/libcalq.a); FUZZ_ONLY="a b" runs
#   those targets only; FUZZ_KEEP_GOING=1 continues through crashes (fork mode).
#
# Targets (the untrusted-input parsers, built without LibTorch: c10 only for its errors):
#   fuzz_onnx  ONNX reader: protobuf -> calq::onnx::Model with calq's validation and
#              libonnx's checker; structure-aware mutator on ModelProto fields.
#   fuzz_npy   .npy header parser, .npz zip directory and inflater.
# Seeds: small valid models (ONNX's node test models, calq's generated test models when the
# build folder has them) and numpy files written here by /usr/bin/python3.
set -euo pipefail
seconds=${1:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${2:-$root/build/fuzz}
mkdir -p "$out/corpus_onnx" "$out/corpus_npy" "$out/seeds_onnx" "$out/seeds_npy" "$out/crashes"

flags=(-std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -DONNX_ML=1 -DONNX_NAMESPACE=onnx
       -I"$root/include" -I"$root/src")
build() {  # target sources... -- libs...
  local target=$1; shift
  if [ ! -x "$out/$target" ] || [ -n "$(find "$root/src" "$root/tests/fuzz" -newer "$out/$target" \( -name '*.cpp' -o -name '*.h' \) | head -1)" ]; then
    echo "fuzz: building $target"
    clang++ "${flags[@]}" "$@" -o "$out/$target"
  fi
}
build fuzz_onnx "$root/tests/fuzz/fuzz_onnx.cpp" "$root"/src/onnx/model/*.cpp \
  -lonnx -lonnx_proto -lprotobuf -lc10 -lz -lpthread
build fuzz_npy "$root/tests/fuzz/fuzz_npy.cpp" "$root"/src/data/formats/*.cpp -lc10 -lz
targets=(fuzz_onnx fuzz_npy)
# fuzz_import: the reader instrumented as above, plus the LibTorch import stage from calq's
# Release library (g++, not instrumented: crashes and ASan's allocator checks still fire,
# coverage guidance comes from the reader). Needs build/libcalq.a (cmake --build build
# --target calq) and FUZZ_IMPORT=1.
lib=${CALQ_LIB:-$root/build/libcalq.a}
if [ "${FUZZ_IMPORT:-0}" = 1 ] && [ -f "$lib" ]; then
  torch_libs=(-L/usr/lib/x86_64-linux-gnu -ltorch -ltorch_cpu -lc10 -lgomp)
  build fuzz_import -DCALQ_FUZZ_IMPORT -I/usr/include/torch/csrc/api/include -D_GLIBCXX_USE_CXX11_ABI=1 \
    "$root/tests/fuzz/fuzz_onnx.cpp" "$root"/src/onnx/model/*.cpp \
    "$lib" -lonnx -lonnx_proto -lprotobuf "${torch_libs[@]}" -lz -lpthread
  targets+=(fuzz_import)
fi

# Seeds.
if [ -z "$(ls -A "$out/seeds_onnx")" ]; then
  for f in /usr/share/libonnx-testdata/data/node/*/model.onnx; do
    name=$(basename "$(dirname "$f")")
    cp "$f" "$out/seeds_onnx/$name.onnx"
  done
  models="$root/build/tests/onnx_models"
  if [ -d "$models" ]; then
    find "$models" -name '*.onnx' -size -64k -exec cp {} "$out/seeds_onnx/" \;
  fi
fi
if [ -z "$(ls -A "$out/seeds_npy")" ]; then
  /usr/bin/python3 - "$out/seeds_npy" <<'PY'
import sys, numpy as np
d = sys.argv[1]
np.save(d + "/f4.npy", np.arange(12, dtype=np.float32).reshape(3, 4))
np.save(d + "/i8.npy", np.arange(5, dtype=np.int64))
np.save(d + "/be.npy", np.arange(6, dtype=">f8").reshape(2, 3))
np.save(d + "/u2.npy", np.arange(4, dtype=np.uint16))
np.save(d + "/b1.npy", np.array([True, False]))
np.savez(d + "/stored.npz", x=np.ones((2, 3), np.float32), y=np.arange(2))
np.savez_compressed(d + "/deflated.npz", x=np.ones((4, 2), np.float32), y=np.arange(4, dtype=np.int32))
PY
fi

# FUZZ_ONLY="fuzz_import" runs a subset.
if [ -n "${FUZZ_ONLY:-}" ]; then
  read -r -a targets <<< "$FUZZ_ONLY"
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-allocator_may_return_null=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
status=0
for target in "${targets[@]}"; do
  kind=${target#fuzz_}
  [ "$kind" = import ] && kind=onnx
  corpus=$out/corpus_$kind
  seeds=$out/seeds_$kind
  log=$out/$target.log
  echo "fuzz: running $target for ${seconds}s (log $log)"
  # fuzz_import holds LibTorch (about 1.5 GB under ASan) and runs the shape-check forward
  # of each model: a model declaring a large input legitimately needs a few GB.
  rss=3072
  [ "$target" = fuzz_import ] && rss=8192
  common=(-max_total_time="$seconds" -max_len=200000 -timeout=20 -rss_limit_mb=$rss
          -artifact_prefix="$out/crashes/$target-" -print_final_stats=1)
  if [ "${FUZZ_KEEP_GOING:-0}" = 1 ]; then
    "$out/$target" "${common[@]}" -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 \
      "$corpus" "$seeds" > "$log" 2>&1 || status=1
  else
    "$out/$target" "${common[@]}" "$corpus" "$seeds" > "$log" 2>&1 || status=1
  fi
  grep -E "stat::number_of_executed_units|Done [0-9]+ runs|crash|ERROR" "$log" | tail -3 || true
done
crashes=$(find "$out/crashes" -type f | wc -l)
echo "fuzz: $crashes crash/leak/timeout artifacts in $out/crashes"
[ "$status" = 0 ] && [ "$crashes" = 0 ]
