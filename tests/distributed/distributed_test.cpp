// Distributed calibration, synchronized batch norm, the gradient reducer and data-parallel QAT,
// each run as a job of 2 local processes (tests/distributed/worker.cpp through calq's launcher)
// and compared with the same computation in one process or with an independent reference.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include "calq/distributed/data_parallel.h"
#include "calq/distributed/launch.h"
#include "calq/fake_quantize.h"
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
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Batches, DistributedCalibration, ::testing::Values(5, 1));

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
};

class DataParallelQat : public ::testing::TestWithParam<QatCase> {};

// Epochs of 3 steps (global batch 32; with 2 epochs the second has batch norm frozen): the two
// ranks (16 rows each) hold bit-identical parameters and buffers after every step (the worker
// checks each step with check_replicas) and at the end, and the result equals one process
// training on the whole batch within float tolerance: every parameter's difference is below
// 1e-3 of how far training moved it. (Measured: fake_quant 2e-6, pact 4e-5 after 6 steps, lsq
// 1e-4 after 3 steps. lsq runs 3 steps only: its scale gradient sums round(x/s) - x/s over
// every element, so an ulp of difference anywhere flips a rounding and changes a per-channel
// scale's gradient by a whole term; docs/distributed.md measures how that grows.)
TEST_P(DataParallelQat, EqualsOneProcessWithTheSameGlobalBatch) {
  const std::string method = GetParam().method;
  const std::string epochs = std::to_string(GetParam().epochs);
  const std::string out = temp_dir("qat_" + method);
  ASSERT_EQ(run_single({"qat", out, method, epochs, "run"}), 0);
  const LaunchResult job = run_job(2, {"qat", out, method, epochs, "run"});
  ASSERT_EQ(job.exit_code(), 0) << job.summary();

  auto single = calq::testing::qat_model(method);
  auto rank0 = calq::testing::qat_model(method);
  auto rank1 = calq::testing::qat_model(method);
  auto start = calq::testing::qat_model(method);
  load_state(*single, out + "/run.single.pt");
  load_state(*rank0, out + "/run.rank0.pt");
  load_state(*rank1, out + "/run.rank1.pt");
  expect_identical(*rank0, *rank1, "rank 0 vs rank 1");
  EXPECT_EQ(read_text(out + "/run.rank0.loss"), read_text(out + "/run.rank1.loss"));

  // Each parameter moved by training; the two runs' results differ by a small fraction of that
  // move (float rounding of sums taken in another order, amplified by Adam's normalization).
  const auto initial = start->named_parameters();
  const auto distributed = rank0->named_parameters();
  double worst = 0.0;
  std::string worst_name;
  for (const auto& item : single->named_parameters()) {
    const at::Tensor a = item.value().to(at::kDouble);
    const at::Tensor b = distributed.find(item.key())->to(at::kDouble);
    // An lsq scale takes its shape (and first value) at the first step: measure it against
    // its own size.
    const at::Tensor& initial_value = *initial.find(item.key());
    const at::Tensor p0 =
        initial_value.sizes() == a.sizes() ? initial_value.to(at::kDouble) : at::zeros_like(a);
    const double moved = (a - p0).norm().item<double>();
    const double diff = (a - b).norm().item<double>();
    const double ratio = diff / std::max(moved, 1e-12);
    if (ratio > worst) worst = ratio, worst_name = item.key();
  }
  std::cout << "[ QAT " << method
            << " ] largest |p_1proc - p_2proc| / |p_1proc - p_init| = " << worst << " ("
            << worst_name << ")\n";
  EXPECT_LT(worst, 1e-3) << worst_name;
  const double loss_single = std::stod(read_text(out + "/run.single.loss"));
  const double loss_job = std::stod(read_text(out + "/run.rank0.loss"));
  EXPECT_NEAR(loss_job, loss_single, 1e-4 * std::abs(loss_single));
}

INSTANTIATE_TEST_SUITE_P(Methods, DataParallelQat,
                         ::testing::Values(QatCase{"fake_quant", 2}, QatCase{"pact", 2},
                                           QatCase{"lsq", 1}),
                         [](const auto& info) { return info.param.method; });

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
