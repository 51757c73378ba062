#!/usr/bin/env python3
"""QAT recipe study: does QAT keep or improve the calibrated accuracy?

Runs `calq run` for every (bits, seed, recipe) and tabulates, per QAT method, the paired
difference to the chosen calibration on the same test images (results.json
"qat"/METHOD/"vs_calibration"), and the validation/test top-1 of every row. The float model of a
seed is trained once and reused by every recipe and bit width of that seed (its checkpoint is
copied into each run's folder).

    /usr/bin/python3 bench/qat_recipe.py --calq build/calq --out runs/recipe \
        --bits 16/16,8/8,4/4 --seeds 0,1,2 --threads 1 [--json FILE]

Recipes (flags of calq run):
  old:      Adam at a constant 1e-4 for weights and quantizer parameters, no BN freezing
            (calq's QAT before this study)
  new:      the current defaults (see README)
  shared-lr: the current defaults but quantizer parameters at the weights' rate (isolates the
            quantizer parameter group)
  minmax-qat: the current defaults but min_max observing during QAT in place of the
            calibration's observer (isolates --qat-observer calibrated)
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

RECIPES = {
    "old": ["--qat-scale-lr", "1e-4", "--qat-schedule", "constant", "--qat-freeze-bn-epochs", "0"],
    "new": [],
    "shared-lr": ["--qat-scale-lr", "1e-4"],
    "minmax-qat": ["--qat-observer", "min_max"],
}


def run(cmd):
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--calq", default="build/calq")
    parser.add_argument("--out", default="runs/recipe")
    parser.add_argument("--bits", default="16/16,8/8,4/4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--recipes", default="old,new")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--extra", default="", help="more calq run flags, space separated")
    parser.add_argument("--json", help="write every run's results here")
    args = parser.parse_args()

    collected = {}
    for seed in args.seeds.split(","):
        float_dir = os.path.join(args.out, f"float_seed{seed}")
        os.makedirs(float_dir, exist_ok=True)
        run([args.calq, "train", "--model", args.model, "--seed", seed, "--threads", args.threads,
             "--out", float_dir, "--quiet"] + args.extra.split())
        for bits in args.bits.split(","):
            for recipe in args.recipes.split(","):
                name = f"{recipe}_w{bits.replace('/', 'a')}_seed{seed}"
                out = os.path.join(args.out, name)
                os.makedirs(out, exist_ok=True)
                for f in os.listdir(float_dir):
                    if f.startswith("float_") and not f.endswith(".resume.pt"):
                        shutil.copy(os.path.join(float_dir, f), out)
                if not os.path.exists(os.path.join(out, "results.json")) or \
                        "qat" not in json.load(open(os.path.join(out, "results.json"))):
                    run([args.calq, "run", "--model", args.model, "--bits", bits, "--seed", seed,
                         "--threads", args.threads, "--out", out, "--quiet", "--resume"]
                        + RECIPES[recipe] + args.extra.split())
                with open(os.path.join(out, "results.json")) as f:
                    collected[name] = json.load(f)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(collected, f, indent=1)

    print(f"\n{'bits':6} {'recipe':10} {'method':10} {'seed':>4} {'calib':>8} {'qat':>8} "
          f"{'qat - calib (paired 95% CI)':>32}")
    summary = {}
    for name, r in sorted(collected.items()):
        recipe, bits, seed = name.split("_")
        calib = r["chosen_calibration"]["test_top1"]
        for method, q in r["qat"].items():
            c = q["vs_calibration"]
            print(f"{bits:6} {recipe:10} {method:10} {seed[4:]:>4} {calib:8.2f} {q['test_top1']:8.2f} "
                  f"{c['diff_pt']:+7.2f} [{c['ci_low_pt']:+.2f}, {c['ci_high_pt']:+.2f}] {c['verdict']}")
            summary.setdefault((bits, recipe, method), []).append(c["diff_pt"])
    print(f"\n{'bits':6} {'recipe':10} {'method':10} {'mean qat - calib over seeds':>28}")
    for (bits, recipe, method), diffs in sorted(summary.items()):
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        print(f"{bits:6} {recipe:10} {method:10} {statistics.mean(diffs):+8.2f} pt (sd {sd:.2f}, "
              f"{len(diffs)} seeds)")


if __name__ == "__main__":
    main()
