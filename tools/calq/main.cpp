// calq: calibration and quantization-aware training on the command line.
#include <c10/util/Exception.h>
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "analyze.h"
#include "calq/distributed/launch.h"
#include "calq/distributed/process_group.h"
#include "calq/util/allocator.h"
#include "calq/util/progress.h"
#include "commands.h"
#include "config.h"

namespace calq {
namespace cli {
/// `calq quantize` (quantize.cpp): adds the subcommand; *run executes it after parsing.
CLI::App* add_quantize_command(CLI::App& app, std::function<int()>* run);
}  // namespace cli
}  // namespace calq

namespace {

// Flags shared by every workflow subcommand. Flags given on the command line override the
// --config file, which overrides the defaults.
void add_run_options(CLI::App& app, calq::cli::RunConfig& c, std::string& config_file) {
  app.add_option("--config", config_file, "JSON file with settings (keys = flag names)");
  app.add_option("--model", c.model, "cnn | resnet | mobilenet | FILE.onnx")->capture_default_str();
  app.add_option("--data", c.data,
                 "your data: FILE.npz (x, y), FILE.npy (inputs) or a folder of images "
                 "(default: Fashion-MNIST)");
  app.add_option("--test-data", c.test_data, "your test data (same formats)");
  app.add_option("--size", c.size, "image folders: resize to H W")->expected(2);
  app.add_option("--channels", c.channels, "image folders: 3 (RGB/BGR) or 1 (grey)");
  app.add_option("--order", c.order, "image folders: RGB or BGR");
  app.add_option("--mean", c.mean, "image folders: mean of pixel / 255, one or per channel");
  app.add_option("--std", c.std, "image folders: std of pixel / 255, one or per channel");
  app.add_option("--exclude", c.exclude, "layers kept float (ONNX node names or module paths)")
      ->delimiter(',');
  app.add_option("--bits", c.bits, "weights/activations bit widths: 4, 8 or 16 each, e.g. 8/8")
      ->capture_default_str();
  app.add_option("--epochs", c.epochs, "float training epochs")->capture_default_str();
  app.add_option("--qat-epochs", c.qat_epochs, "QAT epochs per method")->capture_default_str();
  app.add_option("--calib-batches", c.calib_batches, "calibration batches")->capture_default_str();
  app.add_option("--batch-size", c.batch_size, "batch size")->capture_default_str();
  app.add_option("--threads", c.threads, "threads (0 = all cores)")->capture_default_str();
  app.add_option("--seed", c.seed, "seed of initialisation, shuffling and calibration subset")
      ->capture_default_str();
  app.add_option("--out", c.out, "output folder")->capture_default_str();
  app.add_option("--data-dir", c.data_dir, "Fashion-MNIST folder (default: Debian's)");
  app.add_option("--limit-train", c.limit_train, "use only the first N training images (0 = all)");
  app.add_option("--limit-test", c.limit_test, "use only the first N test images (0 = all)");
  app.add_option("--lr", c.lr, "float learning rate (Adam, cosine decay)")->capture_default_str();
  app.add_option("--qat-lr", c.qat_lr, "QAT learning rate of the weights (Adam)")
      ->capture_default_str();
  app.add_option("--qat-scale-lr", c.qat_scale_lr,
                 "QAT learning rate of lsq scales and pact alphas (their own Adam group)")
      ->capture_default_str();
  app.add_option("--qat-schedule", c.qat_schedule, "QAT learning rates: cosine | constant")
      ->capture_default_str();
  app.add_option("--qat-freeze-bn-epochs", c.qat_freeze_bn_epochs,
                 "last QAT epochs with batch norm frozen (running statistics)")
      ->capture_default_str();
  app.add_option("--val-size", c.val_size,
                 "training images held out to choose the best observer (never the test set)")
      ->capture_default_str();
  app.add_option("--march", c.march, "bernoulli (power-of-two scales) | bernoulli2 | bayes | nash")
      ->capture_default_str();
  app.add_option("--observers", c.observers, "activation observers to calibrate with")
      ->delimiter(',');
  app.add_option("--methods", c.methods, "QAT fake-quant methods (none: calibration only)")
      ->delimiter(',');
  app.add_option("--qat-loss", c.qat_loss,
                 "cross_entropy | distillation (from the float model) | auto (labels if any)")
      ->capture_default_str();
  app.add_option("--qat-observer", c.qat_observer,
                 "activation observer during QAT; calibrated: the loaded calibration's own")
      ->capture_default_str();
  app.add_flag("--cle", c.cle, "cross-layer equalization before calibration (auto: try it)");
  app.add_option("--cle-relu6", c.cle_relu6, "ReLU6 around equalized pairs: keep | to_relu")
      ->capture_default_str();
  app.add_flag("--bias-correction", c.bias_correction,
               "bias correction after calibration (auto: try it)");
  app.add_option("--target-drop", c.target_drop,
                 "auto: promote points until the label-free top-1 drop is at most this (pt)");
  app.add_option("--promotion", c.promotion, "auto --target-drop promotes to: int16 | float")
      ->capture_default_str();
  app.add_option("--target", c.target,
                 "accelerator (signed grids) | ort-cpu (unsigned grids after ReLU)")
      ->capture_default_str();
  app.add_option("--arithmetic", c.arithmetic,
                 "how quantized models are evaluated: float (the simulation) | ort-cpu (ONNX "
                 "Runtime's integer kernels, bit for bit)")
      ->capture_default_str();
  app.add_option("--nproc", c.nproc,
                 "worker processes of a data-parallel job on this machine (under torchrun or "
                 "another launcher that sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT: omit)")
      ->capture_default_str();
  app.add_option("--dist-timeout", c.dist_timeout,
                 "seconds within which a dead or stuck rank makes the others fail")
      ->capture_default_str();
  app.add_flag("--resume", c.resume, "continue an interrupted run or QAT from its checkpoints");
  app.add_flag("--quiet", c.quiet, "no progress bars");
}

// Applies --config, then re-applies the flags the user typed so that they win.
calq::cli::RunConfig resolve(CLI::App& app, const calq::cli::RunConfig& typed,
                             const std::string& config_file) {
  if (config_file.empty()) return typed;
  calq::cli::RunConfig resolved;
  resolved.merge_json(calq::cli::read_json_file(config_file));
  nlohmann::json typed_json = typed.to_json();
  nlohmann::json overrides = nlohmann::json::object();
  for (const auto& item : typed_json.items()) {
    const std::string flag = "--" + [&] {
      std::string k = item.key();
      for (auto& ch : k) ch = ch == '_' ? '-' : ch;
      return k;
    }();
    if (app.count(flag) > 0) overrides[item.key()] = item.value();
  }
  resolved.merge_json(overrides);
  resolved.resume = typed.resume;
  resolved.quiet = typed.quiet;
  return resolved;
}

// --nproc N: this process becomes the launcher of N ranks, each a copy of this command.
int launch(const calq::cli::RunConfig& config, int argc, char** argv) {
  std::vector<std::string> command{"/proc/self/exe"};
  for (int i = 1; i < argc; ++i) command.emplace_back(argv[i]);
  calq::distributed::LaunchOptions options(config.nproc, command);
  options.threads_per_process(config.threads)
      .timeout(std::chrono::milliseconds(static_cast<int64_t>(config.dist_timeout * 1000.0)));
  const calq::distributed::LaunchResult result = calq::distributed::launch_local(options);
  if (result.exit_code() != 0) {
    std::istringstream lines(result.summary());
    for (std::string line; std::getline(lines, line);) std::cerr << "calq: " << line << "\n";
  }
  return result.exit_code();
}

// "calq: error: ..." or, in a rank of a job, "calq: rank 1: error: ...".
std::string error_prefix() {
  const char* rank = std::getenv("RANK");
  return rank != nullptr && calq::distributed::launched_by_environment()
             ? std::string("calq: rank ") + rank + ": error: "
             : std::string("calq: error: ");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"calq: calibrate and quantization-aware-train networks for integer accelerators"};
  app.require_subcommand(1);
  calq::cli::RunConfig config;
  std::string config_file, observer = "percentile", qconfig_file, checkpoint, calibrated,
                           method = "lsq", json_path;

