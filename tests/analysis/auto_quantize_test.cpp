// auto_quantize_onnx (`calq quantize --observer auto`): a user's float ONNX model and calibration
// data in, the chosen per-layer recipe out as QDQ ONNX that computes what the search chose.
#include "calq/analysis/auto_quantize.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>

#include "calq/analysis/equalization.h"
#include "calq/analysis/points.h"
#include "calq/deploy/onnxruntime.h"
#include "calq/graph/graph.h"
#include "calq/onnx/import.h"
#include "calq/util/npy.h"
#include "calq/workflow.h"

namespace {

using calq::analysis::AutoOptions;
using calq::analysis::AutoQuantizeOptions;
using calq::analysis::ObserverChoice;

const std::string kModels = std::string(CALQ_TEST_MODELS) + "/";

std::string temp_path(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / "calq_auto_quantize_test";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

std::string npy(const std::string& name, const at::Tensor& x) {
  const std::string path = temp_path(name);
  calq::util::write_npy(path, x);
  return path;
}

// Batches from tensors already in memory, counting what was asked.
class TensorSource : public calq::deploy::CalibrationSource {
 public:
  TensorSource(at::Tensor x, int64_t batch) : x_(std::move(x)), batch_(batch) {}
  std::vector<at::Tensor> next() override {
    if (position_ >= x_.size(0)) return {};
    const int64_t n = std::min(batch_, x_.size(0) - position_);
    at::Tensor b = x_.slice(0, position_, position_ + n);
    position_ += n;
    return {b};
  }

 private:
  at::Tensor x_;
  int64_t batch_, position_ = 0;
};

// The chosen model's simulation in ONNX Runtime's integer arithmetic (VALIDATION) and ONNX
// Runtime running the written file agree to float rounding: the file is the model the search
// chose (another candidate's scales would move the outputs by whole quantization steps).
void expect_file_computes_the_choice(const calq::analysis::AutoQuantizeReport& report,
                                     const std::string& path, const at::Tensor& x) {
  std::string why;
  if (!calq::deploy::onnxruntime_available(&why)) GTEST_SKIP() << why;
  auto& graph = dynamic_cast<calq::graph::GraphImpl&>(*report.search.model);
  torch::NoGradGuard no_grad;
  calq::set_integer_arithmetic(graph,
                               calq::deploy::integer_arithmetic(calq::deploy::ort_cpu_profile()));
  const at::Tensor simulated = graph.forward(x);
  calq::set_integer_arithmetic(graph, c10::nullopt);
  const at::Tensor deployed = calq::deploy::run_onnxruntime(path, {x}).outputs.at(0);
  ASSERT_EQ(simulated.sizes(), deployed.sizes());
  const double rel =
      ((simulated - deployed).abs().max() / simulated.abs().max().clamp_min(1e-12)).item<double>();
  std::cerr << "ONNX Runtime vs the chosen simulation (ORT arithmetic): max rel diff " << rel
            << "\n";
  EXPECT_LT(rel, 1e-4) << "ONNX Runtime running the written file vs the chosen simulation";
  EXPECT_TRUE(at::equal(simulated.argmax(1), deployed.argmax(1)));
}

TEST(AutoQuantizeOnnx, HoldsOutEveryFourthBatchChoosesAndWritesTheChoice) {
  torch::manual_seed(3);
  const at::Tensor data = torch::randn({96, 1, 8, 8});
  calq::deploy::NpyCalibration source(npy("calib96.npy", data), 16);
  const std::string out = temp_path("workflow_auto.onnx");
  int64_t read = 0;
  const auto report = calq::analysis::auto_quantize_onnx(
      kModels + "workflow_op13.onnx", source, out,
      calq::deploy::QuantizeOptions().on_batch([&read](int64_t n) { read = n; }));
  EXPECT_EQ(read, 96);
  // 6 batches, every 4th held out: batch 3 (the 6 * 0.25 = 1.5 rounds down), 5 calibrated on.
  EXPECT_EQ(report.held_out_batches, 1);
  EXPECT_EQ(report.held_out_samples, 16);
  EXPECT_EQ(report.quantize.batches, 5);
  EXPECT_EQ(report.quantize.samples, 80);
  int chosen = 0;
  double best_single_agreement = 0.0;
  for (const auto& c : report.search.candidates) {
    chosen += c.chosen ? 1 : 0;
    if (c.name.find('+') == std::string::npos && c.name != "per-layer") {
      best_single_agreement = std::max(best_single_agreement, c.held_out.top1_agreement);
    }
  }
  EXPECT_EQ(chosen, 1);
  EXPECT_GE(report.search.held_out.top1_agreement, best_single_agreement)
      << "never below the best single observer on the held-out batches";
  // The ORT target accepts uint8: the ReLU outputs get unsigned grids.
  EXPECT_NE(report.search.recipe.to_json().dump().find("\"unsigned\":true"), std::string::npos)
      << report.search.recipe.to_json().dump(2);
  EXPECT_EQ(report.quantize.float_outputs.size(), 1u) << "the logits stay float";
  EXPECT_GT(report.quantize.export_report.integer_weight_layers, 2);
  EXPECT_TRUE(calq::onnx::import(out).qdq);
  EXPECT_NE(report.str(calq::deploy::ort_cpu_profile()).find("held out 16 samples (1 batches)"),
            std::string::npos)
      << report.str(calq::deploy::ort_cpu_profile());
  expect_file_computes_the_choice(report, out, data.slice(0, 64, 96));
}

TEST(AutoQuantizeOnnx, SeparateHeldOutDataAndSampleCap) {
  torch::manual_seed(4);
  TensorSource calibration(torch::randn({100, 1, 8, 8}), 16);
  TensorSource held_out(torch::randn({40, 1, 8, 8}), 16);
  const auto report = calq::analysis::auto_quantize_onnx(
      kModels + "workflow_op13.onnx", calibration, temp_path("capped.onnx"),
      calq::deploy::QuantizeOptions().exclude({"/conv2/Conv"}),
      AutoQuantizeOptions().max_samples(50).search(AutoOptions().per_layer(false)), &held_out);
  EXPECT_EQ(report.quantize.samples, 50) << "16 + 16 + 16 + 2: the last batch cut at the cap";
  EXPECT_EQ(report.quantize.batches, 4);
  EXPECT_EQ(report.held_out_samples, 40) << "every held-out sample (under the cap)";
  EXPECT_EQ(report.held_out_batches, 3);
  EXPECT_EQ(report.quantize.excluded.size(), 1u);
  for (const auto& c : report.search.candidates) {
    EXPECT_EQ(c.name.find("per-layer"), std::string::npos) << "per_layer(false)";
  }
}

// A model from outside the zoo with ReLU6 and depthwise convolutions (torchvision's
// MobileNetV2 at width 0.5), with every step of the search: CLE (ReLU6 -> ReLU before
// prepare), bias correction and a target drop promoting to int16.
TEST(AutoQuantizeOnnx, MobileNetWithEqualizationBiasCorrectionAndATargetDrop) {
  torch::manual_seed(5);
  const at::Tensor data = torch::randn({48, 3, 32, 32});
  TensorSource calibration(data, 8);
  const std::string out = temp_path("mnv2_auto.onnx");
  AutoOptions search;
  search.choices({ObserverChoice{"min_max"}, ObserverChoice{"percentile", {{"percentile", 99.99}}}})
      .per_layer(false)
      .equalization(true)
      .equalization_options(
          calq::analysis::EqualizationOptions().relu6(calq::analysis::Relu6Policy::to_relu))
      .bias_correction(true)
      .target_drop(0.0);
  const auto report = calq::analysis::auto_quantize_onnx(
      kModels + "mobilenet_v2_op11.onnx", calibration, temp_path("mnv2_auto.onnx"), {},
      AutoQuantizeOptions().search(search).held_out_fraction(1.0 / 3.0));
  EXPECT_EQ(report.held_out_batches, 2) << "batches 2 and 5 of 6";
  bool tried_cle = false, tried_bc = false;
  for (const auto& c : report.search.candidates) {
    tried_cle |= c.name.find("cle") != std::string::npos;
    tried_bc |= c.name.find("bias_correction") != std::string::npos;
  }
  EXPECT_TRUE(tried_cle && tried_bc);
  EXPECT_TRUE(report.search.target_met) << report.str(calq::deploy::ort_cpu_profile());
  expect_file_computes_the_choice(report, out, data.slice(0, 32, 48));
}

// Cross-layer equalization of an imported graph: its pairs come from a trace of the graph, in
// which the importer's float functions (the Flatten between the last convolution and the
// classifier) are calls like any module. Until they were, tracing threw on the classifier.
TEST(EqualizeImportedGraph, PairsThroughTheGraphsFlattenAndTheSameFunction) {
  for (const auto policy :
       {calq::analysis::Relu6Policy::keep, calq::analysis::Relu6Policy::to_relu}) {
    calq::onnx::ImportedModel m = calq::onnx::import(kModels + "mobilenet_v2_op11.onnx");
    calq::fuse(*m.graph);
    calq::graph::Graph g = m.graph;
    const calq::analysis::Forward forward = [g](const at::Tensor& x) mutable {
      return g->forward(x);
    };
    torch::manual_seed(6);
    const at::Tensor x = torch::randn({8, 3, 32, 32}) * 0.5;
    torch::NoGradGuard no_grad;
    const at::Tensor before = forward(x);
    const auto report = calq::analysis::equalize(
        *m.graph, forward, x.slice(0, 0, 1), calq::analysis::EqualizationOptions().relu6(policy));
    ASSERT_FALSE(report.pairs.empty()) << report.str();
    bool through_flatten = false;
    for (const auto& p : report.pairs) through_flatten |= p.find("Flatten") != std::string::npos;
    if (policy == calq::analysis::Relu6Policy::keep) {
      // Every pair is exact: the float function is unchanged.
      EXPECT_FALSE(through_flatten) << "the last convolution closes with ReLU6: kept, not paired";
      const at::Tensor after = forward(x);
      EXPECT_LT(((after - before).abs().max() / before.abs().max()).item<double>(), 1e-4)
          << report.str();
    } else {
      EXPECT_TRUE(through_flatten) << report.str();
      EXPECT_FALSE(report.relu6_replaced.empty());
    }
  }
}

// The analysis (calq analyze, auto's per-point search and promotions) sees every quantization
// point an imported graph runs, including the float functions whose output is quantized
// (the gate's Sigmoid, the HardSwish), which the calls it records used to leave out.
TEST(AnalysisPointsOfImportedGraph, IncludeQuantizedFloatFunctions) {
  calq::onnx::ImportedModel m =
      calq::deploy::import_for_quantization(kModels + "workflow_op13.onnx");
  calq::prepare_qat(*m.graph, calq::get_default_qconfig());
  calq::graph::Graph g = m.graph;
  const auto points = calq::analysis::quantization_points(
      *m.graph, [g](const at::Tensor& x) mutable { return g->forward(x); },
      torch::randn({1, 1, 8, 8}));
  std::vector<std::string> types;
  for (const auto& p : points) types.push_back(p.type);
  const auto has = [&types](const std::string& t) {
    return std::find(types.begin(), types.end(), t) != types.end();
  };
  std::string listed;
  for (const auto& t : types) listed += t + " ";
  EXPECT_TRUE(has("HardSwish")) << listed;
  EXPECT_TRUE(has("Sigmoid")) << listed;
  EXPECT_TRUE(has("Conv2d") || has("ConvReLU2d")) << listed;
}

TEST(AutoQuantizeOnnx, Errors) {
  auto expect_error = [](const std::function<void()>& f, const std::string& part) {
    try {
      f();
      ADD_FAILURE() << "no error; expected one containing '" << part << "'";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  const std::string model = kModels + "workflow_op13.onnx";
  expect_error(
      [&] {
        TensorSource one(torch::randn({8, 1, 8, 8}), 16);
        calq::analysis::auto_quantize_onnx(model, one, temp_path("e.onnx"));
      },
      "needs at least two");
  expect_error(
      [&] {
        TensorSource some(torch::randn({32, 1, 8, 8}), 16);
        TensorSource none(torch::randn({0, 1, 8, 8}), 16);
        calq::analysis::auto_quantize_onnx(model, some, temp_path("e.onnx"), {}, {}, &none);
      },
      "held-out source gave no batch");
  expect_error(
      [&] {
        TensorSource wrong(torch::randn({32, 3, 8, 8}), 16);
        calq::analysis::auto_quantize_onnx(model, wrong, temp_path("e.onnx"));
      },
      "but the model expects");
  expect_error(
      [&] {
        TensorSource some(torch::randn({32, 1, 8, 8}), 16);
        calq::analysis::auto_quantize_onnx(kModels + "ort_style_qdq.onnx", some,
                                           temp_path("e.onnx"));
      },
      "already a QDQ model");
  expect_error(
      [&] {
        TensorSource some(torch::randn({32, 1, 8, 8}), 16);
        calq::analysis::auto_quantize_onnx(model, some, temp_path("e.onnx"), {},
                                           AutoQuantizeOptions().held_out_fraction(1.0));
      },
      "held_out_fraction must be in (0, 1)");
}

}  // namespace
