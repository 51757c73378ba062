// Data-parallel QAT on this machine, and the inputs of docs/distributed.md's cost model.
//
//   bench/run.sh distributed [--json FILE] [--steps N] [--batch N] [--models a,b]
//                            [--methods a,b]
//
// Started without RANK (the driver), it measures:
//   parameters   every zoo model and QAT method: parameters (weights, batch norm, quantizer
//                parameters) and the bytes the gradient all-reduce moves per step;
//   step         QAT step time of each zoo model and method for the global batch --batch
//                (default 64), after --steps warm-up steps, as the mean of --steps steps
//                (default 10): one process with 1 thread, one process with 2 threads, and a
//                job of 2 processes with 1 thread each (this program, started through calq's
//                launcher; each rank trains on half of every batch); wall time, the CPU
//                time of all processes (what a step costs when the cores are shared), and
//                the time a rank is blocked in collectives (data movement, waiting for the
//                slower rank);
//   allreduce    one all-reduce between the 2 processes (Gloo over loopback), 4 KB .. 64 MB,
//                median of several.
// The three configurations run in turn, --rounds times (default 3); each figure is the median
// round (a shared machine's load then hits every configuration alike).
// Synthetic 1x28x28 images, 10 classes; QAT recipe as the CLI (activations `method` with
// min_max, weights lsq for lsq else fake_quant; Adam, constant learning rate).
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <time.h>
#include <unistd.h>

#include "calq/distributed/launch.h"
#include "calq/distributed/process_group.h"
#include "calq/pipeline/training.h"
#include "calq/qconfig.h"
#include "calq/util/progress.h"
#include "calq/workflow.h"
#include "calq/zoo/models.h"

