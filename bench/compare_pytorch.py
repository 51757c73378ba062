"""PyTorch eager-mode reference for calq's workflow: the same three model-zoo networks, the
same data, the same hyper-parameters, quantized with torch.ao.quantization.

Run with Debian's python3 (python3-torch 1.13):

    /usr/bin/python3 bench/compare_pytorch.py --model resnet --bits 8/8 --epochs 5 \
        --qat-epochs 2 --calib-batches 32 --threads 2 --seed 0 --json pytorch_resnet.json

Steps (each timed):
  1. float training: Adam lr 1e-3, cosine decay to 0 per step over all float epochs,
     batch 128, shuffled every epoch (seeded), last partial batch kept;
  2. post-training calibration: BN folded (eager fuse_modules in eval mode), QuantStub /
     DeQuantStub / FloatFunctional quantization points, HistogramObserver on activations
     (per-tensor affine, quint8 [0, 2^A - 1]) and PerChannelMinMaxObserver on weights
     (per-channel symmetric, [-2^(W-1), 2^(W-1) - 1]), fed `calib_batches` seeded batches of
     128 training images; then evaluated as a simulated (fake-quantized) model, which works
     for every bit width;
  3. QAT from the float weights: fuse_modules_qat + prepare_qat with PyTorch's default QAT
     qconfig (get_default_qat_qconfig('fbgemm') for 8/8, note its activations use
     reduce_range, i.e. [0, 127]; for other widths the same FusedMovingAvgObsFakeQuantize with
     moving-average min/max observers, activations quint8 [0, 2^A - 1], weights per-channel
     symmetric [-2^(W-1), 2^(W-1) - 1]); Adam lr 1e-4 constant; evaluated in fake-quant mode
     with observers disabled and BN statistics frozen.

Models and quantization points: bench/pytorch_zoo.py (calq's zoo; both sides quantize the same
tensors), aligned after prepare by align_quantization_points().

Writes JSON in calq's report shape:
  {"float": {"top1", "seconds_per_epoch"}, "calibration": {"histogram": {"top1", "seconds"}},
   "qat": {"default": {"top1", "seconds_per_epoch"}}, "config": {...}}   (top1 in percent)
"""

import argparse
import copy
import gzip
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.intrinsic.qat as nniqat
from torch.ao import quantization as tq

from pytorch_zoo import MODELS, align_quantization_points

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530
BATCH_SIZE = 128
EVAL_BATCH_SIZE = 1000
FLOAT_LR = 1e-3
QAT_LR = 1e-4
# Seeds of the independent random streams, mixed with the user's seed.
CALIBRATION_STREAM = 1_000_003
EPOCH_STREAM = 7_919


# ---------------------------------------------------------------------------------------------
# Data: the gzip idx files of Debian's dataset-fashion-mnist, normalized like calq.
# ---------------------------------------------------------------------------------------------

