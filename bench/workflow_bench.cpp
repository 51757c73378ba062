// The QAT / calibration workflow on the zoo ResNet: calq against its own float baseline and
// against PyTorch eager-mode quantization (bench/workflow_pytorch.py, run with /usr/bin/python3).
//
//   bench/run.sh workflow [--json FILE] [--repetitions N] [--steps-per-sample N]
//                         [--warmup N] [--threads N]... [--no-pytorch] [--profile]
//
// Model: calq::zoo::make_model("resnet"), batch 64 of synthetic 1x28x28 images, 10 classes.
// imported/ rows: the same network's PyTorch twin (bench/pytorch_zoo.py) exported to ONNX
// (bench/export_zoo_onnx.py) and imported by calq::onnx::import, each against the zoo row of the
// same name (goal: within 1.05x), QAT also against the imported float step (goal: 1.3x).
// Cases, each timed with 1 thread and with every hardware thread:
//   train_step/float              float model, training mode: forward, cross-entropy, backward,
//                                 Adam step (the baseline of the train_step rows);
//   train_step/{fake_quant,lsq,pact}
//                                 the same step after calq::fuse + calq::prepare_qat with
//                                 get_default_qconfig(method, lsq ? "lsq" : "fake_quant"), the
//                                 last layer "fc" with a float output (as the CLI), state QAT;
//   inference/float               float model, eval mode, no grad (baseline of calibration);
//   calibration/{min_max,percentile}
//                                 one calibration batch: fused + prepared with that activation
//                                 observer (weights min_max, as the CLI), state CALIBRATION, no
//                                 grad.
// PyTorch (same threads, same shapes): train_step/float and inference/float run the float
// model; every train_step QAT row is PyTorch's default eager QAT (fuse_modules_qat,
// get_default_qat_qconfig("fbgemm"), prepare_qat); calibration/min_max uses MinMaxObserver and
// calibration/percentile PyTorch's HistogramObserver (get_default_qconfig("fbgemm")) after
// fuse_modules + prepare.
//
// Timing: all calq cases of one thread count are measured in interleaved rounds (one sample of
// every case per round) after a warm-up, so load changes on a shared machine hit every case
// alike; each sample is the mean of --steps-per-sample consecutive calls; the reported value is
// the median sample. --profile adds a breakdown of the QAT and calibration overheads.

#include <torch/torch.h>
#include <nlohmann/json.hpp>
#include "calq/util/allocator.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "calq/fake_quantize.h"
#include "calq/graph/graph.h"
#include "calq/nn.h"
#include "calq/onnx/import.h"
#include "calq/qconfig.h"
#include "calq/quant/fake_quant.h"
#include "calq/workflow.h"
#include "calq/zoo/models.h"
#include "python_reference.h"

namespace {

constexpr int64_t kBatch = 64;
constexpr int64_t kClasses = 10;
constexpr uint64_t kSeed = 0;
// The arithmetic of an Adam step does not depend on the learning rate. A tiny one keeps the
// learned LSQ step sizes (about 1e-3 for weights) positive over the thousands of benchmark
// steps on random labels; Adam moves every parameter by about lr per step.
constexpr double kLearningRate = 1e-6;
constexpr double kGoalQatOverFloat = 1.3;
constexpr double kGoalCalibrationOverFloat = 1.3;
constexpr double kGoalImportedOverZoo = 1.05;

std::string fmt_ratio(double r) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), " %.2fx", r);
  return buffer;
}

using Clock = std::chrono::steady_clock;

