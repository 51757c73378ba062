// calq::analysis::analyze on a hand-made model: a point with a known SQNR, a deliberately bad
// layer that the sensitivity ranking must put first, the pass count, and that the analysis
// changes no scale.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "calq/analysis/analyze.h"
#include "calq/analysis/report.h"
#include "calq/nn.h"
#include "calq/workflow.h"

namespace {

struct TinyNetImpl : torch::nn::Module {
  calq::nn::QuantStub quant{
      register_module("quant", calq::nn::QuantStub(calq::nn::QuantStubOptions().fixed_scale(1.0)))};
  calq::nn::LinearReLU fc1{register_module("fc1", calq::nn::LinearReLU(8, 16))};
  calq::nn::LinearReLU fc2{register_module("fc2", calq::nn::LinearReLU(16, 16))};
  calq::nn::Linear fc3{register_module("fc3", calq::nn::Linear(16, 4))};
  at::Tensor forward(const at::Tensor& x) { return fc3(fc2(fc1(quant(x)))); }
};
TORCH_MODULE(TinyNet);

// Integers plus a quarter: the input quantizer (fixed scale 1, int8) is off by exactly 1/4
// everywhere.
std::vector<at::Tensor> quarter_batches() {
  torch::manual_seed(11);
  std::vector<at::Tensor> batches;
  for (int b = 0; b < 4; ++b) {
    batches.push_back(torch::randint(-20, 21, {32, 8}).to(torch::kFloat) + 0.25f);
  }
  return batches;
}

// fc2's output gets a coarse 4-bit grid with a fixed scale far above its range: the bad layer.
TinyNet prepared_model(const std::vector<at::Tensor>& batches) {
  torch::manual_seed(5);
  TinyNet model;
  calq::QConfigOverrides overrides;
  calq::QConfig output_float = calq::get_default_qconfig();
  output_float.activation = c10::nullopt;
  overrides.by_name["fc3"] = output_float;
  overrides.by_name["fc2"] =
      calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), "fixed_scale",
                                "min_max", {{"dtype", "qint4"}, {"scale", 8.0}});
  calq::prepare_qat(*model, calq::get_default_qconfig(), overrides);
  calq::calibrate(model, batches);
  return model;
}

std::vector<std::pair<at::Tensor, at::Tensor>> all_qparams(torch::nn::Module& model) {
  std::vector<std::pair<at::Tensor, at::Tensor>> out;
  for (const auto& item : model.named_modules()) {
    if (auto* fq = dynamic_cast<calq::FakeQuantizeImpl*>(item.value().get())) {
      out.push_back(fq->qparams());
    }
  }
  return out;
}

const calq::analysis::PointAnalysis& point(const calq::analysis::Analysis& a,
                                           const std::string& name) {
  for (const auto& p : a.points) {
    if (p.name == name) return p;
  }
  ADD_FAILURE() << "no point " << name;
  return a.points.front();
}

