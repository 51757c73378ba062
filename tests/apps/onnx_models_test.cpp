// Models no one here wrote: torchvision architectures exported by torch.onnx.export at
// several opsets (eval mode with batch norm folded, and with batch norm kept), and opset
// 18-21 models written with onnx.helper. calq's float forward of the imported graph must
// match PyTorch and ONNX Runtime: max|calq - ref| / max|ref| <= 1e-4, at the exported batch
// size and at batch 1 (dynamic batch).
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "calq/data/arrays.h"
#include "calq/nn.h"
#include "calq/onnx/import.h"
#include "calq/workflow.h"

namespace {

const std::string kModels = std::string(CALQ_TEST_MODELS) + "/";
// Relative to the output's largest magnitude: float32 accumulations in a different order
// (and, for kept batch norm, folded weights) over tens of layers stay well below it.
constexpr double kParity = 1e-4;

nlohmann::json manifest() {
  std::ifstream in(kModels + "manifest.json");
  EXPECT_TRUE(in.good()) << "run the onnx_models_generate test (make_models.py) first";
  nlohmann::json j;
  in >> j;
  return j;
}

double relative_error(const at::Tensor& got, const at::Tensor& ref) {
  EXPECT_EQ(got.sizes(), ref.sizes());
  if (got.sizes() != ref.sizes()) return 1e9;
  const double scale = std::max(ref.abs().max().item<double>(), 1e-30);
  return (got.to(at::kDouble) - ref.to(at::kDouble)).abs().max().item<double>() / scale;
}

at::Tensor load(const std::string& file) {
  return calq::data::NpyArray::open(kModels + file).read_all();
}

struct Checked {
  int models = 0;
  int references = 0;
};

// Imports every model whose name starts with `prefix` and compares with its references.
Checked check_family(
    const std::string& prefix,
    const std::function<void(const std::string&, calq::onnx::ImportedModel&)>& extra = nullptr) {
  Checked checked;
  for (const auto& entry : manifest()) {
    const std::string name = entry["name"];
    if (name.rfind(prefix + "_op", 0) != 0) continue;
    SCOPED_TRACE(name);
    ++checked.models;
    calq::onnx::ImportedModel m = calq::onnx::import(kModels + entry["model"].get<std::string>());
    m.graph->eval();
    torch::NoGradGuard no_grad;
    const at::Tensor x = load(entry["inputs"][0]);
    for (const auto& info : m.inputs) calq::onnx::check_input(info, x);
    const auto out = m.graph->forward(std::vector<at::Tensor>{x});
    const auto one = m.graph->forward(std::vector<at::Tensor>{x.narrow(0, 0, 1)});
    for (const char* source : {"torch", "ort"}) {
      const auto& files = entry[source];
      for (size_t i = 0; i < files.size(); ++i) {
        const at::Tensor ref = load(files[i]);
        EXPECT_LT(i, out.size());
        if (i >= out.size()) continue;
        EXPECT_LE(relative_error(out[i], ref), kParity) << source << " output " << i;
        // The dynamic-batch exports also run at batch 1 (helper-written models have a fixed
        // shape and no batch dim to vary).
        if (entry["torch"].size() > 0) {
          EXPECT_LE(relative_error(one[i], ref.narrow(0, 0, 1)), kParity)
              << source << " output " << i << " at batch 1";
        }
        ++checked.references;
      }
    }
    if (extra) extra(name, m);
  }
  EXPECT_GT(checked.models, 0) << "no model named " << prefix << "_op*";
  EXPECT_GT(checked.references, 0);
  return checked;
}

// Type names of the modules of a graph, with counts.
std::map<std::string, int> module_types(calq::onnx::ImportedModel& m) {
  std::map<std::string, int> out;
  for (const auto& node : m.graph->nodes()) {
    if (auto* q = node.quant_module()) ++out[q->type_name()];
  }
  return out;
}

// Batch norm kept in the file must land in the Conv-BN blocks (folded by calq::fuse) and the
// float output must not change when they fold.
void bn_blocks_fold(const std::string& name, calq::onnx::ImportedModel& m) {
  if (name.size() < 3 || name.compare(name.size() - 3, 3, "_bn") != 0) {
    EXPECT_EQ(calq::fuse(*m.graph), 0) << "eval exports fold batch norm already";
    return;
  }
  const auto types = module_types(m);
  EXPECT_EQ(types.count("BatchNorm"), 0u) << "a BatchNormalization after a Conv stayed float";
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({1, 3, 32, 32});
  const at::Tensor before = m.graph->forward(std::vector<at::Tensor>{x})[0];
  EXPECT_GT(calq::fuse(*m.graph), 0);
  EXPECT_LE(relative_error(m.graph->forward(std::vector<at::Tensor>{x})[0], before), kParity);
}

TEST(TorchvisionModels, ResNet18) {
  check_family("resnet18", [](const std::string& name, calq::onnx::ImportedModel& m) {
    bn_blocks_fold(name, m);
    auto types = module_types(m);
    EXPECT_EQ(types.at("AddReLU"), 8) << "every residual add with its ReLU";
    EXPECT_EQ(types.count("Add"), 0u);
    EXPECT_EQ(types.at("QuantStub"), 1);
    EXPECT_EQ(types.count("Linear"), 1u);
  });
}

TEST(TorchvisionModels, MobileNetV2) {
  check_family("mobilenet_v2", [](const std::string& name, calq::onnx::ImportedModel& m) {
    bn_blocks_fold(name, m);
    auto types = module_types(m);
    const bool kept = name.find("_bn") != std::string::npos;
    EXPECT_GT(types[kept ? "ConvBnReLU6_2d" : "ConvReLU6_2d"], 10) << "Conv(-BN)-ReLU6 blocks";
    EXPECT_EQ(types.count("ReLU6"), 0u);
    EXPECT_EQ(types.count("Clip"), 0u);
  });
}

TEST(TorchvisionModels, MobileNetV3Small) {
  check_family("mobilenet_v3_small", [](const std::string& name, calq::onnx::ImportedModel& m) {
    bn_blocks_fold(name, m);
    auto types = module_types(m);
    EXPECT_GT(types["HardSwish"], 0);
    EXPECT_GT(types["HardSigmoid"], 0) << "squeeze-excitation gates";
    EXPECT_GT(types["Mul"], 0);
    // A gate feeds a quantized Mul: its output is a quantization point.
    for (const auto& node : m.graph->nodes()) {
      auto* q = node.quant_module();
      if (q != nullptr && q->type_name() == "HardSigmoid") EXPECT_TRUE(q->is_quantization_point());
    }
  });
}

TEST(TorchvisionModels, GoogLeNet) {
  check_family("googlenet", bn_blocks_fold);
}
TEST(TorchvisionModels, DenseNet) {
  check_family("densenet", [](const std::string& name, calq::onnx::ImportedModel& m) {
    EXPECT_GT(module_types(m)["Cat"], 0) << "dense connections concatenate";
  });
}
TEST(TorchvisionModels, ShuffleNetV2) {
  check_family("shufflenet", bn_blocks_fold);
}
TEST(TorchvisionModels, EfficientNetB0) {
  check_family("efficientnet_b0", [](const std::string& name, calq::onnx::ImportedModel& m) {
    EXPECT_GT(module_types(m)["SiLU"], 0) << "x * sigmoid(x) fused into SiLU";
  });
}
TEST(TorchvisionModels, FcnSegmentationTwoOutputs) {
  check_family("fcn_resnet18", [](const std::string& name, calq::onnx::ImportedModel& m) {
    EXPECT_EQ(m.outputs.size(), 2u);
    EXPECT_GT(module_types(m)["Resize"], 0);
  });
}
TEST(TorchvisionModels, ConvNeXt) {
  check_family("convnext", [](const std::string& name, calq::onnx::ImportedModel& m) {
    auto types = module_types(m);
    EXPECT_GT(types["GELU"], 0);
    EXPECT_GT(types["LayerNorm"], 0);
    EXPECT_EQ(types.count("ReduceMean"), 0u) << "layer norms written out (opset < 17) fused";
    EXPECT_EQ(types.count("Sqrt"), 0u);
  });
}
TEST(TorchvisionModels, VisionTransformer) {
  check_family("vit", [](const std::string& name, calq::onnx::ImportedModel& m) {
    auto types = module_types(m);
    EXPECT_GT(types["Softmax"], 0);
    EXPECT_GT(types["MatMul"], 0) << "attention: MatMul of two activations";
    EXPECT_GT(types["GELU"], 0);
    EXPECT_GT(types["LayerNorm"], 0);
    EXPECT_EQ(types.count("Sqrt"), 0u) << "layer norms written out (opset < 17) fused";
    // Softmax feeds the attention MatMul: a quantization point.
    for (const auto& node : m.graph->nodes()) {
      auto* q = node.quant_module();
      if (q != nullptr && q->type_name() == "Softmax") EXPECT_TRUE(q->is_quantization_point());
    }
  });
}
TEST(TorchvisionModels, ConvTransposeDecoder) {
  check_family("decoder", [](const std::string& name, calq::onnx::ImportedModel& m) {
    EXPECT_EQ(module_types(m)["ConvTranspose2d"], 2);
  });
}

// Opset 18-21: operators whose attributes became inputs, and operators added late.
TEST(OpsetVariants, ReduceMeanAxesInput) {
  check_family("reducemean_axes");
}
TEST(OpsetVariants, SplitNumOutputs) {
  check_family("split_num_outputs");
}
TEST(OpsetVariants, PadAxesInput) {
  check_family("pad_axes");
}
TEST(OpsetVariants, ResizeAxes) {
  check_family("resize_axes");
}
TEST(OpsetVariants, SqueezeUnsqueezeAxesInput) {
  check_family("squeeze_unsqueeze");
}
TEST(OpsetVariants, ReduceSumMaxAxesInput) {
  check_family("reducesum_max");
}
TEST(OpsetVariants, Gelu) {
  check_family("gelu");
}
TEST(OpsetVariants, LayerNormalization) {
  check_family("layernorm");
}
TEST(OpsetVariants, HardSwishSoftmax) {
  check_family("hardswish_softmax");
}
TEST(OpsetVariants, WorkflowNet) {
  check_family("workflow");
}

// Layers lifted into calq modules in geometries torch rarely exports.
TEST(LiftedLayers, ConvWithAutoPadAsymmetricPadsGroupsDilation) {
  check_family("lift_conv", [](const std::string&, calq::onnx::ImportedModel& m) {
    auto types = module_types(m);
    EXPECT_EQ(types["Conv2d"], 3);
    EXPECT_EQ(types["ConvReLU2d"], 1);
    EXPECT_EQ(types.count("Conv"), 0u) << "no convolution left in float";
  });
}
TEST(LiftedLayers, GemmAlphaBetaTransB) {
  check_family("lift_gemm", [](const std::string&, calq::onnx::ImportedModel& m) {
    auto types = module_types(m);
    EXPECT_EQ(types["Linear"], 1);
    EXPECT_EQ(types["LinearReLU"], 1);
  });
}
TEST(LiftedLayers, MatMulWithBiasOnThreeDimensions) {
  check_family("lift_matmul", [](const std::string&, calq::onnx::ImportedModel& m) {
    auto types = module_types(m);
    EXPECT_EQ(types["Linear"], 1);
    EXPECT_EQ(types.count("Add"), 0u) << "the bias joined the Linear";
  });
}
TEST(LiftedLayers, ConvTransposeOutputShapeAndAsymmetricPads) {
  check_family("lift_convtranspose", [](const std::string&, calq::onnx::ImportedModel& m) {
    EXPECT_EQ(module_types(m)["ConvTranspose2d"], 2);
  });
}
TEST(LiftedLayers, Pools) {
  check_family("lift_pool", [](const std::string&, calq::onnx::ImportedModel& m) {
    auto types = module_types(m);
    EXPECT_EQ(types["AvgPool2d"], 1);
    EXPECT_EQ(types["AvgPool"], 1) << "SAME_UPPER pads: ONNX's exact average";
    EXPECT_EQ(types["MaxPool"], 1) << "asymmetric pads";
  });
}

}  // namespace
