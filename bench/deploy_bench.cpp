// Calibration of an imported ONNX model against calq's own float inference of the same
// images, same threads, same batches, one process (bench/deploy.py drives it).
//
//   calq_deploy_bench --model M.onnx --calib X.npy [--batch-size N] [--threads N]
//                     [--output Q.onnx]
//
// float:       calq::onnx::import, eval mode, no grad, every batch of the .npy (read with
//              calq::deploy::NpyCalibration, as quantize_onnx reads it) through the graph;
// calibration: calq::deploy::quantize_onnx on the same file and batch size (default options:
//              percentile activations, min_max weights, 8/8), its calibration_seconds (the
//              forwards in CALIBRATION state with the reads, no import or export).
// Prints one JSON line: seconds of both, samples, threads, and their ratio.

#include <ATen/Parallel.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>

#include "calq/deploy/quantize.h"
#include "calq/onnx/import.h"
#include "calq/util/allocator.h"

namespace {

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "calq_deploy_bench: " << why
            << "\nusage: calq_deploy_bench --model M.onnx --calib X.npy [--batch-size N] "
               "[--threads N] [--output Q.onnx]\n";
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, calib, output;
  int64_t batch_size = 32, threads = 0;
  for (int i = 1; i < argc; i += 2) {
    const std::string key = argv[i];
    if (i + 1 >= argc) usage(key + " needs a value");
    const std::string value = argv[i + 1];
    if (key == "--model") {
      model = value;
    } else if (key == "--calib") {
      calib = value;
    } else if (key == "--output") {
      output = value;
    } else if (key == "--batch-size") {
      batch_size = std::stoll(value);
    } else if (key == "--threads") {
      threads = std::stoll(value);
    } else {
      usage("unknown option " + key);
    }
  }
  if (model.empty() || calib.empty()) usage("--model and --calib are required");
  if (output.empty()) {
    output = (std::filesystem::temp_directory_path() / "calq_deploy_bench.onnx").string();
  }
  calq::util::keep_freed_memory_mapped();  // as the calq command line
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));
  try {
    double float_seconds = 0.0;
    int64_t samples = 0;
    {
      calq::onnx::ImportedModel m = calq::onnx::import(model);
      m.graph->eval();
      torch::NoGradGuard no_grad;
      calq::deploy::NpyCalibration data(calib, batch_size);
      const auto started = std::chrono::steady_clock::now();
      for (auto batch = data.next(); !batch.empty(); batch = data.next()) {
        m.graph->forward(batch[0]);
        samples += batch[0].size(0);
      }
      float_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    }
    calq::deploy::NpyCalibration data(calib, batch_size);
    const calq::deploy::QuantizeReport report = calq::deploy::quantize_onnx(model, data, output);
    nlohmann::json result = {
        {"model", model},
        {"calib", calib},
        {"samples", samples},
        {"batch_size", batch_size},
        {"threads", at::get_num_threads()},
        {"float_seconds", float_seconds},
        {"calibration_seconds", report.calibration_seconds},
        {"calibration_over_float", report.calibration_seconds / float_seconds}};
    std::cout << result.dump() << std::endl;
  } catch (const c10::Error& e) {
    std::cerr << "calq_deploy_bench: " << e.what_without_backtrace() << "\n";
    return 1;
  }
  return 0;
}