  auto* run = app.add_subcommand("run",
                                 "the whole workflow: train, calibrate with every "
                                 "observer, validate, QAT with every method, report");
  add_run_options(*run, config, config_file);

  auto* train = app.add_subcommand("train", "train the float model (OUT/float_<model>.pt)");
  add_run_options(*train, config, config_file);

  auto* calibrate = app.add_subcommand("calibrate", "calibrate the float model and validate it");
  add_run_options(*calibrate, config, config_file);
  calibrate->add_option("--observer", observer, "activation observer, or auto")
      ->capture_default_str();
  calibrate->add_option("--qconfig", qconfig_file, "qconfig JSON file (instead of --observer)");

  auto* evaluate = app.add_subcommand("evaluate", "top-1 accuracy of a saved model");
  add_run_options(*evaluate, config, config_file);
  evaluate->add_option("--checkpoint", checkpoint, "model file written by calq")->required();
  std::string versus;
  evaluate->add_option("--versus", versus,
                       "a second model file: paired comparison on the same images (difference, "
                       "95 % interval, McNemar)");

  auto* qat = app.add_subcommand("qat", "QAT from a calibrated model, then validate");
  add_run_options(*qat, config, config_file);
  qat->add_option("--method", method, "fake_quant | lsq | pact")->capture_default_str();
  qat->add_option("--calibrated", calibrated, "calibrated model file (from calq calibrate)")
      ->required();
  qat->add_option("--qconfig", qconfig_file, "QAT qconfig JSON file (instead of --method)");

