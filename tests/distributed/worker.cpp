// One rank of the distributed tests' jobs (started by the tests through calq's launcher), or,
// without RANK in the environment, the same computation in one process. Each scenario writes
// its results to files the tests compare against an independent reference.
//
//   worker calibrate OUT BATCHES             every recipe of recipes.h: calibrate, save state
//   worker qat OUT METHOD EPOCHS TAG [resume] [stop-after-epoch N] [no-overlap] [distill]
//                                            [ulp]  (ulp: every batch-norm weight one ulp up)
//                                            (METHOD float: float training of the unfused model;
//                                            distill: data without labels, a float teacher)
//   worker evaluate OUT                      evaluate_each on a calibrated model
//   worker gradients OUT METHOD              the gradients of one global batch
//   worker observers OUT                     global_observer_input for every observer kind
//   worker syncbn OUT ROWS                   sync_batch_norm forward/backward on a known batch
//   worker reducer OUT                       GradientReducer on known per-rank gradients
//   worker fault OUT MODE TIMEOUT_SECONDS    rank 1 (or 0) dies / stops / fails mid-collective
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/torch.h>

#include <chrono>
#include <csignal>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "calq/data/source.h"
#include "calq/distributed/data_parallel.h"
#include "calq/distributed/gradient_reducer.h"
#include "calq/distributed/observer_sync.h"
#include "calq/distributed/process_group.h"
#include "calq/distributed/sync_batch_norm.h"
#include "calq/fake_quantize.h"
#include "calq/observers/registry.h"
#include "calq/pipeline/training.h"
#include "calq/util/atomic_file.h"
#include "distributed/recipes.h"

