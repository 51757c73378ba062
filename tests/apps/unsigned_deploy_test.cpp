// Unsigned activation grids (eq. 1c) on the deploy path: exported as uint8 with zero point 0
// (no +128 shift), 4 bits as uint8 plus a Clip; ONNX Runtime keeps its integer kernels; the
// integer engine matches ONNX Runtime bit for bit on every quantized tensor and the simulation
// within one step.

#include <gtest/gtest.h>
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "calq/deploy/integer_engine.h"
#include "calq/deploy/onnxruntime.h"
#include "calq/deploy/qdq_export.h"
#include "calq/nn.h"
#include "calq/workflow.h"
#include "calq/zoo/models.h"

namespace {

std::string temp_path(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / "calq_unsigned_deploy_test";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

// A zoo model with random weights and batch-norm statistics, every output that ends in a ReLU
// / ReLU6 on an unsigned `dtype` grid (the others signed), percentile activations, calibrated
// on random data and left in VALIDATION. Returns the unsigned points' paths in `unsigned_paths`.
calq::zoo::Classifier calibrated(const std::string& name, const std::string& dtype,
                                 std::vector<std::string>* unsigned_paths) {
  torch::manual_seed(8);
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
  const calq::QConfig qconfig =
      calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), "percentile",
                                "min_max", {{"dtype", dtype}});
  calq::QConfigOverrides overrides;
  for (const auto& item : model->named_modules()) {
    auto* m = dynamic_cast<calq::nn::QuantModuleImpl*>(item.value().get());
    if (m == nullptr || !m->is_quantization_point() || !m->output_non_negative()) continue;
    calq::QConfig u = qconfig;
    u.activation->qkwargs["unsigned"] = true;
    overrides.by_name[item.key()] = u;
    unsigned_paths->push_back(item.key());
  }
  calq::prepare_qat(*model, qconfig, overrides);
  std::vector<at::Tensor> batches;
  for (int i = 0; i < 4; ++i) batches.push_back(torch::randn({16, 1, 28, 28}));
  calq::calibrate(model, batches);
  calq::set_fake_quantize(*model, calq::FakeQuantState::VALIDATION);
  return model;
}

calq::Trace trace_of(calq::zoo::Classifier& model) {
  return calq::trace(
      *model, [&model](const at::Tensor& x) { return model->forward(x); },
      torch::randn({2, 1, 28, 28}));
}

onnx::ModelProto read_model(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  onnx::ModelProto model;
  EXPECT_TRUE(model.ParseFromIstream(&in)) << path;
  return model;
}

TEST(UnsignedDeploy, ExportedAsUint8WithZeroPointZero) {
  for (const std::string dtype : {"qint8", "qint4"}) {
    for (const std::string& name : calq::zoo::model_names()) {
      SCOPED_TRACE(name + " " + dtype);
      std::vector<std::string> unsigned_paths;
      calq::zoo::Classifier model = calibrated(name, dtype, &unsigned_paths);
      ASSERT_FALSE(unsigned_paths.empty());
      const std::string path = temp_path(name + "_" + dtype + ".onnx");
      calq::deploy::export_qdq(*model, trace_of(model), path);
      const onnx::ModelProto proto = read_model(path);
      EXPECT_NO_THROW(onnx::checker::check_model(proto));
      std::map<std::string, const onnx::TensorProto*> initializers;
      for (const auto& init : proto.graph().initializer()) initializers[init.name()] = &init;
      // Every QuantizeLinear that writes an unsigned point's output: a uint8 zero point of 0.
      int64_t unsigned_quantizers = 0;
      for (const auto& node : proto.graph().node()) {
        if (node.op_type() != "QuantizeLinear" || node.input_size() < 3) continue;
        bool of_unsigned_point = false;
        for (const auto& p : unsigned_paths) {
          if (node.name().rfind(p + "/", 0) == 0 || node.name() == p ||
              node.output(0).rfind(p + "/", 0) == 0 || node.output(0) == p) {
            of_unsigned_point = true;
          }
        }
        if (!of_unsigned_point) continue;
        const auto found = initializers.find(node.input(2));
        ASSERT_NE(found, initializers.end()) << node.name();
        const onnx::TensorProto& zp = *found->second;
        EXPECT_EQ(zp.data_type(), onnx::TensorProto::UINT8) << node.name();
        const std::string& raw = zp.raw_data();
        const int value = raw.empty() ? zp.int32_data(0) : static_cast<uint8_t>(raw[0]);
        EXPECT_EQ(value, 0) << node.name();
        ++unsigned_quantizers;
      }
      EXPECT_GE(unsigned_quantizers, static_cast<int64_t>(unsigned_paths.size()));
    }
  }
}

