// One engine of the deployment comparison on one zoo model (bench/deploy.py drives it, one
// process per engine so that each peak memory is its own):
//
//   calq_deploy_zoo_bench --model cnn|resnet|mobilenet --engine export|sim|sim-int|int --dir DIR
//                         [--batch N] [--threads N] [--runs N] [--warmup N]
//
// Every engine builds the same model (seeded; batch-norm statistics and biases randomized as
// in the integer engine's tests so that no layer is trivial), fuses, prepares it (percentile
// activations, min_max per-channel weights, int8, the output layer's activation float: the
// default recipes' "32-bit output") and calibrates it on 4 random batches of 16.
//   export: writes DIR/NAME_qdq.onnx (calq::deploy::export_qdq) and DIR/NAME_float.onnx (the
//           same fused float model before preparation, exported with no quantizer), for
//           bench/ort_latency.js;
//   sim:    the simulation: forward in VALIDATION (fake quantization, float kernels);
//   sim-int: the same forward in ONNX Runtime's integer arithmetic (calq::set_integer_arithmetic:
//           exact integer accumulation and the runtime's requantization, bit for bit);
//   int:    the integer reference engine (calq::deploy::run_integer, float multiplier).
// sim and int time `runs` calls on one random batch after `warmup` calls and print one JSON
// line: median and quartiles in ms, threads, and the process's peak resident set size
// (getrusage; LibTorch and the preparation included) next to its size before the runs.

#include <ATen/Parallel.h>
#include <sys/resource.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "calq/deploy/integer_engine.h"
#include "calq/deploy/profile.h"
#include "calq/deploy/qdq_export.h"
#include "calq/nn.h"
#include "calq/util/allocator.h"
#include "calq/workflow.h"
#include "calq/zoo/models.h"

namespace {

[[noreturn]] void usage(const std::string& why) {
  std::cerr
      << "calq_deploy_zoo_bench: " << why
      << "\nusage: calq_deploy_zoo_bench --model NAME --engine export|sim|sim-int|int --dir DIR "
         "[--batch N] [--threads N] [--runs N] [--warmup N]\n";
  std::exit(2);
}

// Resident set size now (from /proc; ru_maxrss only gives the peak), MB.
double current_rss_mb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return -1.0;
}

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // Linux: kilobytes
}

calq::zoo::Classifier build(const std::string& name) {
  torch::manual_seed(5);
  calq::zoo::Classifier model = calq::zoo::make_model(name);
  torch::NoGradGuard no_grad;
  for (auto& buffer : model->named_buffers()) {
    if (buffer.key().find("running_mean") != std::string::npos) buffer.value().uniform_(-0.2, 0.2);
    if (buffer.key().find("running_var") != std::string::npos) buffer.value().uniform_(0.5, 2.0);
  }
  for (auto& p : model->named_parameters()) {
    if (p.key().find("bias") != std::string::npos) p.value().uniform_(-0.3, 0.3);
  }
  calq::fuse(*model);
  return model;
}

void prepare(calq::zoo::Classifier& model) {
  const calq::QConfig qconfig = calq::get_default_qconfig(
      std::string("fake_quant"), std::string("fake_quant"), "percentile", "min_max");
  calq::QConfig last = qconfig;
  last.activation = c10::nullopt;
  calq::QConfigOverrides overrides;
  overrides.by_name[model->output_layer()] = last;
  calq::prepare_qat(*model, qconfig, overrides);
  std::vector<at::Tensor> batches;
  for (int i = 0; i < 4; ++i) batches.push_back(torch::randn({16, 1, 28, 28}));
  calq::calibrate(model, batches);
  calq::set_fake_quantize(*model, calq::FakeQuantState::VALIDATION);
}

calq::Trace trace_of(calq::zoo::Classifier& model) {
  return calq::trace(
      *model, [&model](const at::Tensor& x) { return model->forward(x); },
      torch::randn({2, 1, 28, 28}));
}

double quantile(const std::vector<double>& sorted, double q) {
  const double pos = (sorted.size() - 1) * q;
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

}  // namespace

int main(int argc, char** argv) {
  std::string name, engine, dir;
  int64_t batch = 1, threads = 1, runs = 30, warmup = 5;
  for (int i = 1; i < argc; i += 2) {
    const std::string key = argv[i];
    if (i + 1 >= argc) usage(key + " needs a value");
    const std::string value = argv[i + 1];
    if (key == "--model") {
      name = value;
    } else if (key == "--engine") {
      engine = value;
    } else if (key == "--dir") {
      dir = value;
    } else if (key == "--batch") {
      batch = std::stoll(value);
    } else if (key == "--threads") {
      threads = std::stoll(value);
    } else if (key == "--runs") {
      runs = std::stoll(value);
    } else if (key == "--warmup") {
      warmup = std::stoll(value);
    } else {
      usage("unknown option " + key);
    }
  }
  if (name.empty() || dir.empty()) usage("--model and --dir are required");
  if (engine != "export" && engine != "sim" && engine != "sim-int" && engine != "int") {
    usage("--engine export|sim|sim-int|int");
  }
  if (batch < 1 || runs < 1 || warmup < 0 || threads < 1) usage("invalid count");
  calq::util::keep_freed_memory_mapped();  // as the calq command line
  at::set_num_threads(static_cast<int>(threads));
  try {
    calq::zoo::Classifier model = build(name);
    if (engine == "export") {
      {
        const calq::Trace t = trace_of(model);
        calq::deploy::export_qdq(*model, t, dir + "/" + name + "_float.onnx");
      }
      prepare(model);
      const calq::Trace t = trace_of(model);
      calq::deploy::export_qdq(*model, t, dir + "/" + name + "_qdq.onnx");
      std::cout << nlohmann::json({{"model", name}, {"dir", dir}}).dump() << std::endl;
      return 0;
    }
    prepare(model);
    const calq::Trace t = trace_of(model);
    if (engine == "sim-int") {
      calq::link_input_quantizers(t);
      calq::set_integer_arithmetic(
          *model, calq::deploy::integer_arithmetic(calq::deploy::ort_cpu_profile()));
    }
    torch::manual_seed(9);
    const at::Tensor x = torch::randn({batch, 1, 28, 28});
    model->eval();
    torch::NoGradGuard no_grad;
    const auto once = [&] {
      if (engine == "sim" || engine == "sim-int") {
        (void)model->forward(x);
      } else {
        (void)calq::deploy::run_integer(*model, t, {x});
      }
    };
    for (int64_t i = 0; i < warmup; ++i) once();
    const double rss_before = current_rss_mb();
    std::vector<double> ms;
    for (int64_t i = 0; i < runs; ++i) {
      const auto started = std::chrono::steady_clock::now();
      once();
      ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started)
              .count());
    }
    std::sort(ms.begin(), ms.end());
    nlohmann::json result = {{"model", name},
                             {"engine", engine},
                             {"batch", batch},
                             {"threads", at::get_num_threads()},
                             {"runs", runs},
                             {"median_ms", quantile(ms, 0.5)},
                             {"p25_ms", quantile(ms, 0.25)},
                             {"p75_ms", quantile(ms, 0.75)},
                             {"rss_before_runs_mb", rss_before},
                             {"peak_rss_mb", peak_rss_mb()}};
    std::cout << result.dump() << std::endl;
  } catch (const c10::Error& e) {
    std::cerr << "calq_deploy_zoo_bench: " << e.what_without_backtrace() << "\n";
    return 1;
  }
  return 0;
}
