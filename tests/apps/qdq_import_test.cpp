// QDQ models import: calq's own exports come back as the same simulation (bit for bit), an
// ONNX Runtime-style QDQ model computes what ONNX Runtime computes (within 1 LSB), and the
// QuantizeLinear / DequantizeLinear kernels follow ONNX Runtime's arithmetic.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "calq/deploy/onnxruntime.h"
#include "calq/deploy/qdq_export.h"
#include "calq/nn.h"
#include "calq/onnx/import.h"
#include "calq/workflow.h"
#include "calq/zoo/models.h"
#include "onnx/import/kernels.h"

namespace {

const std::string kModels = std::string(CALQ_TEST_MODELS) + "/";

std::string temp_path(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / "calq_qdq_import_test";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

// A calibrated zoo model in VALIDATION, biases linked as deployed.
calq::zoo::Classifier calibrated(const std::string& name, const calq::QConfig& qconfig,
                                 calq::March march) {
  torch::manual_seed(31);
  calq::zoo::Classifier model = calq::zoo::make_model(name);
  {
    torch::NoGradGuard no_grad;
    for (auto& buffer : model->named_buffers()) {
      if (buffer.key().find("running_mean") != std::string::npos)
        buffer.value().uniform_(-0.2, 0.2);
      if (buffer.key().find("running_var") != std::string::npos) buffer.value().uniform_(0.5, 2.0);
    }
    for (auto& p : model->named_parameters()) {
      if (p.key().find("bias") != std::string::npos) p.value().uniform_(-0.3, 0.3);
    }
  }
  calq::fuse(*model);
  calq::QConfigOverrides overrides;
  calq::QConfig last = qconfig;
  last.activation = c10::nullopt;
  overrides.by_name[model->output_layer()] = last;
  calq::prepare_qat(*model, qconfig, overrides, march);
  std::vector<at::Tensor> batches;
  for (int i = 0; i < 4; ++i) batches.push_back(torch::randn({16, 1, 28, 28}));
  calq::calibrate(model, batches);
  calq::set_fake_quantize(*model, calq::FakeQuantState::VALIDATION);
  return model;
}

calq::onnx::ImportedModel import_prepared(const std::string& path) {
  calq::onnx::ImportedModel m = calq::onnx::import(path);
  // Any global qconfig: every module's own qconfig (the file's) wins.
  calq::prepare_qat(*m.graph, calq::get_default_qconfig(std::string("lsq"), std::string("lsq"),
                                                        "percentile", "min_max"));
  calq::set_fake_quantize(*m.graph, calq::FakeQuantState::VALIDATION);
  return m;
}

struct Recipe {
  const char* name;
  calq::QConfig qconfig;
  calq::March march;
};

std::vector<Recipe> recipes() {
  const auto dtype = [](const char* d) { return nlohmann::json{{"dtype", d}}; };
  return {
      {"w8a8",
       calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), "percentile",
                                 "min_max"),
       calq::March::bayes},
      {"w8a8_pow2", calq::get_default_qconfig(), calq::March::bernoulli},
      {"w8a16",
       calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), "min_max",
                                 "min_max", dtype("qint16")),
       calq::March::bayes},
      {"w4a4",
       calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), "min_max",
                                 "min_max", dtype("qint4"), dtype("qint4")),
       calq::March::bayes},
  };
}

