"""PyTorch reference timings for bench/workflow_bench.cpp (run with Debian's /usr/bin/python3,
which has python3-torch 1.13).

    /usr/bin/python3 bench/workflow_pytorch.py [--repetitions N] [--steps-per-sample N]
        [--warmup N] --threads T [T ...]

The zoo ResNet of calq (bench/pytorch_zoo.py: stem Conv-BN-ReLU 16, BasicBlocks 16, 32/2, 64/2
ending in add_relu, average pool, Linear 64->10; the same quantization points as calq: float
logits, quantized pool output), batch 64 of synthetic 1x28x28 images, timed per call:

  train_step/float        float model, train mode: forward, cross-entropy, backward, Adam step;
  train_step/<method>     eager-mode QAT: fuse_modules_qat, get_default_qat_qconfig("fbgemm"),
                          prepare_qat, the same step (one PyTorch QAT for every calq method);
  inference/float         float model, eval mode, no grad;
  calibration/min_max     fuse_modules (eval), prepare with MinMaxObserver activations, one
                          forward without grad;
  calibration/percentile  the same with get_default_qconfig("fbgemm") (HistogramObserver),
                          PyTorch's histogram calibration.

As in the C++ harness, the cases of one thread count are measured in interleaved rounds after a
warm-up, each sample is the mean of --steps-per-sample calls, and the median sample is
reported. Prints JSON: {"<threads>": {"<case>": ms}}.
"""

import argparse
import json
import statistics
import time
import warnings

import torch
import torch.nn as nn
from torch.ao import quantization as tq

from pytorch_zoo import ResNet, align_quantization_points

BATCH = 64
CLASSES = 10
SEED = 0
# Adam's arithmetic does not depend on the learning rate; as in the C++ harness.
LEARNING_RATE = 1e-6


def fresh_model():
    torch.manual_seed(SEED)
    return ResNet()


def qat_model():
    model = fresh_model().train()
    tq.fuse_modules_qat(model, model.fuse_groups(), inplace=True)
    model.qconfig = tq.get_default_qat_qconfig("fbgemm")
    tq.prepare_qat(model, inplace=True)
    align_quantization_points(model, model.qconfig.activation)
    return model


def calibration_model(qconfig):
    model = fresh_model().eval()
    tq.fuse_modules(model, model.fuse_groups(), inplace=True)
    model.qconfig = qconfig
    tq.prepare(model, inplace=True)
    align_quantization_points(model, model.qconfig.activation)
    return model


def train_op(model, images, labels):
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=False)  # as LibTorch's zero_grad
        loss_fn(model(images), labels).backward()
        optimizer.step()

    return step


def inference_op(model, images):
    def forward():
        with torch.no_grad():
            model(images)

    return forward


def cases(images, labels):
    # fbgemm's activation range (quint8 with reduce_range: [0, 127]) with a min/max observer.
    min_max_qconfig = tq.QConfig(
        activation=tq.MinMaxObserver.with_args(quant_min=0, quant_max=127),
        weight=tq.default_per_channel_weight_observer)
    float_eval = fresh_model().eval()
    qat_step = train_op(qat_model(), images, labels)
    return {
        "train_step/float": train_op(fresh_model(), images, labels),
        # One PyTorch QAT model serves every calq method: PyTorch has no built-in eager
        # equivalent of calq's lsq / pact recipes; its default QAT is the reference.
        "train_step/fake_quant": qat_step,
        "train_step/lsq": qat_step,
        "train_step/pact": qat_step,
        "inference/float": inference_op(float_eval, images),
        "calibration/min_max": inference_op(calibration_model(min_max_qconfig), images),
        "calibration/percentile": inference_op(
            calibration_model(tq.get_default_qconfig("fbgemm")), images),
    }


def measure(ops, repetitions, steps_per_sample, warmup):
    """Median ms per call of every op, measured in interleaved rounds."""
    for _ in range(warmup):
        for op in ops.values():
            op()
    samples = {name: [] for name in ops}
    for _ in range(repetitions):
        for name, op in ops.items():
            start = time.perf_counter()
            for _ in range(steps_per_sample):
                op()
            samples[name].append((time.perf_counter() - start) * 1e3 / steps_per_sample)
    return {name: statistics.median(s) for name, s in samples.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=11)
    parser.add_argument("--steps-per-sample", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", required=True)
    args = parser.parse_args()
    if args.repetitions < 1 or args.steps_per_sample < 1 or args.warmup < 0:
        parser.error("--repetitions and --steps-per-sample must be >= 1, --warmup >= 0")

    # PyTorch's own default qconfigs still pass reduce_range, which warns on every observer.
    warnings.filterwarnings("ignore", message="Please use quant_min and quant_max")
    torch.manual_seed(SEED)
    images = torch.randn(BATCH, 1, 28, 28)
    labels = torch.randint(CLASSES, (BATCH,))
    ops = cases(images, labels)
    # The QAT step is shared by three rows; time it once.
    timed = {name: op for name, op in ops.items()
             if name not in ("train_step/lsq", "train_step/pact")}
    out = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        medians = measure(timed, args.repetitions, args.steps_per_sample, args.warmup)
        medians["train_step/lsq"] = medians["train_step/pact"] = medians["train_step/fake_quant"]
        out[str(threads)] = medians
    print(json.dumps(out))


if __name__ == "__main__":
    main()