double elapsed_ms(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

double median(std::vector<double> v) {
  TORCH_CHECK(!v.empty(), "median of no samples");
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Options {
  std::string json_path;
  int repetitions = 11;
  int steps_per_sample = 1;
  int warmup = 3;
  std::vector<int> threads;  // empty: 1 and every hardware thread
  bool with_pytorch = true;
  bool profile = false;
};

// Synthetic batch: images ~ N(0, 1) (about the range of normalized Fashion-MNIST), labels
// uniform over the classes.
struct Batch {
  at::Tensor images, labels;
};

const Batch& batch() {
  static const Batch b = [] {
    torch::manual_seed(kSeed);
    Batch v;
    v.images = torch::randn({kBatch, 1, 28, 28});
    v.labels = torch::randint(kClasses, {kBatch}, torch::kLong);
    return v;
  }();
  return b;
}

// Every model starts from the same float weights.
calq::zoo::Classifier fresh_model() {
  torch::manual_seed(kSeed);
  return calq::zoo::make_model("resnet", kClasses);
}

// The CLI's "32-bit output": the classifier's logits stay float, its weight is quantized.
calq::QConfigOverrides float_output(const calq::zoo::ClassifierImpl& model,
                                    const calq::QConfig& global) {
  calq::QConfigOverrides overrides;
  calq::QConfig last = global;
  last.activation = c10::nullopt;
  overrides.by_name[model.output_layer()] = last;
  return overrides;
}

calq::zoo::Classifier prepared_model(const calq::QConfig& qconfig) {
  calq::zoo::Classifier model = fresh_model();
  TORCH_CHECK(calq::fuse(*model) > 0, "workflow bench: fuse found no Conv-BN block in resnet");
  calq::prepare_qat(*model, qconfig, float_output(*model, qconfig));
  return model;
}

calq::zoo::Classifier qat_model(const std::string& method) {
  const std::string weight_method = method == "lsq" ? "lsq" : "fake_quant";
  calq::zoo::Classifier model = prepared_model(calq::get_default_qconfig(method, weight_method));
  calq::set_fake_quantize(*model, calq::FakeQuantState::QAT);
  return model;
}

calq::zoo::Classifier calibration_model(const std::string& observer) {
  calq::zoo::Classifier model = prepared_model(calq::get_default_qconfig(
      std::string("fake_quant"), std::string("fake_quant"), observer, "min_max"));
  calq::set_fake_quantize(*model, calq::FakeQuantState::CALIBRATION);
  return model;
}

// A model with its optimizer: one call of step() is one training step.
// A module and its forward: the zoo ResNet or the imported graph of its PyTorch twin.
struct Net {
  std::shared_ptr<torch::nn::Module> module;
  std::function<at::Tensor(const at::Tensor&)> forward;
};

Net net_of(calq::zoo::Classifier m) {
  return {m, [m](const at::Tensor& x) mutable { return m->forward(x); }};
}

struct Trainer {
  explicit Trainer(calq::zoo::Classifier m) : Trainer(net_of(std::move(m))) {}
  explicit Trainer(Net n) : net(std::move(n)) {
    net.module->train();
    {
      // The first forward initializes lazily sized state (lsq scales); the optimizer is built
      // afterwards so that it sees every parameter in its final shape.
      torch::NoGradGuard no_grad;
      net.forward(batch().images);
    }
    optimizer = std::make_unique<torch::optim::Adam>(net.module->parameters(),
                                                     torch::optim::AdamOptions(kLearningRate));
  }
  at::Tensor forward() { return net.forward(batch().images); }
  at::Tensor loss(const at::Tensor& logits) {
    return torch::nn::functional::cross_entropy(logits, batch().labels);
  }
  void step() {
    optimizer->zero_grad();
    at::Tensor l = loss(forward());
    l.backward();
    optimizer->step();
  }
  Net net;
  std::unique_ptr<torch::optim::Adam> optimizer;
};

// ---- The imported twin (issue goal: within 1.05x of the zoo model, step for step) ----

// The zoo ResNet's PyTorch twin exported by bench/export_zoo_onnx.py (training mode, so its
// BatchNormalization nodes become Conv-BN blocks as in the zoo model), or "" when python3 /
// PyTorch is unavailable.
std::string imported_resnet_path() {
  static const std::string path = [] {
    const std::string file = (std::filesystem::temp_directory_path() /
                              ("calq_bench_resnet_" + std::to_string(::getpid()) + ".onnx"))
                                 .string();
    const nlohmann::json r =
        calq_bench::run_python_reference("workflow_bench", "export_zoo_onnx.py", {"resnet", file});
    return r.is_object() ? r.value("path", std::string()) : std::string();
  }();
  return path;
}

// The imported graph, prepared as the CLI prepares an imported model: fused at import, the
// logits float (the Gemm's activation), weights quantized.
Net imported_model(const c10::optional<calq::QConfig>& qconfig, calq::FakeQuantState state) {
  torch::manual_seed(kSeed);
  calq::onnx::ImportedModel imported = calq::onnx::import(imported_resnet_path());
  calq::graph::Graph graph = imported.graph;
  // Conv-BN blocks fold batch norm as the zoo's do (calq::fuse), float and prepared alike.
  TORCH_CHECK(calq::fuse(*graph) > 0, "workflow bench: fuse found no Conv-BN block in the import");
  if (qconfig) {
    calq::QConfigOverrides overrides;
    std::string last_linear;
    for (const auto& item : graph->named_modules()) {
      if (dynamic_cast<calq::nn::detail::LinearBlockImpl*>(item.value().get())) {
        last_linear = item.key();
      }
    }
    TORCH_CHECK(!last_linear.empty(), "workflow bench: the imported resnet has no Linear");
    calq::QConfig last = *qconfig;
    last.activation = c10::nullopt;
    overrides.by_name[last_linear] = last;
    calq::prepare_qat(*graph, *qconfig, overrides);
    calq::set_fake_quantize(*graph, state);
  }
  return {graph.ptr(), [graph](const at::Tensor& x) mutable { return graph->forward(x); }};
}

using Op = std::function<void()>;

struct CalqCase {
  std::string name;
  std::string baseline;  // name of the case whose time is calq_float_ms
  Op op;
};

std::vector<CalqCase> calq_cases() {
  std::vector<CalqCase> cases;
  auto train_case = [&](const std::string& name, calq::zoo::Classifier model) {
    auto trainer = std::make_shared<Trainer>(std::move(model));
    cases.push_back({"train_step/" + name, "train_step/float", [trainer] { trainer->step(); }});
  };
  train_case("float", fresh_model());
  for (const std::string method : {"fake_quant", "lsq", "pact"}) {
    train_case(method, qat_model(method));
  }
  const bool with_imported = !imported_resnet_path().empty();
  if (with_imported) {
    auto imported_train_case = [&](const std::string& name, Net net) {
      auto trainer = std::make_shared<Trainer>(std::move(net));
      cases.push_back(
          {"imported/train_step/" + name, "train_step/" + name, [trainer] { trainer->step(); }});
    };
    imported_train_case("float", imported_model(c10::nullopt, calq::FakeQuantState::QAT));
    for (const std::string method : {"fake_quant", "lsq", "pact"}) {
      imported_train_case(
          method,
          imported_model(calq::get_default_qconfig(method, method == "lsq" ? "lsq" : "fake_quant"),
                         calq::FakeQuantState::QAT));
    }
  } else {
    std::cerr << "workflow bench: no imported model (python3 with PyTorch missing); the "
                 "imported/ rows are skipped\n";
  }
  auto inference_case = [&](const std::string& name, calq::zoo::Classifier model) {
    cases.push_back({name, "inference/float", [model] {
                       torch::NoGradGuard no_grad;
                       model->forward(batch().images);
                     }});
  };
  calq::zoo::Classifier float_eval = fresh_model();
  float_eval->eval();
  inference_case("inference/float", float_eval);
  for (const std::string observer : {"min_max", "percentile"}) {
    inference_case("calibration/" + observer, calibration_model(observer));
  }
  if (with_imported) {
    for (const std::string observer : {"min_max", "percentile"}) {
      Net net =
          imported_model(calq::get_default_qconfig(std::string("fake_quant"),
                                                   std::string("fake_quant"), observer, "min_max"),
                         calq::FakeQuantState::CALIBRATION);
      cases.push_back({"imported/calibration/" + observer, "calibration/" + observer, [net] {
                         torch::NoGradGuard no_grad;
                         net.forward(batch().images);
                       }});
    }
  }
  return cases;
}

// Measures every op in interleaved rounds; returns the median ms per call of each.
std::vector<double> measure(const std::vector<Op>& ops, const Options& options) {
  for (int w = 0; w < options.warmup; ++w) {
    for (const Op& op : ops) op();
  }
  std::vector<std::vector<double>> samples(ops.size());
  for (int r = 0; r < options.repetitions; ++r) {
    for (size_t i = 0; i < ops.size(); ++i) {
      const auto start = Clock::now();
      for (int s = 0; s < options.steps_per_sample; ++s) ops[i]();
      samples[i].push_back(elapsed_ms(start) / options.steps_per_sample);
    }
  }
  std::vector<double> medians;
  for (const auto& s : samples) medians.push_back(median(s));
  return medians;
}

// ---------------------------------------------------------------------------------------------
// PyTorch reference
// ---------------------------------------------------------------------------------------------

// {"<threads>": {"<case>": ms}} from bench/workflow_pytorch.py, or null when unavailable.
nlohmann::json pytorch_timings(const std::vector<int>& threads, const Options& options) {
  std::vector<std::string> arguments = {
      "--repetitions",      std::to_string(options.repetitions),
      "--steps-per-sample", std::to_string(options.steps_per_sample),
      "--warmup",           std::to_string(options.warmup),
      "--threads"};
  for (int t : threads) arguments.push_back(std::to_string(t));
  return calq_bench::run_python_reference("workflow_bench", "workflow_pytorch.py", arguments);
}

// ---------------------------------------------------------------------------------------------
// Profile: where the QAT and calibration time goes.
// ---------------------------------------------------------------------------------------------

// Runs the zoo ResNet's forward module by module (the same order as ResNetImpl::forward),
// timing each named module's call into `times`.
class ModuleWalker {
 public:
  explicit ModuleWalker(calq::zoo::ClassifierImpl& model) {
    for (const auto& item : model.named_modules()) modules_[item.key()] = item.value();
  }

  at::Tensor forward(const at::Tensor& x) {
    at::Tensor y = unary("quant", x);
    y = unary("stem", y);
    for (const char* block : {"layer1", "layer2", "layer3"}) y = basic_block(block, y);
    y = unary("pool", y);
    y = unary("flatten", y);
    y = unary("fc", y);
    return unary("dequant", y);
  }

  std::map<std::string, std::vector<double>> times;

 private:
  template <typename T>
  T* get(const std::string& name) const {
    const auto it = modules_.find(name);
    TORCH_CHECK(it != modules_.end(), "workflow bench: resnet has no module '", name, "'");
    auto* module = dynamic_cast<T*>(it->second.get());
    TORCH_CHECK(module != nullptr, "workflow bench: module '", name, "' has an unexpected type");
    return module;
  }

  at::Tensor timed(const std::string& name, const std::function<at::Tensor()>& fn) {
    const auto start = Clock::now();
    at::Tensor y = fn();
    times[name].push_back(elapsed_ms(start));
    return y;
  }

  at::Tensor unary(const std::string& name, const at::Tensor& x) {
    const auto it = modules_.find(name);
    TORCH_CHECK(it != modules_.end(), "workflow bench: resnet has no module '", name, "'");
    torch::nn::Module* m = it->second.get();
    if (auto* conv = dynamic_cast<calq::nn::detail::ConvBlockImpl*>(m)) {
      return timed(name, [&] { return conv->forward(x); });
    }
    if (auto* linear = dynamic_cast<calq::nn::detail::LinearBlockImpl*>(m)) {
      return timed(name, [&] { return linear->forward(x); });
    }
    if (auto* quant = dynamic_cast<calq::nn::QuantStubImpl*>(m)) {
      return timed(name, [&] { return quant->forward(x); });
    }
    if (auto* dequant = dynamic_cast<calq::nn::DeQuantStubImpl*>(m)) {
      return timed(name, [&] { return dequant->forward(x); });
    }
    if (auto* relu = dynamic_cast<calq::nn::ReLUImpl*>(m)) {
      return timed(name, [&] { return relu->forward(x); });
    }
    if (auto* pool = dynamic_cast<calq::nn::AdaptiveAvgPool2dImpl*>(m)) {
      return timed(name, [&] { return pool->forward(x); });
    }
    if (auto* flatten = dynamic_cast<calq::nn::FlattenImpl*>(m)) {
      return timed(name, [&] { return flatten->forward(x); });
    }
    TORCH_CHECK(false, "workflow bench: module '", name, "' has an unexpected type");
  }

  at::Tensor basic_block(const std::string& prefix, const at::Tensor& x) {
    const bool has_shortcut = modules_.count(prefix + ".shortcut") > 0;
    const at::Tensor identity = has_shortcut ? unary(prefix + ".shortcut", x) : x;
    at::Tensor y = unary(prefix + ".conv2", unary(prefix + ".conv1", x));
    auto* add_relu = get<calq::nn::AddReLUImpl>(prefix + ".add_relu");
    return timed(prefix + ".add_relu", [&] { return add_relu->forward(y, identity); });
  }

  std::map<std::string, std::shared_ptr<torch::nn::Module>> modules_;
};

// Median ms per module over `rounds` forwards of `model` (grad on when `grad`).
std::map<std::string, double> module_times(calq::zoo::ClassifierImpl& model, bool grad,
                                           int rounds) {
  ModuleWalker walker(model);
  for (int r = 0; r < rounds + 3; ++r) {
    c10::optional<torch::NoGradGuard> no_grad;
    if (!grad) no_grad.emplace();
    walker.forward(batch().images);
    if (r == 2) walker.times.clear();  // first rounds are warm-up
  }
  std::map<std::string, double> out;
  for (const auto& item : walker.times) out[item.first] = median(item.second);
  return out;
}

// The walker must compute what the model computes (checked on the float model in eval mode).
void check_walker() {
  calq::zoo::Classifier model = fresh_model();
  model->eval();
  torch::NoGradGuard no_grad;
  ModuleWalker walker(*model);
  const at::Tensor a = model->forward(batch().images);
  const at::Tensor b = walker.forward(batch().images);
  TORCH_CHECK(at::allclose(a, b), "workflow bench: the module walk differs from ResNet::forward");
}

// Minor page faults of this process so far (fresh memory the kernel maps on first touch).
long minor_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

// Forward / backward / optimizer split of a training step, median ms over `rounds`, and the
// median minor page faults of a whole step.
struct PhaseTimes {
  double forward = 0, backward = 0, optimizer = 0, faults = 0;
};

PhaseTimes phase_times(Trainer& trainer, int rounds) {
  std::vector<double> f, b, o, faults;
  for (int r = 0; r < rounds + 3; ++r) {
    const long faults_before = minor_faults();
    trainer.optimizer->zero_grad();
    auto start = Clock::now();
    at::Tensor loss = trainer.loss(trainer.forward());
    const double tf = elapsed_ms(start);
    start = Clock::now();
    loss.backward();
    const double tb = elapsed_ms(start);
    start = Clock::now();
    trainer.optimizer->step();
    const double to = elapsed_ms(start);
    if (r >= 3) {
      f.push_back(tf);
      b.push_back(tb);
      o.push_back(to);
      faults.push_back(static_cast<double>(minor_faults() - faults_before));
    }
  }
  return {median(f), median(b), median(o), median(faults)};
}

// Sums module times by kind: conv blocks, output quantization points (add, relu, pool, stubs),
// the rest.
void print_module_table(
    const std::map<std::string, double>& base, const std::string& base_name,
    const std::vector<std::pair<std::string, std::map<std::string, double>>>& variants) {
  std::printf("  %-18s %10s", "module", base_name.c_str());
  for (const auto& v : variants) std::printf(" %12s", v.first.c_str());
  std::printf("\n");
  std::vector<double> totals(variants.size() + 1, 0.0);
  for (const auto& item : base) {
    std::printf("  %-18s %10.3f", item.first.c_str(), item.second);
    totals[0] += item.second;
    for (size_t i = 0; i < variants.size(); ++i) {
      const double t = variants[i].second.at(item.first);
      totals[i + 1] += t;
      std::printf(" %12.3f", t);
    }
    std::printf("\n");
  }
  std::printf("  %-18s %10.3f", "sum", totals[0]);
  for (size_t i = 0; i < variants.size(); ++i) std::printf(" %12.3f", totals[i + 1]);
  std::printf("\n");
}

// Median ms of `fn` over `rounds` calls after 3 warm-up calls.
double time_op(const std::function<void()>& fn, int rounds) {
  std::vector<double> t;
  for (int r = 0; r < rounds + 3; ++r) {
    const auto start = Clock::now();
    fn();
    if (r >= 3) t.push_back(elapsed_ms(start));
  }
  return median(t);
}

// Pieces of one output quantization point on the stem's activation (64x16x28x28), the largest
// in the model; and of the conv it follows.
void profile_pieces(int rounds) {
  torch::manual_seed(kSeed);
  const at::Tensor x = at::relu(torch::randn({kBatch, 16, 28, 28}));
  const at::Tensor input = torch::randn({kBatch, 16, 28, 28});
  const at::Tensor weight = torch::randn({16, 16, 3, 3}) * 0.1;
  const at::Tensor dy = torch::randn_like(x);
  std::printf("  one 64x16x28x28 activation (%ld elements):\n", static_cast<long>(x.numel()));
  auto row = [](const char* what, double ms) { std::printf("    %-58s %8.3f ms\n", what, ms); };
  row("at::conv2d 16->16 3x3 (the op the activation comes from)",
      time_op([&] { at::conv2d(input, weight, {}, 1, 1); }, rounds));
  row("at::relu (one read + one fresh write: a memory-traffic floor)",
      time_op([&] { at::relu(x); }, rounds));
  row("at::aminmax (one read)", time_op([&] { at::aminmax(x); }, rounds));
  for (const std::string observer : {"min_max", "percentile"}) {
    const calq::QConfig q =
        calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), observer);
    calq::FakeQuantize fq = q.activation->create();
    fq->set_state(calq::FakeQuantState::CALIBRATION);
    row(("FakeQuantize CALIBRATION (" + observer + " observer update)").c_str(),
        time_op([&] { fq->forward(x); }, rounds));
  }
  for (const std::string method : {"fake_quant", "lsq", "pact"}) {
    const calq::QConfig q = calq::get_default_qconfig(method, std::string("fake_quant"));
    calq::FakeQuantize fq = q.activation->create();
    const at::Tensor leaf = x.detach().requires_grad_(true);
    fq->forward(leaf);  // initializes scales
    row(("FakeQuantize QAT " + method + " forward").c_str(), time_op(
                                                                 [&] {
                                                                   torch::NoGradGuard no_grad;
                                                                   fq->forward(leaf);
                                                                 },
                                                                 rounds));
    std::vector<at::Tensor> wrt = {leaf};
    for (const auto& p : fq->parameters()) wrt.push_back(p);
    row(("FakeQuantize QAT " + method + " forward+backward").c_str(),
        time_op([&] { torch::autograd::grad({fq->forward(leaf)}, wrt, {dy}); }, rounds));
  }
  {
    const calq::QConfig q = calq::get_default_qconfig();
    calq::FakeQuantize fq = q.activation->create();
    fq->forward(x);
    const at::Tensor scale = fq->scale().clone(), zero_point = fq->zero_point().clone();
    const calq::QuantSpec spec = fq->spec();
    row("  of which calq::fake_quantize alone (no observer), forward",
        time_op([&] { calq::fake_quantize(x, scale, zero_point, spec); }, rounds));
    row("  of which observer update alone (min_max)",
        time_op([&] { fq->observer().update(x); }, rounds));
  }
  {
    // Output-side BN folding (PyTorch's QAT ConvBn: the conv output divided by the factor):
    // the extra elementwise work on the conv output, y / factor (forward), and its backward,
    // which also reduces dy * y / factor^2 to the per-channel factor's gradient.
    const at::Tensor factor = (torch::rand({16}) + 0.5).requires_grad_(true);
    const at::Tensor y = x.detach().requires_grad_(true);
    row("output-side folding: y / factor forward", time_op(
                                                       [&] {
                                                         torch::NoGradGuard no_grad;
                                                         at::div(y, factor.reshape({1, -1, 1, 1}));
                                                       },
                                                       rounds));
    row("output-side folding: y / factor forward+backward (grad of y and factor)",
        time_op(
            [&] {
              torch::autograd::grad({at::div(y, factor.reshape({1, -1, 1, 1}))}, {y, factor}, {dy});
            },
            rounds));
    // The whole folded convolution of a training step, output-side (as PyTorch) and weight-side
    // (as calq's ConvBlock: the factor undone on the small weight, times its reciprocal): equal
    // in real arithmetic because the factor is per output channel.
    const at::Tensor xin = input.detach().requires_grad_(true);
    const at::Tensor w = weight.detach().requires_grad_(true);
    const at::Tensor f = factor.reshape({-1, 1, 1, 1});
    row("conv2d forward+backward (float training's conv)",
        time_op(
            [&] {
              torch::autograd::grad({at::conv2d(xin, w, {}, 1, 1)}, {xin, w}, {dy});
            },
            rounds));
    row("conv2d(x, w*f) / f forward+backward (output-side)",
        time_op(
            [&] {
              torch::autograd::grad(
                  {at::conv2d(xin, w * f, {}, 1, 1) / factor.reshape({1, -1, 1, 1})},
                  {xin, w, factor}, {dy});
            },
            rounds));
    row("conv2d(x, (w*f) * (1/f)) forward+backward (weight-side, calq)",
        time_op(
            [&] {
              torch::autograd::grad({at::conv2d(xin, (w * f) * f.reciprocal(), {}, 1, 1)},
                                    {xin, w, factor}, {dy});
            },
            rounds));
  }
}