TEST(QdqImport, CalqExportsImportToTheSameSimulationBitForBit) {
  torch::manual_seed(32);
  const at::Tensor x = torch::randn({32, 1, 28, 28});
  for (const Recipe& recipe : recipes()) {
    for (const std::string& name : calq::zoo::model_names()) {
      SCOPED_TRACE(name + " " + recipe.name);
      calq::zoo::Classifier model = calibrated(name, recipe.qconfig, recipe.march);
      const calq::Trace t = calq::trace(
          *model, [&model](const at::Tensor& in) { return model->forward(in); },
          torch::randn({2, 1, 28, 28}));
      calq::link_input_quantizers(t);
      at::Tensor simulated;
      {
        torch::NoGradGuard no_grad;
        simulated = model->forward(x);
      }
      const std::string path = temp_path(name + "_" + recipe.name + ".onnx");
      calq::deploy::export_qdq(*model, t, path);
      calq::onnx::ImportedModel m = import_prepared(path);
      EXPECT_TRUE(m.qdq);
      at::Tensor reimported;
      {
        torch::NoGradGuard no_grad;
        reimported = m.graph->forward(x);
      }
      ASSERT_EQ(reimported.sizes(), simulated.sizes());
      EXPECT_TRUE(at::equal(reimported, simulated))
          << "max |diff| " << (reimported - simulated).abs().max().item<double>();
      // The file's quantizers are fixed: every quantizer of the import is a fixed_scale one,
      // and the weights of every layer are quantized.
      int64_t fixed = 0, weighted = 0;
      for (const auto& row : calq::check_qconfig(*m.graph)) {
        if (row.output.find("fixed_scale") != std::string::npos) ++fixed;
        if (!row.weight.empty()) {
          ++weighted;
          EXPECT_NE(row.weight.find("fixed_scale"), std::string::npos) << row.name;
        }
      }
      EXPECT_GT(fixed, 3);
      EXPECT_GT(weighted, 1);
    }
  }
}

TEST(QdqImport, ImportedGraphExportsRoundTrip) {
  // torchvision ResNet-18 -> calq -> QDQ -> import -> the same simulation as the calibrated
  // graph (the graph exporter's own placement read back).
  calq::onnx::ImportedModel m = calq::onnx::import(kModels + "resnet18_op13.onnx");
  calq::fuse(*m.graph);
  calq::prepare_qat(*m.graph, calq::get_default_qconfig(std::string("fake_quant"),
                                                        std::string("fake_quant"), "percentile"));
  torch::manual_seed(33);
  std::vector<at::Tensor> batches;
  for (int i = 0; i < 4; ++i) batches.push_back(torch::randn({16, 3, 32, 32}));
  calq::calibrate(m.graph, batches);
  calq::set_fake_quantize(*m.graph, calq::FakeQuantState::VALIDATION);
  const at::Tensor x = torch::randn({16, 3, 32, 32});
  const std::string path = temp_path("resnet18_graph.onnx");
  calq::deploy::export_qdq(m, {x.slice(0, 0, 1)}, path);
  calq::onnx::ImportedModel back = import_prepared(path);
  torch::NoGradGuard no_grad;
  const at::Tensor a = m.graph->forward(x);
  const at::Tensor b = back.graph->forward(x);
  EXPECT_TRUE(at::equal(a, b)) << "max |diff| " << (a - b).abs().max().item<double>();
}

TEST(QdqImport, OnnxRuntimeStyleModelMatchesOnnxRuntimeWithinOneStep) {
  std::string why;
  if (!calq::deploy::onnxruntime_available(&why)) GTEST_SKIP() << why;
  const std::string path = kModels + "ort_style_qdq.onnx";
  calq::onnx::ImportedModel m = import_prepared(path);
  EXPECT_TRUE(m.qdq);
  // Fixed quantizers where the file has pairs: the layers' outputs, the sigmoid (a float op
  // that is a quantization point), a QuantStub of its own after MaxPool and after Flatten.
  std::map<std::string, std::string> types, outputs;
  for (const auto& row : calq::check_qconfig(*m.graph)) {
    types[row.name] = row.type_name;
    outputs[row.name] = row.output;
  }
  EXPECT_EQ(types.at(m.module_path("conv1")), "Conv2d");
  EXPECT_EQ(types.at(m.module_path("pool_QuantizeLinear")), "QuantStub");
  EXPECT_EQ(m.module_path("c2_QuantizeLinear"), m.module_path("conv2"));
  EXPECT_NE(outputs.at(m.module_path("sigmoid")).find("fixed_scale"), std::string::npos);
  EXPECT_NE(outputs.at(m.module_path("conv1")).find("qint8[-128,127]"), std::string::npos)
      << "uint8 with zero point z is qint8 with z - 128";

  const at::Tensor x = torch::randn({256, 3, 16, 16});
  at::Tensor mine;
  {
    torch::NoGradGuard no_grad;
    mine = m.graph->forward(x);
  }
  const at::Tensor theirs = calq::deploy::run_onnxruntime(path, {x}).outputs.at(0);
  const auto* fc = m.graph->find_node(m.module_path("fc"));
  ASSERT_NE(fc, nullptr);
  const double step = fc->quant_module()->output_fake_quant()->scale().item<double>();
  const at::Tensor lsb = ((mine - theirs).abs() / step).round();
  std::cerr << "ONNX Runtime-style QDQ model: " << lsb.eq(0).to(at::kDouble).mean().item<double>()
            << " of outputs equal, max " << lsb.max().item<double>() << " LSB\n";
  EXPECT_LE(lsb.max().item<double>(), 1.0);
}

