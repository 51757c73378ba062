// Fake-quant kernels: calq against ATen and against a memory-traffic floor ("roofline").
//
//   bench/run.sh kernels [--json FILE] [Google Benchmark flags]
//
// Every case runs on a 32x64x56x56 float32 activation, with 1 thread and with all threads.
// Forward+backward cases go through autograd (torch::autograd::grad with a fixed dy) for both
// calq and ATen. The roofline is the same traffic done by ATen's plainest ops: forward =
// at::mul(x, c) (read x once, write a fresh y once); forward+backward adds at::mul(x, dy)
// (read two tensors, write a fresh dx). Medians over the repetitions are reported.

#include <benchmark/benchmark.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "calq/quant/fake_quant.h"

namespace {

constexpr int64_t kChannelAxis = 1;  // per-channel cases: channels of an NCHW activation
constexpr int kRepetitions = 9;
constexpr double kMinSecondsPerRepetition = 0.2;

struct Inputs {
  at::Tensor x;             // leaf, requires grad
  at::Tensor dy;            // fixed upstream gradient
  at::Tensor scale;         // {1}
  at::Tensor zero_point;    // {1} int32
  at::Tensor scale_c;       // {C}
  at::Tensor zero_point_c;  // {C} int32
  at::Tensor lsq_scale;     // {1}, requires grad
};

const Inputs& inputs() {
  static const Inputs in = [] {
    torch::manual_seed(0);
    Inputs v;
    v.x = torch::randn({32, 64, 56, 56}).requires_grad_(true);
    v.dy = torch::randn({32, 64, 56, 56});
    const at::Tensor x = v.x.detach();
    v.scale = (x.abs().max() / 127.5).reshape({1});
    v.zero_point = torch::zeros({1}, torch::kInt);
    v.scale_c = std::get<0>(x.abs().transpose(0, 1).reshape({64, -1}).max(1)) / 127.5;
    v.zero_point_c = torch::zeros({64}, torch::kInt);
    v.lsq_scale = v.scale.clone().requires_grad_(true);
    return v;
  }();
  return in;
}

double lsq_grad_factor() {
  return 1.0 / std::sqrt(inputs().x.numel() * 127.0);
}

// One timed operation per (case, implementation). Each returns a tensor to keep it alive
// until timing of the iteration ends.
using Op = std::function<void()>;

void keep(const std::vector<at::Tensor>& tensors) {
  for (const auto& t : tensors) {
    benchmark::DoNotOptimize(t.data_ptr());
  }
}

std::vector<at::Tensor> grad(const at::Tensor& y, const std::vector<at::Tensor>& wrt) {
  return torch::autograd::grad({y}, wrt, {inputs().dy});
}

struct Case {
  std::string name;
  Op calq, aten, roofline;
};

std::vector<Case> cases() {
  const calq::QuantSpec per_tensor;
  const calq::QuantSpec per_channel = calq::QuantSpec().per_channel(true).ch_axis(kChannelAxis);
  const Op roofline_forward = [] { keep({at::mul(inputs().x.detach(), 0.5)}); };
  const Op roofline_forward_backward = [] {
    const at::Tensor x = inputs().x.detach();
    keep({at::mul(x, 0.5), at::mul(x, inputs().dy)});
  };
  return {
      {"fake_quant per-tensor forward",
       [per_tensor] {
         torch::NoGradGuard no_grad;
         const auto& in = inputs();
         keep({calq::fake_quantize(in.x, in.scale, in.zero_point, per_tensor)});
       },
       [] {
         torch::NoGradGuard no_grad;
         const auto& in = inputs();
         keep({at::fake_quantize_per_tensor_affine(in.x, in.scale, in.zero_point, -128, 127)});
       },
       roofline_forward},
      {"fake_quant per-tensor forward+backward",
       [per_tensor] {
         const auto& in = inputs();
         keep(grad(calq::fake_quantize(in.x, in.scale, in.zero_point, per_tensor), {in.x}));
       },
       [] {
         const auto& in = inputs();
         keep(grad(at::fake_quantize_per_tensor_affine(in.x, in.scale, in.zero_point, -128, 127),
                   {in.x}));
       },
       roofline_forward_backward},
      {"fake_quant per-channel(axis 1) forward+backward",
       [per_channel] {
         const auto& in = inputs();
         keep(grad(calq::fake_quantize(in.x, in.scale_c, in.zero_point_c, per_channel), {in.x}));
       },
       [] {
         const auto& in = inputs();
         keep(grad(at::fake_quantize_per_channel_affine(in.x, in.scale_c, in.zero_point_c,
                                                        kChannelAxis, -128, 127),
                   {in.x}));
       },
       roofline_forward_backward},
      {"lsq per-tensor forward+backward",
       [per_tensor] {
         const auto& in = inputs();
         keep(grad(calq::lsq_fake_quantize(in.x, in.lsq_scale, in.zero_point, per_tensor,
                                           lsq_grad_factor()),
                   {in.x, in.lsq_scale}));
       },
       [] {
         const auto& in = inputs();
         keep(grad(
             at::_fake_quantize_learnable_per_tensor_affine(
                 in.x, in.lsq_scale, in.zero_point.to(at::kFloat), -128, 127, lsq_grad_factor()),
             {in.x, in.lsq_scale}));
       },
       roofline_forward_backward},
  };
}

// Collects the median of every benchmark while the console reporter prints as usual.
class MedianCollector : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& run : runs) {
      if (run.run_type == Run::RT_Aggregate && run.aggregate_name == "median") {
        medians_ms[run.run_name.function_name] = run.GetAdjustedRealTime();
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }
  std::map<std::string, double> medians_ms;
};

