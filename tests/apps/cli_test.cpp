// The calq command line end to end on a small subset of Fashion-MNIST, and its errors.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <torch/torch.h>

#include "apps/cli_runner.h"
#include "calq/data/arrays.h"
#include "calq/data/fashion_mnist.h"
#include "calq/deploy/onnxruntime.h"
#include "calq/util/npy.h"

namespace {

using Result = calq_test::CliResult;
using calq_test::run_cli;

using calq_test::dataset_installed;

std::string temp_dir(const std::string& name) {
  return calq_test::fresh_temp_dir("calq_cli_test_" + name);
}

// Small but real: a few hundred images, one epoch. Quantized accuracy must stay near float.
constexpr const char* kSmallRun =
    "--limit-train 768 --limit-test 256 --epochs 1 --qat-epochs 1 --calib-batches 2 "
    "--batch-size 64 --val-size 256 --threads 2 --quiet";
// With so little training the network is far from converged; 8-bit quantization should still
// cost only a few points on 256 test images (1 image = 0.39 points).
constexpr double kMaxDropPoints = 6.0;

TEST(Cli, RunWritesResultsReportAndResumes) {
  if (!dataset_installed()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const std::string out = temp_dir("run");
  Result r = run_cli(std::string("run ") + kSmallRun + " --out " + out +
                     " --observers min_max,percentile,kl --methods fake_quant,lsq,pact");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream in(out + "/results.json");
  ASSERT_TRUE(in.good());
  const nlohmann::json results = nlohmann::json::parse(in);
  const double float_top1 = results.at("float").at("val_top1").get<double>();
  EXPECT_GT(float_top1, 40.0);
  EXPECT_GT(results.at("float").at("test_top1").get<double>(), 40.0);
  // Choices on the validation split held out from training; the test set is not the choice.
  EXPECT_EQ(results.at("data").at("validation").get<int64_t>(), 256);
  double best_val = -1.0;
  for (const char* observer : {"min_max", "percentile", "kl"}) {
    const auto& entry = results.at("calibration").at(observer);
    EXPECT_GT(entry.at("seconds").get<double>(), 0.0);
    EXPECT_GT(entry.at("val_top1").get<double>(), float_top1 - kMaxDropPoints) << observer;
    EXPECT_FALSE(entry.contains("test_top1")) << "only the chosen calibration is tested";
    best_val = std::max(best_val, entry.at("val_top1").get<double>());
  }
  const std::string chosen = results.at("best_observer");
  EXPECT_EQ(results.at("calibration").at(chosen).at("val_top1").get<double>(), best_val);
  const auto& vs_float = results.at("chosen_calibration").at("vs_float");
  EXPECT_LE(vs_float.at("ci_low_pt").get<double>(), vs_float.at("diff_pt").get<double>());
  EXPECT_GE(vs_float.at("ci_high_pt").get<double>(), vs_float.at("diff_pt").get<double>());
  for (const char* method : {"fake_quant", "lsq", "pact"}) {
    const auto& entry = results.at("qat").at(method);
    EXPECT_GT(entry.at("seconds_per_epoch").get<double>(), 0.0);
    EXPECT_GT(entry.at("val_top1").get<double>(), float_top1 - kMaxDropPoints) << method;
    EXPECT_TRUE(entry.at("vs_calibration").contains("p_value")) << method;
  }
  EXPECT_EQ(results.at("config").at("model"), "cnn");
  EXPECT_TRUE(std::filesystem::exists(out + "/report.md"));
  EXPECT_TRUE(std::filesystem::exists(out + "/accuracy.svg"));
  EXPECT_TRUE(std::filesystem::exists(out + "/histograms/conv1.svg"));
  EXPECT_NE(r.output.find("qat"), std::string::npos);

  // --resume with the same settings reuses every finished step.
  Result again =
      run_cli(std::string("run ") + kSmallRun + " --out " + out +
              " --observers min_max,percentile,kl --methods fake_quant,lsq,pact --resume");
  ASSERT_EQ(again.exit_code, 0) << again.output;
  std::ifstream in2(out + "/results.json");
  const nlohmann::json resumed = nlohmann::json::parse(in2);
  EXPECT_EQ(resumed.at("calibration"), results.at("calibration"));
  EXPECT_EQ(resumed.at("qat"), results.at("qat"));

  // Deployment: in ONNX Runtime's integer arithmetic the simulation computes what the runtime
  // computes, bit for bit; `calq evaluate --arithmetic ort-cpu` reports the deployed top-1.
  ASSERT_TRUE(results.contains("deploy"));
  const std::string deployed_calibration = "calibrated_" + chosen;
  for (const auto& item : results.at("deploy").items()) {
    const auto& d = item.value();
    ASSERT_FALSE(d.contains("export_error")) << item.key() << ": " << d.dump();
    EXPECT_EQ(d.at("int_argmax_agree").get<double>(), 1.0) << item.key() << ": " << d.dump();
    EXPECT_TRUE(d.at("float_sim").contains("top1")) << item.key();
    if (d.contains("ort_error")) continue;  // ONNX Runtime not installed
    EXPECT_EQ(d.at("sim_top1").get<double>(), d.at("ort_top1").get<double>()) << d.dump();
    EXPECT_EQ(d.at("argmax_agree").get<double>(), 1.0) << item.key() << ": " << d.dump();
    EXPECT_EQ(d.at("max_lsb_diff").get<double>(), 0.0) << item.key() << ": " << d.dump();
    EXPECT_TRUE(d.at("float_sim").contains("argmax_agree")) << item.key();
  }
  {
    const double deployed_top1 =
        results.at("deploy").at(deployed_calibration).at("sim_top1").get<double>();
    Result exact = run_cli("evaluate --quiet --limit-test 256 --arithmetic ort-cpu --checkpoint " +
                           out + "/calibrated/" + chosen + ".pt");
    ASSERT_EQ(exact.exit_code, 0) << exact.output;
    std::ostringstream expected;
    expected << "test top-1 " << deployed_top1 << "%";
    EXPECT_NE(exact.output.find(expected.str()), std::string::npos)
        << exact.output << " (expected " << expected.str() << ")";
    Result bad = run_cli("evaluate --quiet --arithmetic int8 --checkpoint " + out + "/calibrated/" +
                         chosen + ".pt");
    EXPECT_EQ(bad.exit_code, 1);
    EXPECT_NE(bad.output.find("valid: float, ort-cpu"), std::string::npos) << bad.output;
  }

  // The single-step subcommands on the run's files.
  Result evaluated =
      run_cli("evaluate --quiet --limit-test 256 --checkpoint " + out + "/qat/lsq.pt");
  ASSERT_EQ(evaluated.exit_code, 0) << evaluated.output;
  EXPECT_NE(evaluated.output.find("quantized"), std::string::npos);
  Result exported =
      run_cli("export --checkpoint " + out + "/calibrated/kl.pt --json " + out + "/kl_scales.json");
  ASSERT_EQ(exported.exit_code, 0) << exported.output;
  std::ifstream scales_in(out + "/kl_scales.json");
  const nlohmann::json scales = nlohmann::json::parse(scales_in);
  EXPECT_GT(scales.at("conv1.output_fake_quant").at("scale").at(0).get<double>(), 0.0);
  EXPECT_EQ(scales.at("conv1.weight_fake_quant").at("scale").size(), 16u);
}

TEST(Cli, CheckListsQuantizationPoints) {
  Result r = run_cli("check --model resnet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("layer2.shortcut"), std::string::npos);
  EXPECT_NE(r.output.find("Add"), std::string::npos);
}

TEST(Cli, ClearErrors) {
  Result missing = run_cli("run --quiet --data-dir /nonexistent/calq --out " + temp_dir("missing"));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("dataset-fashion-mnist"), std::string::npos) << missing.output;

  Result bad_flag = run_cli("run --no-such-flag");
  EXPECT_NE(bad_flag.exit_code, 0);
  EXPECT_NE(bad_flag.output.find("no-such-flag"), std::string::npos) << bad_flag.output;

  Result bad_model = run_cli("check --model vgg");
  EXPECT_EQ(bad_model.exit_code, 1);
  EXPECT_NE(bad_model.output.find("valid models: cnn, resnet, mobilenet"), std::string::npos)
      << bad_model.output;

  Result bad_bits = run_cli("check --bits 8/3");
  EXPECT_EQ(bad_bits.exit_code, 1);
  EXPECT_NE(bad_bits.output.find("valid: 4, 8, 16"), std::string::npos) << bad_bits.output;

  if (dataset_installed()) {
    Result bad_observer = run_cli(std::string("run ") + kSmallRun + " --observers entropy --out " +
                                  temp_dir("observer"));
    EXPECT_EQ(bad_observer.exit_code, 1);
    EXPECT_NE(bad_observer.output.find("percentile"), std::string::npos) << bad_observer.output;
  }

  const std::string config = temp_dir("config") + ".json";
  std::ofstream(config) << R"({"model": "cnn", "epocs": 3})";
  Result bad_config = run_cli("check --config " + config);
  EXPECT_EQ(bad_config.exit_code, 1);
  EXPECT_NE(bad_config.output.find("unknown setting 'epocs'"), std::string::npos)
      << bad_config.output;
}

}  // namespace

// ---- A model no one here wrote, with the user's own (unlabelled) data ----

const std::string kModels = std::string(CALQ_TEST_MODELS) + "/";

// Random inputs for the 1x8x8 workflow model, as a user's .npz without labels.
std::string write_unlabelled_npz(const std::string& dir, int64_t n, std::vector<int64_t> shape) {
  std::filesystem::create_directories(dir);
  shape.insert(shape.begin(), n);
  torch::manual_seed(0);
  const std::string path = dir + "/x.npz";
  calq::util::write_npz(path, {{"x", torch::randn(shape)}});
  return path;
}

TEST(Cli, RunsAnImportedModelOnUnlabelledDataByDistillation) {
  const std::string out = temp_dir("onnx_run");
  const std::string data = write_unlabelled_npz(out + "_data", 640, {1, 8, 8});
  Result r = run_cli("run --model " + kModels + "workflow_op13.onnx --data " + data +
                     " --val-size 128 --observers min_max,percentile --methods fake_quant,lsq "
                     "--qat-epochs 1 --calib-batches 2 --batch-size 64 --threads 1 --quiet --out " +
                     out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream in(out + "/results.json");
  const nlohmann::json results = nlohmann::json::parse(in);
  // No labels: every score is top-1 agreement with the float model, which the float model
  // has with itself; QAT distills from it. The imported model is not trained again.
  EXPECT_FALSE(results.at("data").at("labels").get<bool>());
  EXPECT_EQ(results.at("data").at("train").get<int64_t>(), 512);
  EXPECT_EQ(results.at("float").at("val_top1").get<double>(), 100.0);
  EXPECT_TRUE(results.at("float").at("reused_checkpoint").get<bool>());
  for (const char* observer : {"min_max", "percentile"}) {
    // 8 bits on a 3-class head: at most a few of 128 examples may flip.
    EXPECT_GE(results.at("calibration").at(observer).at("val_top1").get<double>(), 95.0)
        << observer;
  }
  for (const char* method : {"fake_quant", "lsq"}) {
    const auto& entry = results.at("qat").at(method);
    EXPECT_EQ(entry.at("loss"), "distillation") << method;
    EXPECT_GE(entry.at("val_top1").get<double>(), 95.0) << method;
  }
  EXPECT_EQ(results.at("config").at("model").get<std::string>().find("workflow_op13.onnx") ==
                std::string::npos,
            false);
  // Deployment: the graph's QDQ export runs in ONNX Runtime as simulated.
  ASSERT_TRUE(results.contains("deploy"));
  for (const auto& item : results.at("deploy").items()) {
    const auto& d = item.value();
    ASSERT_FALSE(d.contains("export_error")) << item.key() << ": " << d.dump();
    EXPECT_TRUE(d.contains("sim_top1")) << item.key();
    // The integer engine runs the imported graph node by node.
    EXPECT_FALSE(d.contains("int_error")) << item.key() << ": " << d.dump();
    EXPECT_GE(d.at("int_argmax_agree").get<double>(), 0.95) << item.key();
    if (d.contains("ort_error")) continue;  // ONNX Runtime not installed
    EXPECT_GE(d.at("argmax_agree").get<double>(), 0.95) << item.key();
    EXPECT_EQ(d.at("ort_vs_int_max_abs").get<double>(), 0.0) << item.key() << ": " << d.dump();
    // The simulation in ONNX Runtime's integer arithmetic: the runtime's outputs exactly.
    EXPECT_EQ(d.at("argmax_agree").get<double>(), 1.0) << item.key() << ": " << d.dump();
    EXPECT_EQ(d.at("max_lsb_diff").get<double>(), 0.0) << item.key() << ": " << d.dump();
  }
  EXPECT_TRUE(std::filesystem::exists(out + "/report.md"));

  // `calq infer` on the calibrated imported model: the integer engine computes what ONNX
  // Runtime computes from the QDQ export, value for value.
  std::string why;
  if (!calq::deploy::onnxruntime_available(&why)) return;
  const std::string input = out + "_data/x32.npy";
  calq::util::write_npy(input, torch::randn({32, 1, 8, 8}));
  std::map<std::string, at::Tensor> outputs;
  for (const char* engine : {"int", "ort"}) {
    const std::string y = out + "/y_" + engine + ".npz";
    Result infer = run_cli("infer --checkpoint " + out + "/calibrated/percentile.pt --input " +
                           input + " --engine " + engine + " --output " + y);
    ASSERT_EQ(infer.exit_code, 0) << infer.output;
    const auto archive = calq::data::NpzArchive::open(y);
    outputs[engine] = archive.array(archive.names().at(0)).read_all();
  }
  EXPECT_TRUE(outputs["int"].equal(outputs["ort"]))
      << (outputs["int"] - outputs["ort"]).abs().max().item<double>();
}

// auto on an imported model with data without labels: candidates are scored by top-1
// agreement with the float model, and the auto row is at least min_max's.
TEST(Cli, AutoCalibratesAnImportedModelWithoutLabels) {
  const std::string out = temp_dir("onnx_auto");
  const std::string data = write_unlabelled_npz(out + "_data", 384, {1, 8, 8});
  Result r = run_cli("run --model " + kModels + "workflow_op13.onnx --data " + data +
                     " --val-size 128 --observers min_max,auto --methods none --bits 4/4 "
                     "--calib-batches 2 --batch-size 64 --threads 1 --quiet --out " +
                     out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream in(out + "/results.json");
  const nlohmann::json results = nlohmann::json::parse(in);
  EXPECT_FALSE(results.at("data").at("labels").get<bool>());
  const auto& calibration = results.at("calibration");
  ASSERT_TRUE(calibration.contains("auto")) << calibration.dump();
  for (const auto& candidate : calibration.at("auto").at("auto").at("candidates")) {
    EXPECT_TRUE(candidate.contains("name")) << candidate.dump();
  }
  EXPECT_GE(calibration.at("auto").at("val_top1").get<double>(),
            calibration.at("min_max").at("val_top1").get<double>());
}

TEST(Cli, InferWritesEveryOutputOfAnImportedModelByName) {
  const std::string out = temp_dir("infer");
  std::filesystem::create_directories(out);
  // The segmentation model has two outputs; ONNX Runtime's are the reference.
  Result r = run_cli("infer --model " + kModels + "fcn_resnet18_op17.onnx --input " + kModels +
                     "fcn_resnet18_op17.input.npy --output " + out + "/y.npz");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto archive = calq::data::NpzArchive::open(out + "/y.npz");
  ASSERT_EQ(archive.names().size(), 2u);
  const at::Tensor first = archive.array(archive.names()[0]).read_all();
  const at::Tensor reference =
      calq::data::NpyArray::open(kModels + "fcn_resnet18_op17.ort0.npy").read_all();
  ASSERT_EQ(first.sizes(), reference.sizes());
  EXPECT_LE((first - reference).abs().max().item<double>(),
            1e-4 * reference.abs().max().item<double>());
  // .npy: the first output only.
  Result single = run_cli("infer --model " + kModels + "fcn_resnet18_op17.onnx --input " + kModels +
                          "fcn_resnet18_op17.input.npy --output " + out + "/y.npy");
  ASSERT_EQ(single.exit_code, 0) << single.output;
  EXPECT_TRUE(calq::data::NpyArray::open(out + "/y.npy").read_all().equal(first));
}

TEST(Cli, DataThatDoesNotFitTheModelNamesBothShapes) {
  const std::string out = temp_dir("misfit");
  const std::string data = write_unlabelled_npz(out + "_data", 64, {1, 7, 8});
  Result r = run_cli("run --model " + kModels + "workflow_op13.onnx --data " + data +
                     " --val-size 16 --quiet --out " + out);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("[1, 7, 8]"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[N, 1, 8, 8]"), std::string::npos) << r.output;
  // The zoo takes Fashion-MNIST's [1, 28, 28].
  Result zoo = run_cli("run --model cnn --data " + data + " --val-size 16 --quiet --out " + out);
  EXPECT_NE(zoo.exit_code, 0);
  EXPECT_NE(zoo.output.find("[N, 1, 28, 28]"), std::string::npos) << zoo.output;
}
