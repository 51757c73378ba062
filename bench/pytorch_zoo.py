"""calq's model zoo (src/zoo/models.cpp) in PyTorch eager mode, shared by the PyTorch reference
scripts (compare_pytorch.py, workflow_pytorch.py). Every conv followed by BN has no bias.

Each model lists the modules fuse_modules merges (fuse_groups()) and its differences to eager
mode's default quantization points, so that both sides quantize the same tensors: the logits
stay float (calq's "32-bit output" for the last layer); conv-BN-ReLU6 is one calq block, so the
conv-BN output before a ReLU6 is not quantized (eager mode cannot fuse ReLU6); the residual add
and the ReLU after it are one quantization point (calq's AddReLU, FloatFunctional.add_relu);
calq quantizes the output of adaptive average pooling, which eager mode leaves alone.
align_quantization_points() applies unquantized_outputs() / extra_quantized_outputs() after
prepare / prepare_qat.
"""

import torch.nn as nn
from torch.ao import quantization as tq

def conv_bn(in_ch, out_ch, kernel, stride=1, groups=1):
    return (nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch))


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = tq.QuantStub()
        self.conv1, self.bn1 = conv_bn(1, 16, 3)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2, self.bn2 = conv_bn(16, 32, 3)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(128, 10)
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.fc1(self.flatten(x)))
        return self.dequant(self.fc2(x))

    def fuse_groups(self):
        return [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["fc1", "relu3"]]

    def unquantized_outputs(self):
        return ["fc2"]

    def extra_quantized_outputs(self):
        return []


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU, conv3x3-BN, add the shortcut and ReLU (FloatFunctional.add_relu)."""

    def __init__(self, in_ch, out_ch, stride):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(in_ch, out_ch, 3, stride)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = conv_bn(out_ch, out_ch, 3)
        self.shortcut = (nn.Sequential(*conv_bn(in_ch, out_ch, 1, stride))
                         if stride != 1 or in_ch != out_ch else None)
        self.add_relu = nn.quantized.FloatFunctional()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = self.shortcut(x) if self.shortcut is not None else x
        return self.add_relu.add_relu(out, identity)

    def fuse_groups(self, prefix):
        groups = [[f"{prefix}.conv1", f"{prefix}.bn1", f"{prefix}.relu1"],
                  [f"{prefix}.conv2", f"{prefix}.bn2"]]
        if self.shortcut is not None:
            groups.append([f"{prefix}.shortcut.0", f"{prefix}.shortcut.1"])
        return groups


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = tq.QuantStub()
        self.conv, self.bn = conv_bn(1, 16, 3)
        self.relu = nn.ReLU()
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.layer3 = BasicBlock(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, 10)
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        x = self.relu(self.bn(self.conv(self.quant(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.dequant(self.fc(self.flatten(self.pool(x))))

    def fuse_groups(self):
        groups = [["conv", "bn", "relu"]]
        for name in ("layer1", "layer2", "layer3"):
            groups += getattr(self, name).fuse_groups(name)
        return groups

    def unquantized_outputs(self):
        return ["fc"]

    def extra_quantized_outputs(self):
        return ["pool"]


class InvertedResidual(nn.Module):
    """Expand 1x1 (x t) - BN - ReLU6, depthwise 3x3 - BN - ReLU6, project 1x1 - BN, plus the
    input when the shapes match."""

    def __init__(self, in_ch, out_ch, stride, expand=4):
        super().__init__()
        hidden = in_ch * expand
        self.expand_conv, self.expand_bn = conv_bn(in_ch, hidden, 1)
        self.expand_relu = nn.ReLU6()
        self.dw_conv, self.dw_bn = conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.dw_relu = nn.ReLU6()
        self.project_conv, self.project_bn = conv_bn(hidden, out_ch, 1)
        residual = stride == 1 and in_ch == out_ch
        self.skip_add = nn.quantized.FloatFunctional() if residual else None

    def forward(self, x):
        out = self.expand_relu(self.expand_bn(self.expand_conv(x)))
        out = self.dw_relu(self.dw_bn(self.dw_conv(out)))
        out = self.project_bn(self.project_conv(out))
        return self.skip_add.add(x, out) if self.skip_add is not None else out

    def fuse_groups(self, prefix):
        return [[f"{prefix}.{part}_conv", f"{prefix}.{part}_bn"]
                for part in ("expand", "dw", "project")]


class MobileNet(nn.Module):
    BLOCKS = [(16, 16, 1), (16, 24, 2), (24, 24, 1), (24, 32, 2), (32, 32, 1)]

    def __init__(self):
        super().__init__()
        self.quant = tq.QuantStub()
        self.conv, self.bn = conv_bn(1, 16, 3)
        self.relu = nn.ReLU6()
        self.blocks = nn.Sequential(*[InvertedResidual(i, o, s) for i, o, s in self.BLOCKS])
        self.head_conv, self.head_bn = conv_bn(32, 128, 1)
        self.head_relu = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(128, 10)
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        x = self.relu(self.bn(self.conv(self.quant(x))))
        x = self.head_relu(self.head_bn(self.head_conv(self.blocks(x))))
        return self.dequant(self.fc(self.flatten(self.pool(x))))

    def fuse_groups(self):
        groups = [["conv", "bn"], ["head_conv", "head_bn"]]
        for i, block in enumerate(self.blocks):
            groups += block.fuse_groups(f"blocks.{i}")
        return groups

    def unquantized_outputs(self):
        # conv-BN outputs that feed a ReLU6, and the logits.
        names = ["conv", "head_conv", "fc"]
        for i in range(len(self.blocks)):
            names += [f"blocks.{i}.expand_conv", f"blocks.{i}.dw_conv"]
        return names

    def extra_quantized_outputs(self):
        return ["pool"]


MODELS = {"cnn": Cnn, "resnet": ResNet, "mobilenet": MobileNet}


def _quantize_output_hook(module, inputs, output):
    return module.activation_post_process(output)


def align_quantization_points(model, activation):
    """Applies the model's differences to eager mode's quantization points (module docstring):
    no observer / fake-quant on unquantized_outputs(), a new one from the `activation` factory
    on extra_quantized_outputs()."""
    modules = dict(model.named_modules())
    for name in model.unquantized_outputs():
        if not hasattr(modules[name], "activation_post_process"):
            raise RuntimeError(f"{name} has no quantization point to remove")
        modules[name].activation_post_process = nn.Identity()
    for name in model.extra_quantized_outputs():
        module = modules[name]
        module.activation_post_process = activation()
        module.register_forward_hook(_quantize_output_hook)
