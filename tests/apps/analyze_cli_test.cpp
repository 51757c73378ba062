// `calq analyze`, `calibrate --observer auto` and the recipe file end to end on a small subset
// of Fashion-MNIST.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "apps/cli_runner.h"
#include "calq/data/fashion_mnist.h"

namespace {

using Result = calq_test::CliResult;
using calq_test::run_cli;

using calq_test::dataset_installed;

std::string temp_dir(const std::string& name) {
  return calq_test::fresh_temp_dir("calq_analyze_cli_test_" + name);
}

constexpr const char* kSmall =
    "--limit-train 768 --limit-test 256 --epochs 1 --qat-epochs 1 --calib-batches 2 "
    "--batch-size 64 --val-size 256 --threads 2 --quiet";

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return nlohmann::json::parse(in);
}

double validation_top1(const std::string& output) {
  std::smatch m;
  const std::regex pattern("validation top-1 ([0-9.]+)%");
  EXPECT_TRUE(std::regex_search(output, m, pattern)) << output;
  return m.size() > 1 ? std::stod(m[1]) : -1.0;
}

TEST(AnalyzeCli, AnalyzeWritesJsonAndReport) {
  if (!dataset_installed()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const std::string out = temp_dir("analyze");
  Result r = run_cli(std::string("calibrate --observer kl --bits 4/4 ") + kSmall + " --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_cli(std::string("analyze --checkpoint ") + out + "/calibrated/kl.pt --bits 4/4 " +
              kSmall + " --samples 128 --out " + out + " --json " + out + "/a.json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("most sensitive first"), std::string::npos) << r.output;
  const nlohmann::json j = read_json(out + "/a.json");
  const auto& points = j.at("points");
  // cnn: quant, conv1, conv2, fc1 (output quantized), fc2 (weight only).
  ASSERT_EQ(points.size(), 5u) << j.dump(1);
  EXPECT_EQ(points[0].at("name"), "quant");
  EXPECT_EQ(j.at("cost").at("passes"), 2 * 5 + 2);
  EXPECT_EQ(j.at("cost").at("samples"), 128);
  EXPECT_EQ(j.at("ranking").size(), 5u);
  for (const auto& p : points) {
    for (const char* key : {"name", "type", "sqnr_db", "cosine", "max_abs_err", "clipped_pct",
                            "sensitivity_top1", "sensitivity_rank"}) {
      EXPECT_TRUE(p.contains(key)) << key << " in " << p.dump();
    }
  }
  for (const char* file : {"report.md", "sqnr.svg", "sensitivity.svg", "histograms/conv1.svg"}) {
    EXPECT_TRUE(std::filesystem::exists(out + "/analysis/" + file)) << file;
  }
  // A float checkpoint has nothing to analyse.
  r = run_cli(std::string("analyze --checkpoint ") + out + "/float_cnn.pt " + kSmall + " --out " +
              out);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("is a float model"), std::string::npos) << r.output;
}

TEST(AnalyzeCli, AutoRecipeFileReproducesAndFeedsQat) {
  if (!dataset_installed()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const std::string out = temp_dir("auto");
  Result r = run_cli(std::string("calibrate --observer auto --bits 8/4 --target ort-cpu ") +
                     kSmall + " --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("auto: chose"), std::string::npos) << r.output;
  const double auto_top1 = validation_top1(r.output);
  const std::string recipe = out + "/calibrated/auto.recipe.json";
  const nlohmann::json j = read_json(recipe);
  EXPECT_EQ(j.at("calq_recipe"), 1);
  // Unsigned grids after ReLU under the ort-cpu target.
  EXPECT_EQ(j.at("by_name").at("conv1").at("activation").at("qkwargs").at("unsigned"), true);
  EXPECT_TRUE(j.at("notes").contains("candidates"));

  // The recipe file alone gives the same calibration.
  r = run_cli(std::string("calibrate --qconfig ") + recipe + " --bits 8/4 " + kSmall + " --out " +
              out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_DOUBLE_EQ(validation_top1(r.output), auto_top1);

  // QAT from the auto calibration keeps its grids (load copies, nothing mismatched).
  r = run_cli(std::string("qat --calibrated ") + out +
              "/calibrated/auto.pt --method lsq --bits 8/4 " + "--target ort-cpu " + kSmall +
              " --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find(" 0 mismatched"), std::string::npos) << r.output;
}

// --target-drop 0 at 4/4 cannot be met by observers alone: auto promotes the most sensitive
// points (int16 activations, or float) and says so; the recipe file records the promotions.
TEST(AnalyzeCli, TargetDropPromotesPoints) {
  if (!dataset_installed()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  for (const std::string promotion : {"int16", "float"}) {
    SCOPED_TRACE(promotion);
    const std::string out = temp_dir("target_drop_" + promotion);
    Result r = run_cli("calibrate --observer auto --bits 8/4 --target-drop 0 --promotion " +
                       promotion + " " + kSmall + " --out " + out);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("promoted (most output recovery first): "), std::string::npos)
        << r.output;
    const nlohmann::json j = read_json(out + "/calibrated/auto.recipe.json");
    int promoted = 0;
    for (const auto& item : j.at("by_name").items()) {
      const auto& activation = item.value().at("activation");
      if (promotion == "float" && activation.is_null()) ++promoted;
      if (promotion == "int16" && !activation.is_null() &&
          activation.at("qkwargs").value("dtype", "") == "qint16") {
        ++promoted;
      }
    }
    EXPECT_GT(promoted, 0) << j.dump();
    if (promotion == "int16") {
      // ONNX Runtime has no int16 kernels: the summary states the cost.
      EXPECT_NE(r.output.find("int16 activations run as DequantizeLinear"), std::string::npos)
          << r.output;
    }
    // The recipe file reproduces the promoted calibration.
    const double top1 = validation_top1(r.output);
    r = run_cli("calibrate --qconfig " + out + "/calibrated/auto.recipe.json --bits 8/4 " + kSmall +
                " --out " + out);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_DOUBLE_EQ(validation_top1(r.output), top1);
  }
}

// `calq run --observers min_max,auto`: auto is a row of results.json "calibration" with its
// search, and cannot end below min_max on the validation split (min_max is a candidate).
TEST(AnalyzeCli, RunHasAnAutoRow) {
  if (!dataset_installed()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const std::string out = temp_dir("run_auto");
  Result r = run_cli(std::string("run --observers min_max,auto --methods none --bits 4/4 ") +
                     kSmall + " --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json results = read_json(out + "/results.json");
  const auto& calibration = results.at("calibration");
  ASSERT_TRUE(calibration.contains("auto")) << calibration.dump();
  EXPECT_TRUE(calibration.at("auto").at("auto").contains("candidates"));
  EXPECT_TRUE(std::filesystem::exists(out + "/calibrated/auto.recipe.json"));
  EXPECT_GE(calibration.at("auto").at("val_top1").get<double>(),
            calibration.at("min_max").at("val_top1").get<double>());
}

// --target ort-cpu puts activations after ReLU on unsigned grids; pact trains there with the
// clip [0, alpha] (eq. 7c) from the calibrated threshold, and its export runs as simulated.
TEST(AnalyzeCli, PactTrainsOnUnsignedGrids) {
  if (!dataset_installed()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const std::string out = temp_dir("pact_unsigned");
  Result r = run_cli(std::string("run --target ort-cpu --observers percentile --methods pact ") +
                     kSmall + " --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json results = read_json(out + "/results.json");
  const double calibrated = results.at("calibration").at("percentile").at("val_top1");
  const double pact = results.at("qat").at("pact").at("val_top1");
  EXPECT_GE(pact, calibrated - 5.0);  // one short epoch from the calibration: no collapse
  const auto& deployed = results.at("deploy").at("qat_pact");
  EXPECT_GE(deployed.at("int_argmax_agree").get<double>(), 0.99) << deployed.dump();
  if (!deployed.contains("ort_error")) {
    EXPECT_EQ(deployed.at("ort_vs_int_max_abs").get<double>(), 0.0) << deployed.dump();
  }
}

TEST(AnalyzeCli, RecoveryStepsAlone) {
  if (!dataset_installed()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const std::string out = temp_dir("steps");
  Result r = run_cli(std::string("calibrate --model mobilenet --observer percentile --bits 4/8 "
                                 "--cle --bias-correction ") +
                     kSmall + " --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // MobileNet's pairs all pass through ReLU6: they are equalized only because the blocks were
  // rebuilt with ReLU (--cle-relu6 to_relu, the default), which the saved description records.
  std::smatch pairs;
  ASSERT_TRUE(std::regex_search(r.output, pairs, std::regex("([0-9]+) pairs equalized")))
      << r.output;
  EXPECT_GT(std::stoi(pairs[1]), 0) << r.output;
  EXPECT_NE(r.output.find("bias correction: "), std::string::npos) << r.output;
  const nlohmann::json meta = read_json(out + "/calibrated/percentile.pt.json");
  EXPECT_EQ(meta.at("recipe").at("steps").at("cross_layer_equalization").at("relu6"), "to_relu")
      << meta.dump(1);
  EXPECT_EQ(meta.at("recipe").at("steps").at("bias_correction"), true) << meta.dump(1);
  // The saved model (ReLU instead of ReLU6, corrected biases) loads and evaluates.
  r = run_cli(std::string("evaluate --model mobilenet --checkpoint ") + out +
              "/calibrated/percentile.pt " + kSmall + " --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;

  // Paired against the float model on the same images: both top-1s, the difference (the
  // quantized minus the float one) and its interval.
  r = run_cli(std::string("evaluate --model mobilenet --checkpoint ") + out +
              "/float_mobilenet.pt --versus " + out + "/calibrated/percentile.pt " + kSmall +
              " --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string text = r.output;
  std::vector<double> values;
  const std::regex top1_pattern("test top-1 ([0-9.]+)%");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), top1_pattern);
       it != std::sregex_iterator(); ++it) {
    values.push_back(std::stod((*it)[1]));
  }
  ASSERT_EQ(values.size(), 2u) << text;
  std::smatch diff;
  ASSERT_TRUE(std::regex_search(text, diff, std::regex("on 256 test images: ([-+][0-9.]+) pt")))
      << text;
  EXPECT_NEAR(std::stod(diff[1]), values[1] - values[0], 0.006) << text;
  // Against a float checkpoint: how often the quantized model gives the float model's class.
  // Every image whose correctness changed has another class, so the net change cannot exceed
  // the images that differ.
  std::smatch agree;
  ASSERT_TRUE(std::regex_search(
      text, agree,
      std::regex("float_mobilenet.pt: ([0-9.]+)% \\(([0-9]+) of 256 images differ\\)")))
      << text;
  const int differ = std::stoi(agree[2]);
  EXPECT_NEAR(std::stod(agree[1]), 100.0 * (256 - differ) / 256.0, 1e-3) << text;
  EXPECT_GE(differ, std::lround(std::abs(std::stod(diff[1])) * 256 / 100.0)) << text;
}

}  // namespace
