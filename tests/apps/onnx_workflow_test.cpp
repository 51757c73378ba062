// The whole workflow on imported ONNX models: every observer and every fake-quant method,
// calibration, validation, loading a calibration into a fresh import, QAT with autograd,
// save/load, overrides and exclusions by ONNX node name.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>

#include "calq/nn.h"
#include "calq/onnx/import.h"
#include "calq/workflow.h"

namespace {

const std::string kModels = std::string(CALQ_TEST_MODELS) + "/";
const char* kBnModel = "workflow_op17_bn.onnx";  // batch norm kept (ConvBn blocks)
const char* kEvalModel = "workflow_op13.onnx";   // batch norm folded by the exporter

calq::onnx::ImportedModel import(const char* file) {
  return calq::onnx::import(kModels + file);
}

std::vector<at::Tensor> batches(int64_t n, int64_t seed) {
  torch::manual_seed(seed);
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < n; ++i) out.push_back(torch::randn({6, 1, 8, 8}));
  return out;
}

// The logits stay float (the seed's "32-bit output").
calq::QConfigOverrides float_output(const calq::onnx::ImportedModel& m) {
  calq::QConfigOverrides overrides;
  for (const auto& entry : m.keep_float({"/fc/Gemm"})) overrides.by_name.insert(entry);
  return overrides;
}

calq::onnx::ImportedModel prepared(const char* file, const calq::QConfig& qconfig) {
  auto m = import(file);
  calq::fuse(*m.graph);
  calq::prepare_qat(*m.graph, qconfig, float_output(m));
  return m;
}

TEST(OnnxWorkflow, FusedBlocksAndQuantizationPoints) {
  auto m = import(kBnModel);
  EXPECT_EQ(m.module_path("/conv1/Conv"), m.module_path("/bn1/BatchNormalization"));
  EXPECT_EQ(m.module_path("/conv1/Conv"), m.module_path("/Relu"));
  EXPECT_EQ(m.module_path("/Add"), m.module_path("/Relu_1"));
  EXPECT_EQ(calq::fuse(*m.graph), 2);
  std::map<std::string, std::string> types;
  for (const auto& row : calq::check_qconfig(*m.graph)) types[row.name] = row.type_name;
  EXPECT_EQ(types.at(m.module_path("/conv1/Conv")), "ConvBnReLU2d");
  EXPECT_EQ(types.at(m.module_path("/conv2/Conv")), "ConvBn2d");
  EXPECT_EQ(types.at(m.module_path("/Add")), "AddReLU");
  EXPECT_EQ(types.at(m.module_path("/ReduceMean")), "ReduceMean");
  EXPECT_EQ(types.at(m.module_path("/gate/Gemm")), "Linear");
  EXPECT_EQ(types.at(m.module_path("/Sigmoid")), "Sigmoid");
  EXPECT_EQ(types.at(m.module_path("/HardSwish")), "HardSwish");
  EXPECT_EQ(types.at("quant"), "QuantStub");
  EXPECT_THROW(m.module_path("/Constant"), c10::Error) << "folded at import";
  EXPECT_THROW(m.module_path("/nope"), c10::Error);
  // The sigmoid gate feeds a quantized Mul: a quantization point; MaxPool passes through.
  for (const auto& n : m.nodes) {
    if (n.onnx_name == "/Sigmoid") EXPECT_TRUE(n.quantization_point);
    if (n.onnx_name == "/pool/MaxPool") EXPECT_FALSE(n.quantization_point);
    if (n.onnx_name == "/conv1/Conv") EXPECT_TRUE(n.has_weight);
  }
  auto eval = import(kEvalModel);
  std::map<std::string, std::string> eval_types;
  for (const auto& row : calq::check_qconfig(*eval.graph)) eval_types[row.name] = row.type_name;
  EXPECT_EQ(eval_types.at(eval.module_path("/conv1/Conv")), "ConvReLU2d");
  EXPECT_EQ(eval_types.at(eval.module_path("/HardSigmoid")), "HardSwish")
      << "x * HardSigmoid(x) fused";
}

class EveryObserver : public ::testing::TestWithParam<std::string> {};

