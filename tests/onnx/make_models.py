#!/usr/bin/python3
"""Writes the ONNX models the import tests read, with their inputs and PyTorch references.

    /usr/bin/python3 tests/onnx/make_models.py OUT_DIR [--quick]

Run as a CTest fixture (tests/CMakeLists.txt) into the build folder; nothing it writes is
committed. Uses Debian's python3-torch / python3-torchvision / python3-onnx. Every model gets
random weights with randomized batch-norm statistics (no pretrained weights, no downloads).

OUT_DIR/manifest.json lists each model with its input files, reference files and the ONNX
Runtime output files tools/ort/run_ort.js writes (ort_manifest.json).
"""
import json
import os
import shutil
import sys
import warnings

import numpy as np
import onnx
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper

warnings.filterwarnings("ignore")
OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)
np.random.seed(0)
manifest = []


def save_npy(name, array):
    np.save(os.path.join(OUT, name), np.ascontiguousarray(array))
    return name


def randomize_bn(model, seed):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)


def export_torch(name, model, x, opset, training=False, dynamic=True, outputs=None):
    """Exports `model` and records input, PyTorch reference and ORT output files."""
    model.eval()
    path = os.path.join(OUT, name + ".onnx")
    with torch.no_grad():
        ref = model(x)
    if isinstance(ref, dict):
        ref = list(ref.values())
    if not isinstance(ref, (list, tuple)):
        ref = [ref]
    names = outputs or ["output%d" % i for i in range(len(ref))]
    kwargs = dict(opset_version=opset, input_names=["input"], output_names=names)
    if dynamic:
        kwargs["dynamic_axes"] = {"input": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    if training:
        # Batch norm kept as a node (not folded into the convolution): do_constant_folding
        # off and TrainingMode.PRESERVE export the eval-mode graph with BN nodes.
        kwargs["do_constant_folding"] = False
        kwargs["training"] = torch.onnx.TrainingMode.PRESERVE
    torch.onnx.export(model, (x,), path, **kwargs)
    entry = {"name": name, "model": name + ".onnx", "opset": opset, "kept_bn": training,
             "inputs": [save_npy(name + ".input.npy", x.numpy())],
             "torch": [save_npy("%s.torch%d.npy" % (name, i), r.numpy()) for i, r in enumerate(ref)],
             "ort": ["%s.ort%d.npy" % (name, i) for i in range(len(ref))]}
    manifest.append(entry)
    return entry


def vision_models():
    from torchvision.models import convnext, segmentation, vision_transformer
    from torchvision.models._utils import IntermediateLayerGetter
    x3 = torch.randn(2, 3, 32, 32)
    cases = []
    resnet = torchvision.models.resnet18(num_classes=10)
    cases.append(("resnet18", resnet, x3, [11, 13, 17]))
    mnv2 = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5)
    cases.append(("mobilenet_v2", mnv2, x3, [11, 17]))
    mnv3 = torchvision.models.mobilenet_v3_small(num_classes=10)
    cases.append(("mobilenet_v3_small", mnv3, x3, [13, 17]))
    googlenet = torchvision.models.googlenet(num_classes=10, aux_logits=False, init_weights=True)
    cases.append(("googlenet", googlenet, x3, [13]))
    densenet = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2, 2),
                                           num_init_features=16, num_classes=10)
    cases.append(("densenet", densenet, x3, [11, 17]))
    shufflenet = torchvision.models.ShuffleNetV2([2, 2, 2], [16, 24, 48, 96, 128], num_classes=10)
    cases.append(("shufflenet", shufflenet, x3, [13]))
    efficient = torchvision.models.efficientnet_b0(num_classes=10)
    cases.append(("efficientnet_b0", efficient, torch.randn(2, 3, 32, 32), [17]))
    # Segmentation: FCN head on a ResNet-18 trunk, main and auxiliary outputs, bilinear resize.
    trunk = torchvision.models.resnet18()
    backbone = IntermediateLayerGetter(trunk, {"layer4": "out", "layer3": "aux"})
    fcn = segmentation.fcn.FCN(backbone, segmentation.fcn.FCNHead(512, 5),
                               segmentation.fcn.FCNHead(256, 5))
    cases.append(("fcn_resnet18", fcn, x3, [11, 17]))
    # ConvNeXt and ViT blocks at reduced width and resolution.
    cn = convnext.ConvNeXt([convnext.CNBlockConfig(16, 32, 1), convnext.CNBlockConfig(32, None, 1)],
                           num_classes=10)
    cases.append(("convnext", cn, x3, [13, 17]))
    vit = vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                               num_heads=2, hidden_dim=32, mlp_dim=64,
                                               num_classes=10)
    cases.append(("vit", vit, x3, [13, 17]))
    for i, (name, model, x, opsets) in enumerate(cases):
        randomize_bn(model, i)
        for opset in opsets:
            export_torch("%s_op%d" % (name, opset), model, x, opset)
        if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
            export_torch("%s_op%d_bn" % (name, opsets[-1]), model, x, opsets[-1], training=True)
    # ConvTranspose decoder.
    decoder = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                                  torch.nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1,
                                                           output_padding=1),
                                  torch.nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1, groups=2),
                                  torch.nn.Upsample(scale_factor=0.5, mode="nearest"))
    export_torch("decoder_op13", decoder, x3, 13)


