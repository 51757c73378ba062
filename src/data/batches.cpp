#include "calq/data/batches.h"

#include <random>

namespace calq {
namespace data {
namespace {

// splitmix64 finalizer: spreads (seed, epoch) over the whole 64-bit state so that consecutive
// seeds or epochs give unrelated streams.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Uniform integer in [0, bound) by rejection (no modulo bias), independent of the standard
// library's uniform_int_distribution.
uint64_t uniform_below(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
  uint64_t value = rng();
  while (value >= limit) value = rng();
  return value % bound;
}

void check_dataset(const Dataset& dataset) {
  TORCH_CHECK(dataset.images.defined() && dataset.labels.defined(),
              "dataset has undefined images or labels tensors");
  TORCH_CHECK(dataset.images.dim() >= 1 && dataset.labels.dim() == 1 &&
                  dataset.images.size(0) == dataset.labels.size(0),
              "dataset images ", dataset.images.sizes(), " and labels ", dataset.labels.sizes(),
              " must have the same number of rows (labels 1-D)");
}

}  // namespace

torch::Tensor shuffled_indices(int64_t n, uint64_t seed, uint64_t epoch) {
  TORCH_CHECK(n >= 0, "shuffled_indices needs n >= 0, got ", n);
  std::mt19937_64 rng(mix(mix(seed) ^ epoch));
  auto order = torch::arange(n, torch::kInt64);
  auto* idx = order.data_ptr<int64_t>();
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(uniform_below(rng, static_cast<uint64_t>(i) + 1));
    std::swap(idx[i], idx[j]);
  }
  return order;
}

Batches::Batches(const Dataset& dataset, const BatchOptions& options)
    : dataset_(dataset), options_(options) {
  check_dataset(dataset);
  TORCH_CHECK(options.batch_size() >= 1, "batch_size must be >= 1, got ", options.batch_size());
  const int64_t n = dataset.size();
  const int64_t b = options.batch_size();
  num_batches_ = options.drop_last() ? n / b : (n + b - 1) / b;
  if (options.shuffle()) order_ = shuffled_indices(n, options.seed(), options.epoch());
}

int64_t Batches::num_examples() const {
  return std::min(dataset_.size(), num_batches_ * options_.batch_size());
}

Batch Batches::operator[](int64_t i) const {
  TORCH_CHECK(i >= 0 && i < num_batches_, "batch index ", i, " out of range [0, ", num_batches_,
              ")");
  const int64_t start = i * options_.batch_size();
  const int64_t length = std::min(options_.batch_size(), dataset_.size() - start);
  if (!order_.defined()) {
    return {dataset_.images.narrow(0, start, length), dataset_.labels.narrow(0, start, length)};
  }
  const auto rows = order_.narrow(0, start, length);
  return {dataset_.images.index_select(0, rows), dataset_.labels.index_select(0, rows)};
}

HoldOut hold_out(const Dataset& dataset, int64_t held_out_size, uint64_t seed) {
  check_dataset(dataset);
  TORCH_CHECK(held_out_size >= 1 && held_out_size < dataset.size(), "hold_out: cannot hold out ",
              held_out_size, " of ", dataset.size(),
              " examples; the held-out part and the rest must both be non-empty");
  // Its own stream (a salt in place of the epoch): the split does not follow the shuffling of
  // any training epoch.
  constexpr uint64_t kHoldOutSalt = 0x401d0070e0000000ULL;
  const Batches shuffled(dataset, BatchOptions(1).shuffle(true).seed(seed).epoch(kHoldOutSalt));
  const torch::Tensor order = shuffled.order();
  torch::Tensor chosen = std::get<0>(order.narrow(0, 0, held_out_size).sort());
  torch::Tensor mask = torch::ones({dataset.size()}, torch::kBool);
  mask.index_fill_(0, chosen, false);
  const torch::Tensor rest = mask.nonzero().reshape({-1});
  HoldOut split;
  split.held_out.images = dataset.images.index_select(0, chosen);
  split.held_out.labels = dataset.labels.index_select(0, chosen);
  split.rest.images = dataset.images.index_select(0, rest);
  split.rest.labels = dataset.labels.index_select(0, rest);
  return split;
}

std::vector<Batch> calibration_subset(const Dataset& dataset, int64_t num_batches,
                                      int64_t batch_size, uint64_t seed) {
  check_dataset(dataset);
  TORCH_CHECK(num_batches >= 1 && batch_size >= 1,
              "calibration_subset needs num_batches >= 1 and batch_size >= 1, got num_batches=",
              num_batches, " batch_size=", batch_size);
  TORCH_CHECK(num_batches * batch_size <= dataset.size(), "calibration_subset asks for ",
              num_batches, " batches of ", batch_size, " = ", num_batches * batch_size,
              " examples but the dataset holds only ", dataset.size(), "; use at most ",
              dataset.size() / batch_size, " batches of ", batch_size);
  // A stream of its own (a salt in place of the epoch), so that calibration does not replay
  // the first training batches of the same seed.
  constexpr uint64_t kCalibrationSalt = 0xca11b4a7e0000000ULL;
  const Batches batches(dataset,
                        BatchOptions(batch_size).shuffle(true).seed(seed).epoch(kCalibrationSalt));
  std::vector<Batch> subset;
  subset.reserve(static_cast<size_t>(num_batches));
  for (int64_t i = 0; i < num_batches; ++i) subset.push_back(batches[i]);
  return subset;
}

}  // namespace data
}  // namespace calq
