// Observer costs: per-batch update of every observer, qparams from a full 2048-bin histogram,
// and PyTorch's MinMaxObserver / HistogramObserver on the same tensor in the same run.
//
//   bench/run.sh observers [--json FILE] [--repetitions N] [--no-pytorch]
//
// Data: one 32x64x56x56 float32 activation (seed 0), 1 thread and all hardware threads.
// Each figure is the median of the repetitions after one warm-up call (which also gives the
// observer its first batch, so later updates take the steady-state path).

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "calq/observers/histogram.h"
#include "calq/observers/histogram_observer.h"
#include "calq/observers/registry.h"
#include "python_reference.h"

namespace {

using calq::QuantSpec;
using calq::observers::AbsHistogram;

double median_ms(const std::function<void()>& fn, int repetitions) {
  fn();  // warm-up
  std::vector<double> times;
  for (int i = 0; i < repetitions; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    times.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

struct Case {
  std::string name;
  std::string observer;
  nlohmann::json kwargs;
  // The rule evaluated on a full 2048-bin histogram for qparams_ms (empty: observer.qparams()).
  std::function<double(const AbsHistogram&)> rule;
  std::string pytorch;  // counterpart in the PyTorch timings, "" for none
};

std::vector<Case> cases() {
  const QuantSpec spec;
  using calq::observers::kl_threshold;
  using calq::observers::mix_threshold;
  using calq::observers::mse_threshold;
  using calq::observers::percentile_threshold;
  return {
      {"min_max", "min_max", nlohmann::json::object(), nullptr, "MinMaxObserver"},
      {"fixed_scale", "fixed_scale", nlohmann::json::object(), nullptr, ""},
      {"clip", "clip", nlohmann::json::object(), nullptr, ""},
      {"clip_std", "clip_std", nlohmann::json::object(), nullptr, ""},
      {"percentile", "percentile", nlohmann::json::object(),
       [](const AbsHistogram& h) { return percentile_threshold(h, 99.99); }, "HistogramObserver"},
      {"kl", "kl", nlohmann::json::object(),
       [](const AbsHistogram& h) { return kl_threshold(h, 128); }, "HistogramObserver"},
      {"kl(bins=2048)",
       "kl",
       {{"bins", 2048}},
       [](const AbsHistogram& h) { return kl_threshold(h, 128); },
       "HistogramObserver"},
      {"mix", "mix", nlohmann::json::object(),
       [spec](const AbsHistogram& h) {
         return mix_threshold(h, spec, {99.9, 99.99, 99.999, 99.9999});
       },
       "HistogramObserver"},
      {"mse", "mse", nlohmann::json::object(),
       [spec](const AbsHistogram& h) { return mse_threshold(h, spec); }, ""},
  };
}

nlohmann::json pytorch_timings(const at::Tensor& x, const std::vector<int>& threads) {
  const std::string tensor_path = "/tmp/calq_observers_bench_" + std::to_string(::getpid()) + ".pt";
  {
    const std::vector<char> bytes = torch::pickle_save(x);
    std::ofstream out(tensor_path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  std::vector<std::string> arguments = {tensor_path};
  for (int t : threads) arguments.push_back(std::to_string(t));
  nlohmann::json result =
      calq_bench::run_python_reference("observers_bench", "observers_pytorch.py", arguments);
  std::remove(tensor_path.c_str());
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  int repetitions = 9;
  bool with_pytorch = true;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else if (arg == "--repetitions" && i + 1 < argc) {
      repetitions = std::max(1, std::stoi(argv[++i]));
    } else if (arg == "--no-pytorch") {
      with_pytorch = false;
    } else {
      std::cerr << "usage: calq_observers_bench [--json FILE] [--repetitions N] [--no-pytorch]\n";
      return 2;
    }
  }
  torch::manual_seed(0);
  const at::Tensor x = torch::randn({32, 64, 56, 56});
  const int all_threads =
      std::max(at::get_num_threads(), static_cast<int>(std::thread::hardware_concurrency()));
  std::vector<int> thread_counts = {1};
  if (all_threads > 1) thread_counts.push_back(all_threads);

  const nlohmann::json pytorch = with_pytorch ? pytorch_timings(x, thread_counts) : nullptr;

  // The full 2048-bin histogram the qparams rules are timed on.
  calq::observers::Observer collector =
      calq::observers::make_observer("percentile", QuantSpec(), {{"bins", 2048}});
  collector->update(x);
  const AbsHistogram histogram =
      static_cast<calq::observers::HistogramObserverImpl&>(*collector).histogram();

  nlohmann::json out = {{"cases", nlohmann::json::array()}};
  std::printf("%-16s %7s %12s %12s %12s\n", "observer", "threads", "update_ms", "qparams_ms",
              "pytorch_ms");
  for (int threads : thread_counts) {
    at::set_num_threads(threads);
    for (const Case& c : cases()) {
      calq::observers::Observer obs =
          calq::observers::make_observer(c.observer, QuantSpec(), c.kwargs);
      // mse runs 95 candidates over the batch; fewer repetitions keep the run short.
      const int reps = c.observer == "mse" ? std::max(1, repetitions / 3) : repetitions;
      const double update_ms = median_ms([&] { obs->update(x); }, reps);
      const double qparams_ms = c.rule ? median_ms([&] { (void)c.rule(histogram); }, repetitions)
                                       : median_ms([&] { (void)obs->qparams(); }, repetitions);
      nlohmann::json pytorch_ms = nullptr;
      if (!c.pytorch.empty() && pytorch.is_object() && pytorch.contains(std::to_string(threads))) {
        pytorch_ms = pytorch[std::to_string(threads)][c.pytorch];
      }
      out["cases"].push_back({{"name", c.name},
                              {"threads", threads},
                              {"update_ms", update_ms},
                              {"qparams_ms", qparams_ms},
                              {"pytorch_ms", pytorch_ms}});
      std::printf("%-16s %7d %12.3f %12.3f %12s\n", c.name.c_str(), threads, update_ms, qparams_ms,
                  pytorch_ms.is_null() ? "-" : std::to_string(pytorch_ms.get<double>()).c_str());
      std::fflush(stdout);
    }
  }
  if (!json_path.empty()) {
    std::ofstream file(json_path);
    file << out.dump(2) << "\n";
    if (!file) {
      std::cerr << "observers_bench: cannot write " << json_path << "\n";
      return 1;
    }
  }
  return 0;
}