def read_idx(path, magic, limit):
    """Returns the uint8 payload of an idx file as [count, ...] (first `limit` rows)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    found, count = struct.unpack(">II", data[:8])
    if found != magic:
        sys.exit(f"{path}: magic number {found}, expected {magic}")
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        shape, offset = (count, rows, cols), 16
    else:
        shape, offset = (count,), 8
    payload = np.frombuffer(data, dtype=np.uint8, offset=offset)
    expected = int(np.prod(shape))
    if payload.size != expected:
        sys.exit(f"{path}: {payload.size} data bytes, expected {expected}")
    array = payload.reshape(shape)
    return array[:limit] if limit else array


def idx_path(data_dir, stem):
    gz = os.path.join(data_dir, stem + ".gz")
    return gz if os.path.exists(gz) or not os.path.exists(os.path.join(data_dir, stem)) \
        else os.path.join(data_dir, stem)


def load_split(data_dir, split, limit):
    """(images float32 [N, 1, 28, 28] normalized, labels int64 [N])."""
    prefix = "train" if split == "train" else "t10k"
    images_file = idx_path(data_dir, f"{prefix}-images-idx3-ubyte")
    labels_file = idx_path(data_dir, f"{prefix}-labels-idx1-ubyte")
    for path in (images_file, labels_file):
        if not os.path.exists(path):
            sys.exit(f"{path} not found: install the data with "
                     "`apt-get install dataset-fashion-mnist` or pass --data-dir")
    pixels = read_idx(images_file, 2051, limit)
    labels = read_idx(labels_file, 2049, limit)
    # The same 256-entry table as calq (computed in double, rounded once to float32), so both
    # sides see bit-identical inputs.
    table = ((np.arange(256) / 255.0 - MEAN) / STD).astype(np.float32)
    images = torch.from_numpy(table[pixels]).unsqueeze(1)
    return images, torch.from_numpy(labels.astype(np.int64))


def shuffled_batches(images, labels, seed, epoch):
    generator = torch.Generator().manual_seed(seed * EPOCH_STREAM + epoch)
    order = torch.randperm(len(labels), generator=generator)
    for start in range(0, len(order), BATCH_SIZE):
        rows = order[start:start + BATCH_SIZE]
        yield images[rows], labels[rows]


def calibration_batches(images, labels, num_batches, seed):
    """`num_batches` distinct seeded batches of 128 training examples."""
    if num_batches * BATCH_SIZE > len(labels):
        sys.exit(f"--calib-batches {num_batches} needs {num_batches * BATCH_SIZE} training "
                 f"examples, only {len(labels)} available")
    generator = torch.Generator().manual_seed(seed * EPOCH_STREAM + CALIBRATION_STREAM)
    order = torch.randperm(len(labels), generator=generator)
    return [(images[order[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]],
             labels[order[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]]) for i in range(num_batches)]


# ---------------------------------------------------------------------------------------------
# Models: bench/pytorch_zoo.py (calq's model zoo with eager-mode quantization points).
# ---------------------------------------------------------------------------------------------



# ---------------------------------------------------------------------------------------------
# Training and evaluation.
# ---------------------------------------------------------------------------------------------

def train_epoch(model, optimizer, scheduler, images, labels, seed, epoch, label):
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    seen, last_print = 0, start
    for x, y in shuffled_batches(images, labels, seed, epoch):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        seen += len(y)
        now = time.perf_counter()
        if now - last_print >= 10:
            last_print = now
            print(f"{label}: {seen}/{len(labels)} img, {seen / (now - start):.0f} img/s, "
                  f"loss {loss.item():.4f}", file=sys.stderr)
    seconds = time.perf_counter() - start
    print(f"{label}: done in {seconds:.1f} s ({len(labels) / seconds:.0f} img/s)",
          file=sys.stderr)
    return seconds


@torch.no_grad()
def top1(model, images, labels):
    model.eval()
    correct = 0
    for start in range(0, len(labels), EVAL_BATCH_SIZE):
        logits = model(images[start:start + EVAL_BATCH_SIZE])
        correct += (logits.argmax(1) == labels[start:start + EVAL_BATCH_SIZE]).sum().item()
    return 100.0 * correct / len(labels)


# ---------------------------------------------------------------------------------------------
# Quantization.
# ---------------------------------------------------------------------------------------------

def parse_bits(text):
    try:
        weight, activation = (int(part) for part in text.split("/"))
    except ValueError:
        sys.exit(f"--bits must be W/A, e.g. 8/8 or 4/8, got '{text}'")
    for name, bits in (("weight", weight), ("activation", activation)):
        if not 2 <= bits <= 8:
            sys.exit(f"{name} bits must be in [2, 8], got {bits}")
    return weight, activation


def weight_range(bits):
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def ptq_qconfig(weight_bits, activation_bits):
    wmin, wmax = weight_range(weight_bits)
    return tq.QConfig(
        activation=tq.HistogramObserver.with_args(
            dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0,
            quant_max=2 ** activation_bits - 1, reduce_range=False),
        weight=tq.PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=wmin,
            quant_max=wmax))


def qat_qconfig(weight_bits, activation_bits):
    if (weight_bits, activation_bits) == (8, 8):
        return tq.get_default_qat_qconfig("fbgemm")
    wmin, wmax = weight_range(weight_bits)
    return tq.QConfig(
        activation=tq.FusedMovingAvgObsFakeQuantize.with_args(
            observer=tq.MovingAverageMinMaxObserver, dtype=torch.quint8,
            qscheme=torch.per_tensor_affine, quant_min=0, quant_max=2 ** activation_bits - 1,
            reduce_range=False),
        weight=tq.FusedMovingAvgObsFakeQuantize.with_args(
            observer=tq.MovingAveragePerChannelMinMaxObserver, dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric, quant_min=wmin, quant_max=wmax))


class FixedFakeQuantize(nn.Module):
    """Per-tensor fake quantization with frozen qparams: what a calibrated observer becomes
    in the simulated model."""

    def __init__(self, observer):
        super().__init__()
        scale, zero_point = observer.calculate_qparams()
        self.scale = float(scale)
        self.zero_point = int(zero_point)
        self.quant_min, self.quant_max = observer.quant_min, observer.quant_max

    def forward(self, x):
        return torch.fake_quantize_per_tensor_affine(
            x, self.scale, self.zero_point, self.quant_min, self.quant_max)


def simulate_calibrated(model, weight_observer):
    """Turns a prepared (observed) eager model into its fake-quantized twin: every activation
    observer becomes a FixedFakeQuantize, every conv / linear weight is fake-quantized in place
    with a fresh weight observer, exactly the qparams convert() would use."""
    for module in list(model.modules()):
        observer = getattr(module, "activation_post_process", None)
        if isinstance(observer, tq.ObserverBase):
            module.activation_post_process = FixedFakeQuantize(observer)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            observer = weight_observer()
            observer(module.weight.detach())
            scale, zero_point = observer.calculate_qparams()
            with torch.no_grad():
                module.weight.copy_(torch.fake_quantize_per_channel_affine(
                    module.weight, scale.float(), zero_point.int(), 0, observer.quant_min,
                    observer.quant_max))
    return model


def calibrate(float_model, batches, weight_bits, activation_bits):
    """Returns (simulated model, seconds for observing the batches and computing qparams)."""
    model = copy.deepcopy(float_model).eval()
    tq.fuse_modules(model, model.fuse_groups(), inplace=True)
    model.qconfig = ptq_qconfig(weight_bits, activation_bits)
    tq.prepare(model, inplace=True)
    align_quantization_points(model, model.qconfig.activation)
    start = time.perf_counter()
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    simulate_calibrated(model, model.qconfig.weight)
    return model, time.perf_counter() - start


def prepare_qat(float_model, weight_bits, activation_bits):
    model = copy.deepcopy(float_model).train()
    tq.fuse_modules_qat(model, model.fuse_groups(), inplace=True)
    model.qconfig = qat_qconfig(weight_bits, activation_bits)
    tq.prepare_qat(model, inplace=True)
    align_quantization_points(model, model.qconfig.activation)
    return model


def freeze_for_eval(model):
    model.apply(tq.disable_observer)
    model.apply(nniqat.freeze_bn_stats)
    return model.eval()


# ---------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--bits", default="8/8", help="weight/activation bits, e.g. 8/8, 4/8")
    parser.add_argument("--epochs", type=int, default=5, help="float training epochs")
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--calib-batches", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-train", type=int, default=0, help="first N training examples")
    parser.add_argument("--limit-test", type=int, default=0, help="first N test examples")
    parser.add_argument("--data-dir",
                        default=os.environ.get("CALQ_DATA_DIR") or DEFAULT_DATA_DIR)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    weight_bits, activation_bits = parse_bits(args.bits)
    if args.epochs < 1 or args.qat_epochs < 0 or args.calib_batches < 1 or args.threads < 1:
        sys.exit("need --epochs >= 1, --qat-epochs >= 0, --calib-batches >= 1, --threads >= 1")

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train_x, train_y = load_split(args.data_dir, "train", args.limit_train)
    test_x, test_y = load_split(args.data_dir, "test", args.limit_test)

    model = MODELS[args.model]()
    optimizer = torch.optim.Adam(model.parameters(), lr=FLOAT_LR)
    steps = args.epochs * math.ceil(len(train_y) / BATCH_SIZE)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=0.0)
    float_seconds = [train_epoch(model, optimizer, scheduler, train_x, train_y, args.seed, epoch,
                                 f"float epoch {epoch + 1}/{args.epochs}")
                     for epoch in range(args.epochs)]
    float_top1 = top1(model, test_x, test_y)
    print(f"float top-1 {float_top1:.2f}%", file=sys.stderr)

    calib = calibration_batches(train_x, train_y, args.calib_batches, args.seed)
    calibrated, calib_seconds = calibrate(model, calib, weight_bits, activation_bits)
    calib_top1 = top1(calibrated, test_x, test_y)
    print(f"calibrated (histogram) top-1 {calib_top1:.2f}% in {calib_seconds:.2f} s",
          file=sys.stderr)

    qat_result = {}
    if args.qat_epochs > 0:  # 0 skips QAT: fake-quant scales would never have seen data
        qat = prepare_qat(model, weight_bits, activation_bits)
        qat_optimizer = torch.optim.Adam(qat.parameters(), lr=QAT_LR)
        qat_seconds = [train_epoch(qat, qat_optimizer, None, train_x, train_y, args.seed,
                                   args.epochs + epoch, f"qat epoch {epoch + 1}/{args.qat_epochs}")
                       for epoch in range(args.qat_epochs)]
        qat_top1 = top1(freeze_for_eval(qat), test_x, test_y)
        print(f"qat top-1 {qat_top1:.2f}%", file=sys.stderr)
        qat_result = {"default": {"top1": qat_top1,
                                  "seconds_per_epoch": sum(qat_seconds) / len(qat_seconds)}}

    qat_qc = qat_qconfig(weight_bits, activation_bits)
    result = {
        "float": {"top1": float_top1,
                  "seconds_per_epoch": sum(float_seconds) / len(float_seconds)},
        "calibration": {"histogram": {"top1": calib_top1, "seconds": calib_seconds}},
        "qat": qat_result,
        "config": {
            "framework": "pytorch-eager", "torch_version": torch.__version__,
            "model": args.model, "bits": args.bits, "weight_bits": weight_bits,
            "activation_bits": activation_bits, "epochs": args.epochs,
            "qat_epochs": args.qat_epochs, "calib_batches": args.calib_batches,
            "batch_size": BATCH_SIZE, "threads": args.threads, "seed": args.seed,
            "train_examples": len(train_y), "test_examples": len(test_y),
            "float_lr": FLOAT_LR, "lr_schedule": "cosine to 0, stepped per batch",
            "qat_lr": QAT_LR, "normalization": {"mean": MEAN, "std": STD},
            "ptq_qconfig": str(ptq_qconfig(weight_bits, activation_bits)),
            "qat_qconfig": str(qat_qc),
            "qat_activation_quant_range": list(_activation_range(qat_qc)),
        },
    }
    text = json.dumps(result, indent=2)
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(args.json + ".tmp", args.json)
    print(text)


def _activation_range(qconfig):
    """The effective [quant_min, quant_max] of the activation fake-quant (reduce_range halves
    the default 8-bit range)."""
    fake_quant = qconfig.activation()
    return int(fake_quant.quant_min), int(fake_quant.quant_max)


if __name__ == "__main__":
    main()