void profile(const std::vector<int>& thread_counts, int rounds) {
  check_walker();
  for (int threads : thread_counts) {
    at::set_num_threads(threads);
    std::printf("\n== profile, threads=%d (medians of %d, ms) ==\n", threads, rounds);
    std::printf("  training step phases:\n  %-12s %9s %9s %9s %9s %13s\n", "model", "forward",
                "backward", "adam", "total", "faults/step");
    for (const std::string name : {"float", "fake_quant", "lsq", "pact"}) {
      Trainer trainer(name == "float" ? fresh_model() : qat_model(name));
      const PhaseTimes t = phase_times(trainer, rounds);
      std::printf("  %-12s %9.2f %9.2f %9.2f %9.2f %13.0f\n", name.c_str(), t.forward, t.backward,
                  t.optimizer, t.forward + t.backward + t.optimizer, t.faults);
    }

    std::printf("  training-mode forward per module (grad on):\n");
    {
      calq::zoo::Classifier f = fresh_model();
      f->train();
      const auto base = module_times(*f, /*grad=*/true, rounds);
      std::vector<std::pair<std::string, std::map<std::string, double>>> variants;
      for (const std::string method : {"fake_quant", "lsq", "pact"}) {
        calq::zoo::Classifier q = qat_model(method);
        variants.emplace_back(method, module_times(*q, /*grad=*/true, rounds));
      }
      print_module_table(base, "float", variants);
    }

    std::printf("  inference / calibration forward per module (eval, no grad):\n");
    {
      calq::zoo::Classifier f = fresh_model();
      f->eval();
      const auto base = module_times(*f, /*grad=*/false, rounds);
      std::vector<std::pair<std::string, std::map<std::string, double>>> variants;
      for (const std::string observer : {"min_max", "percentile"}) {
        calq::zoo::Classifier c = calibration_model(observer);
        variants.emplace_back(observer, module_times(*c, /*grad=*/false, rounds));
      }
      print_module_table(base, "float", variants);
    }
    profile_pieces(rounds);
  }
}

