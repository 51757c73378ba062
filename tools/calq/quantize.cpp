// calq quantize: post-training quantization of an ONNX model (calq::deploy::quantize_onnx):
// calibrate on a .npy read one batch at a time, write QDQ ONNX for ONNX Runtime.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <CLI/CLI.hpp>

#include <functional>
#include <iostream>
#include <memory>

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
};

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
  deploy::NpyCalibration data(a.calib, a.batch_size);
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
  command->add_option("--observer", args->observer, "activation observer")->capture_default_str();
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
  *run = [args, command] { return quantize(*args, *command); };
  return command;
}

}  // namespace cli
}  // namespace calq
