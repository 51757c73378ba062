// calq quantize: post-training quantization of an ONNX model (calq::deploy::quantize_onnx):
// calibrate on a .npy read one batch at a time, write QDQ ONNX for ONNX Runtime.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <CLI/CLI.hpp>

#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>

#include "calq/analysis/auto_quantize.h"
#include "calq/analysis/recipe.h"
#include "calq/deploy/quantize.h"
#include "calq/util/progress.h"

namespace calq {
namespace cli {
namespace {

struct QuantizeArgs {
  std::string model, calib, output, observer = "percentile", bits = "8/8", march = "bayes", qconfig;
  std::vector<std::string> exclude;
  int64_t batch_size = 32;
  int64_t threads = 0;
  // --observer auto
  bool cle = false, bias_correction = false;
  std::string cle_relu6 = "keep", promotion = "int16", recipe, held_out_data;
  double target_drop = -1.0, held_out = 0.25;
  int64_t auto_samples = 1024;
};

// The automatic recipe's own flags, which only --observer auto reads.
const char* const kAutoFlags[] = {"--cle",         "--cle-relu6",     "--bias-correction",
                                  "--target-drop", "--promotion",     "--auto-samples",
                                  "--held-out",    "--held-out-data", "--recipe"};

// OUT.onnx -> OUT.recipe.json (the per-layer recipe that calibrate/qat --qconfig accept).
std::string default_recipe_path(const std::string& output) {
  std::filesystem::path path(output);
  path.replace_extension(".recipe.json");
  return path.string();
}

int quantize_auto(const QuantizeArgs& a, deploy::QuantizeOptions options,
                  deploy::NpyCalibration& data) {
  analysis::AutoOptions search;
  search.equalization(a.cle)
      .equalization_options(
          analysis::EqualizationOptions().relu6(analysis::relu6_policy_from_string(a.cle_relu6)))
      .bias_correction(a.bias_correction)
      .promotion(analysis::promotion_from_string(a.promotion));
  if (a.target_drop >= 0.0) search.target_drop(a.target_drop);
  std::unique_ptr<deploy::NpyCalibration> held_out;
  if (!a.held_out_data.empty()) {
    held_out = std::make_unique<deploy::NpyCalibration>(a.held_out_data, a.batch_size);
  }
  const auto report = analysis::auto_quantize_onnx(a.model, data, a.output, options,
                                                   analysis::AutoQuantizeOptions()
                                                       .search(search)
                                                       .max_samples(a.auto_samples)
                                                       .held_out_fraction(a.held_out),
                                                   held_out.get());
  const std::string recipe = a.recipe.empty() ? default_recipe_path(a.output) : a.recipe;
  analysis::save_recipe(report.search.recipe, recipe);
  std::cout << report.str(options.export_options().profile()) << "\n"
            << "recipe (calibrate --qconfig / qat --qconfig accept it): " << recipe << "\n";
  return 0;
}

int quantize(const QuantizeArgs& a, const CLI::App& command) {
  TORCH_CHECK(a.batch_size >= 1, "--batch-size must be >= 1, got ", a.batch_size);
  TORCH_CHECK(a.threads >= 0, "--threads must be >= 0 (0 = all cores), got ", a.threads);
  if (a.threads > 0) at::set_num_threads(static_cast<int>(a.threads));
  deploy::QuantizeOptions options;
  if (!a.qconfig.empty()) {
    TORCH_CHECK(command.count("--observer") == 0 && command.count("--bits") == 0,
                "--qconfig replaces --observer and --bits; give one or the other");
    options.qconfig_path(a.qconfig);
  } else {
    const auto dtypes = deploy::bit_widths_from_string(a.bits);
    options.observer(a.observer).weight_dtype(dtypes.first).activation_dtype(dtypes.second);
  }
  options.march(march_from_string(a.march)).exclude(a.exclude);
  const bool automatic = a.qconfig.empty() && a.observer == "auto";
  TORCH_CHECK(command.count("--target-drop") == 0 || a.target_drop >= 0.0,
              "--target-drop must be >= 0 (percentage points of top-1 agreement), got ",
              a.target_drop);
  TORCH_CHECK(command.count("--cle-relu6") == 0 || a.cle,
              "--cle-relu6 says how --cle treats ReLU6; add --cle (or drop --cle-relu6)");
  TORCH_CHECK(command.count("--promotion") == 0 || command.count("--target-drop") > 0,
              "--promotion says what --target-drop promotes to; add --target-drop (or drop "
              "--promotion)");
  TORCH_CHECK(command.count("--held-out") == 0 || command.count("--held-out-data") == 0,
              "--held-out (a fraction of --calib) and --held-out-data (a file) both choose the "
              "held-out samples; give one");
  for (const char* flag : kAutoFlags) {
    TORCH_CHECK(automatic || command.count(flag) == 0, flag,
                " belongs to the automatic recipe; add --observer auto (or drop ", flag, ")");
  }
  deploy::NpyCalibration data(a.calib, a.batch_size);
  if (automatic) {
    std::cerr << "calq quantize: automatic recipe on " << a.model << " (" << at::get_num_threads()
              << " threads)\n";
    return quantize_auto(a, options, data);
  }
  util::Progress progress("calibration", data.size(), "img");
  int64_t seen = 0;
  options.on_batch([&progress, &seen](int64_t samples) {
    progress.advance(samples - seen);
    seen = samples;
  });
  const deploy::QuantizeReport report = deploy::quantize_onnx(a.model, data, a.output, options);
  progress.finish();
  std::cerr << "calq quantize: " << a.model << " -> " << a.output << " (" << at::get_num_threads()
            << " threads)\n"
            << report.str() << "\n";
  return 0;
}

}  // namespace

CLI::App* add_quantize_command(CLI::App& app, std::function<int()>* run) {
  auto args = std::make_shared<QuantizeArgs>();
  CLI::App* command = app.add_subcommand(
      "quantize",
      "post-training quantization of an ONNX model: calibrate on a .npy, write QDQ ONNX");
  command->add_option("model,--model", args->model, "float ONNX model (one float input)")
      ->required();
  command
      ->add_option("--calib,--data", args->calib, ".npy of calibration inputs, one sample per row")
      ->required();
  command->add_option("-o,--output", args->output, "QDQ ONNX model to write")->required();
  command
      ->add_option("--observer", args->observer,
                   "activation observer, or auto (per-layer search, held in memory)")
      ->capture_default_str();
  command->add_option("--bits", args->bits, "weights/activations bit widths: 4, 8 or 16 each")
      ->capture_default_str();
  command
      ->add_option("--march", args->march,
                   "bernoulli (power-of-two scales) | bernoulli2 | "
                   "bayes | nash")
      ->capture_default_str();
  command->add_option("--qconfig", args->qconfig,
                      "qconfig JSON file (instead of --observer and "
                      "--bits)");
  command->add_option("--exclude", args->exclude, "ONNX node names kept float")->delimiter(',');
  command->add_option("--batch-size", args->batch_size, "calibration batch size")
      ->capture_default_str();
  command->add_option("--threads", args->threads, "threads (0 = all cores)")->capture_default_str();
  command->add_flag("--cle", args->cle, "auto: also try cross-layer equalization");
  command
      ->add_option("--cle-relu6", args->cle_relu6, "ReLU6 around equalized pairs: keep | to_relu")
      ->capture_default_str();
  command->add_flag("--bias-correction", args->bias_correction, "auto: also try bias correction");
  command->add_option("--target-drop", args->target_drop,
                      "auto: promote points until the label-free top-1 drop on the held-out "
                      "samples is at most this (pt)");
  command
      ->add_option("--promotion", args->promotion, "auto --target-drop promotes to: int16 | float")
      ->capture_default_str();
  command
      ->add_option("--auto-samples", args->auto_samples,
                   "auto: samples read and held in memory (0 = all)")
      ->capture_default_str();
  command
      ->add_option("--held-out", args->held_out,
                   "auto: fraction of the --calib batches held out to choose with")
      ->capture_default_str();
  command->add_option("--held-out-data", args->held_out_data,
                      "auto: .npy of held-out samples to choose with (instead of --held-out)");
  command->add_option("--recipe", args->recipe,
                      "auto: where to write the chosen recipe (default OUTPUT.recipe.json)");
  *run = [args, command] { return quantize(*args, *command); };
  return command;
}

}  // namespace cli
}  // namespace calq