TEST(QdqImport, KeepQdqFalseGivesTheFloatModel) {
  calq::onnx::ImportedModel m = calq::onnx::import(kModels + "ort_style_qdq.onnx",
                                                   calq::onnx::ImportOptions().keep_qdq(false));
  EXPECT_FALSE(m.qdq);
  for (const auto& node : m.graph->nodes()) {
    if (auto* q = node.quant_module()) EXPECT_FALSE(q->qconfig.has_value()) << node.name;
  }
  // The pairs are gone: the graph is the float model with the dequantized weights, which
  // prepare_qat fills from the global qconfig like any float model.
  calq::prepare_qat(*m.graph, calq::get_default_qconfig());
  int64_t min_max = 0;
  for (const auto& row : calq::check_qconfig(*m.graph)) {
    if (row.output.find("min_max") != std::string::npos) ++min_max;
  }
  EXPECT_GT(min_max, 5);
}

calq::onnx::Node qdq_node(const std::string& op, int64_t axis = 1) {
  calq::onnx::Node n;
  n.name = "n";
  n.op_type = op;
  n.opset = 13;
  n.inputs = {"x", "s", "z"};
  n.outputs = {"y"};
  if (axis != 1) {
    calq::onnx::Attribute a;
    a.kind = calq::onnx::Attribute::Kind::int_;
    a.i = axis;
    n.attributes["axis"] = a;
  }
  return n;
}

TEST(QdqKernels, QuantizeLinearDividesRoundsHalfToEvenAndSaturates) {
  const auto q = calq::onnx::detail::make_kernel(qdq_node("QuantizeLinear"));
  // Hand-computed: x / 0.5 = 1, 3, 5 (ties: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2), +128, clamped;
  // NaN goes to the lower end as ONNX Runtime's kernel does.
  const at::Tensor x = torch::tensor({0.5f, 0.25f, 0.75f, 1.25f, -0.25f, NAN, 1e9f, -1e9f});
  const at::Tensor y = q({x, torch::tensor(0.5f), torch::tensor(128, at::kByte)}, false).at(0);
  EXPECT_EQ(y.scalar_type(), at::kByte);
  EXPECT_TRUE(at::equal(y, torch::tensor({129, 128, 130, 130, 128, 0, 255, 0}, at::kByte))) << y;
  // int8 with zero point -3, int16.
  EXPECT_TRUE(at::equal(
      q({torch::tensor({1.0f, -200.0f}), torch::tensor(0.5f), torch::tensor(-3, at::kChar)}, false)
          .at(0),
      torch::tensor({-1, -128}, at::kChar)));
  EXPECT_TRUE(at::equal(
      q({torch::tensor({1000.0f}), torch::tensor(0.01f), torch::tensor(0, at::kShort)}, false)
          .at(0),
      torch::tensor({32767}, at::kShort)));
}

TEST(QdqKernels, DequantizeLinearPerAxis) {
  const auto dq = calq::onnx::detail::make_kernel(qdq_node("DequantizeLinear", 0));
  const at::Tensor q = torch::tensor({{1, -2}, {3, 4}}, at::kChar);
  const at::Tensor y =
      dq({q, torch::tensor({0.5f, 0.25f}), torch::tensor({0, 1}, at::kChar)}, false).at(0);
  EXPECT_TRUE(at::equal(y, torch::tensor({{0.5f, -1.0f}, {0.5f, 0.75f}}))) << y;
  // int32 (a bias) without zero point.
  const auto dq1 = calq::onnx::detail::make_kernel(qdq_node("DequantizeLinear"));
  EXPECT_TRUE(at::equal(dq1({torch::tensor({-7}, at::kInt), torch::tensor(0.5f)}, false).at(0),
                        torch::tensor({-3.5f})));
}

}  // namespace
