// Distributed calibration, synchronized batch norm, the gradient reducer and data-parallel QAT,
// each run as a job of 2 local processes (tests/distributed/worker.cpp through calq's launcher)
// and compared with the same computation in one process or with an independent reference.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <string>

#include "calq/data/fashion_mnist.h"
#include "calq/distributed/data_parallel.h"
#include "calq/distributed/launch.h"
#include "calq/fake_quantize.h"
#include "calq/observers/registry.h"
#include "distributed/recipes.h"

namespace {

using calq::distributed::LaunchOptions;
using calq::distributed::LaunchResult;

std::string temp_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("calq_distributed_test_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

std::vector<std::string> worker_command(const std::vector<std::string>& args) {
  std::vector<std::string> command{CALQ_DISTRIBUTED_WORKER};
  command.insert(command.end(), args.begin(), args.end());
  return command;
}

// The worker as a job of `nproc` ranks, 1 thread each.
LaunchResult run_job(int64_t nproc, const std::vector<std::string>& args) {
  return calq::distributed::launch_local(LaunchOptions(nproc, worker_command(args))
                                             .threads_per_process(1)
                                             .timeout(std::chrono::seconds(60)));
}

// The worker in one process, without a job (no RANK in its environment).
int run_single(const std::vector<std::string>& args) {
  std::string command = "env -u RANK -u WORLD_SIZE OMP_NUM_THREADS=1";
  for (const auto& a : worker_command(args)) command += " '" + a + "'";
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void load_state(torch::nn::Module& module, const std::string& path) {
  calq::distributed::deserialize_state(module, read_text(path));
}

// Every parameter and buffer of a and b has the same shape and bits.
void expect_identical(const torch::nn::Module& a, const torch::nn::Module& b,
                      const std::string& what) {
  const auto pb = b.named_parameters();
  for (const auto& item : a.named_parameters()) {
    EXPECT_TRUE(item.value().equal(*pb.find(item.key()))) << what << ": " << item.key();
  }
  const auto bb = b.named_buffers();
  for (const auto& item : a.named_buffers()) {
    EXPECT_TRUE(item.value().sizes() == bb.find(item.key())->sizes() &&
                item.value().equal(*bb.find(item.key())))
        << what << ": " << item.key();
  }
}

std::vector<std::pair<std::string, calq::FakeQuantizeImpl*>> quantizers(torch::nn::Module& m) {
  std::vector<std::pair<std::string, calq::FakeQuantizeImpl*>> result;
  for (const auto& item : m.named_modules()) {
    if (auto* fq = dynamic_cast<calq::FakeQuantizeImpl*>(item.value().get())) {
      result.emplace_back(item.key(), fq);
    }
  }
  return result;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// docs/distributed.md, "Running averages": one process feeding batches 0..B-1 and the rank-order
// merge of 2 ranks (rank 1 fed n_1 batches) differ by at most
//   u * M * (1 + 2 * (1 + 2c) * min(n_1, ceil(1 / c)))
// per value, u = 2^-24 (float32 rounding), M the largest |x| the quantizer saw.
double running_average_bound(double c, int64_t n1, double max_abs) {
  const double u = std::ldexp(1.0, -24);
  const double steps = std::min<double>(static_cast<double>(n1), std::ceil(1.0 / c));
  return u * max_abs * (1.0 + 2.0 * (1.0 + 2.0 * c) * steps);
}

class DistributedCalibration : public ::testing::TestWithParam<int64_t> {};

// Rank r calibrates batches [r B / 2, (r + 1) B / 2); the merge in rank order equals one process
// calibrating batches 0..B-1: bit for bit for histogram observers, fixed_scale, weights and
// c in {0, 1}; within the stated bound for the other running averages. Both ranks end with the
// same bits. B = 1 leaves rank 0 without data.
TEST_P(DistributedCalibration, EqualsOneProcess) {
  const int64_t batches = GetParam();
  const std::string out = temp_dir("calibrate" + std::to_string(batches));
  ASSERT_EQ(run_single({"calibrate", out, std::to_string(batches)}), 0);
  const LaunchResult job = run_job(2, {"calibrate", out, std::to_string(batches)});
  ASSERT_EQ(job.exit_code(), 0) << job.summary();
  const int64_t n1 = batches - batches / 2;  // rank 1's batches

  for (const auto& recipe : calq::testing::calibration_recipes()) {
    SCOPED_TRACE(recipe.name);
    auto single = calq::testing::calibration_model(recipe);
    auto rank0 = calq::testing::calibration_model(recipe);
    auto rank1 = calq::testing::calibration_model(recipe);
    load_state(*single, out + "/" + recipe.name + ".single.pt");
    load_state(*rank0, out + "/" + recipe.name + ".rank0.pt");
    load_state(*rank1, out + "/" + recipe.name + ".rank1.pt");
    expect_identical(*rank0, *rank1, "rank 0 vs rank 1");
    const nlohmann::json max_abs =
        nlohmann::json::parse(read_text(out + "/" + recipe.name + ".maxabs.json"));

    const auto qs = quantizers(*single);
    const auto q0 = quantizers(*rank0);
    ASSERT_EQ(qs.size(), q0.size());
    int64_t checked_running = 0;
    double worst_ratio = 0.0;
    for (size_t i = 0; i < qs.size(); ++i) {
      const std::string& path = qs[i].first;
      const auto& a = qs[i].second->observer();
      const auto& b = q0[i].second->observer();
      EXPECT_EQ(a.batches_seen(), batches) << path;
      EXPECT_EQ(b.batches_seen(), batches) << path;
      const bool weight = ends_with(path, "weight_fake_quant");
      const double c = recipe.averaging_constant;
      const bool exact = weight || c < 0.0 || c == 0.0 || c == 1.0 || batches == 1;
      const auto bb = b.named_buffers();
      for (const auto& item : a.named_buffers()) {
        const at::Tensor& other = *bb.find(item.key());
        const bool range = item.key() == "min_val" || item.key() == "max_val";
        if (exact || !range) {
          EXPECT_TRUE(item.value().sizes() == other.sizes() && item.value().equal(other))
              << path << "." << item.key() << ": " << item.value() << " vs " << other;
          continue;
        }
        const double bound = running_average_bound(c, n1, max_abs.at(path).get<double>());
        const double diff =
            (item.value().to(at::kDouble) - other.to(at::kDouble)).abs().max().item<double>();
        EXPECT_LE(diff, bound) << path << "." << item.key();
        worst_ratio = std::max(worst_ratio, diff / bound);
        ++checked_running;
      }
      // The scales every rank quantizes with afterwards.
      qs[i].second->set_state(calq::FakeQuantState::VALIDATION);
      q0[i].second->set_state(calq::FakeQuantState::VALIDATION);
      if (exact) {
        EXPECT_TRUE(qs[i].second->scale().equal(q0[i].second->scale())) << path;
      }
    }
    if (recipe.averaging_constant > 0.0 && recipe.averaging_constant < 1.0 && batches > 1) {
      EXPECT_GT(checked_running, 0);
      std::cout << "[ " << recipe.name << " ] largest difference / bound = " << worst_ratio << "\n";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Batches, DistributedCalibration, ::testing::Values(5, 1));

// An observer fed global_observer_input(its rank's rows) on each of 2 ranks ends, bit for bit,
// where one observer fed the whole batches ends, for every kind: extremes shared for min_max
// (per-tensor and per-channel) and clip, whole activations for the others and for
// skip_nonfinite (whose batch holds a NaN), nothing for fixed_scale.
TEST(GlobalObserverInput, ObserverTakesTheStepOfTheGlobalBatch) {
  const std::string out = temp_dir("observers");
  ASSERT_EQ(run_single({"observers", out}), 0);
  const LaunchResult job = run_job(2, {"observers", out});
  ASSERT_EQ(job.exit_code(), 0) << job.summary();
  for (const auto& c : calq::testing::observer_cases()) {
    SCOPED_TRACE(c.name);
    auto single = calq::observers::make_observer(c.kind, c.spec, c.kwargs);
    auto rank0 = calq::observers::make_observer(c.kind, c.spec, c.kwargs);
    auto rank1 = calq::observers::make_observer(c.kind, c.spec, c.kwargs);
    load_state(*single, out + "/" + c.name + ".single.pt");
    load_state(*rank0, out + "/" + c.name + ".rank0.pt");
    load_state(*rank1, out + "/" + c.name + ".rank1.pt");
    EXPECT_EQ(single->batches_seen(), 3);
    expect_identical(*single, *rank0, "one process vs rank 0");
    expect_identical(*single, *rank1, "one process vs rank 1");
  }
  // The NaN was dropped and counted once, as in one process.
  auto skipping =
      calq::observers::make_observer("min_max", calq::QuantSpec(), {{"skip_nonfinite", true}});
  load_state(*skipping, out + "/min_max_skip_nonfinite.rank1.pt");
  EXPECT_EQ(skipping->nonfinite_count(), 1);
}

// sync_batch_norm over 2 ranks equals float64 batch norm of the whole batch: the output rows,
// the input gradient rows, the running statistics, and (summed over ranks) the weight and bias
// gradients. 7 rows split 3 / 4; 1 row leaves rank 0 without rows.
TEST(SyncBatchNorm, EqualsBatchNormOfTheGlobalBatch) {
  for (int64_t rows : {7, 1}) {
    SCOPED_TRACE(rows);
    const std::string out = temp_dir("syncbn" + std::to_string(rows));
    const LaunchResult job = run_job(2, {"syncbn", out, std::to_string(rows)});
    ASSERT_EQ(job.exit_code(), 0) << job.summary();

    torch::manual_seed(3);  // the worker's data
    const at::Tensor x = torch::randn({rows, 3, 5, 4}) * 2.0 + 0.5;
    const at::Tensor grad = torch::randn({rows, 3, 5, 4});
    at::Tensor xd = x.to(at::kDouble).requires_grad_(true);
    at::Tensor w = torch::tensor({1.5, -0.5, 2.0}, at::kDouble).requires_grad_(true);
    at::Tensor b = torch::tensor({0.1, 0.2, -0.3}, at::kDouble).requires_grad_(true);
    at::Tensor rm = torch::zeros({3}, at::kDouble), rv = torch::ones({3}, at::kDouble);
    at::Tensor y = at::batch_norm(xd, w, b, rm, rv, true, 0.1, 1e-5, false);
    y.backward(grad.to(at::kDouble));

    // float32 against float64: a few float32 roundings of values of order 10.
    constexpr double kTolerance = 1e-5;
    at::Tensor weight_grad = torch::zeros({3}, at::kDouble);
    at::Tensor bias_grad = torch::zeros({3}, at::kDouble);
    for (int64_t r = 0; r < 2; ++r) {
      std::vector<at::Tensor> got;
      torch::load(got, out + "/syncbn.rank" + std::to_string(r) + ".pt");
      const auto part = calq::distributed::shard(rows, r, 2);
      const int64_t n = part.second - part.first;
      EXPECT_TRUE(at::allclose(got[0].to(at::kDouble), y.detach().narrow(0, part.first, n),
                               kTolerance, kTolerance));
      EXPECT_TRUE(at::allclose(got[1].to(at::kDouble), xd.grad().narrow(0, part.first, n),
                               kTolerance, kTolerance));
      EXPECT_TRUE(at::allclose(got[4].to(at::kDouble), rm, kTolerance, kTolerance)) << got[4] << rm;
      EXPECT_TRUE(at::allclose(got[5].to(at::kDouble), rv, kTolerance, kTolerance)) << got[5] << rv;
      weight_grad += got[2].to(at::kDouble);
      bias_grad += got[3].to(at::kDouble);
    }
    EXPECT_TRUE(at::allclose(weight_grad, w.grad(), kTolerance, kTolerance));
    EXPECT_TRUE(at::allclose(bias_grad, b.grad(), kTolerance, kTolerance));
  }
}

// Known integer gradients: parameter i of rank r gets (r + 1)(i + 1)(step + 1) per element, so
// the sum over 2 ranks is 3 (i + 1)(step + 1), exact in float; parameter 2 is never used and
// ends with zeros. 64-byte buckets over sizes {3, 20, 7, 5, 9} (reverse order): {9, 5}, {7},
// {20}, {3}. Only the first bucket can start during the backward: the second waits for the
// unused parameter and buckets start in order.
TEST(GradientReducer, SumsKnownGradientsInOrderedBuckets) {
  const std::string out = temp_dir("reducer");
  const LaunchResult job = run_job(2, {"reducer", out});
  ASSERT_EQ(job.exit_code(), 0) << job.summary();
  const std::vector<int64_t> sizes{3, 20, 7, 5, 9};
  for (int64_t r = 0; r < 2; ++r) {
    const auto report =
        nlohmann::json::parse(read_text(out + "/reducer.rank" + std::to_string(r) + ".json"));
    EXPECT_EQ(report["buckets"], 4);
    EXPECT_EQ(report["bytes"], (3 + 20 + 7 + 5 + 9) * 4);
    for (int step = 0; step < 2; ++step) {
      const auto& s = report["steps"][step];
      EXPECT_EQ(s["overlapped"], 1);
      for (size_t i = 0; i < sizes.size(); ++i) {
        const double expected = i == 2 ? 0.0 : 3.0 * (i + 1) * (step + 1) * sizes[i];
        EXPECT_EQ(s["sums"][i].get<double>(), expected)
            << "rank " << r << " step " << step << " p" << i;
      }
    }
  }
}

struct QatCase {
  std::string method;
  int64_t epochs;
  bool distill = false;  ///< data without labels, a float teacher's outputs as the target
};

void PrintTo(const QatCase& c, std::ostream* out) {
  *out << c.method << ", " << c.epochs << " epoch(s)" << (c.distill ? ", distillation" : "");
}

class DataParallelQat : public ::testing::TestWithParam<QatCase> {};

// Epochs of 3 steps (global batch 32; with 2 epochs the second has batch norm frozen; "float"
// trains the unfused float model, batch norm synchronized after the convolution): the two
// ranks (16 rows each) hold bit-identical parameters and buffers after every step (the worker
// checks each step with check_replicas) and at the end, and the result equals one process
// training on the whole batch within float tolerance: every parameter's difference is below
// 1e-3 of how far training moved it for float training and the percentile observer; with
// min_max observers (whose extremes sit on a rounding tie, below) below a control run's: one
// process started from batch-norm weights one ulp away. lsq runs 3 steps only.
// fake_quant_distill trains on the images without labels against a float teacher's outputs
// (each rank's KL divergence on its rows, weighted by its share, as the cross-entropy is).
TEST_P(DataParallelQat, EqualsOneProcessWithTheSameGlobalBatch) {
  const std::string method = GetParam().method;
  const std::string epochs = std::to_string(GetParam().epochs);
  const std::string out = temp_dir("qat_" + method + (GetParam().distill ? "_distill" : ""));
  std::vector<std::string> args{"qat", out, method, epochs, "run"};
  std::vector<std::string> control{"qat", out, method, epochs, "ulp", "ulp"};
  if (GetParam().distill) args.push_back("distill"), control.push_back("distill");
  // The control run measures the recipes whose extremes sit on a rounding tie (below).
  const bool tie_sensitive = method == "fake_quant" || method == "pact" || method == "lsq";
  ASSERT_EQ(run_single(args), 0);
  if (tie_sensitive) ASSERT_EQ(run_single(control), 0);
  const LaunchResult job = run_job(2, args);
  ASSERT_EQ(job.exit_code(), 0) << job.summary();

  auto single = calq::testing::qat_model(method);
  auto ulp = calq::testing::qat_model(method);
  auto rank0 = calq::testing::qat_model(method);
  auto rank1 = calq::testing::qat_model(method);
  auto start = calq::testing::qat_model(method);
  load_state(*single, out + "/run.single.pt");
  if (tie_sensitive) load_state(*ulp, out + "/ulp.single.pt");
  load_state(*rank0, out + "/run.rank0.pt");
  load_state(*rank1, out + "/run.rank1.pt");
  expect_identical(*rank0, *rank1, "rank 0 vs rank 1");
  EXPECT_EQ(read_text(out + "/run.rank0.loss"), read_text(out + "/run.rank1.loss"));

  // Each parameter moved by training; another run's result differs from the one-process run by
  // a fraction of that move. The largest fraction over the parameters, and which one:
  const auto initial = start->named_parameters();
  auto divergence = [&](const torch::nn::Module& other) {
    const auto theirs = other.named_parameters();
    std::pair<double, std::string> worst{0.0, ""};
    for (const auto& item : single->named_parameters()) {
      const at::Tensor a = item.value().to(at::kDouble);
      const at::Tensor b = theirs.find(item.key())->to(at::kDouble);
      // An lsq scale takes its shape (and first value) at the first step: measure it against
      // its own size.
      const at::Tensor& initial_value = *initial.find(item.key());
      const at::Tensor p0 =
          initial_value.sizes() == a.sizes() ? initial_value.to(at::kDouble) : at::zeros_like(a);
      const double moved = (a - p0).norm().item<double>();
      const double ratio = (a - b).norm().item<double>() / std::max(moved, 1e-12);
      if (ratio > worst.first) worst = {ratio, item.key()};
    }
    return worst;
  };
  const auto split = divergence(*rank0);
  const auto control_run =
      tie_sensitive ? divergence(*ulp) : std::pair<double, std::string>{0.0, "not run"};
  std::cout << "[ QAT " << method << " ] largest |p_1proc - p| / |p_1proc - p_init|: 2 ranks "
            << split.first << " (" << split.second
            << "), one process from batch-norm weights one ulp higher " << control_run.first << " ("
            << control_run.second << ")\n";
  // With a min_max observer the largest |x| of a tensor (every channel's largest weight, each
  // activation's extreme) maps to x/s = +-127.5 (eq. 1: s = max|x| / 127.5), a rounding tie
  // of the saturation mask (eq. 5): the last bit of x/s decides whether round(x/s) is 127
  // (gradient passes) or 128 (clamped, gradient 0). Float rounding of the synchronized batch
  // norm flips that mask for some channels' largest weight, Adam turns the flip into a whole
  // step of that weight, and the runs drift apart (measured after 3-6 steps: fake_quant
  // 1.5e-2, pact 2.0e-2, lsq 3.8e-2 of the move, conv2's per-channel weights). Training is
  // that sensitive by itself: batch-norm weights one ulp higher move one process's result by
  // 0.29 (fake_quant), 0.29 (pact), 0.29 (lsq), 0.46 (percentile). So those recipes must stay
  // closer to one process than that control run; float training and the percentile observer
  // (its scales are bin edges, its extremes saturate) stay at float tolerance.
  if (tie_sensitive) {
    EXPECT_LT(split.first, std::min(1e-1, control_run.first)) << split.second;
  } else {
    EXPECT_LT(split.first, 1e-3) << split.second;
  }
  const double loss_single = std::stod(read_text(out + "/run.single.loss"));
  const double loss_job = std::stod(read_text(out + "/run.rank0.loss"));
  EXPECT_NEAR(loss_job, loss_single, 1e-4 * std::abs(loss_single));
}

INSTANTIATE_TEST_SUITE_P(Methods, DataParallelQat,
                         ::testing::Values(QatCase{"fake_quant", 2}, QatCase{"pact", 2},
                                           QatCase{"lsq", 1}, QatCase{"float", 2},
                                           QatCase{"fake_quant_percentile", 2},
                                           QatCase{"fake_quant", 2, /*distill=*/true}),
                         [](const auto& info) {
                           return info.param.method + (info.param.distill ? "_distill" : "");
                         });

class DataParallelGradients : public ::testing::TestWithParam<std::string> {};

// The gradients of one global batch of 32 rows: one process on all of it, and 2 ranks of 16
// rows through DataParallel (weighted losses, synchronized batch norm and observers, the lsq
// factor, summed in buckets during the backward). Per parameter, ||g_1 - g_2|| / ||g_1|| below
// 1e-4 for the float model (float32 sums in another order, batch statistics combined in
// float64) and below 1e-2 for the quantized recipes: their gradients are discontinuous in the
// data (an ulp that carries one value across a rounding tie or a histogram bin edge changes a
// quantized value by a whole step; measured up to 1e-3, percentile). A gradient off by a
// constant factor k (the scale errors Adam would hide in the training comparison) shows as
// |1 - 1/k|, e.g. 0.29 for sqrt(2).
TEST_P(DataParallelGradients, EqualOneProcessOnTheGlobalBatch) {
  const std::string method = GetParam();
  const double tolerance = method == "float" ? 1e-4 : 1e-2;
  const std::string out = temp_dir("gradients_" + method);
  ASSERT_EQ(run_single({"gradients", out, method}), 0);
  const LaunchResult job = run_job(2, {"gradients", out, method});
  ASSERT_EQ(job.exit_code(), 0) << job.summary();
  auto read = [&](const std::string& who) {
    torch::serialize::InputArchive archive;
    const std::string bytes = read_text(out + "/gradients_" + method + "." + who + ".pt");
    archive.load_from(bytes.data(), bytes.size());
    return archive;
  };
  auto single = read("single"), rank0 = read("rank0"), rank1 = read("rank1");
  auto model = calq::testing::qat_model(method);
  double worst = 0.0;
  std::string worst_name;
  for (const auto& p : model->named_parameters()) {
    at::Tensor a, b, c;
    single.read(p.key(), a);
    rank0.read(p.key(), b);
    rank1.read(p.key(), c);
    EXPECT_TRUE(b.equal(c)) << p.key() << ": the ranks' summed gradients differ";
    const at::Tensor one = a.to(at::kDouble);
    const double difference = (one - b.to(at::kDouble)).norm().item<double>() /
                              std::max(one.norm().item<double>(), 1e-30);
    EXPECT_LT(difference, tolerance) << p.key();
    if (difference > worst) worst = difference, worst_name = p.key();
  }
  std::cout << "[ gradients " << method
            << " ] largest ||g_1proc - g_2proc|| / ||g_1proc|| = " << worst << " (" << worst_name
            << ")\n";
}

INSTANTIATE_TEST_SUITE_P(Methods, DataParallelGradients,
                         ::testing::Values("float", "fake_quant", "lsq", "pact",
                                           "fake_quant_percentile"));

// Evaluation shared by 2 ranks (7 batches: 3 and 4) gives every rank the whole result, image
// by image equal to one process's.
TEST(DistributedEvaluation, EqualsOneProcess) {
  const std::string out = temp_dir("evaluate");
  ASSERT_EQ(run_single({"evaluate", out}), 0);
  const LaunchResult job = run_job(2, {"evaluate", out});
  ASSERT_EQ(job.exit_code(), 0) << job.summary();
  const std::string single = read_text(out + "/evaluate.single.txt");
  EXPECT_EQ(single.size() - single.find('\n') - 1, 100u);  // top-1, then one byte per image
  EXPECT_EQ(read_text(out + "/evaluate.rank0.txt"), single);
  EXPECT_EQ(read_text(out + "/evaluate.rank1.txt"), single);
}

// A job stopped after epoch 1 (its checkpoint written by rank 0) and resumed equals, bit for
// bit, the same job run without interruption: the resume restores the same state on every rank.
TEST(DataParallelQatResume, ResumedJobEqualsUninterruptedJob) {
  const std::string out = temp_dir("resume");
  LaunchResult job = run_job(2, {"qat", out, "lsq", "2", "full"});
  ASSERT_EQ(job.exit_code(), 0) << job.summary();
  job = run_job(2, {"qat", out, "lsq", "2", "cut", "stop-after-epoch", "1"});
  ASSERT_EQ(job.exit_code(), 3) << job.summary();
  ASSERT_TRUE(std::filesystem::exists(out + "/cut.checkpoint.pt"));
  job = run_job(2, {"qat", out, "lsq", "2", "cut", "resume"});
  ASSERT_EQ(job.exit_code(), 0) << job.summary();
  auto full = calq::testing::qat_model("lsq");
  auto resumed0 = calq::testing::qat_model("lsq");
  auto resumed1 = calq::testing::qat_model("lsq");
  load_state(*full, out + "/full.rank0.pt");
  load_state(*resumed0, out + "/cut.rank0.pt");
  load_state(*resumed1, out + "/cut.rank1.pt");
  expect_identical(*full, *resumed0, "uninterrupted vs resumed (rank 0)");
  expect_identical(*full, *resumed1, "uninterrupted vs resumed (rank 1)");
}

}  // namespace

#ifdef CALQ_CLI_PATH
namespace {

struct CliResult {
  int exit_code;
  std::string output;
};

// `environment`: "NAME=value ..." set for the command only.
CliResult run_cli(const std::string& arguments, const std::string& environment = "") {
  const std::string command =
      environment + " " + std::string(CALQ_CLI_PATH) + " " + arguments + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  CliResult result{-1, ""};
  if (pipe == nullptr) return result;
  char buffer[4096];
  while (fgets(buffer, sizeof(buffer), pipe) != nullptr) result.output += buffer;
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

bool dataset_installed() {
  return std::filesystem::exists(calq::data::fashion_mnist_file(
      calq::data::fashion_mnist_dir(), calq::data::Split::test, /*labels=*/false));
}

constexpr const char* kSmall =
    "--limit-train 640 --limit-test 128 --val-size 128 --epochs 1 --calib-batches 3 "
    "--threads 1 --quiet";

// Every scale of two `calq export` files, per quantizer path.
std::map<std::string, std::vector<double>> exported_scales(const std::string& path) {
  std::map<std::string, std::vector<double>> scales;
  const nlohmann::json file = nlohmann::json::parse(read_text(path));
  for (const auto& item : file.items()) {
    scales[item.key()] = item.value().at("scale").get<std::vector<double>>();
  }
  return scales;
}

// calq calibrate --nproc 2 on the float model of a one-process run exports the same scales as
// calq calibrate in one process: bit for bit with a histogram observer (kl, percentile), within
// the running-average bound with min_max (c = 0.01, 3 batches: 1 + 2 * 1.02 * 2 = 5.1 float32
// roundings of the range; scales are proportional to it, so a relative 1e-6 holds it).
TEST(CliNproc, CalibrateWithTwoProcessesEqualsOneProcess) {
  if (!dataset_installed()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const std::string out = temp_dir("cli_calibrate");
  const std::string small = std::string(kSmall) + " --batch-size 32 --out " + out;
  CliResult r = run_cli("train " + small);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const std::string observer : {"kl", "percentile", "min_max"}) {
    const std::string model = out + "/calibrated/" + observer + ".pt";
    r = run_cli("calibrate " + small + " --observer " + observer);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    ASSERT_EQ(run_cli("export --checkpoint " + model + " --json " + out + "/one.json").exit_code,
              0);
    r = run_cli("calibrate " + small + " --nproc 2 --observer " + observer);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    ASSERT_EQ(run_cli("export --checkpoint " + model + " --json " + out + "/two.json").exit_code,
              0);
    if (observer != "min_max") {
      EXPECT_EQ(read_text(out + "/one.json"), read_text(out + "/two.json")) << observer;
      continue;
    }
    const auto one = exported_scales(out + "/one.json");
    const auto two = exported_scales(out + "/two.json");
    ASSERT_EQ(one.size(), two.size());
    for (const auto& item : one) {
      const auto& other = two.at(item.first);
      ASSERT_EQ(item.second.size(), other.size()) << item.first;
      for (size_t i = 0; i < other.size(); ++i) {
        EXPECT_NEAR(item.second[i], other[i], 1e-6 * item.second[i]) << item.first;
      }
    }
  }
}

// The launcher's errors reach the user: a rank that cannot start its job is reported by rank,
// and --nproc under an external launcher is refused.
TEST(CliNproc, ErrorsNameTheRank) {
  if (!dataset_installed()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const std::string out = temp_dir("cli_errors");
  CliResult r = run_cli(std::string("train ") + kSmall + " --nproc 2 --batch-size 1 --out " + out);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("calq: rank 0: error: train: batch_size 1 is smaller than the 2 ranks"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("calq: rank"), std::string::npos) << r.output;
  r = run_cli("train --nproc 2 --out " + out,
              "RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=1");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("leave --nproc out under a launcher"), std::string::npos) << r.output;
}

}  // namespace
#endif