class WorkflowNet(torch.nn.Module):
    """A residual CNN with an SE-style gate, the C++ workflow tests' imported model."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(8)
        self.pool = torch.nn.MaxPool2d(2)
        self.gate = torch.nn.Linear(8, 8)
        self.fc = torch.nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        y = self.pool(torch.relu(self.bn1(self.conv1(x))))
        y = torch.relu(self.bn2(self.conv2(y)) + y)
        g = torch.sigmoid(self.gate(y.mean((2, 3)))).unsqueeze(-1).unsqueeze(-1)
        y = torch.nn.functional.hardswish(y * g)
        return self.fc(torch.flatten(y, 1))


def workflow_models():
    model = WorkflowNet()
    randomize_bn(model, 99)
    x = torch.randn(4, 1, 8, 8)
    export_torch("workflow_op13", model, x, 13)
    export_torch("workflow_op17_bn", model, x, 17, training=True)
    # TrainingMode.TRAINING: batch norm with training_mode=1 and its running-statistics
    # outputs (not a parity case: the file computes batch statistics).
    # Opsets 9-13 give BatchNormalization five outputs (mean, var, saved mean, saved var).
    for opset in (13, 17):
        torch.onnx.export(model, (x,), os.path.join(OUT, "workflow_op%d_training.onnx" % opset),
                          opset_version=opset, input_names=["input"], output_names=["output0"],
                          training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                          dynamic_axes={"input": {0: "batch"}, "output0": {0: "batch"}})
    model.eval()


def save_model(name, graph, opset, ir=8):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    onnx.save(model, os.path.join(OUT, name))
    return model


def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def error_models():
    x = vi("x", [1, 4])
    y = vi("y", [1, 4])
    topk = helper.make_node("TopK", ["x", "k"], ["y", "i"], name="my_topk")
    k = numpy_helper.from_array(np.array([2], dtype=np.int64), "k")
    save_model("unsupported_op.onnx", helper.make_graph([topk], "g", [x], [y], [k]), 13)
    a = helper.make_node("Add", ["x", "b"], ["a"], name="add_a")
    b = helper.make_node("Relu", ["a"], ["b"], name="relu_b")
    c = helper.make_node("Identity", ["b"], ["y"], name="out")
    save_model("cycle.onnx", helper.make_graph([a, b, c], "g", [x], [y]), 13)
    m = helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul_w")
    save_model("missing_initializer.onnx", helper.make_graph([m], "g", [x], [y]), 13)
    w = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "W")
    save_model("valid_matmul.onnx", helper.make_graph([m], "g", [x], [y], [w]), 13)
    # External data: a valid one and every way to leave the folder or the file.
    def external(folder, location, offset=None, length=None, data=b"\0" * 64):
        d = os.path.join(OUT, folder)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        t = TensorProto()
        t.name = "W"
        t.data_type = TensorProto.FLOAT
        t.dims.extend([4, 4])
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", offset), ("length", length)):
            if value is not None:
                e = t.external_data.add()
                e.key = key
                e.value = str(value)
        g = helper.make_graph([m], "g", [x], [y], [t])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        with open(os.path.join(d, "model.onnx"), "wb") as f:
            f.write(model.SerializeToString())
        if data is not None:
            with open(os.path.join(d, "weights.bin"), "wb") as f:
                f.write(data)
        return d
    eye = np.eye(4, dtype=np.float32) * 2
    external("external_ok", "weights.bin", 16, 64, b"\x01" * 16 + eye.tobytes())
    external("external_dotdot", "../external_ok/weights.bin")
    external("external_absolute", os.path.abspath(os.path.join(OUT, "external_ok", "weights.bin")))
    d = external("external_symlink", "link.bin")
    os.symlink(os.path.abspath(os.path.join(OUT, "external_ok", "weights.bin")),
               os.path.join(d, "link.bin"))
    external("external_short", "weights.bin", 32, 64)
    external("external_missing", "weights.bin", data=None)


def opset_variants():
    """Opset 18-21 forms of the operators whose attributes became inputs (and new ops),
    written with onnx.helper; ONNX Runtime gives the reference."""
    cases = []
    x = np.random.randn(2, 3, 4, 5).astype(np.float32)
    i64 = lambda v: numpy_helper.from_array(np.array(v, dtype=np.int64))

    def case(name, nodes, inits, opset, inputs, out_shapes):
        g = helper.make_graph(nodes, name, [vi("x", list(x.shape))],
                              [vi("y%d" % i, s) for i, s in enumerate(out_shapes)], inits)
        save_model(name + ".onnx", g, opset, ir=9 if opset >= 19 else 8)
        manifest.append({"name": name, "model": name + ".onnx", "opset": opset, "kept_bn": False,
                         "inputs": [save_npy(name + ".input.npy", inputs)], "torch": [],
                         "ort": ["%s.ort%d.npy" % (name, i) for i in range(len(out_shapes))]})

    def named(t, n):
        t.name = n
        return t

    for opset in (18, 21):
        case("reducemean_axes_op%d" % opset,
             [helper.make_node("ReduceMean", ["x", "axes"], ["y0"], keepdims=1)],
             [named(i64([2, 3]), "axes")], opset, x, [None])
        case("split_num_outputs_op%d" % opset,
             [helper.make_node("Split", ["x"], ["y0", "y1", "y2"], axis=3, num_outputs=3)],
             [], opset, x, [None, None, None])
        case("pad_axes_op%d" % opset,
             [helper.make_node("Pad", ["x", "pads", "", "axes"], ["y0"], mode="reflect")],
             [named(i64([1, 2, 1, 0]), "pads"), named(i64([2, 3]), "axes")], opset, x, [None])
        case("resize_axes_op%d" % opset,
             [helper.make_node("Resize", ["x", "", "scales"], ["y0"], mode="linear",
                               axes=[2, 3], coordinate_transformation_mode="half_pixel")],
             [named(numpy_helper.from_array(np.array([2.0, 1.5], dtype=np.float32)), "scales")],
             opset, x, [None])
        case("squeeze_unsqueeze_op%d" % opset,
             [helper.make_node("Unsqueeze", ["x", "ax"], ["u"]),
              helper.make_node("Squeeze", ["u", "ax"], ["y0"])],
             [named(i64([1]), "ax")], opset, x, [None])
        case("reducesum_max_op%d" % opset,
             [helper.make_node("ReduceSum", ["x", "axes"], ["y0"], keepdims=0),
              helper.make_node("ReduceMax", ["x", "axes"], ["y1"], keepdims=1)],
             [named(i64([1]), "axes")], opset, x, [None, None])
    for opset in (20, 21):
        case("gelu_op%d" % opset, [helper.make_node("Gelu", ["x"], ["y0"]),
                                   helper.make_node("Gelu", ["x"], ["y1"], approximate="tanh")],
             [], opset, x, [None, None])
    # Layers calq lifts into its modules, in geometries torch exports rarely: constant
    # weights with auto_pad, asymmetric pads, groups and dilation; Gemm with transB 0 and
    # alpha/beta; MatMul [K, N] + bias on 3-d input; ConvTranspose with output_shape;
    # AveragePool with pads excluded from the count.
    rnd = lambda *shape: np.random.randn(*shape).astype(np.float32)
    f32 = lambda a, n: named(numpy_helper.from_array(a), n)
    xi = np.random.randn(2, 4, 9, 7).astype(np.float32)

    def lift(name, nodes, inits, inputs, n_out, opset=13):
        # Outputs of the input's rank, dims unknown (libonnx's checker wants a shape).
        g = helper.make_graph(nodes, name, [vi("x", list(inputs.shape))],
                              [vi("y%d" % i, [None] * inputs.ndim) for i in range(n_out)], inits)
        save_model(name + ".onnx", g, opset)
        manifest.append({"name": name, "model": name + ".onnx", "opset": opset, "kept_bn": False,
                         "inputs": [save_npy(name + ".input.npy", inputs)], "torch": [],
                         "ort": ["%s.ort%d.npy" % (name, i) for i in range(n_out)]})

    lift("lift_conv_op13",
         [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], auto_pad="SAME_UPPER", strides=[2, 2]),
          helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[0, 1, 2, 1], group=2),
          helper.make_node("Relu", ["c2"], ["r"]),
          helper.make_node("Conv", ["r", "w3", "b3"], ["y0"], pads=[2, 2, 2, 2], dilations=[2, 2]),
          helper.make_node("Conv", ["x", "w4"], ["y1"], auto_pad="SAME_LOWER", kernel_shape=[2, 3])],
         [f32(rnd(6, 4, 3, 3), "w1"), f32(rnd(6), "b1"), f32(rnd(8, 3, 3, 2), "w2"),
          f32(rnd(5, 8, 3, 3), "w3"), f32(rnd(5), "b3"), f32(rnd(3, 4, 2, 3), "w4")], xi, 2)
    x2 = np.random.randn(3, 6).astype(np.float32)
    lift("lift_gemm_op13",
         [helper.make_node("Gemm", ["x", "B", "C"], ["y0"], alpha=0.5, beta=2.0),
          helper.make_node("Gemm", ["x", "Bt"], ["g"], transB=1),
          helper.make_node("Relu", ["g"], ["y1"])],
         [f32(rnd(6, 4), "B"), f32(rnd(4), "C"), f32(rnd(5, 6), "Bt")], x2, 2)
    x3 = np.random.randn(2, 3, 4).astype(np.float32)
    lift("lift_matmul_op13",
         [helper.make_node("MatMul", ["x", "W"], ["m"]),
          helper.make_node("Add", ["bias", "m"], ["y0"])],
         [f32(rnd(4, 5), "W"), f32(rnd(5), "bias")], x3, 1)
    lift("lift_convtranspose_op13",
         [helper.make_node("ConvTranspose", ["x", "wt", "bt"], ["y0"], strides=[2, 2],
                           output_shape=[18, 15], group=2),
          helper.make_node("ConvTranspose", ["x", "wt"], ["y1"], strides=[2, 2],
                           pads=[0, 1, 1, 0], output_padding=[1, 0])],
         [f32(rnd(4, 3, 3, 3), "wt"), f32(rnd(6), "bt")], xi, 2)
    # Broadcasting between two quantized activations ([N, C, H, W] with [N, C, 1, 1]): ONNX
    # Runtime's QLinearAdd / QLinearMul on a broadcast operand, against calq's integer engine.
    lift("broadcast_add_op13",
         [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=1),
          helper.make_node("Add", ["x", "m"], ["y0"]),
          helper.make_node("Add", ["m", "x"], ["y1"]),
          helper.make_node("Mul", ["x", "m"], ["y2"])],
         [], xi, 3)
    lift("lift_pool_op13",
         [helper.make_node("AveragePool", ["x"], ["y0"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                           count_include_pad=0),
          helper.make_node("AveragePool", ["x"], ["y1"], kernel_shape=[2, 2], strides=[2, 2],
                           auto_pad="SAME_UPPER"),
          helper.make_node("MaxPool", ["x"], ["y2"], kernel_shape=[3, 3], pads=[0, 1, 2, 1])],
         [], xi, 3)
    scale = named(numpy_helper.from_array(np.random.rand(5).astype(np.float32) + 0.5), "s")
    bias = named(numpy_helper.from_array(np.random.rand(5).astype(np.float32)), "b")
    case("layernorm_op21", [helper.make_node("LayerNormalization", ["x", "s", "b"], ["y0"], axis=-1,
                                             epsilon=1e-5)], [scale, bias], 21, x, [None])
    case("hardswish_softmax_op19",
         [helper.make_node("HardSwish", ["x"], ["h"]),
          helper.make_node("Softmax", ["h"], ["y0"], axis=1)], [], 19, x, [None])


def ort_style_qdq():
    """A QDQ model as ONNX Runtime's quantize_static writes it (opset 13): uint8 asymmetric
    activations, int8 weights per output channel, int32 biases at s_x * s_w, Q -> DQ after
    every op (Relu folded into its Q's zero point, MaxPool / Flatten with their input's
    parameters), scales from the float model's ranges on random data."""
    g = torch.Generator().manual_seed(21)
    x = torch.randn(64, 3, 16, 16, generator=g)
    w1 = torch.randn(8, 3, 3, 3, generator=g) * 0.3
    b1 = torch.randn(8, generator=g) * 0.1
    w2 = torch.randn(16, 8, 3, 3, generator=g) * 0.15
    b2 = torch.randn(16, generator=g) * 0.1
    w3 = torch.randn(16, 8, 1, 1, generator=g) * 0.3
    w4 = torch.randn(10, 16, generator=g) * 0.3
    b4 = torch.randn(10, generator=g) * 0.1

    def per_channel(w):
        s = w.abs().reshape(w.shape[0], -1).max(1).values / 127.0
        q = torch.round(w / s.reshape(-1, *([1] * (w.dim() - 1)))).clamp(-127, 127)
        return q.to(torch.int8), s.float()

    q1, s1w = per_channel(w1)
    q2, s2w = per_channel(w2)
    q3, s3w = per_channel(w3)
    q4, s4w = per_channel(w4)
    d = lambda q, s: q.float() * s.reshape(-1, *([1] * (q.dim() - 1)))
    F = torch.nn.functional
    # Float model with the dequantized weights: activation ranges.
    a0 = x
    a1 = F.relu(F.conv2d(a0, d(q1, s1w), b1, padding=1))
    a2 = F.max_pool2d(a1, 2)
    a3 = F.conv2d(a2, d(q2, s2w), b2, padding=1)
    a4 = F.conv2d(a2, d(q3, s3w))
    a5 = a3 + a4
    a6 = torch.sigmoid(a5)
    a7 = a5 * a6
    a8 = a7.mean((2, 3), keepdim=True)
    a9 = a8.flatten(1)
    a10 = F.linear(a9, d(q4, s4w), b4)

    def uint8(t):
        lo, hi = min(float(t.min()), 0.0), max(float(t.max()), 0.0)
        s = np.float32((hi - lo) / 255.0)
        z = int(np.clip(np.round(-lo / s), 0, 255))
        return s, z

    params = {n: uint8(t) for n, t in [("in", a0), ("c1", a1), ("c2", a3), ("c3", a4),
                                        ("add", a5), ("sig", a6), ("mul", a7), ("gap", a8),
                                        ("fc", a10)]}
    nodes, inits = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def qdq(src, key, name):
        s, z = params[key]
        const(name + "_s", np.array(s, dtype=np.float32))
        const(name + "_z", np.array(z, dtype=np.uint8))
        nodes.append(helper.make_node("QuantizeLinear", [src, name + "_s", name + "_z"],
                                      [name + "_q"], name=name + "_QuantizeLinear"))
        nodes.append(helper.make_node("DequantizeLinear", [name + "_q", name + "_s", name + "_z"],
                                      [name + "_dq"], name=name + "_DequantizeLinear"))
        return name + "_dq"

    def weight(name, q, s, x_key, bias=None, axis=0):
        const(name + "_w", q.numpy())
        const(name + "_ws", s.numpy())
        const(name + "_wz", np.zeros(s.shape, dtype=np.int8))
        nodes.append(helper.make_node("DequantizeLinear", [name + "_w", name + "_ws", name + "_wz"],
                                      [name + "_wdq"], axis=axis))
        out = [name + "_wdq"]
        if bias is not None:
            sb = (np.float32(params[x_key][0]) * s.numpy()).astype(np.float32)
            const(name + "_b", np.round(bias.numpy() / sb).astype(np.int32))
            const(name + "_bs", sb)
            const(name + "_bz", np.zeros(sb.shape, dtype=np.int32))
            nodes.append(helper.make_node("DequantizeLinear",
                                          [name + "_b", name + "_bs", name + "_bz"],
                                          [name + "_bdq"], axis=0))
            out.append(name + "_bdq")
        return out

    t = qdq("input", "in", "in")
    nodes.append(helper.make_node("Conv", [t] + weight("conv1", q1, s1w, "in", b1), ["c1"],
                                  pads=[1, 1, 1, 1], name="conv1"))
    t = qdq("c1", "c1", "c1")  # zero point 0: the Relu is in the quantization
    nodes.append(helper.make_node("MaxPool", [t], ["p"], kernel_shape=[2, 2], strides=[2, 2],
                                  name="pool"))
    p = qdq("p", "c1", "pool")
    nodes.append(helper.make_node("Conv", [p] + weight("conv2", q2, s2w, "c1", b2), ["c2"],
                                  pads=[1, 1, 1, 1], name="conv2"))
    c2 = qdq("c2", "c2", "c2")
    nodes.append(helper.make_node("Conv", [p] + weight("conv3", q3, s3w, "c1"), ["c3"],
                                  name="conv3"))
    c3 = qdq("c3", "c3", "c3")
    nodes.append(helper.make_node("Add", [c2, c3], ["add"], name="add"))
    a = qdq("add", "add", "add")
    nodes.append(helper.make_node("Sigmoid", [a], ["sig"], name="sigmoid"))
    sg = qdq("sig", "sig", "sig")
    nodes.append(helper.make_node("Mul", [a, sg], ["mul"], name="mul"))
    mu = qdq("mul", "mul", "mul")
    nodes.append(helper.make_node("GlobalAveragePool", [mu], ["gap"], name="gap"))
    gp = qdq("gap", "gap", "gap")
    nodes.append(helper.make_node("Flatten", [gp], ["flat"], axis=1, name="flatten"))
    fl = qdq("flat", "gap", "flat")
    nodes.append(helper.make_node("Gemm", [fl] + weight("fc", q4, s4w, "gap", b4), ["fc"],
                                  transB=1, name="fc"))
    out = qdq("fc", "fc", "fc")
    nodes.append(helper.make_node("Identity", [out], ["output"], name="output"))
    graph = helper.make_graph(nodes, "ort_style_qdq", [vi("input", ["batch", 3, 16, 16])],
                              [vi("output", ["batch", 10])], inits)
    save_model("ort_style_qdq.onnx", graph, 13)
    save_npy("ort_style_qdq.input.npy", x.numpy())