TEST(Analyze, KnownSqnrBadLayerFirstAndPassCount) {
  const auto batches = quarter_batches();
  TinyNet model = prepared_model(batches);
  const auto before = all_qparams(*model);
  const auto a = calq::analysis::analyze(
      *model, [&](const at::Tensor& x) { return model->forward(x); }, batches);

  ASSERT_EQ(a.points.size(), 4u);
  EXPECT_EQ(a.points[0].name, "quant");  // execution order
  EXPECT_EQ(a.points[3].name, "fc3");
  EXPECT_EQ(a.passes, 2 * 4 + 2);
  EXPECT_EQ(a.batches, 4);
  EXPECT_EQ(a.samples, 4 * 32);

  // The input point: error exactly 1/4 per value.
  double signal = 0.0;
  int64_t count = 0;
  for (const auto& b : batches) {
    signal += (b.to(torch::kDouble) * b.to(torch::kDouble)).sum().item<double>();
    count += b.numel();
  }
  const double expected = 10.0 * std::log10(signal / count / 0.0625);
  const auto& quant = point(a, "quant");
  EXPECT_NEAR(quant.own.sqnr_db, expected, 1e-6);
  EXPECT_NEAR(quant.accumulated.sqnr_db, expected, 1e-6);  // nothing upstream
  EXPECT_NEAR(quant.activation_only.sqnr_db, expected, 1e-6);
  EXPECT_DOUBLE_EQ(quant.clipped_pct, 0.0);
  EXPECT_EQ(quant.weight.count, 0);

  // The bad layer ranks first, and keeping it float recovers the most.
  const auto ranking = a.ranking();
  ASSERT_EQ(ranking.size(), 4u);
  EXPECT_EQ(a.points[ranking[0]].name, "fc2");
  const auto& fc2 = point(a, "fc2");
  EXPECT_EQ(fc2.sensitivity_rank, 1);
  for (const auto& p : a.points) {
    if (p.name != "fc2") EXPECT_LT(fc2.only_float.kl, p.only_float.kl) << p.name;
  }
  // Its damage is in the activation, not in its 8-bit weight.
  EXPECT_LT(fc2.activation_only.sqnr_db, fc2.weight_only.sqnr_db);
  EXPECT_GT(fc2.weight.sqnr_db, 30.0);
  // A weight-only point (float output): its own error is the weight's.
  const auto& fc3 = point(a, "fc3");
  EXPECT_TRUE(fc3.output_spec.empty());
  EXPECT_NEAR(fc3.weight_only.sqnr_db, fc3.own.sqnr_db, 1e-12);
  EXPECT_EQ(fc3.activation_only.count, 0);

  // No scale moved, and the model is left quantized.
  const auto after = all_qparams(*model);
  ASSERT_EQ(before.size(), after.size());
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_TRUE(torch::equal(before[i].first, after[i].first)) << i;
  }
  for (const auto& item : model->named_modules()) {
    if (auto* fq = dynamic_cast<calq::FakeQuantizeImpl*>(item.value().get())) {
      EXPECT_EQ(fq->state(), calq::FakeQuantState::VALIDATION) << item.key();
    }
  }

  const nlohmann::json j = a.to_json();
  ASSERT_EQ(j.at("points").size(), 4u);
  for (const char* key : {"name", "type", "sqnr_db", "cosine", "max_abs_err", "clipped_pct",
                          "sensitivity_top1", "sensitivity_kl", "left_float_kl"}) {
    EXPECT_TRUE(j["points"][2].contains(key)) << key;
  }
  EXPECT_EQ(j.at("ranking")[0], "fc2");
  EXPECT_EQ(j.at("cost").at("passes"), 10);
}

TEST(Analyze, WithoutSensitivityTwoPasses) {
  const auto batches = quarter_batches();
  TinyNet model = prepared_model(batches);
  const auto a = calq::analysis::analyze(
      *model, [&](const at::Tensor& x) { return model->forward(x); }, batches,
      calq::analysis::AnalyzeOptions().sensitivity(false).histograms(false));
  EXPECT_EQ(a.passes, 2);
  EXPECT_TRUE(a.ranking().empty());
  EXPECT_EQ(point(a, "fc1").own.count, 0);
  EXPECT_GT(point(a, "fc1").accumulated.count, 0);
}

TEST(Analyze, ReportFilesAndTable) {
  const auto batches = quarter_batches();
  TinyNet model = prepared_model(batches);
  const auto a = calq::analysis::analyze(
      *model, [&](const at::Tensor& x) { return model->forward(x); }, batches);
  const std::string table = calq::analysis::format_analysis_table(a);
  EXPECT_NE(table.find("fc2"), std::string::npos);
  EXPECT_NE(table.find("10 passes"), std::string::npos) << table;
  const auto dir = std::filesystem::temp_directory_path() / "calq_analyze_report_test";
  std::filesystem::remove_all(dir);
  calq::analysis::write_analysis_report(a, dir.string(), "tiny");
  for (const char* file : {"report.md", "sqnr.svg", "sensitivity.svg", "histograms/fc1.svg"}) {
    EXPECT_TRUE(std::filesystem::exists(dir / file)) << file;
  }
  std::ifstream in(dir / "report.md");
  const std::string md((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(md.find("| 1 | `fc2` |"), std::string::npos) << md;
}

TEST(Analyze, Errors) {
  TinyNet model;
  calq::prepare_qat(*model, calq::get_default_qconfig());
  const std::vector<at::Tensor> batches = {torch::randn({4, 8})};
  try {
    calq::analysis::analyze(
        *model, [&](const at::Tensor& x) { return model->forward(x); }, batches);
    FAIL() << "an uncalibrated model was analysed";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("calibrate the model first"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(
      calq::analysis::analyze(*model, [&](const at::Tensor& x) { return model->forward(x); }, {}),
      c10::Error);
}

}  // namespace
