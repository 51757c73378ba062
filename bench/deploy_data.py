#!/usr/bin/python3
"""Inputs of bench/deploy.py: a ResNet-18-sized ONNX model at 3x224x224 and calibration images.

    /usr/bin/python3 bench/deploy_data.py OUT_DIR [--images 1000 4000]

OUT_DIR/resnet18_224.onnx: torchvision resnet18 (1000 classes) with random weights and
randomized batch-norm statistics, eval mode, exported at opset 13 with a dynamic batch.
OUT_DIR/fmnist224_<N>.npy: the first N Fashion-MNIST training images (Debian's
dataset-fashion-mnist), resized to 224x224 (bilinear, half-pixel), repeated to 3 channels and
normalized with ImageNet's mean and std, float32 [N, 3, 224, 224], written in chunks (never held
whole in memory). Existing files are kept.
"""
import argparse
import gzip
import os

import numpy as np
import torch
import torchvision

FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


def model(path):
    if os.path.exists(path):
        return
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
    net.eval()
    torch.onnx.export(net, (torch.randn(1, 3, 224, 224),), path, opset_version=13,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def images(path, n):
    if os.path.exists(path):
        return
    with gzip.open(FMNIST, "rb") as f:
        raw = f.read()
    count = int.from_bytes(raw[4:8], "big")
    assert n <= count, "Fashion-MNIST has %d training images" % count
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, 1, 28, 28)
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    tmp = path + ".tmp.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, 3, 224, 224))
    for start in range(0, n, 100):
        x = torch.from_numpy(pixels[start:min(start + 100, n)].astype(np.float32) / 255.0)
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear",
                                            align_corners=False)
        out[start:start + len(x)] = ((x.repeat(1, 3, 1, 1) - mean) / std).numpy()
    out.flush()
    del out
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--images", type=int, nargs="+", default=[1000, 4000])
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    model(os.path.join(a.out, "resnet18_224.onnx"))
    for n in a.images:
        images(os.path.join(a.out, "fmnist224_%d.npy" % n), n)


if __name__ == "__main__":
    main()
