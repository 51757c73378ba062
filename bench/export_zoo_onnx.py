#!/usr/bin/env python3
"""Exports a zoo model's PyTorch twin (pytorch_zoo.py) to ONNX, as a user's model reaches calq:
torch.onnx.export in training mode (BatchNormalization nodes kept, as calq's Conv-BN blocks
train them), opset 13, dynamic batch. Prints {"path": FILE} as JSON.

    /usr/bin/python3 bench/export_zoo_onnx.py resnet OUT.onnx
"""
import json
import sys

import torch

from pytorch_zoo import MODELS


def main():
    name, path = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = MODELS[name]()
    model.train()
    torch.onnx.export(model, torch.zeros(2, 1, 28, 28), path, opset_version=13,
                      training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    print(json.dumps({"path": path}))


if __name__ == "__main__":
    main()
