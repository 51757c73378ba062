#!/usr/bin/env python3
"""kl observer options, measured: search bins, the plugin's zero-bin rule and its smoothing.

For every seed's float model (trained by `calq train`, e.g. by bench/qat_recipe.py into
OUT/float_seedN) and every bit width, calibrates with each kl variant through
`calq calibrate --qconfig FILE` and prints validation and test top-1 (defaults are chosen on
validation).

    /usr/bin/python3 bench/kl_options.py --calq build/calq --floats runs/recipe \
        --seeds 0,1,2 --bits 8/8,4/4 --threads 1
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

VARIANTS = {
    "kl": {},
    "kl 512 bins": {"bins": 512},
    "kl zero bin": {"zero_bin_as_neighbour": True},
    "kl smoothing 9": {"smoothing": 9},
    "kl zero bin + smoothing 9": {"zero_bin_as_neighbour": True, "smoothing": 9},
}
DTYPES = {"4": "qint4", "8": "qint8", "16": "qint16"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--calq", default="build/calq")
    parser.add_argument("--floats", default="runs/recipe", help="folder with float_seedN/")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--bits", default="8/8,4/4")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--model", default="cnn")
    args = parser.parse_args()

    table = {}
    for seed in args.seeds.split(","):
        out = os.path.join(args.floats, f"float_seed{seed}")
        for bits in args.bits.split(","):
            weight, activation = bits.split("/")
            for name, kwargs in VARIANTS.items():
                qconfig = {
                    "activation": {"method": "fake_quant", "observer": "kl",
                                   "qkwargs": dict(kwargs, dtype=DTYPES[activation])},
                    "weight": {"method": "fake_quant", "observer": "min_max",
                               "qkwargs": {"dtype": DTYPES[weight]}},
                }
                path = os.path.join(out, "kl_variant.json")
                with open(path, "w") as f:
                    json.dump(qconfig, f)
                cmd = [args.calq, "calibrate", "--model", args.model, "--seed", seed, "--bits", bits,
                       "--threads", args.threads, "--out", out, "--quiet", "--qconfig", path]
                print("+", " ".join(cmd), file=sys.stderr, flush=True)
                text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                m = re.search(r"validation top-1 ([0-9.]+)%, test top-1 ([0-9.]+)%", text)
                table.setdefault((bits, name), []).append((float(m.group(1)), float(m.group(2))))
    print(f"\n{'bits':5} {'variant':28} {'val top-1 (mean)':>16} {'test top-1 (mean)':>17} per seed (val/test)")
    for (bits, name), rows in table.items():
        vals = [r[0] for r in rows]
        tests = [r[1] for r in rows]
        per_seed = "  ".join(f"{v:.2f}/{t:.2f}" for v, t in rows)
        print(f"{bits:5} {name:28} {statistics.mean(vals):16.2f} {statistics.mean(tests):17.2f} {per_seed}")


if __name__ == "__main__":
    main()