// ---------------------------------------------------------------------------------------------

Options parse(int argc, char** argv) {
  Options o;
  auto value = [&](int& i) -> std::string {
    TORCH_CHECK(i + 1 < argc, argv[i], " needs a value");
    return argv[++i];
  };
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--json") {
      o.json_path = value(i);
    } else if (arg == "--repetitions") {
      o.repetitions = std::stoi(value(i));
    } else if (arg == "--steps-per-sample") {
      o.steps_per_sample = std::stoi(value(i));
    } else if (arg == "--warmup") {
      o.warmup = std::stoi(value(i));
    } else if (arg == "--threads") {
      o.threads.push_back(std::stoi(value(i)));
    } else if (arg == "--no-pytorch") {
      o.with_pytorch = false;
    } else if (arg == "--profile") {
      o.profile = true;
    } else {
      TORCH_CHECK(false, "unknown argument '", arg,
                  "'; usage: calq_workflow_bench [--json FILE] [--repetitions N] "
                  "[--steps-per-sample N] [--warmup N] [--threads N]... [--no-pytorch] "
                  "[--profile]");
    }
  }
  TORCH_CHECK(o.repetitions >= 1 && o.steps_per_sample >= 1 && o.warmup >= 0,
              "--repetitions and --steps-per-sample must be >= 1, --warmup >= 0");
  for (int t : o.threads) TORCH_CHECK(t >= 1, "--threads must be >= 1, got ", t);
  return o;
}

