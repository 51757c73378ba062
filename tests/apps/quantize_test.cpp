// quantize_onnx and `calq quantize`: a float ONNX model and a .npy in, a QDQ model that ONNX
// Runtime runs out; calibration streams its batches; errors name the problem.
#include "calq/deploy/quantize.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <array>
#include <cstdio>
#include <filesystem>

#include "calq/deploy/onnxruntime.h"
#include "calq/onnx/import.h"
#include "calq/util/npy.h"
#ifdef CALQ_CLI_PATH
#include "apps/cli_runner.h"
#endif

namespace {

const std::string kModels = std::string(CALQ_TEST_MODELS) + "/";
const std::string kModel = kModels + "workflow_op13.onnx";  // input [batch, 1, 8, 8]

std::string temp_path(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / "calq_quantize_test";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

std::string calibration_file(int64_t n) {
  torch::manual_seed(41);
  const std::string path = temp_path("calib" + std::to_string(n) + ".npy");
  calq::util::write_npy(path, torch::randn({n, 1, 8, 8}));
  return path;
}

// Batches of random data that record whether the previous batch was released when the next
// one is asked for: a calibration that kept its batches would keep them alive.
class CountingSource : public calq::deploy::CalibrationSource {
 public:
  CountingSource(int64_t batches, int64_t batch_size) : left_(batches), size_(batch_size) {}
  std::vector<at::Tensor> next() override {
    if (!previous_.expired()) ++still_alive_;
    if (left_-- <= 0) return {};
    at::Tensor batch = torch::randn({size_, 1, 8, 8});
    previous_ =
        c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(batch.getIntrusivePtr());
    return {batch};
  }
  int64_t still_alive() const { return still_alive_; }

 private:
  int64_t left_, size_;
  int64_t still_alive_ = 0;
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> previous_{
      c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>()};
};

TEST(QuantizeOnnx, CalibratesStreamingAndWritesAModelOnnxRuntimeRuns) {
  const std::string out = temp_path("workflow_int8.onnx");
  calq::deploy::NpyCalibration data(calibration_file(100), 16);
  EXPECT_EQ(data.size(), 100);
  int64_t calls = 0;
  const auto report = calq::deploy::quantize_onnx(
      kModel, data, out, calq::deploy::QuantizeOptions().on_batch([&calls](int64_t) { ++calls; }));
  EXPECT_EQ(report.samples, 100);
  EXPECT_EQ(report.batches, 7);  // 6 x 16 + 4
  EXPECT_EQ(calls, 7);
  EXPECT_GT(report.export_report.integer_weight_layers, 2) << report.str();
  EXPECT_EQ(report.float_outputs.size(), 1u) << "the classifier's logits stay float";
  ASSERT_TRUE(std::filesystem::exists(out));

  // The written model is a QDQ model: read back, it computes the calibrated simulation.
  calq::onnx::ImportedModel back = calq::onnx::import(out);
  EXPECT_TRUE(back.qdq);
  std::string why;
  if (!calq::deploy::onnxruntime_available(&why)) GTEST_SKIP() << why;
  torch::manual_seed(42);
  const at::Tensor x = torch::randn({64, 1, 8, 8});
  const at::Tensor deployed = calq::deploy::run_onnxruntime(out, {x}).outputs.at(0);
  const at::Tensor reference = calq::deploy::run_onnxruntime(kModel, {x}).outputs.at(0);
  const double rel = ((deployed - reference).abs().max() / reference.abs().max()).item<double>();
  std::cerr << "quantized vs float (ONNX Runtime both): max rel diff " << rel << "\n";
  EXPECT_LT(rel, 0.1) << "8-bit quantization of a small random network";
  EXPECT_GT(rel, 0.0) << "the output must not be the float model's";
}

TEST(QuantizeOnnx, DropsEveryBatchBeforeReadingTheNext) {
  CountingSource source(5, 8);
  calq::deploy::quantize_onnx(kModel, source, temp_path("streaming.onnx"));
  EXPECT_EQ(source.still_alive(), 0);
}

TEST(QuantizeOnnx, OptionsExcludeBitsAndMaxBatches) {
  calq::deploy::NpyCalibration data(calibration_file(64), 8);
  const auto report = calq::deploy::quantize_onnx(kModel, data, temp_path("options.onnx"),
                                                  calq::deploy::QuantizeOptions()
                                                      .exclude({"/conv2/Conv"})
                                                      .max_batches(3)
                                                      .observer("min_max")
                                                      .activation_dtype(calq::QuantDtype::qint16)
                                                      .float_outputs(false));
  EXPECT_EQ(report.batches, 3);
  EXPECT_EQ(report.excluded.size(), 1u);
  EXPECT_TRUE(report.float_outputs.empty());
  EXPECT_FALSE(report.export_report.float_kernels.empty()) << "16-bit activations";
}

TEST(QuantizeOnnx, Errors) {
  auto expect_error = [](const std::function<void()>& f, const std::string& part) {
    try {
      f();
      ADD_FAILURE() << "no error; expected one containing '" << part << "'";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  const std::string calib = calibration_file(16);
  expect_error(
      [&] {
        calq::deploy::NpyCalibration data(calib, 8);
        calq::deploy::quantize_onnx(kModels + "ort_style_qdq.onnx", data, temp_path("e.onnx"));
      },
      "already a QDQ model");
  expect_error(
      [&] {
        CountingSource none(0, 8);
        calq::deploy::quantize_onnx(kModel, none, temp_path("e.onnx"));
      },
      "no batch");
  expect_error(
      [&] {
        const std::string wrong = temp_path("wrong.npy");
        calq::util::write_npy(wrong, torch::randn({4, 3, 8, 8}));
        calq::deploy::NpyCalibration data(wrong, 2);
        calq::deploy::quantize_onnx(kModel, data, temp_path("e.onnx"));
      },
      "but the model expects");
  expect_error(
      [&] {
        calq::deploy::NpyCalibration data(calib, 8);
        calq::deploy::quantize_onnx(kModel, data, temp_path("e.onnx"),
                                    calq::deploy::QuantizeOptions().exclude({"/no/such/node"}));
      },
      "no ONNX node named '/no/such/node'");
  expect_error([] { calq::deploy::bit_widths_from_string("8"); }, "WEIGHTS/ACTIVATIONS");
  expect_error([] { calq::deploy::bit_widths_from_string("8/3"); }, "activation width '3'");
  expect_error([&] { calq::deploy::NpyCalibration(calib, 0); }, "batch size must be >= 1");
  EXPECT_EQ(calq::deploy::bit_widths_from_string("4/16"),
            std::make_pair(calq::QuantDtype::qint4, calq::QuantDtype::qint16));
}

#ifdef CALQ_CLI_PATH
using Result = calq_test::CliResult;
using calq_test::run_cli;

TEST(QuantizeCommand, EndToEnd) {
  const std::string out = temp_path("cli_int8.onnx");
  std::filesystem::remove(out);
  const Result r = run_cli("quantize --model " + kModel + " --calib " + calibration_file(40) +
                           " --output " + out +
                           " --observer kl --bits 8/8 --batch-size 16 --threads 1 --exclude "
                           "/gate/Gemm");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("calibrated on 40 samples (3 batches)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("1 threads"), std::string::npos) << r.output;
  calq::onnx::ImportedModel back = calq::onnx::import(out);
  EXPECT_TRUE(back.qdq);
  std::string why;
  if (calq::deploy::onnxruntime_available(&why)) {
    EXPECT_EQ(
        calq::deploy::run_onnxruntime(out, {torch::randn({4, 1, 8, 8})}).outputs.at(0).sizes(),
        (std::vector<int64_t>{4, 3}));
  }
  const Result bad = run_cli("quantize --model " + kModel + " --calib " + calibration_file(40) +
                             " --output " + out + " --bits 8/5");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("activation width '5'"), std::string::npos) << bad.output;
  const Result both = run_cli("quantize --model " + kModel + " --calib " + calibration_file(40) +
                              " --output " + out + " --bits 8/8 --qconfig x.json");
  EXPECT_EQ(both.exit_code, 1);
  EXPECT_NE(both.output.find("--qconfig replaces"), std::string::npos) << both.output;
  // The short form: the model as the first argument, --data, -o.
  const std::string short_out = temp_path("cli_short_int8.onnx");
  std::filesystem::remove(short_out);
  const Result short_form = run_cli("quantize " + kModel + " --data " + calibration_file(40) +
                                    " -o " + short_out + " --threads 1");
  ASSERT_EQ(short_form.exit_code, 0) << short_form.output;
  EXPECT_TRUE(calq::onnx::import(short_out).qdq);
}

// --observer auto: the per-layer search on the .npy (its last quarter held out, or a held-out
// file), the chosen model written, and the recipe that `calq calibrate --qconfig` reads back.
TEST(QuantizeCommand, AutoEndToEnd) {
  const std::string out = temp_path("cli_auto.onnx");
  const std::string recipe = temp_path("cli_auto.recipe.json");
  std::filesystem::remove(out);
  std::filesystem::remove(recipe);
  const std::string calib = calibration_file(96);
  Result r = run_cli("quantize --model " + kModel + " --calib " + calib + " --output " + out +
                     " --observer auto --bias-correction --batch-size 16 --threads 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("auto: chose"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("held out 16 samples (1 batches)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("calibrated on 80 samples (5 batches)"), std::string::npos) << r.output;
  EXPECT_TRUE(calq::onnx::import(out).qdq);
  ASSERT_TRUE(std::filesystem::exists(recipe)) << r.output;
  std::string why;
  if (calq::deploy::onnxruntime_available(&why)) {
    EXPECT_EQ(
        calq::deploy::run_onnxruntime(out, {torch::randn({4, 1, 8, 8})}).outputs.at(0).sizes(),
        (std::vector<int64_t>{4, 3}));
  }
  // The recipe is one that calibrate accepts for the same model.
  const auto dir = std::filesystem::temp_directory_path() / "calq_quantize_test" / "recipe_run";
  std::filesystem::remove_all(dir);
  r = run_cli("calibrate --model " + kModel + " --data " + calib + " --qconfig " + recipe +
              " --val-size 32 --calib-batches 4 --batch-size 16 --threads 1 --quiet --out " +
              dir.string());
  EXPECT_EQ(r.exit_code, 0) << r.output;

  // A separate held-out file.
  torch::manual_seed(43);
  const std::string held = temp_path("held40.npy");
  calq::util::write_npy(held, torch::randn({40, 1, 8, 8}));
  r = run_cli("quantize --model " + kModel + " --calib " + calib + " --output " + out +
              " --observer auto --held-out-data " + held + " --batch-size 16 --threads 1" +
              " --recipe " + temp_path("other.recipe.json"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("held out 40 samples (3 batches)"), std::string::npos) << r.output;
  EXPECT_TRUE(std::filesystem::exists(temp_path("other.recipe.json")));

  // The search's flags without the search, and two held-out choices, are errors.
  r = run_cli("quantize --model " + kModel + " --calib " + calib + " --output " + out +
              " --bias-correction");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("--bias-correction belongs to the automatic recipe"), std::string::npos)
      << r.output;
  r = run_cli("quantize --model " + kModel + " --calib " + calib + " --output " + out +
              " --observer auto --held-out 0.5 --held-out-data " + held);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("give one"), std::string::npos) << r.output;
  r = run_cli("quantize --model " + kModel + " --calib " + calib + " --output " + out +
              " --observer auto --target-drop -1");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("--target-drop must be >= 0"), std::string::npos) << r.output;
  r = run_cli("quantize --model " + kModel + " --calib " + calib + " --output " + out +
              " --observer auto --cle-relu6 keep");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("add --cle"), std::string::npos) << r.output;
}

// A QDQ file as a model of the command line: `calq infer --model Q.onnx` computes what the file
// computes (its Q -> DQ pairs as fixed quantizers; bit for bit with ONNX Runtime in its
// arithmetic), and `calq evaluate` compares it with the float ONNX model, paired.
TEST(QuantizeCommand, InferAndEvaluateReadTheWrittenQdqModel) {
  const std::string out = temp_path("cli_infer_qdq.onnx");
  const std::string calib = calibration_file(64);
  Result r = run_cli("quantize --model " + kModel + " --calib " + calib + " --output " + out +
                     " --batch-size 16 --threads 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  torch::manual_seed(44);
  const at::Tensor x = torch::randn({32, 1, 8, 8});
  const std::string input = temp_path("infer_x.npy");
  calq::util::write_npy(input, x);
  const std::string y_path = temp_path("infer_y.npy");
  r = run_cli("infer --model " + out + " --input " + input + " --output " + y_path +
              " --arithmetic ort-cpu --threads 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const at::Tensor simulated = calq::util::read_npy(y_path);
  const std::string float_path = temp_path("infer_float.npy");
  r = run_cli("infer --model " + kModel + " --input " + input + " --output " + float_path +
              " --threads 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(at::allclose(simulated, calq::util::read_npy(float_path)))
      << "the QDQ file must not compute the float model";
  std::string why;
  if (calq::deploy::onnxruntime_available(&why)) {
    const at::Tensor deployed = calq::deploy::run_onnxruntime(out, {x}).outputs.at(0);
    EXPECT_EQ((simulated - deployed).abs().max().item<float>(), 0.0f)
        << "ONNX Runtime's arithmetic on the file's own grids: its outputs exactly";
  }
  r = run_cli("evaluate --model " + kModel + " --data " + calib + " --val-size 32 --checkpoint " +
              kModel + " --versus " + out + " --threads 1 --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("(quantized, VALIDATION"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("paired, " + out), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("note: no labels"), std::string::npos)
      << "without labels the QDQ file is scored against --model's float model" << r.output;
  r = run_cli("evaluate --model " + out + " --data " + calib + " --val-size 32 --checkpoint " +
              out + " --threads 1 --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("note: no labels and no float --model"), std::string::npos) << r.output;
  // --engine ort runs the file itself.
  if (calq::deploy::onnxruntime_available(&why)) {
    r = run_cli("infer --model " + out + " --input " + input + " --output " + y_path +
                " --engine ort --threads 1");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_TRUE(at::equal(calq::util::read_npy(y_path),
                          calq::deploy::run_onnxruntime(out, {x}).outputs.at(0)));
  }
}
#endif

}  // namespace
