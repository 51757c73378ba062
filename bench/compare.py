#!/usr/bin/env python3
"""calq run and bench/compare_pytorch.py on the same settings, side by side.

    bench/run.sh compare --json FILE [--model cnn] [--bits 8/8] [--epochs N] [--qat-epochs N]
                         [--calib-batches N] [--threads N] [--seed N]
                         [--limit-train N] [--limit-test N]

Writes {"calq": <calq's results.json>, "pytorch": <compare_pytorch.py's JSON>} and prints a
table of top-1 accuracy and time per stage. Both sides train their own float model from the
same seed with the same hyper-parameters (batch 128, Adam, cosine decay; QAT Adam 1e-4).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calq", required=True, help="path of the calq binary")
    parser.add_argument("--json", help="write the combined results here")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--bits", default="8/8")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--calib-batches", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-train", type=int, default=0)
    parser.add_argument("--limit-test", type=int, default=0)
    parser.add_argument("--out", help="calq's output folder (default: a temporary folder)")
    args = parser.parse_args()

    common = ["--model", args.model, "--bits", args.bits, "--epochs", str(args.epochs),
              "--qat-epochs", str(args.qat_epochs), "--calib-batches", str(args.calib_batches),
              "--threads", str(args.threads), "--seed", str(args.seed)]
    if args.limit_train:
        common += ["--limit-train", str(args.limit_train)]
    if args.limit_test:
        common += ["--limit-test", str(args.limit_test)]

    with tempfile.TemporaryDirectory(prefix="calq_compare_") as tmp:
        out = args.out or os.path.join(tmp, "calq")
        subprocess.run([args.calq, "run", "--out", out] + common, check=True)
        with open(os.path.join(out, "results.json")) as f:
            calq = json.load(f)
        pytorch_json = os.path.join(tmp, "pytorch.json")
        subprocess.run([sys.executable, os.path.join(HERE, "compare_pytorch.py"), "--json",
                        pytorch_json] + common, check=True)
        with open(pytorch_json) as f:
            pytorch = json.load(f)

    combined = {"calq": calq, "pytorch": pytorch}
    print_table(calq, pytorch, args.threads)
    if args.json:
        tmp_path = args.json + ".tmp"
        with open(tmp_path, "w") as f:
            json.dump(combined, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, args.json)


def print_table(calq, pytorch, threads):
    # calq's top-1 are on the test set; its choices were made on a validation split held out
    # from the training images (calq trains on the rest).
    rows = [("float", calq["float"]["test_top1"], calq["float"].get("seconds_per_epoch"),
             pytorch["float"]["top1"], pytorch["float"].get("seconds_per_epoch"))]
    best = calq.get("best_observer")
    for name, entry in pytorch.get("calibration", {}).items():
        rows.append((f"PTQ (calq {best} / torch {name})",
                     calq["chosen_calibration"]["test_top1"], calq["calibration"][best]["seconds"],
                     entry["top1"], entry.get("seconds")))
    for name, entry in pytorch.get("qat", {}).items():
        for method, ours in calq.get("qat", {}).items():
            rows.append((f"QAT (calq {method} / torch {name})", ours["test_top1"],
                         ours["seconds_per_epoch"], entry["top1"], entry.get("seconds_per_epoch")))
    data = calq.get("data", {})
    print(f"\ncalq trained on {data.get('train')} images and chose on {data.get('validation')} "
          f"held-out training images; both report test top-1")
    print(f"{threads} threads; time = s/epoch for training, s for calibration")
    print(f"{'stage':<42} {'calq top-1':>10} {'calq s':>8} {'torch top-1':>11} {'torch s':>8}")
    for stage, a, at, b, bt in rows:
        fmt = lambda v: f"{v:8.2f}" if isinstance(v, (int, float)) else f"{'-':>8}"
        print(f"{stage:<42} {a:10.2f} {fmt(at)} {b:11.2f} {fmt(bt)}")


if __name__ == "__main__":
    main()