def data_files():
    """Arrays and images for the data reader tests, written by numpy / torchvision, with the
    values the readers must return (references)."""
    d = os.path.join(OUT, "data")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "images", "cat"))
    os.makedirs(os.path.join(d, "images", "dog"))
    os.makedirs(os.path.join(d, "flat"))
    x = np.random.randn(10, 1, 8, 8).astype(np.float32)
    y = np.arange(10, dtype=np.int64) % 3
    np.save(os.path.join(d, "x.npy"), x)
    np.save(os.path.join(d, "x_f64.npy"), x.astype(np.float64))
    np.save(os.path.join(d, "x_f16.npy"), x.astype(np.float16))
    np.save(os.path.join(d, "x_big.npy"), x.astype(">f4"))
    np.save(os.path.join(d, "x_fortran.npy"), np.asfortranarray(x[:, 0, :, :]))
    np.save(os.path.join(d, "u16.npy"), np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000)
    np.save(os.path.join(d, "strings.npy"), np.array(["a", "bc"]))
    np.savez(os.path.join(d, "stored.npz"), x=x, y=y)
    np.savez_compressed(os.path.join(d, "deflated.npz"), x=x, y=y.astype(np.int32))
    np.savez(os.path.join(d, "nolabels.npz"), x=x)
    np.savez(os.path.join(d, "badlabels.npz"), x=x, y=y[:5])
    np.savez(os.path.join(d, "floatlabels.npz"), x=x, y=y.astype(np.float32))
    np.savez(os.path.join(d, "nox.npz"), inputs=x)
    with open(os.path.join(d, "stored.npz"), "rb") as f:
        whole = f.read()
    with open(os.path.join(d, "truncated.npz"), "wb") as f:
        f.write(whole[: len(whole) // 2])
    with open(os.path.join(d, "x.npy"), "rb") as f:
        whole = f.read()
    with open(os.path.join(d, "truncated.npy"), "wb") as f:
        f.write(whole[: len(whole) - 7])
    # Images: PNG (lossless: exact reference) and JPEG (decoders may differ by a few levels).
    from torchvision.io import encode_jpeg, read_image, write_png
    g = torch.Generator().manual_seed(5)
    refs = []
    for i, (cls, kind) in enumerate([("cat", "png"), ("cat", "jpg"), ("dog", "png")]):
        img = (torch.rand(3, 12 + i, 10, generator=g) * 255).to(torch.uint8)
        path = os.path.join(d, "images", cls, "img%d.%s" % (i, kind))
        if kind == "png":
            write_png(img, path)
        else:
            with open(path, "wb") as f:
                f.write(bytes(encode_jpeg(img, quality=95).numpy()))
        decoded = read_image(path).float().div(255).unsqueeze(0)
        resized = torch.nn.functional.interpolate(decoded, size=(8, 6), mode="bilinear",
                                                  align_corners=False)[0]
        mean = torch.tensor([0.5, 0.4, 0.3]).reshape(3, 1, 1)
        std = torch.tensor([0.2, 0.25, 0.3]).reshape(3, 1, 1)
        refs.append(((resized - mean) / std).numpy())
    np.save(os.path.join(d, "images_ref.npy"), np.stack(refs))
    write_png((torch.rand(3, 4, 4, generator=g) * 255).to(torch.uint8),
              os.path.join(d, "flat", "a.png"))
    with open(os.path.join(d, "flat", "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\nnot really")


def main():
    quick = "--quick" in sys.argv
    data_files()
    error_models()
    workflow_models()
    opset_variants()
    ort_style_qdq()
    if not quick:
        vision_models()
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    ort = [{"model": e["model"], "inputs": e["inputs"], "outputs": e["ort"]} for e in manifest]
    with open(os.path.join(OUT, "ort_manifest.json"), "w") as f:
        json.dump(ort, f, indent=1)
    print("wrote %d models to %s" % (len(manifest), OUT))


if __name__ == "__main__":
    main()