namespace {

using Clock = std::chrono::steady_clock;
using calq::distributed::ProcessGroup;

struct Settings {
  int64_t steps = 10;
  int64_t batch = 64;
  std::vector<std::string> models = {"cnn", "resnet", "mobilenet"};
  std::vector<std::string> methods = {"fake_quant", "lsq"};
  int64_t rounds = 3;
  std::string json;
};

std::vector<std::string> split(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream in(list);
  for (std::string item; std::getline(in, item, ',');) out.push_back(item);
  return out;
}

calq::QConfig qat_qconfig(const std::string& method) {
  return calq::get_default_qconfig(method, std::string(method == "lsq" ? "lsq" : "fake_quant"),
                                   "min_max", "min_max");
}

calq::data::Dataset synthetic(int64_t size) {
  torch::manual_seed(7);
  calq::data::Dataset d;
  d.images = torch::randn({size, 1, 28, 28});
  d.labels = torch::randint(0, 10, {size}, torch::kLong);
  return d;
}

// A prepared, calibrated QAT model (or the float one for method "float").
calq::zoo::Classifier model_for(const std::string& name, const std::string& method) {
  torch::manual_seed(0);
  calq::zoo::Classifier model = calq::zoo::make_model(name);
  if (method == "float") return model;
  calq::fuse(*model);
  calq::QConfigOverrides overrides;
  calq::QConfig last = qat_qconfig(method);
  last.activation = c10::nullopt;
  overrides.by_name[model->output_layer()] = last;
  calq::prepare_qat(*model, qat_qconfig(method), overrides);
  calq::calibrate(model, std::vector<at::Tensor>{torch::randn({8, 1, 28, 28})});
  calq::set_fake_quantize(*model, calq::FakeQuantState::QAT);
  return model;
}

// Parameters after one QAT step (lsq scales take their shape at the first quantizing forward).
nlohmann::json count_parameters(const std::string& name, const std::string& method) {
  calq::zoo::Classifier model = model_for(name, method);
  calq::pipeline::train(
      *model, synthetic(16),
      calq::pipeline::TrainOptions().epochs(1).batch_size(16).quantized(method != "float"));
  int64_t weights = 0, quantizer = 0;
  for (const auto& p : model->named_parameters()) {
    (p.key().find("fake_quant.") != std::string::npos ? quantizer : weights) += p.value().numel();
  }
  return {{"model", name},
          {"method", method},
          {"parameters", weights + quantizer},
          {"quantizer_parameters", quantizer},
          {"bytes_per_step", 4 * (weights + quantizer)}};
}

double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// Wall and CPU (this process, every thread) seconds per QAT step of the global batch: the
// mean over `steps` steps, after `steps` warm-up steps.
struct StepTime {
  double wall = 0.0;
  double cpu = 0.0;
  double wait = 0.0;  ///< blocked in collectives (a job's ranks)
};
StepTime step_time(const std::string& name, const std::string& method, const Settings& s,
                   const std::shared_ptr<ProcessGroup>& group) {
  calq::zoo::Classifier model = model_for(name, method);
  std::vector<std::pair<Clock::time_point, double>> ends;
  std::vector<double> waits;
  calq::pipeline::train(*model, synthetic(s.batch * s.steps),
                        calq::pipeline::TrainOptions()
                            .epochs(2)
                            .batch_size(s.batch)
                            .cosine(false)
                            .quantized(method != "float")
                            .process_group(group)
                            .on_epoch_end([&](int64_t) {
                              ends.emplace_back(Clock::now(), process_cpu_seconds());
                              waits.push_back(group ? group->wait_seconds() : 0.0);
                            }));
  const double steps = static_cast<double>(s.steps);
  return {std::chrono::duration<double>(ends[1].first - ends[0].first).count() / steps,
          (ends[1].second - ends[0].second) / steps, (waits[1] - waits[0]) / steps};
}

nlohmann::json allreduce_times(ProcessGroup& group) {
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t bytes = int64_t{1} << 12; bytes <= int64_t{1} << 26; bytes <<= 2) {
    std::vector<at::Tensor> t{torch::ones({bytes / 4})};
    const int repeats = static_cast<int>(std::clamp<int64_t>((int64_t{1} << 27) / bytes, 5, 50));
    std::vector<double> samples;
    for (int i = 0; i < repeats + 2; ++i) {
      const auto t0 = Clock::now();
      group.all_reduce(t);
      if (i >= 2) samples.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::sort(samples.begin(), samples.end());
    const double median = samples[samples.size() / 2];
    rows.push_back({{"bytes", bytes},
                    {"seconds", median},
                    {"gbit_per_s", 8.0 * static_cast<double>(bytes) / median / 1e9}});
  }
  return rows;
}

int rank_main(const Settings& s, const std::string& out) {
  auto group = std::make_shared<ProcessGroup>(calq::distributed::options_from_environment());
  nlohmann::json result;
  for (const auto& name : s.models) {
    for (const auto& method : s.methods) {
      const StepTime t = step_time(name, method, s, group);
      result["step"][name][method] = {{"wall", t.wall}, {"cpu", t.cpu}, {"wait", t.wait}};
    }
  }
  result["allreduce"] = allreduce_times(*group);
  std::ofstream(out + ".rank" + std::to_string(group->rank())) << result.dump(2);
  return 0;
}

int driver_main(const Settings& s, const std::vector<std::string>& argv) {
  nlohmann::json report;
  report["settings"] = {
      {"steps", s.steps}, {"batch", s.batch}, {"models", s.models}, {"methods", s.methods}};
  report["hardware_threads"] = std::thread::hardware_concurrency();
  std::printf("parameters and bytes all-reduced per step (float32 gradients)\n");
  std::printf(
      "| model | method | parameters | of which quantizer | MB per step "
      "|\n|---|---|---:|---:|---:|\n");
  for (const auto& name : calq::zoo::model_names()) {
    for (const std::string method : {"float", "fake_quant", "lsq", "pact"}) {
      const nlohmann::json row = count_parameters(name, method);
      report["parameters"].push_back(row);
      std::printf("| %s | %s | %lld | %lld | %.3f |\n", name.c_str(), method.c_str(),
                  static_cast<long long>(row["parameters"].get<int64_t>()),
                  static_cast<long long>(row["quantizer_parameters"].get<int64_t>()),
                  row["bytes_per_step"].get<int64_t>() / 1e6);
    }
  }

  // Rounds of every configuration in turn, so that load from other processes on a shared
  // machine hits each alike; the median round is reported.
  const std::string out = (std::filesystem::temp_directory_path() /
                           ("calq_distributed_bench_" + std::to_string(getpid()) + ".json"))
                              .string();
  std::vector<std::string> command{"/proc/self/exe"};
  command.insert(command.end(), argv.begin(), argv.end());
  command.push_back("--rank-out");
  command.push_back(out);
  std::map<std::string, std::vector<double>> samples;  // "config/model/method", wall seconds
  std::map<std::string, std::vector<double>> cpu;      // the same keys, CPU seconds (all ranks)
  std::map<std::string, std::vector<double>> wait;     // 2x1 keys: rank seconds in collectives
  std::map<int64_t, std::vector<double>> allreduce;    // bytes -> seconds
  for (int64_t round = 0; round < s.rounds; ++round) {
    for (const int threads : {1, 2}) {
      at::set_num_threads(threads);
      for (const auto& name : s.models) {
        for (const auto& method : s.methods) {
          const std::string key = "1x" + std::to_string(threads) + "/" + name + "/" + method;
          const StepTime t = step_time(name, method, s, nullptr);
          samples[key].push_back(t.wall);
          cpu[key].push_back(t.cpu);
        }
      }
    }
    const auto job = calq::distributed::launch_local(
        calq::distributed::LaunchOptions(2, command).threads_per_process(1));
    TORCH_CHECK(job.exit_code() == 0, "the 2-process job failed: ", job.summary());
    std::vector<nlohmann::json> ranks;
    for (int r = 0; r < 2; ++r) {
      std::ifstream in(out + ".rank" + std::to_string(r));
      ranks.push_back(nlohmann::json::parse(in));
      std::filesystem::remove(out + ".rank" + std::to_string(r));
    }
    for (const auto& name : s.models) {
      for (const auto& method : s.methods) {
        const std::string key = "2x1/" + name + "/" + method;
        const auto& a = ranks[0]["step"][name][method];
        const auto& b = ranks[1]["step"][name][method];
        samples[key].push_back(std::max(a["wall"].get<double>(), b["wall"].get<double>()));
        cpu[key].push_back(a["cpu"].get<double>() + b["cpu"].get<double>());
        wait[key].push_back(std::max(a["wait"].get<double>(), b["wait"].get<double>()));
      }
    }
    for (const auto& row : ranks[0]["allreduce"]) {
      allreduce[row["bytes"].get<int64_t>()].push_back(row["seconds"].get<double>());
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  for (const auto& item : samples) {
    const auto first = item.first.find('/');
    const auto second = item.first.find('/', first + 1);
    const std::string config = item.first.substr(0, first);
    const std::string model = item.first.substr(first + 1, second - first - 1);
    const std::string method = item.first.substr(second + 1);
    report["step"][config][model][method] = median(item.second);
    report["step_cpu"][config][model][method] = median(cpu[item.first]);
    if (wait.count(item.first)) report["step_wait"][model][method] = median(wait[item.first]);
    report["step_samples"][item.first] = item.second;
  }
  for (const auto& item : allreduce) {
    const double seconds = median(item.second);
    report["allreduce"].push_back(
        {{"bytes", item.first},
         {"seconds", seconds},
         {"gbit_per_s", 8.0 * static_cast<double>(item.first) / seconds / 1e9}});
  }

  std::printf(
      "\nQAT step, global batch %lld: wall ms (images/s) / CPU ms of all processes per step\n",
      static_cast<long long>(s.batch));
  std::printf(
      "| model | method | 1 process x 1 thread | 1 process x 2 threads | 2 processes x 1 thread "
      "| of which in collectives (2 x 1) |\n|---|---|---:|---:|---:|---:|\n");
  for (const auto& name : s.models) {
    for (const auto& method : s.methods) {
      std::printf("| %s | %s", name.c_str(), method.c_str());
      for (const char* config : {"1x1", "1x2", "2x1"}) {
        const double seconds = report["step"][config][name][method].get<double>();
        const double cpu_seconds = report["step_cpu"][config][name][method].get<double>();
        std::printf(" | %.1f (%.0f) / %.1f", seconds * 1e3, static_cast<double>(s.batch) / seconds,
                    cpu_seconds * 1e3);
      }
      std::printf(" | %.1f |\n", report["step_wait"][name][method].get<double>() * 1e3);
    }
  }
  std::printf(
      "\nall-reduce between 2 local processes (Gloo, loopback)\n| bytes | ms | Gbit/s "
      "|\n|---:|---:|---:|\n");
  for (const auto& row : report["allreduce"]) {
    std::printf("| %lld | %.3f | %.2f |\n", static_cast<long long>(row["bytes"].get<int64_t>()),
                row["seconds"].get<double>() * 1e3, row["gbit_per_s"].get<double>());
  }
  if (!s.json.empty()) std::ofstream(s.json) << report.dump(2) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  std::string rank_out;
  std::vector<std::string> passed;  // the flags a rank gets again
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string flag = argv[i];
      TORCH_CHECK(i + 1 < argc, "flag ", flag, " needs a value");
      const std::string value = argv[++i];
      if (flag == "--steps") {
        s.steps = std::stoll(value);
      } else if (flag == "--batch") {
        s.batch = std::stoll(value);
      } else if (flag == "--models") {
        s.models = split(value);
      } else if (flag == "--methods") {
        s.methods = split(value);
      } else if (flag == "--rounds") {
        s.rounds = std::stoll(value);
        continue;
      } else if (flag == "--json") {
        s.json = value;
        continue;
      } else if (flag == "--rank-out") {
        rank_out = value;
        continue;
      } else {
        TORCH_CHECK(false, "unknown flag ", flag,
                    "; valid: --steps, --batch, --models, --methods, --rounds, --json");
      }
      passed.push_back(flag);
      passed.push_back(value);
    }
    calq::util::Progress::set_globally_quiet(true);
    if (calq::distributed::launched_by_environment()) return rank_main(s, rank_out);
    return driver_main(s, passed);
  } catch (const c10::Error& error) {
    std::cerr << "distributed_bench: " << error.what_without_backtrace() << "\n";
    return 1;
  }
}
