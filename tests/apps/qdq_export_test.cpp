// QDQ export of the zoo: a valid ONNX model (libonnx's checker), run by ONNX Runtime on its
// integer kernels, computing what calq simulated.

#include "calq/deploy/qdq_export.h"

#include <gtest/gtest.h>
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "calq/deploy/integer_engine.h"
#include "calq/deploy/onnxruntime.h"
#include "calq/deploy/profile.h"
#include "calq/nn.h"
#include "calq/workflow.h"
#include "calq/zoo/models.h"

namespace {

std::string temp_path(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / "calq_deploy_test";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

// A zoo model with random weights, non-trivial batch-norm statistics, calibrated (percentile
// activations, min_max weights) on random data and left in VALIDATION.
calq::zoo::Classifier calibrated(const std::string& name, const calq::QConfig& qconfig,
                                 bool float_output, calq::March march = calq::March::bayes) {
  torch::manual_seed(3);
  calq::zoo::Classifier model = calq::zoo::make_model(name);
  {
    torch::NoGradGuard no_grad;
    for (auto& buffer : model->named_buffers()) {
      if (buffer.key().find("running_mean") != std::string::npos)
        buffer.value().uniform_(-0.2, 0.2);
      if (buffer.key().find("running_var") != std::string::npos) buffer.value().uniform_(0.5, 2.0);
    }
  }
  calq::fuse(*model);
  calq::QConfigOverrides overrides;
  if (float_output) {
    calq::QConfig last = qconfig;
    last.activation = c10::nullopt;
    overrides.by_name[model->output_layer()] = last;
  }
  calq::prepare_qat(*model, qconfig, overrides, march);
  std::vector<at::Tensor> batches;
  for (int i = 0; i < 4; ++i) batches.push_back(torch::randn({16, 1, 28, 28}));
  calq::calibrate(model, batches);
  calq::set_fake_quantize(*model, calq::FakeQuantState::VALIDATION);
  return model;
}

onnx::ModelProto read_model(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  onnx::ModelProto model;
  EXPECT_TRUE(model.ParseFromIstream(&in)) << path;
  return model;
}

calq::Trace trace_of(calq::zoo::Classifier& model) {
  return calq::trace(
      *model, [&model](const at::Tensor& x) { return model->forward(x); },
      torch::randn({2, 1, 28, 28}));
}

TEST(QdqExport, ZooModelsAreValidOnnxWithIntegerWeights) {
  for (const std::string& name : calq::zoo::model_names()) {
    SCOPED_TRACE(name);
    calq::zoo::Classifier model = calibrated(name, calq::get_default_qconfig(), true);
    const std::string path = temp_path(name + ".onnx");
    const calq::deploy::ExportReport report =
        calq::deploy::export_qdq(*model, trace_of(model), path);
    EXPECT_GT(report.integer_weight_layers, 0) << report.str();
    EXPECT_EQ(report.float_outputs, std::vector<std::string>{model->output_layer()});
    const onnx::ModelProto proto = read_model(path);
    EXPECT_NO_THROW(onnx::checker::check_model(proto));
    int64_t int8_weights = 0, int32_biases = 0;
    for (const auto& init : proto.graph().initializer()) {
      if (init.name().find("weight_quantized") != std::string::npos) {
        EXPECT_EQ(init.data_type(), onnx::TensorProto::INT8) << init.name();
        ++int8_weights;
      }
      if (init.name().find("bias_quantized") != std::string::npos) {
        EXPECT_EQ(init.data_type(), onnx::TensorProto::INT32) << init.name();
        ++int32_biases;
      }
    }
    EXPECT_EQ(int8_weights, report.integer_weight_layers);
    EXPECT_EQ(int32_biases, report.integer_weight_layers);
  }
}

TEST(QdqExport, OnnxRuntimeComputesWhatCalqSimulated) {
  std::string why;
  if (!calq::deploy::onnxruntime_available(&why)) GTEST_SKIP() << why;
  torch::manual_seed(4);
  const at::Tensor x = torch::randn({64, 1, 28, 28});
  for (const std::string& name : calq::zoo::model_names()) {
    SCOPED_TRACE(name);
    calq::zoo::Classifier model = calibrated(name, calq::get_default_qconfig(), true);
    const std::string path = temp_path(name + "_ort.onnx");
    calq::deploy::export_qdq(*model, trace_of(model), path);
    at::Tensor simulated;
    {
      torch::NoGradGuard no_grad;
      simulated = model->forward(x);
    }
    calq::deploy::OrtOptions options;
    options.optimized_model_path = temp_path(name + "_ort_optimized.onnx");
    const auto result = calq::deploy::run_onnxruntime(path, {x}, options);
    ASSERT_EQ(result.outputs.size(), 1u);
    const at::Tensor deployed = result.outputs[0];
    ASSERT_EQ(deployed.sizes(), simulated.sizes());
    const double agree =
        deployed.argmax(1).eq(simulated.argmax(1)).to(at::kDouble).mean().item<double>();
    const double rel = ((deployed - simulated).abs().max() / simulated.abs().max()).item<double>();
    std::cerr << name << ": argmax agreement " << agree << ", max rel diff " << rel << " ("
              << result.cpu << ", onnxruntime " << result.version << ")\n";
    EXPECT_GE(agree, 0.98);
    // ONNX Runtime's optimized graph: every convolution and the linear layers on integers.
    const onnx::ModelProto optimized = read_model(options.optimized_model_path);
    std::map<std::string, int> ops;
    for (const auto& node : optimized.graph().node()) ops[node.op_type()]++;
    std::string listing;
    for (const auto& op : ops) listing += op.first + ":" + std::to_string(op.second) + " ";
    EXPECT_EQ(ops.count("Conv"), 0u) << listing;
    EXPECT_EQ(ops.count("Gemm"), 0u) << listing;
    EXPECT_GT(ops["QLinearConv"], 0) << listing;
  }
}

// Every bit width calq run offers exports a model ONNX Runtime loads and runs as simulated:
// int16 weights and activations through the profile's int16 Q/DQ (com.microsoft), int4 in
// int8 containers. (16-bit weights once reached ORT as a default-domain int16
// DequantizeLinear, which opset 13 rejects.)
TEST(QdqExport, EveryBitWidthRunsInOnnxRuntime) {
  std::string why;
  if (!calq::deploy::onnxruntime_available(&why)) GTEST_SKIP() << why;
  torch::manual_seed(5);
  const at::Tensor x = torch::randn({32, 1, 28, 28});
  const std::vector<std::pair<std::string, std::string>> widths = {
      {"qint16", "qint16"}, {"qint8", "qint16"}, {"qint16", "qint8"}, {"qint4", "qint4"}};
  for (const auto& [weights, activations] : widths) {
    SCOPED_TRACE("W " + weights + ", A " + activations);
    const calq::QConfig qconfig = calq::get_default_qconfig(
        std::string("fake_quant"), std::string("fake_quant"), "percentile", "min_max",
        {{"dtype", activations}}, {{"dtype", weights}});
    calq::zoo::Classifier model = calibrated("cnn", qconfig, true);
    // Biases as deployed (int32 at s_x * s_w): at 4 bits that step is coarse.
    calq::link_input_quantizers(trace_of(model));
    const std::string path = temp_path("cnn_w" + weights + "_a" + activations + ".onnx");
    calq::deploy::export_qdq(*model, trace_of(model), path);
    at::Tensor simulated;
    {
      torch::NoGradGuard no_grad;
      simulated = model->forward(x);
    }
    const auto result = calq::deploy::run_onnxruntime(path, {x});
    ASSERT_EQ(result.outputs.size(), 1u);
    const at::Tensor deployed = result.outputs[0];
    ASSERT_EQ(deployed.sizes(), simulated.sizes());
    const at::Tensor engine = calq::deploy::run_integer(*model, trace_of(model), {x}).outputs[0];
    std::cerr << "W " << weights << " A " << activations << ": ort-sim "
              << (deployed - simulated).abs().max().item<double>() << ", int-sim "
              << (engine - simulated).abs().max().item<double>() << ", ort-int "
              << (deployed - engine).abs().max().item<double>() << "\n";
    EXPECT_GE(deployed.argmax(1).eq(simulated.argmax(1)).to(at::kDouble).mean().item<double>(),
              0.95);
    // Float accumulation order differs (ORT runs int16 and int4 as DQ -> float op -> Q): a few
    // values may land one step apart; the logits stay close. The integer engine states the
    // deployed arithmetic independently of ONNX Runtime (exact int64 sums: ORT's float
    // convolution of 16-bit weights rounds sums beyond 2^24, one output step apart at most).
    EXPECT_LE(((deployed - simulated).abs().max() / simulated.abs().max()).item<double>(), 0.01);
    EXPECT_LE(((engine - deployed).abs().max() / deployed.abs().max()).item<double>(), 0.01);
    // ONNX Runtime runs none of these widths in integer kernels (int16 and 4-bit activations,
    // int16 weights: DequantizeLinear -> float op -> QuantizeLinear), so its integer arithmetic
    // is the float simulation here, exactly.
    calq::set_integer_arithmetic(*model,
                                 calq::deploy::integer_arithmetic(calq::deploy::ort_cpu_profile()));
    {
      torch::NoGradGuard no_grad;
      EXPECT_TRUE(model->forward(x).equal(simulated));
    }
    calq::set_integer_arithmetic(*model, c10::nullopt);
  }
}

// 16-bit grids: s_x * s_w is ~1e-9, so an ordinary bias of tens overflows int32 at that scale.
// The weight scale of those channels is raised (as ONNX Runtime's quantize_static does) instead
// of saturating the bias, and the simulation, the integer engine and ONNX Runtime all use the
// raised scale; unsigned 16-bit activations (after a ReLU) export as uint16.
TEST(QdqExport, SixteenBitLayersRaiseWeightScalesSoThatTheInt32BiasFits) {
  std::string why;
  const bool ort = calq::deploy::onnxruntime_available(&why);
  for (const bool unsigned_relu : {false, true}) {
    SCOPED_TRACE(unsigned_relu ? "uint16 after ReLU" : "int16");
    torch::manual_seed(3);
    calq::zoo::Classifier model = calq::zoo::make_model("cnn");
    {
      torch::NoGradGuard no_grad;
      auto params = model->named_parameters();
      params["conv1.bn.bias"].slice(0, 0, 4).fill_(40.0);  // a large beta on 4 of 16 channels
    }
    calq::fuse(*model);
    const calq::QConfig qconfig =
        calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), "min_max",
                                  "min_max", {{"dtype", "qint16"}}, {{"dtype", "qint16"}});
    calq::QConfigOverrides overrides;
    if (unsigned_relu) {
      calq::QConfig relu = calq::get_default_qconfig(
          std::string("fake_quant"), std::string("fake_quant"), "min_max", "min_max",
          {{"dtype", "qint16"}, {"unsigned", true}}, {{"dtype", "qint16"}});
      for (const char* name : {"conv1", "conv2", "fc1"}) overrides.by_name[name] = relu;
    }
    calq::prepare_qat(*model, qconfig, overrides);
    torch::manual_seed(4);
    std::vector<at::Tensor> batches;
    for (int i = 0; i < 4; ++i) batches.push_back(torch::randn({16, 1, 28, 28}));
    calq::calibrate(model, batches);
    // The calibration data itself: min_max ranges hold it, so the only error left is the grids'.
    const at::Tensor x = at::cat({batches[0], batches[1]});
    at::Tensor reference, simulated;
    model->eval();
    {
      torch::NoGradGuard no_grad;
      calq::set_fake_quantize(*model, calq::FakeQuantState::FLOAT);
      reference = model->forward(x);
      calq::set_fake_quantize(*model, calq::FakeQuantState::VALIDATION);
      calq::link_input_quantizers(trace_of(model));
      simulated = model->forward(x);
    }
    // Raised ~13x, those 4 channels keep ~2,500 weight levels: ~2e-3 of the largest logit.
    // Saturated, they would lose ~90 % of their bias (b / (s_x s_w) ~ 3e10 against 2^31).
    const double error =
        ((simulated - reference).abs().max() / reference.abs().max()).item<double>();
    EXPECT_LT(error, 1e-2);
    const std::string path =
        temp_path(unsigned_relu ? "cnn_bias_fit_u16.onnx" : "cnn_bias_fit.onnx");
    const calq::deploy::ExportReport report =
        calq::deploy::export_qdq(*model, trace_of(model), path);
    EXPECT_TRUE(report.bias_saturations.empty()) << report.str();
    ASSERT_FALSE(report.weight_scales_raised.empty()) << report.str();
    EXPECT_NE(report.weight_scales_raised[0].find("conv1: 4 of 16 weight scales raised"),
              std::string::npos)
        << report.str();
    // Exactly the raised scales, in the module, its integer weights and the exported model.
    auto* conv1 =
        dynamic_cast<calq::nn::detail::ConvBlockImpl*>(model->named_modules()["conv1"].get());
    ASSERT_NE(conv1, nullptr);
    const auto folded = conv1->folded_weight_and_bias();
    const double s_x = conv1->input_quantizer()->scale().item<double>();
    const at::Tensor own = conv1->weight_fake_quant()->scale();
    const at::Tensor raised = conv1->deployed_weight_scale(folded.second, s_x);
    EXPECT_EQ((raised != own).sum().item<int64_t>(), 4);
    EXPECT_TRUE((raised.slice(0, 0, 4) > own.slice(0, 0, 4)).all().item<bool>());
    const calq::nn::IntegerWeights iw = conv1->integer_weights(folded.first, folded.second, s_x);
    for (int64_t c = 0; c < raised.numel(); ++c) {
      EXPECT_EQ(iw.scale[c], raised[c].item<float>()) << c;
    }
    EXPECT_LE(iw.bias.abs().max().item<double>(), 2147483647.0);
    EXPECT_GT(iw.bias.abs().max().item<double>(), 1e9);  // the raise leaves no headroom unused
    const onnx::ModelProto exported = read_model(path);
    bool found = false;
    for (const auto& init : exported.graph().initializer()) {
      if (init.name() != "conv1/weight/scale") continue;
      found = true;
      ASSERT_EQ(init.raw_data().size(), raised.numel() * sizeof(float));
      const float* values = reinterpret_cast<const float*>(init.raw_data().data());
      for (int64_t c = 0; c < raised.numel(); ++c) {
        EXPECT_EQ(values[c], raised[c].item<float>()) << c;
      }
    }
    EXPECT_TRUE(found) << "no initializer conv1/weight/scale";
    const at::Tensor engine = calq::deploy::run_integer(*model, trace_of(model), {x}).outputs[0];
    EXPECT_LE(((engine - simulated).abs().max() / simulated.abs().max()).item<double>(), 1e-3);
    if (!ort) continue;
    const at::Tensor deployed = calq::deploy::run_onnxruntime(path, {x}).outputs[0];
    EXPECT_LE(((deployed - simulated).abs().max() / simulated.abs().max()).item<double>(), 1e-3);
    EXPECT_LE(((deployed - reference).abs().max() / reference.abs().max()).item<double>(), 1e-2);
  }
  if (!ort) GTEST_SKIP() << why;
}

