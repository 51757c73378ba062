#!/usr/bin/env python3
"""Accuracy of calq on models no one here wrote: torchvision architectures trained briefly on
Fashion-MNIST in PyTorch, exported to ONNX, imported by calq.

For every architecture: train in PyTorch (first convolution adapted to 1 channel, 28x28 input,
Adam with cosine decay), export (opset 13, dynamic batch, eval mode: batch norm folded), then

  calq run --model ARCH.onnx --bits 8/8 --methods none     (W8A8 PTQ, observer chosen on validation)
  calq run --model ARCH.onnx --bits 4/8 --methods none     (W4A8 PTQ)
  calq run --model ARCH.onnx --bits 4/4 --methods lsq --qat-loss distillation   (W4A4 PTQ + QAT)

and tabulate test top-1 with paired 95 % confidence intervals (results.json of each run). The
float models see all 60,000 training images (so calq's 5,000 validation images, held out of the
same file to choose observers, were seen in float training; the 10,000 test images never are).

    /usr/bin/python3 bench/torchvision_fmnist.py --calq build/calq --out runs/torchvision \
        --archs mobilenet_v2,resnet18,shufflenet_v2_x1_0 --epochs 2 --threads 2
"""
import argparse
import gzip
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torchvision

FMNIST = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530  # calq's Fashion-MNIST normalization


def load(split):
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(os.path.join(FMNIST, f"{prefix}-images-idx3-ubyte.gz")) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(os.path.join(FMNIST, f"{prefix}-labels-idx1-ubyte.gz")) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    x = (x.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


def one_channel(conv):
    return torch.nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           bias=conv.bias is not None)


def make(arch):
    model = getattr(torchvision.models, arch)(num_classes=10)
    if arch.startswith("resnet"):
        model.conv1 = one_channel(model.conv1)
    elif arch.startswith("mobilenet"):
        model.features[0][0] = one_channel(model.features[0][0])
    elif arch.startswith("shufflenet"):
        model.conv1[0] = one_channel(model.conv1[0])
    elif arch == "googlenet":
        model = torchvision.models.googlenet(num_classes=10, aux_logits=False, init_weights=True)
        model.conv1.conv = one_channel(model.conv1.conv)
        model.transform_input = False
    else:
        raise SystemExit(f"no 1-channel adaptation for {arch}")
    return model


def top1(model, x, y, batch=1000):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += (model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
    return 100.0 * correct / len(x)


def train(arch, epochs, out, seed):
    path = os.path.join(out, f"{arch}.onnx")
    meta_path = path + ".json"
    if os.path.exists(path) and os.path.exists(meta_path):
        return json.load(open(meta_path))
    torch.manual_seed(seed)
    x, y = load("train")
    xt, yt = load("test")
    model = make(arch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = epochs * ((len(x) + 127) // 128)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"{arch} epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, "
              f"{time.time() - start:.0f} s", file=sys.stderr, flush=True)
    model.eval()
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), path, opset_version=13,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    meta = {"arch": arch, "epochs": epochs, "seed": seed, "pytorch_test_top1": top1(model, xt, yt),
            "train_seconds": time.time() - start, "threads": torch.get_num_threads()}
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def calq_run(calq, model, out, bits, methods, threads, observers, extra):
    if not (os.path.exists(os.path.join(out, "results.json")) and
            "chosen_calibration" in json.load(open(os.path.join(out, "results.json")))):
        cmd = [calq, "run", "--model", model, "--bits", bits, "--methods", methods, "--threads",
               str(threads), "--observers", observers, "--out", out, "--quiet", "--resume"] + extra
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def ci(c):
    return f"{c['diff_pt']:+.2f} [{c['ci_low_pt']:+.2f}, {c['ci_high_pt']:+.2f}]"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--calq", default="build/calq")
    parser.add_argument("--out", default="runs/torchvision")
    parser.add_argument("--archs", default="mobilenet_v2,resnet18,shufflenet_v2_x1_0")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--observers", default="min_max,percentile,kl,mse,mix")
    parser.add_argument("--qat-epochs", default="1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    rows = []
    for arch in args.archs.split(","):
        meta = train(arch, args.epochs, args.out, args.seed)
        model = os.path.join(args.out, f"{arch}.onnx")
        runs = {}
        for bits, methods, extra in [
                ("8/8", "none", []), ("4/8", "none", []),
                ("4/4", "lsq", ["--qat-loss", "distillation", "--qat-epochs", args.qat_epochs])]:
            name = f"{arch}_w{bits.replace('/', 'a')}"
            runs[bits] = calq_run(args.calq, model, os.path.join(args.out, name), bits, methods,
                                  args.threads, args.observers, extra)
        rows.append((arch, meta, runs))

    print("\n| model | PyTorch float | calq float | W8A8 PTQ (vs float) | W4A8 PTQ (vs float) | "
          "W4A4 PTQ (vs float) | W4A4 + distillation QAT lsq (vs PTQ) | recovered |")
    print("|---|---:|---:|---|---|---|---|---:|")
    for arch, meta, runs in rows:
        flt = runs["8/8"]["float"]["test_top1"]
        cells = []
        for bits in ("8/8", "4/8", "4/4"):
            c = runs[bits]["chosen_calibration"]
            cells.append(f"{c['test_top1']:.2f} ({c['observer']}; {ci(c['vs_float'])})")
        ptq = runs["4/4"]["chosen_calibration"]["test_top1"]
        q = runs["4/4"]["qat"]["lsq"]
        recovered = (q["test_top1"] - ptq) / (flt - ptq) if flt > ptq else float("nan")
        print(f"| {arch} | {meta['pytorch_test_top1']:.2f} | {flt:.2f} | {cells[0]} | {cells[1]} | "
              f"{cells[2]} | {q['test_top1']:.2f} ({ci(q['vs_calibration'])}) | "
              f"{100 * recovered:.0f} % |")


if __name__ == "__main__":
    main()