std::string benchmark_name(const std::string& case_name, const std::string& impl, int threads) {
  return case_name + " | " + impl + " | threads=" + std::to_string(threads);
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--json") {
      if (i + 1 >= argc) {
        std::cerr << "--json needs a file name\n";
        return 2;
      }
      json_path = argv[++i];
    } else {
      args.push_back(argv[i]);
    }
  }
  int bench_argc = static_cast<int>(args.size());
  benchmark::Initialize(&bench_argc, args.data());
  if (benchmark::ReportUnrecognizedArguments(bench_argc, args.data())) {
    return 2;
  }

  // LibTorch defaults to one thread per physical core; "all threads" means every hardware
  // thread the machine offers.
  const int initial_threads = at::get_num_threads();
  const int all_threads =
      std::max(initial_threads, static_cast<int>(std::thread::hardware_concurrency()));
  std::vector<int> thread_counts = {1};
  if (all_threads > 1) {
    thread_counts.push_back(all_threads);
  }
  inputs();  // build the data before any timing
  const std::vector<Case> all_cases = cases();
  for (int threads : thread_counts) {
    for (const Case& c : all_cases) {
      const std::vector<std::pair<std::string, Op>> impls = {
          {"calq", c.calq}, {"aten", c.aten}, {"roofline", c.roofline}};
      for (const auto& impl : impls) {
        Op op = impl.second;
        benchmark::RegisterBenchmark(benchmark_name(c.name, impl.first, threads).c_str(),
                                     [op, threads](benchmark::State& state) {
                                       at::set_num_threads(threads);
                                       for (auto _ : state) {
                                         op();
                                       }
                                     })
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime()
            ->MinTime(kMinSecondsPerRepetition)
            ->Repetitions(kRepetitions)
            ->ReportAggregatesOnly(true);
      }
    }
  }
  MedianCollector reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  at::set_num_threads(initial_threads);

  nlohmann::json out;
  out["cases"] = nlohmann::json::array();
  std::printf("\n%-48s %7s %9s %9s %8s %11s %13s\n", "case", "threads", "calq_ms", "aten_ms",
              "speedup", "roofline_ms", "calq/roofline");
  for (int threads : thread_counts) {
    for (const Case& c : all_cases) {
      const auto find = [&](const char* impl) {
        const auto it = reporter.medians_ms.find(benchmark_name(c.name, impl, threads));
        return it == reporter.medians_ms.end() ? -1.0 : it->second;
      };
      const double calq_ms = find("calq");
      const double aten_ms = find("aten");
      const double roofline_ms = find("roofline");
      if (calq_ms < 0 || aten_ms < 0 || roofline_ms < 0) {
        continue;  // filtered out by --benchmark_filter
      }
      std::printf("%-48s %7d %9.2f %9.2f %7.1fx %11.2f %12.2fx\n", c.name.c_str(), threads, calq_ms,
                  aten_ms, aten_ms / calq_ms, roofline_ms, calq_ms / roofline_ms);
      out["cases"].push_back({{"name", c.name},
                              {"threads", threads},
                              {"calq_ms", calq_ms},
                              {"aten_ms", aten_ms},
                              {"speedup", aten_ms / calq_ms},
                              {"roofline_ms", roofline_ms}});
    }
  }
  if (!json_path.empty()) {
    std::ofstream file(json_path);
    file << out.dump(2) << "\n";
    if (!file) {
      std::cerr << "could not write " << json_path << "\n";
      return 1;
    }
    std::printf("wrote %s\n", json_path.c_str());
  }
  benchmark::Shutdown();
  return 0;
}