// A layer whose weight the qconfig keeps float (auto's --promotion float) between quantized
// activations: the runtime dequantizes and runs it in float; the integer engine does the same.
TEST(QdqExport, FloatWeightLayerBetweenQuantizedActivations) {
  const calq::QConfig qconfig = calq::get_default_qconfig(
      std::string("fake_quant"), std::string("fake_quant"), "min_max", "min_max");
  torch::manual_seed(3);
  calq::zoo::Classifier model = calq::zoo::make_model("cnn");
  calq::fuse(*model);
  calq::QConfigOverrides overrides;
  calq::QConfig float_weight = qconfig;
  float_weight.weight = c10::nullopt;
  overrides.by_name["fc1"] = float_weight;
  calq::prepare_qat(*model, qconfig, overrides);
  std::vector<at::Tensor> batches;
  for (int i = 0; i < 2; ++i) batches.push_back(torch::randn({16, 1, 28, 28}));
  calq::calibrate(model, batches);
  calq::set_fake_quantize(*model, calq::FakeQuantState::VALIDATION);
  calq::link_input_quantizers(trace_of(model));
  const at::Tensor x = batches[0];
  at::Tensor simulated;
  {
    torch::NoGradGuard no_grad;
    simulated = model->forward(x);
  }
  const at::Tensor engine = calq::deploy::run_integer(*model, trace_of(model), {x}).outputs[0];
  EXPECT_LE(((engine - simulated).abs().max() / simulated.abs().max()).item<double>(), 1e-2);
  EXPECT_EQ(engine.argmax(1).ne(simulated.argmax(1)).sum().item<int64_t>(), 0);
  std::string why;
  if (!calq::deploy::onnxruntime_available(&why)) GTEST_SKIP() << why;
  const std::string path = temp_path("cnn_float_fc1.onnx");
  calq::deploy::export_qdq(*model, trace_of(model), path);
  const at::Tensor deployed = calq::deploy::run_onnxruntime(path, {x}).outputs[0];
  // fc1 in float: ORT's Gemm sums in another order, so its requantized output (and what
  // follows) can land a step or two of the output grid apart.
  auto* fc2 = dynamic_cast<calq::nn::QuantModuleImpl*>(model->named_modules()["fc2"].get());
  ASSERT_NE(fc2, nullptr);
  const double step = fc2->output_fake_quant()->scale().item<double>();
  EXPECT_LE((deployed - engine).abs().max().item<double>(), 2 * step * (1 + 1e-6));
}

}  // namespace