TEST_P(EveryObserver, CalibrateValidateAndLoadIntoAFreshImport) {
  const auto qconfig =
      calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), GetParam());
  for (const char* file : {kBnModel, kEvalModel}) {
    SCOPED_TRACE(file);
    auto calib = prepared(file, qconfig);
    const at::Tensor probe = batches(1, 9)[0];
    calib.graph->eval();
    at::Tensor float_out;
    {
      torch::NoGradGuard no_grad;
      calq::calibrate(calib.graph, batches(4, 1));
      float_out = calib.graph(probe);  // CALIBRATION computes float
    }
    calq::set_fake_quantize(*calib.graph, calq::FakeQuantState::VALIDATION);
    const at::Tensor validated = calib.graph(probe).detach();
    EXPECT_TRUE(torch::isfinite(validated).all().item<bool>());
    EXPECT_FALSE(torch::equal(validated, float_out)) << "VALIDATION must quantize";
    const double error = (validated - float_out).abs().max().item<double>();
    EXPECT_LT(error, 0.5 * float_out.abs().max().item<double>() + 0.05);
    // Step 7-8: a fresh import, prepared the same way, takes the calibration.
    auto fresh = prepared(file, qconfig);
    const calq::LoadReport report = calq::load_observer_params(*calib.graph, *fresh.graph);
    EXPECT_TRUE(report.ok()) << report.str();
    EXPECT_FALSE(report.copied.empty());
    calq::set_fake_quantize(*fresh.graph, calq::FakeQuantState::VALIDATION);
    EXPECT_TRUE(torch::equal(fresh.graph(probe), validated));
  }
}

INSTANTIATE_TEST_SUITE_P(Observers, EveryObserver,
                         ::testing::Values("min_max", "percentile", "kl", "mse", "mix",
                                           "clip_std"));

class EveryMethod : public ::testing::TestWithParam<std::string> {};

TEST_P(EveryMethod, QatStepsReachWeightsAndScales) {
  const std::string method = GetParam();
  auto calib =
      prepared(kBnModel, calq::get_default_qconfig(std::string("fake_quant"),
                                                   std::string("fake_quant"), "percentile"));
  calq::calibrate(calib.graph, batches(3, 2));
  // PACT clips activations (per tensor); its weights use fake_quant, per channel.
  const std::string weight_method = method == "pact" ? "fake_quant" : method;
  auto qat = prepared(kBnModel, calq::get_default_qconfig(method, weight_method));
  calq::copy_float_state(*calib.graph, *qat.graph);
  calq::load_observer_params(*calib.graph, *qat.graph);
  calq::set_fake_quantize(*qat.graph, calq::FakeQuantState::QAT);
  EXPECT_TRUE(qat.graph->is_training());
  auto& conv = *dynamic_cast<calq::nn::detail::ConvBlockImpl*>(
      qat.graph->find_node(qat.module_path("/conv1/Conv"))->module.get());
  const at::Tensor weight_before = conv.conv->weight.detach().clone();
  torch::optim::SGD optimizer(qat.graph->parameters(), 0.01);
  const auto data = batches(3, 3);
  for (const auto& x : data) {
    optimizer.zero_grad();
    const at::Tensor target = (x.mean({1, 2, 3}) > 0).to(torch::kLong);
    torch::nn::functional::cross_entropy(qat.graph(x), target).backward();
    ASSERT_TRUE(conv.conv->weight.grad().defined());
    EXPECT_GT(conv.conv->weight.grad().abs().sum().item<double>(), 0.0);
    if (method == "lsq") {
      int with_gradient = 0;
      for (const auto& p : qat.graph->named_parameters()) {
        if (p.key().find("fake_quant.scale") != std::string::npos && p.value().grad().defined() &&
            p.value().grad().abs().sum().item<double>() > 0) {
          ++with_gradient;
        }
      }
      EXPECT_GT(with_gradient, 3) << "LSQ scales of weights and activations learn";
    }
    optimizer.step();
  }
  EXPECT_FALSE(torch::equal(conv.conv->weight, weight_before));
  calq::set_fake_quantize(*qat.graph, calq::FakeQuantState::VALIDATION);
  EXPECT_TRUE(torch::isfinite(qat.graph(data[0])).all().item<bool>());
}

INSTANTIATE_TEST_SUITE_P(Methods, EveryMethod, ::testing::Values("fake_quant", "lsq", "pact"));

TEST(OnnxWorkflow, SaveLoadRoundTripsBitForBit) {
  const auto qconfig = calq::get_default_qconfig(std::string("lsq"), std::string("lsq"));
  auto m = prepared(kBnModel, qconfig);
  calq::calibrate(m.graph, batches(2, 4));
  calq::set_fake_quantize(*m.graph, calq::FakeQuantState::QAT);
  torch::optim::SGD optimizer(m.graph->parameters(), 0.01);
  for (const auto& x : batches(2, 5)) {  // trained state differs from the file's
    optimizer.zero_grad();
    m.graph(x).pow(2).mean().backward();
    optimizer.step();
  }
  calq::set_fake_quantize(*m.graph, calq::FakeQuantState::VALIDATION);
  const at::Tensor probe = batches(1, 6)[0];
  const at::Tensor expected = m.graph(probe);
  std::stringstream stream;
  torch::save(m.graph, stream);
  auto restored = prepared(kBnModel, qconfig);
  torch::load(restored.graph, stream);
  auto a = m.graph->named_parameters();
  auto b = restored.graph->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& entry : a)
    EXPECT_TRUE(torch::equal(entry.value(), b[entry.key()])) << entry.key();
  auto c = m.graph->named_buffers();
  auto d = restored.graph->named_buffers();
  ASSERT_EQ(c.size(), d.size());
  for (const auto& entry : c)
    EXPECT_TRUE(torch::equal(entry.value(), d[entry.key()])) << entry.key();
  calq::set_fake_quantize(*restored.graph, calq::FakeQuantState::VALIDATION);
  EXPECT_TRUE(torch::equal(restored.graph(probe), expected));
}

