#pragma once
// Mini-batches over an in-memory Dataset: fixed size, optional seeded shuffling whose order is
// the same on every platform, and the deterministic calibration subset of the workflow.

#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>
#include <iterator>
#include <vector>

#include "calq/data/fashion_mnist.h"

namespace calq {
namespace data {

/// One mini-batch: images [B, ...] and labels [B] of the same dataset rows.
struct Batch {
  torch::Tensor images;
  torch::Tensor labels;

  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
};

/// How Batches splits a dataset.
///
///   calq::data::BatchOptions(128).shuffle(true).seed(7).epoch(epoch)
struct BatchOptions {
  /* implicit */ BatchOptions(int64_t batch_size = 128) : batch_size_(batch_size) {}

  /// Examples per batch (>= 1). Default 128.
  TORCH_ARG(int64_t, batch_size);
  /// Visit the examples in a seeded random order instead of 0..N-1. Default false.
  TORCH_ARG(bool, shuffle) = false;
  /// Drop the last batch if it is smaller than batch_size. Default false.
  TORCH_ARG(bool, drop_last) = false;
  /// Seed of the shuffle. The same (seed, epoch) gives the same order on every platform.
  TORCH_ARG(uint64_t, seed) = 0;
  /// Mixed into the seed so that each epoch of a run sees a different order.
  TORCH_ARG(uint64_t, epoch) = 0;
};

/// The index order of a seeded shuffle of 0..n-1 (int64 [n]): a Fisher-Yates shuffle driven by
/// std::mt19937_64 seeded with a mix of (seed, epoch). Implemented without the standard
/// library's distributions, whose output differs between implementations.
torch::Tensor shuffled_indices(int64_t n, uint64_t seed, uint64_t epoch = 0);

/// The batches of one pass over a dataset, indexable and iterable:
///
///   for (const calq::data::Batch& batch : calq::data::Batches(train, options)) { ... }
///
/// Holds references to the dataset's tensors (no copy). Unshuffled batches are views
/// (narrow); shuffled ones are gathered copies.
class Batches {
 public:
  Batches(const Dataset& dataset, const BatchOptions& options);

  /// Number of batches: ceil(N / batch_size), or floor with drop_last.
  int64_t size() const { return num_batches_; }
  /// Number of examples the batches cover (N, or fewer with drop_last).
  int64_t num_examples() const;
  /// Batch i, 0 <= i < size(); throws otherwise.
  Batch operator[](int64_t i) const;
  /// The example order of this pass (int64 [N]).
  const torch::Tensor& order() const { return order_; }
  const BatchOptions& options() const { return options_; }

  class Iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = Batch;
    using difference_type = std::ptrdiff_t;
    using pointer = const Batch*;
    using reference = Batch;

    Iterator(const Batches* batches, int64_t index) : batches_(batches), index_(index) {}
    Batch operator*() const { return (*batches_)[index_]; }
    Iterator& operator++() {
      ++index_;
      return *this;
    }
    bool operator==(const Iterator& other) const { return index_ == other.index_; }
    bool operator!=(const Iterator& other) const { return index_ != other.index_; }

   private:
    const Batches* batches_;
    int64_t index_;
  };
  Iterator begin() const { return Iterator(this, 0); }
  Iterator end() const { return Iterator(this, num_batches_); }

 private:
  Dataset dataset_;
  BatchOptions options_;
  torch::Tensor order_;  // undefined when not shuffled
  int64_t num_batches_ = 0;
};

/// A data set split in two disjoint parts: `held_out` has `held_out_size` examples drawn in a
/// seeded random order (the same arguments always give the same split), `rest` the others in
/// their original order. Used to make every choice (best observer, automatic recipes) on data
/// that is neither trained on nor the test set. Requires 1 <= held_out_size < dataset.size().
struct HoldOut {
  Dataset rest;
  Dataset held_out;
};
HoldOut hold_out(const Dataset& dataset, int64_t held_out_size, uint64_t seed);

/// The calibration data of the workflow (semantics.md section 7): `num_batches` batches of
/// `batch_size` distinct examples drawn from `dataset` in a seeded random order. The same
/// arguments always give the same batches. Requires num_batches >= 1, batch_size >= 1 and
/// num_batches * batch_size <= dataset.size(); the error says how many are available.
std::vector<Batch> calibration_subset(const Dataset& dataset, int64_t num_batches,
                                      int64_t batch_size, uint64_t seed);

}  // namespace data
}  // namespace calq