int run(const Options& options) {
  // LibTorch defaults to one thread per physical core; "all threads" means every hardware
  // thread the machine offers.
  const int initial_threads = at::get_num_threads();
  std::vector<int> thread_counts = options.threads;
  if (thread_counts.empty()) {
    const int all_threads =
        std::max(initial_threads, static_cast<int>(std::thread::hardware_concurrency()));
    thread_counts.push_back(1);
    if (all_threads > 1) thread_counts.push_back(all_threads);
  }

  batch();
  const std::vector<CalqCase> cases = calq_cases();
  std::vector<Op> ops;
  for (const auto& c : cases) ops.push_back(c.op);
  std::map<int, std::map<std::string, double>> calq_ms;
  for (int threads : thread_counts) {
    at::set_num_threads(threads);
    std::cerr << "timing calq, threads=" << threads << "\n";
    const std::vector<double> medians = measure(ops, options);
    for (size_t i = 0; i < cases.size(); ++i) calq_ms[threads][cases[i].name] = medians[i];
  }
  at::set_num_threads(initial_threads);
  const nlohmann::json pytorch =
      options.with_pytorch ? pytorch_timings(thread_counts, options) : nlohmann::json(nullptr);

  nlohmann::json out;
  out["cases"] = nlohmann::json::array();
  std::printf("\nResNet (zoo), batch %ld x 1x28x28, median ms per call\n",
              static_cast<long>(kBatch));
  std::printf("%-32s %7s %9s %13s %10s %10s %12s  %s\n", "case", "threads", "calq_ms",
              "calq_float_ms", "calq/float", "pytorch_ms", "pytorch/calq", "goal");
  for (int threads : thread_counts) {
    for (const auto& c : cases) {
      const double ms = calq_ms[threads][c.name];
      const double float_ms = calq_ms[threads][c.baseline];
      nlohmann::json torch_ms = nullptr;
      if (pytorch.is_object()) {
        const auto t = pytorch.find(std::to_string(threads));
        if (t != pytorch.end() && t->contains(c.name)) torch_ms = (*t)[c.name];
      }
      std::string goal;
      const bool qat = c.name.rfind("train_step/", 0) == 0 && c.name != "train_step/float";
      if (c.name.rfind("imported/", 0) == 0) {
        // Against the same step of the zoo model; QAT also against the imported float step.
        goal = std::string(ms / float_ms <= kGoalImportedOverZoo ? "met" : "MISSED") +
               " (<= 1.05x zoo)";
        if (c.name.rfind("imported/train_step/", 0) == 0 && c.name != "imported/train_step/float") {
          const double imported_float = calq_ms[threads]["imported/train_step/float"];
          goal += ", " + std::string(ms / imported_float <= kGoalQatOverFloat ? "met" : "MISSED") +
                  fmt_ratio(ms / imported_float) + " of imported float (<= 1.3x)";
        }
      } else if (qat) {
        goal = std::string(ms / float_ms <= kGoalQatOverFloat ? "met" : "MISSED") +
               " (<= 1.3x float), ";
        goal += torch_ms.is_number() ? std::string(torch_ms.get<double>() > ms ? "met" : "MISSED") +
                                           " (faster than PyTorch)"
                                     : "n/a (no PyTorch)";
      } else if (c.name == "calibration/percentile") {
        goal = std::string(ms / float_ms <= kGoalCalibrationOverFloat ? "met" : "MISSED") +
               " (<= 1.3x float inference)";
      }
      char torch_cols[64];
      if (torch_ms.is_number()) {
        std::snprintf(torch_cols, sizeof(torch_cols), "%10.2f %11.2fx", torch_ms.get<double>(),
                      torch_ms.get<double>() / ms);
      } else {
        std::snprintf(torch_cols, sizeof(torch_cols), "%10s %12s", "-", "-");
      }
      std::printf("%-32s %7d %9.2f %13.2f %9.2fx %s  %s\n", c.name.c_str(), threads, ms, float_ms,
                  ms / float_ms, torch_cols, goal.c_str());
      out["cases"].push_back({{"name", c.name},
                              {"threads", threads},
                              {"calq_ms", ms},
                              {"calq_float_ms", float_ms},
                              {"pytorch_ms", torch_ms}});
    }
  }
  std::printf(
      "pytorch_ms: train_step/float and inference/float = PyTorch float model; train_step QAT "
      "rows = PyTorch eager QAT (fbgemm default qconfig); calibration/min_max = MinMaxObserver, "
      "calibration/percentile = HistogramObserver.\n");
  if (!options.json_path.empty()) {
    std::ofstream file(options.json_path);
    file << out.dump(2) << "\n";
    TORCH_CHECK(static_cast<bool>(file), "could not write ", options.json_path);
    std::printf("wrote %s\n", options.json_path.c_str());
  }
  if (options.profile) {
    profile(thread_counts, options.repetitions);
    at::set_num_threads(initial_threads);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // As the calq command line does; float and QAT cases alike run with it.
  calq::util::keep_freed_memory_mapped();
  try {
    return run(parse(argc, argv));
  } catch (const c10::Error& error) {
    std::cerr << "calq_workflow_bench: " << error.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& error) {
    std::cerr << "calq_workflow_bench: " << error.what() << "\n";
    return 1;
  }
}