TEST(OnnxWorkflow, OverridesAndExclusionsByOnnxNodeName) {
  auto m = import(kBnModel);
  calq::fuse(*m.graph);
  calq::QConfigOverrides overrides;
  overrides.by_name[m.module_path("/conv2/Conv")] =
      calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), "min_max",
                                "min_max", {{"dtype", "qint16"}}, {{"dtype", "qint4"}});
  for (const auto& entry : m.keep_float({"/Sigmoid", "/fc/Gemm"})) overrides.by_name.insert(entry);
  overrides.by_type["HardSwish"] =
      calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), "min_max",
                                "min_max", {{"dtype", "qint16"}});
  calq::prepare_qat(*m.graph, calq::get_default_qconfig(), overrides);
  auto module = [&](const std::string& onnx_name) {
    return m.graph->find_node(m.module_path(onnx_name))->quant_module();
  };
  EXPECT_EQ(module("/conv2/Conv")->output_fake_quant()->spec().dtype(), calq::QuantDtype::qint16);
  EXPECT_EQ(module("/conv2/Conv")->weight_fake_quant()->spec().dtype(), calq::QuantDtype::qint4);
  EXPECT_TRUE(module("/Sigmoid")->output_fake_quant().is_empty());
  EXPECT_TRUE(module("/fc/Gemm")->output_fake_quant().is_empty());
  EXPECT_TRUE(module("/fc/Gemm")->weight_fake_quant().is_empty());
  EXPECT_EQ(module("/HardSwish")->output_fake_quant()->spec().dtype(), calq::QuantDtype::qint16);
  EXPECT_EQ(module("/conv1/Conv")->output_fake_quant()->spec().dtype(), calq::QuantDtype::qint8);
  // Every quantization point and weight the import reports got its slots.
  for (const auto& path : m.quantized_modules()) {
    auto* q = m.graph->find_node(path)->quant_module();
    EXPECT_TRUE(q->prepared()) << path;
  }
  EXPECT_THROW(m.keep_float({"/not_a_node"}), c10::Error);
}

TEST(OnnxWorkflow, TrainingModeExportMapsBatchNormToConvBnBlocks) {
  // torch.onnx.export(training=TRAINING): BatchNormalization with training_mode=1 and its
  // running-statistics outputs. calq's blocks switch batch statistics with train()/eval().
  // Opset 13's BatchNormalization has five outputs (saved mean and variance too), 17's three.
  for (const char* file : {"workflow_op13_training.onnx", "workflow_op17_training.onnx"}) {
    auto m = import(file);
    auto bn = import(kBnModel);
    EXPECT_EQ(calq::fuse(*m.graph), 2) << file;
    calq::fuse(*bn.graph);
    calq::copy_float_state(*bn.graph, *m.graph);
    m.graph->eval();
    bn.graph->eval();
    torch::NoGradGuard no_grad;
    const at::Tensor x = batches(1, 7)[0];
    EXPECT_TRUE(torch::allclose(m.graph(x), bn.graph(x), 1e-5, 1e-6)) << file;
  }
}

TEST(OnnxWorkflow, DynamicBatchAndWrongInputShape) {
  auto m = import(kEvalModel);
  ASSERT_EQ(m.inputs.size(), 1u);
  EXPECT_EQ(m.inputs[0].shape, (std::vector<int64_t>{-1, 1, 8, 8}));
  EXPECT_EQ(m.inputs[0].symbols[0], "batch");
  m.graph->eval();
  torch::NoGradGuard no_grad;
  for (int64_t n : {1, 3, 17}) EXPECT_EQ(m.graph(torch::randn({n, 1, 8, 8})).size(0), n);
  try {
    m.graph(torch::randn({2, 3, 8, 8}));
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/conv1/Conv"), std::string::npos) << e.what();
  }
  try {
    calq::onnx::check_input(m.inputs[0], torch::randn({2, 3, 8, 8}));
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("[2, 3, 8, 8]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[batch, 1, 8, 8]"), std::string::npos) << e.what();
  }
}

}  // namespace
