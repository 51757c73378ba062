"""PyTorch's post-training quantization of calq's own float model on calq's own calibration
data: the reference the `auto` recipe is compared with (docs/analysis.md, "Measured").

    /usr/bin/python3 bench/ptq_same_model.py --checkpoint OUT/float_cnn.pt --bits 4/4 \
        [--calib-batches 32] [--seed 0] [--val-size 5000] [--threads 1] [--json FILE]

It reads the float checkpoint calq wrote (`calq train`; a TorchScript archive that
torch.jit.load opens), copies its weights into bench/pytorch_zoo.py's model, and draws the same
validation split and calibration batches as calq (calq/data/batches.h: std::mt19937_64 seeded
with splitmix64, Fisher-Yates with rejection sampling, re-implemented below). The split is
checked: the float model's top-1 on the validation split must equal what calq reports for it
(pass --expect-val-top1). Then bench/compare_pytorch.py's calibration runs unchanged
(HistogramObserver, affine quint8 [0, 2^A - 1] activations, per-channel symmetric weights) and
the script prints validation and test top-1 and writes per-image correctness (test set) for
paired comparisons.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare_pytorch as cp  # noqa: E402
from pytorch_zoo import MODELS  # noqa: E402

MASK64 = (1 << 64) - 1
HOLD_OUT_SALT = 0x401D0070E0000000
CALIBRATION_SALT = 0xCA11B4A7E0000000


class Mt19937_64:
    """std::mt19937_64 (the C++ standard's parameters)."""

    def __init__(self, seed):
        self.mt = [0] * 312
        self.mt[0] = seed & MASK64
        for i in range(1, 312):
            prev = self.mt[i - 1]
            self.mt[i] = (6364136223846793005 * (prev ^ (prev >> 62)) + i) & MASK64
        self.index = 312

    def _twist(self):
        upper, lower = 0xFFFFFFFF80000000, 0x7FFFFFFF
        mt = self.mt
        for i in range(312):
            x = (mt[i] & upper) | (mt[(i + 1) % 312] & lower)
            xa = x >> 1
            if x & 1:
                xa ^= 0xB5026F5AA96619E9
            mt[i] = mt[(i + 156) % 312] ^ xa
        self.index = 0

    def __call__(self):
        if self.index >= 312:
            self._twist()
        x = self.mt[self.index]
        self.index += 1
        x ^= (x >> 29) & 0x5555555555555555
        x ^= (x << 17) & 0x71D67FFFEDA60000
        x ^= (x << 37) & 0xFFF7EEE000000000
        x ^= x >> 43
        return x & MASK64


def mix(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def shuffled_indices(n, seed, epoch):
    rng = Mt19937_64(mix(mix(seed) ^ epoch))
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        bound = i + 1
        limit = MASK64 - MASK64 % bound
        value = rng()
        while value >= limit:
            value = rng()
        j = value % bound
        order[i], order[j] = order[j], order[i]
    return order


def hold_out(n, size, seed):
    """(rest, held_out) row indices as calq's data::hold_out."""
    chosen = sorted(shuffled_indices(n, seed, HOLD_OUT_SALT)[:size])
    chosen_set = set(chosen)
    return [i for i in range(n) if i not in chosen_set], chosen


def calibration_rows(n, num_batches, batch_size, seed):
    order = shuffled_indices(n, seed, CALIBRATION_SALT)
    return [order[b * batch_size:(b + 1) * batch_size] for b in range(num_batches)]


def load_calq_cnn(path):
    """calq's float cnn checkpoint -> bench/pytorch_zoo.py's Cnn."""
    state = {k: v for k, v in torch.jit.load(path).state_dict().items()}
    names = {"conv1.conv.weight": "conv1.weight", "conv2.conv.weight": "conv2.weight",
             "fc1.linear.weight": "fc1.weight", "fc1.linear.bias": "fc1.bias",
             "fc2.linear.weight": "fc2.weight", "fc2.linear.bias": "fc2.bias"}
    for i in (1, 2):
        for part in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            names[f"conv{i}.bn.{part}"] = f"bn{i}.{part}"
    model = MODELS["cnn"]()
    target = model.state_dict()
    missing = [k for k in target if k not in names.values()]
    if missing:
        sys.exit(f"no calq entry for {missing}")
    model.load_state_dict({names[k]: v for k, v in state.items() if k in names})
    return model.eval()


@torch.no_grad()
def correct(model, images, labels):
    model.eval()
    out = []
    for start in range(0, len(labels), 1000):
        logits = model(images[start:start + 1000])
        out.append((logits.argmax(1) == labels[start:start + 1000]).to(torch.uint8))
    return torch.cat(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="calq's float_cnn.pt")
    parser.add_argument("--bits", default="4/4")
    parser.add_argument("--calib-batches", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--expect-val-top1", type=float,
                        help="calq's float validation top-1: the split is checked against it")
    parser.add_argument("--data-dir", default=os.environ.get("CALQ_DATA_DIR") or cp.DEFAULT_DATA_DIR)
    parser.add_argument("--json", help="write results (and per-image test correctness) here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weight_bits, activation_bits = cp.parse_bits(args.bits)

    train_x, train_y = cp.load_split(args.data_dir, "train", 0)
    test_x, test_y = cp.load_split(args.data_dir, "test", 0)
    rest, held = hold_out(len(train_y), args.val_size, args.seed)
    rest_t, held_t = torch.tensor(rest), torch.tensor(held)
    val_x, val_y = train_x[held_t], train_y[held_t]
    rest_x, rest_y = train_x[rest_t], train_y[rest_t]
    batches = [(rest_x[torch.tensor(rows)], rest_y[torch.tensor(rows)])
               for rows in calibration_rows(len(rest), args.calib_batches, args.batch_size,
                                            args.seed)]

    model = load_calq_cnn(args.checkpoint)
    float_val = 100.0 * correct(model, val_x, val_y).double().mean().item()
    print(f"float: validation top-1 {float_val:.2f}%", file=sys.stderr)
    # calq prints top-1 with two decimals: one image of 5000 is 0.02 pt, so 0.005 separates.
    if args.expect_val_top1 is not None and abs(float_val - args.expect_val_top1) > 0.005:
        sys.exit(f"the validation split differs from calq's: float top-1 {float_val} here, "
                 f"{args.expect_val_top1} in calq")
    calibrated, seconds = cp.calibrate(model, batches, weight_bits, activation_bits)
    val = 100.0 * correct(calibrated, val_x, val_y).double().mean().item()
    test_correct = correct(calibrated, test_x, test_y)
    float_test = correct(model, test_x, test_y)
    result = {"bits": args.bits, "threads": args.threads, "seed": args.seed,
              "float": {"val_top1": float_val, "test_top1": 100.0 * float_test.double().mean().item()},
              "pytorch_ptq": {"val_top1": val,
                              "test_top1": 100.0 * test_correct.double().mean().item(),
                              "seconds": seconds,
                              "test_correct": test_correct.tolist()}}
    print(f"pytorch PTQ W{args.bits}: validation top-1 {val:.2f}%, test top-1 "
          f"{result['pytorch_ptq']['test_top1']:.2f}%", file=sys.stderr)
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(result, f)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