namespace {

using calq::distributed::ProcessGroup;

std::shared_ptr<ProcessGroup> join() {
  if (!calq::distributed::launched_by_environment()) return nullptr;
  return std::make_shared<ProcessGroup>(calq::distributed::options_from_environment());
}

// "rank<r>" in a job, "single" in one process.
std::string who(const std::shared_ptr<ProcessGroup>& group) {
  return group ? "rank" + std::to_string(group->rank()) : "single";
}

void save_state(const torch::nn::Module& module, const std::string& path) {
  calq::util::write_file_atomic(path, calq::distributed::serialize_state(module));
}

double now_seconds() {  // CLOCK_MONOTONIC: comparable between processes of one machine
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int calibrate(const std::string& out, int64_t count) {
  auto group = join();
  const auto batches = calq::testing::calibration_batches(count);
  for (const auto& recipe : calq::testing::calibration_recipes()) {
    calq::zoo::Classifier model = calq::testing::calibration_model(recipe);
    nlohmann::json max_abs = nlohmann::json::object();
    if (!group) {  // the reference records the largest |x| each quantizer saw (error bounds)
      for (const auto& item : model->named_modules()) {
        auto* fq = dynamic_cast<calq::FakeQuantizeImpl*>(item.value().get());
        if (fq == nullptr) continue;
        const std::string name = item.key();
        fq->set_tap([name, &max_abs](const at::Tensor& x, const at::Tensor&) {
          const double m = x.abs().max().item<double>();
          max_abs[name] = std::max(max_abs.value(name, 0.0), m);
        });
      }
      calq::calibrate(model, batches);
    } else {
      calq::distributed::calibrate(model, batches, *group);
    }
    save_state(*model, out + "/" + recipe.name + "." + who(group) + ".pt");
    if (!group)
      calq::util::write_file_atomic(out + "/" + recipe.name + ".maxabs.json", max_abs.dump());
  }
  return 0;
}

int qat(const std::string& out, const std::string& method, int64_t epochs, const std::string& tag,
        const std::vector<std::string>& flags) {
  auto group = join();
  bool resume = false, overlap = true, distill = false, ulp = false;
  int64_t stop_after = -1;
  for (size_t i = 0; i < flags.size(); ++i) {
    if (flags[i] == "resume") resume = true;
    if (flags[i] == "no-overlap") overlap = false;
    if (flags[i] == "distill") distill = true;
    if (flags[i] == "ulp") ulp = true;
    if (flags[i] == "stop-after-epoch") stop_after = std::stoll(flags.at(++i));
  }
  calq::zoo::Classifier model = calq::testing::qat_model(method);
  const calq::data::Dataset data = calq::testing::qat_dataset(96);
  // The control run of the equality test: the same training from batch-norm weights one ulp
  // higher (a relative change of 6e-8 of every convolution's output, the size of the rounding
  // differences synchronized batch norm introduces) measures how far training itself amplifies
  // last-bit differences. (Data one ulp away would not do: the input quantizer rounds it away.)
  if (ulp) {
    torch::NoGradGuard no_grad;
    for (auto& item : model->named_parameters()) {
      const std::string& name = item.key();
      if (name.size() < 9 || name.compare(name.size() - 9, 9, "bn.weight") != 0) continue;
      item.value().copy_(at::nextafter(
          item.value(), at::full_like(item.value(), std::numeric_limits<float>::infinity())));
    }
  }
  auto options = calq::pipeline::TrainOptions()
                     .epochs(epochs)
                     .batch_size(32)
                     .lr(1e-3)
                     .quantizer_lr(1e-4)
                     .cosine(true)
                     .freeze_bn_epochs(epochs > 1 ? 1 : 0)
                     .seed(5)
                     .quantized(method != "float")
                     .label("qat " + method)
                     .checkpoint(out + "/" + tag + ".checkpoint.pt")
                     .resume(resume)
                     .process_group(group)
                     .check_replicas_every(1)
                     .bucket_bytes(overlap ? int64_t{64} << 10 : int64_t{4} << 20);
  if (stop_after > 0) {
    options.on_epoch_end([stop_after](int64_t finished) {
      if (finished == stop_after) throw std::runtime_error("stopped after epoch (test)");
    });
  }
  // Distillation: the images without labels, and the float CNN (another seed) as the teacher,
  // in eval mode and the same on every rank; its logits scaled by 10 so that its softmax is
  // far from uniform and the loss is of the cross-entropy's size (about 2), not ~0.004.
  calq::data::Dataset images_only{data.images, at::Tensor()};
  torch::manual_seed(7);
  calq::zoo::Classifier teacher_model = calq::zoo::make_model("cnn");
  teacher_model->eval();
  const calq::pipeline::Forward teacher = [&teacher_model](const at::Tensor& x) {
    return teacher_model->forward(x) * 10.0;
  };
  try {
    const calq::pipeline::Forward forward = [&model](const at::Tensor& x) {
      return model->forward(x);
    };
    const auto result =
        distill ? calq::pipeline::train(
                      *model, forward, calq::data::in_memory(images_only, nlohmann::json::object()),
                      options, &teacher)
                : calq::pipeline::train(*model, forward, data, options);
    std::ofstream(out + "/" + tag + "." + who(group) + ".loss")
        << std::setprecision(17) << result.final_loss << "\n";
  } catch (const std::runtime_error& error) {
    if (std::string(error.what()) == "stopped after epoch (test)") return 3;
    throw;
  }
  save_state(*model, out + "/" + tag + "." + who(group) + ".pt");
  return 0;
}

// Every observer case fed three global batches: in a job each rank passes its rows through
// global_observer_input; in one process the observer sees the whole batches.
int observers(const std::string& out) {
  auto group = join();
  for (const auto& c : calq::testing::observer_cases()) {
    auto observer = calq::observers::make_observer(c.kind, c.spec, c.kwargs);
    for (const at::Tensor& batch :
         calq::testing::observer_batches(c.name == "min_max_skip_nonfinite")) {
      if (!group) {
        observer->update(batch);
        continue;
      }
      const auto part = calq::distributed::shard(batch.size(0), group->rank(), group->size());
      const at::Tensor mine = batch.narrow(0, part.first, part.second - part.first);
      observer->update(calq::distributed::global_observer_input(mine, *observer, *group));
    }
    save_state(*observer, out + "/" + c.name + "." + who(group) + ".pt");
  }
  return 0;
}

// One forward and backward of the first global batch (32 rows): in one process on all of it,
// in a job through DataParallel (each rank its 16 rows, its loss weighted by its share, the
// gradients summed). Saves every parameter's gradient.
int gradients(const std::string& out, const std::string& method) {
  auto group = join();
  calq::zoo::Classifier model = calq::testing::qat_model(method);
  if (method == "float") model->train();
  const calq::data::Dataset data = calq::testing::qat_dataset(32);
  std::unique_ptr<calq::distributed::DataParallel> parallel;
  at::Tensor images = data.images, labels = data.labels;
  double weight = 1.0;
  if (group) {
    parallel = std::make_unique<calq::distributed::DataParallel>(
        *model, group, calq::distributed::DataParallelOptions().bucket_bytes(int64_t{64} << 10));
    const auto part = calq::distributed::shard(32, group->rank(), group->size());
    const int64_t rows = part.second - part.first;
    images = images.narrow(0, part.first, rows);
    labels = labels.narrow(0, part.first, rows);
    weight = static_cast<double>(rows) / 32.0;
    parallel->set_batch_share(rows, 32);
  }
  at::Tensor loss = at::cross_entropy_loss(model->forward(images), labels) * weight;
  loss.backward();
  if (parallel) parallel->finish_gradients();
  torch::serialize::OutputArchive archive;
  for (const auto& p : model->named_parameters()) {
    archive.write(p.key(),
                  p.value().grad().defined() ? p.value().grad() : at::zeros_like(p.value()));
  }
  std::ostringstream bytes;
  archive.save_to(bytes);
  calq::util::write_file_atomic(out + "/gradients_" + method + "." + who(group) + ".pt",
                                bytes.str());
  save_state(*model, out + "/gradients_" + method + ".state." + who(group) + ".pt");
  return 0;
}

int evaluate(const std::string& out) {
  auto group = join();
  calq::zoo::Classifier model = calq::testing::qat_model("pact");
  const calq::data::Dataset data = calq::testing::qat_dataset(100);
  // 7 batches of 16 (the last of 4): ranks get 3 and 4 of them.
  const auto result =
      calq::pipeline::evaluate_each(*model, data, /*quantized=*/true, 16, "eval", group);
  std::ofstream(out + "/evaluate." + who(group) + ".txt")
      << std::setprecision(17) << result.top1 << "\n"
      << std::string(result.correct.begin(), result.correct.end());
  return 0;
}

int syncbn(const std::string& out, int64_t rows) {
  auto group = join();
  TORCH_CHECK(group, "syncbn needs a job");
  torch::manual_seed(3);
  const at::Tensor x = torch::randn({rows, 3, 5, 4}) * 2.0 + 0.5;
  const at::Tensor grad = torch::randn({rows, 3, 5, 4});
  const at::Tensor weight0 = torch::tensor({1.5f, -0.5f, 2.0f});
  const at::Tensor bias0 = torch::tensor({0.1f, 0.2f, -0.3f});
  const auto part = calq::distributed::shard(rows, group->rank(), group->size());
  at::Tensor local = x.narrow(0, part.first, part.second - part.first).clone().requires_grad_(true);
  at::Tensor weight = weight0.clone().requires_grad_(true);
  at::Tensor bias = bias0.clone().requires_grad_(true);
  at::Tensor running_mean = torch::zeros({3});
  at::Tensor running_var = torch::ones({3});
  at::Tensor y = calq::distributed::sync_batch_norm(local, weight, bias, running_mean, running_var,
                                                    0.1, 1e-5, *group);
  y.backward(grad.narrow(0, part.first, part.second - part.first));
  at::Tensor input_grad = local.grad().defined() ? local.grad() : torch::zeros_like(local);
  torch::save(std::vector<at::Tensor>{y.detach(), input_grad, weight.grad(), bias.grad(),
                                      running_mean, running_var},
              out + "/syncbn." + who(group) + ".pt");
  return 0;
}

int reducer(const std::string& out) {
  auto group = join();
  TORCH_CHECK(group, "reducer needs a job");
  const int64_t r = group->rank();
  // Five parameters, one never used; buckets of at most 64 bytes (16 floats).
  std::vector<at::Tensor> params;
  for (int64_t n : {3, 20, 7, 5, 9}) params.push_back(torch::zeros({n}).requires_grad_(true));
  calq::distributed::GradientReducer reducer(
      params, group, calq::distributed::GradientReducerOptions().bucket_bytes(64));
  nlohmann::json report;
  for (int step = 0; step < 2; ++step) {
    for (auto& p : params) p.mutable_grad() = at::Tensor();
    at::Tensor loss = torch::zeros({});
    for (size_t i = 0; i < params.size(); ++i) {
      if (i == 2) continue;  // unused
      // d loss / d p = (r + 1) * (i + 1) * (step + 1): integers, exact in float.
      loss = loss + params[i].sum() * static_cast<double>((r + 1) * (i + 1) * (step + 1));
    }
    loss.backward();
    reducer.finish();
    std::vector<double> sums;
    for (auto& p : params) sums.push_back(p.grad().sum().item<double>());
    report["steps"].push_back({{"sums", sums}, {"overlapped", reducer.buckets_overlapped()}});
  }
  report["buckets"] = reducer.num_buckets();
  report["bytes"] = reducer.bytes_per_step();
  calq::util::write_file_atomic(out + "/reducer." + who(group) + ".json", report.dump());
  return 0;
}

int fault(const std::string& out, const std::string& mode, double timeout) {
  calq::distributed::ProcessGroupOptions options = calq::distributed::options_from_environment();
  options.timeout(std::chrono::milliseconds(static_cast<int64_t>(timeout * 1000.0)));
  ProcessGroup group(options);
  const int64_t victim = mode.back() == '0' ? 0 : 1;
  const std::string what = mode.substr(0, mode.size() - 1);  // kill, stop, fail
  at::Tensor big = torch::ones({int64_t{1} << 22});          // 16 MB: the kill lands mid-transfer
  try {
    for (int i = 0; i < 1000; ++i) {
      if (group.rank() == victim && i == 3) {
        std::ofstream(out + "/death.time") << std::to_string(now_seconds()) << "\n";
        if (what == "fail") TORCH_CHECK(false, "simulated failure on rank ", victim);
        auto pending = group.all_reduce_async({big}, "test all-reduce");
        if (what == "kill") std::raise(SIGKILL);
        if (what == "stop") std::raise(SIGSTOP);
      }
      std::vector<at::Tensor> tensors{big};
      group.all_reduce(tensors);
      big.fill_(1.0f);
    }
  } catch (const c10::Error& error) {
    std::ofstream(out + "/error.rank" + std::to_string(group.rank()) + ".txt")
        << now_seconds() << "\n"
        << error.what_without_backtrace() << "\n";
    throw;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  at::set_num_threads(1);
  std::vector<std::string> args(argv + 1, argv + argc);
  try {
    TORCH_CHECK(args.size() >= 2, "usage: worker SCENARIO OUT ...");
    const std::string& scenario = args[0];
    const std::string& out = args[1];
    if (scenario == "calibrate") return calibrate(out, std::stoll(args.at(2)));
    if (scenario == "qat") {
      return qat(out, args.at(2), std::stoll(args.at(3)), args.at(4),
                 std::vector<std::string>(args.begin() + 5, args.end()));
    }
    if (scenario == "syncbn") return syncbn(out, std::stoll(args.at(2)));
    if (scenario == "evaluate") return evaluate(out);
    if (scenario == "gradients") return gradients(out, args.at(2));
    if (scenario == "observers") return observers(out);
    if (scenario == "reducer") return reducer(out);
    if (scenario == "fault") return fault(out, args.at(2), std::stod(args.at(3)));
    TORCH_CHECK(false, "unknown scenario '", scenario, "'");
  } catch (const c10::Error& error) {
    std::cerr << "worker " << (std::getenv("RANK") ? std::getenv("RANK") : "-")
              << ": error: " << error.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& error) {
    std::cerr << "worker: error: " << error.what() << "\n";
    return 1;
  }
}