TEST(UnsignedDeploy, IntegerEngineBitForBitWithOnnxRuntime) {
  std::string why;
  if (!calq::deploy::onnxruntime_available(&why)) GTEST_SKIP() << why;
  torch::manual_seed(9);
  const at::Tensor x = torch::randn({8, 1, 28, 28});
  for (const std::string dtype : {"qint8", "qint4"}) {
    for (const std::string name : {"cnn", "mobilenet"}) {
      SCOPED_TRACE(name + " " + dtype);
      std::vector<std::string> unsigned_paths;
      calq::zoo::Classifier model = calibrated(name, dtype, &unsigned_paths);
      const calq::Trace t = trace_of(model);
      const auto engine = calq::deploy::run_integer(
          *model, t, {x}, calq::deploy::IntegerEngineOptions().keep_integers(true));
      int64_t compared = 0, unsigned_compared = 0;
      for (const calq::TracedCall& call : t.calls) {
        if (call.module->output_fake_quant().is_empty()) continue;
        const auto& mine = engine.integers.at(call.path);
        const std::string path = temp_path(name + "_" + dtype + "_" + call.path + ".onnx");
        calq::deploy::export_qdq(*model, t, path,
                                 calq::deploy::ExportOptions().outputs({call.output}));
        const at::Tensor deployed = calq::deploy::run_onnxruntime(path, {x}).outputs.at(0);
        const at::Tensor levels =
            (deployed.to(at::kDouble) / mine.scale.item<double>()).round().to(at::kLong) +
            mine.zero_point;
        ASSERT_EQ(levels.sizes(), mine.values.sizes()) << call.path;
        EXPECT_EQ(levels.ne(mine.values).sum().item<int64_t>(), 0) << call.path;
        compared += levels.numel();
        if (call.module->output_fake_quant()->spec().unsigned_grid()) {
          // Stored unshifted: zero point 0, every level in [0, 2^b - 1].
          EXPECT_EQ(mine.zero_point, 0) << call.path;
          EXPECT_GE(mine.values.min().item<int64_t>(), 0) << call.path;
          unsigned_compared += levels.numel();
        }
      }
      EXPECT_GT(unsigned_compared, 0);
      std::cerr << name << " " << dtype << ": " << compared << " integers compared ("
                << unsigned_compared << " on unsigned grids)\n";
    }
  }
}

TEST(UnsignedDeploy, OnnxRuntimeKeepsIntegerKernelsAndMatchesTheSimulation) {
  std::string why;
  if (!calq::deploy::onnxruntime_available(&why)) GTEST_SKIP() << why;
  torch::manual_seed(10);
  const at::Tensor x = torch::randn({64, 1, 28, 28});
  for (const std::string& name : calq::zoo::model_names()) {
    SCOPED_TRACE(name);
    std::vector<std::string> unsigned_paths;
    calq::zoo::Classifier model = calibrated(name, "qint8", &unsigned_paths);
    const std::string path = temp_path(name + "_ort.onnx");
    calq::deploy::export_qdq(*model, trace_of(model), path);
    at::Tensor simulated;
    {
      torch::NoGradGuard no_grad;
      simulated = model->forward(x);
    }
    calq::deploy::OrtOptions options;
    options.optimized_model_path = temp_path(name + "_ort_optimized.onnx");
    const at::Tensor deployed = calq::deploy::run_onnxruntime(path, {x}, options).outputs.at(0);
    // The output layer is quantized (signed): ONNX Runtime's result differs from the simulation
    // by its rounding of intermediate requantizations; one output step bounds it nearly
    // everywhere.
    const double step = model->named_modules()[model->output_layer()]
                            ->as<calq::nn::QuantModuleImpl>()
                            ->output_fake_quant()
                            ->scale()
                            .item<double>();
    const double within_one =
        ((deployed - simulated).abs() / step).round().le(1).to(at::kDouble).mean().item<double>();
    EXPECT_GE(within_one, 0.99);
    const onnx::ModelProto optimized = read_model(options.optimized_model_path);
    std::map<std::string, int> ops;
    for (const auto& node : optimized.graph().node()) ops[node.op_type()]++;
    std::string listing;
    for (const auto& op : ops) listing += op.first + ":" + std::to_string(op.second) + " ";
    EXPECT_EQ(ops.count("Conv"), 0u) << listing;
    EXPECT_GT(ops["QLinearConv"], 0) << listing;
  }
}

}  // namespace