  std::string onnx_path, input_path, output_path, engine = "sim", requantization = "float";
  auto* export_scales =
      app.add_subcommand("export", "export a prepared model: QDQ ONNX and/or its scales as JSON");
  export_scales->add_option("--checkpoint", checkpoint, "prepared model file")->required();
  export_scales->add_option("--onnx", onnx_path,
                            "QDQ ONNX file for ONNX Runtime's integer kernels");
  export_scales->add_option("--json", json_path, "scales and zero points as JSON");

  auto* infer = app.add_subcommand(
      "infer", "run a model on a float32 .npy batch and write its output as .npy");
  add_run_options(*infer, config, config_file);
  infer->add_option("--checkpoint", checkpoint,
                    "calibrated or QAT model file (VALIDATION state); else --model runs in float");
  infer->add_option("--input", input_path, "float32 .npy input batch")->required();
  infer->add_option("--output", output_path, "output .npy file")->required();
  infer
      ->add_option("--engine", engine,
                   "sim (calq's simulation) | int (integer engine) | ort (ONNX Runtime)")
      ->capture_default_str();
  infer
      ->add_option("--requantization", requantization,
                   "integer engine: float (ONNX Runtime's) | fixed (multiplier + shift)")
      ->capture_default_str();

  auto* check = app.add_subcommand("check", "list every quantization point and its qconfig");
  add_run_options(*check, config, config_file);
  check->add_option("--qconfig", qconfig_file, "qconfig JSON file (default: calibration recipe)");

  std::function<int()> run_quantize;
  CLI::App* quantize = calq::cli::add_quantize_command(app, &run_quantize);
  auto* analyze = calq::cli::add_analyze_command(
      app, [&](CLI::App& sub) { add_run_options(sub, config, config_file); });

  CLI11_PARSE(app, argc, argv);
  calq::util::keep_freed_memory_mapped();
  try {
    CLI::App* chosen = app.get_subcommands().front();
    calq::cli::RunConfig resolved = resolve(*chosen, config, config_file);
    calq::util::Progress::set_globally_quiet(resolved.quiet);
    const bool job_subcommand = chosen == run || chosen == train || chosen == calibrate ||
                                chosen == qat || chosen == evaluate;
    TORCH_CHECK(resolved.nproc == 1 || job_subcommand, "--nproc: '", chosen->get_name(),
                "' runs in one process; --nproc applies to run, train, calibrate, qat, evaluate");
    // Under a launcher (RANK set) the job subcommands join the job in open_workspace.
    if (calq::distributed::launched_by_environment()) {
      const char* ours = std::getenv("CALQ_LAUNCHED");
      TORCH_CHECK(resolved.nproc == 1 || (ours != nullptr && std::string(ours) == "1"), "--nproc ",
                  resolved.nproc, " was given, but a launcher already started this ",
                  "process as a rank (RANK is set); leave --nproc out under a launcher");
    } else if (resolved.nproc > 1) {
      resolved.validate();
      return launch(resolved, argc, argv);
    }
    if (chosen == run) return calq::cli::run_command(resolved);
    if (chosen == train) return calq::cli::train_command(resolved);
    if (chosen == analyze) return calq::cli::analyze_command(resolved);
    if (chosen == calibrate) return calq::cli::calibrate_command(resolved, observer, qconfig_file);
    if (chosen == evaluate) return calq::cli::evaluate_command(resolved, checkpoint, versus);
    if (chosen == qat) return calq::cli::qat_command(resolved, method, calibrated, qconfig_file);
    if (chosen == export_scales) {
      return calq::cli::export_command(checkpoint, json_path, onnx_path);
    }
    if (chosen == infer) {
      return calq::cli::infer_command(resolved, resolved.model, checkpoint, input_path, output_path,
                                      engine, requantization);
    }
    if (chosen == check) return calq::cli::check_command(resolved, qconfig_file);
    if (chosen == quantize) return run_quantize();
  } catch (const c10::Error& error) {
    std::cerr << error_prefix() << error.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& error) {
    std::cerr << error_prefix() << error.what() << "\n";
    return 1;
  }
  return 1;
}
