#!/usr/bin/env bash
# `calq run --nproc 2` against one process on a small configuration (docs/distributed.md,
# "The whole workflow with --nproc"):
#   1. the whole workflow in one process and in 2 processes (1 thread each, same global batch):
#      every top-1 in results.json within the stated tolerance, the same best observer;
#   2. calibration of the one-process run's float model by 2 processes, for every observer:
#      the exported scales bit-identical to the one-process calibration's (within 1e-6 for the
#      running averages min_max, mse, clip_std).
# Usage: bash scripts/check_nproc.sh [OUT_FOLDER]   (build first; CALQ_BUILD_DIR as elsewhere,
# or CALQ_CLI=/path/to/calq as the CTest test distributed_run_nproc sets it). Exits 77 (CTest's
# skip code) when the Fashion-MNIST package is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
calq="${CALQ_CLI:-$(pwd)/${CALQ_BUILD_DIR:-build}/calq}"
out="${1:-/tmp/calq_check_nproc}"
if [ ! -d "${CALQ_DATA_DIR:-/usr/share/datasets/fashion-mnist}" ]; then
  echo "check_nproc: dataset-fashion-mnist is not installed; skipped"
  exit 77
fi
small=(--limit-train 2048 --limit-test 512 --val-size 256 --epochs 1 --qat-epochs 1
       --calib-batches 4 --batch-size 64 --threads 1 --quiet)
observers=(min_max percentile kl mse mix clip_std clip fixed_scale)

rm -rf "${out}"
mkdir -p "${out}"
echo "== one process"
"${calq}" run "${small[@]}" --out "${out}/one" > "${out}/one.log"
echo "== 2 processes"
"${calq}" run "${small[@]}" --nproc 2 --out "${out}/two" > "${out}/two.log"

echo "== calibration of the same float model: 1 vs 2 processes"
status=0
cp -r "${out}/one" "${out}/recalibrated"
for observer in "${observers[@]}"; do
  "${calq}" export --checkpoint "${out}/one/calibrated/${observer}.pt" \
    --json "${out}/scales_one_${observer}.json" > /dev/null
  "${calq}" calibrate "${small[@]}" --nproc 2 --observer "${observer}" \
    --out "${out}/recalibrated" > /dev/null
  "${calq}" export --checkpoint "${out}/recalibrated/calibrated/${observer}.pt" \
    --json "${out}/scales_two_${observer}.json" > /dev/null
  /usr/bin/python3 - "${observer}" "${out}/scales_one_${observer}.json" \
      "${out}/scales_two_${observer}.json" <<'EOF' || status=1
import json, sys
observer, one, two = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
# docs/distributed.md section 3: histogram observers, clip (c = 1), fixed_scale and the weights
# merge bit for bit; min_max, mse and clip_std average with c = 0.01, whose merge is within
# u M (1 + 2 (1 + 2c) min(n_1, 1/c)) = 5.1 float32 roundings for 2 batches on rank 1, so 1e-6
# of the scale.
exact = observer not in ("min_max", "mse", "clip_std")
assert one.keys() == two.keys()
worst = 0.0
for name in one:
    for a, b in zip(one[name]["scale"], two[name]["scale"]):
        worst = max(worst, abs(a - b) / a)
ok = worst == 0.0 if exact else worst <= 1e-6
print("  %-12s %s, largest relative scale difference %.2e" %
      (observer, "bit for bit" if exact else "within 1e-6", worst) + ("" if ok else "  FAILED"))
sys.exit(0 if ok else 1)
EOF
done

echo "== results.json: 1 vs 2 processes"
/usr/bin/python3 - "${out}/one/results.json" "${out}/two/results.json" <<'EOF' || status=1
import json, sys
one, two = (json.load(open(p)) for p in sys.argv[1:3])
# docs/distributed.md: the float model and QAT differ by float rounding (gradient sums in
# another order, batch statistics combined in float64), which can move an image across a
# decision boundary or a histogram bin; every top-1 may differ by at most this many points.
tolerance = 1.0
rows = [("float", "val_top1", one["float"]["val_top1"], two["float"]["val_top1"]),
        ("float", "test_top1", one["float"]["test_top1"], two["float"]["test_top1"])]
for name in one["calibration"]:
    rows.append(("calibration " + name, "val_top1", one["calibration"][name]["val_top1"],
                 two["calibration"][name]["val_top1"]))
for name in one["qat"]:
    for key in ("val_top1", "test_top1"):
        rows.append(("qat " + name, key, one["qat"][name][key], two["qat"][name][key]))
rows.append(("chosen calibration", "test_top1", one["chosen_calibration"]["test_top1"],
             two["chosen_calibration"]["test_top1"]))
worst = 0.0
for stage, key, a, b in rows:
    worst = max(worst, abs(a - b))
    print("  %-26s %-9s one %6.2f  two %6.2f  diff %+5.2f" % (stage, key, a, b, b - a))
print("  best observer: one %s, two %s" % (one["best_observer"], two["best_observer"]))
print("  largest difference %.2f points (tolerance %.2f)" % (worst, tolerance))
sys.exit(0 if worst <= tolerance else 1)
EOF
if [ "${status}" -eq 0 ]; then echo "check_nproc: OK"; else echo "check_nproc: FAILED"; fi
exit "${status}"
