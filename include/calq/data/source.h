#pragma once
// Examples the workflow reads in batches without holding them all in memory: Fashion-MNIST in
// memory, a user's .npz / .npy file (memory-mapped) or a folder of images (decoded on demand).
// Training, evaluation and calibration read every data set through this one interface.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "calq/data/batches.h"
#include "calq/data/fashion_mnist.h"
#include "calq/data/images.h"

namespace calq {
namespace data {

/// A data set read in batches.
class Source {
 public:
  virtual ~Source() = default;
  /// Number of examples.
  virtual int64_t size() const = 0;
  /// Shape of one example (no batch dimension).
  virtual std::vector<int64_t> example_shape() const = 0;
  virtual bool has_labels() const = 0;
  /// Examples `indices` (each in [0, size()), in this order): images float32 [n, ...] and
  /// labels int64 [n] (undefined without labels). Reads only those examples.
  virtual Batch gather(const std::vector<int64_t>& indices) const = 0;
  /// What the data is and how it was preprocessed (recorded in results.json).
  virtual nlohmann::json describe() const = 0;
};

using SourcePtr = std::shared_ptr<const Source>;

/// An in-memory data set (Fashion-MNIST) as a source.
SourcePtr in_memory(Dataset dataset, nlohmann::json description);

/// The examples of `source` at `indices` (a view; nothing is copied).
SourcePtr subset(SourcePtr source, std::vector<int64_t> indices);

/// A user's data: `path` ending in .npz (arrays "x" and optionally "y"), .npy (inputs only),
/// or a folder of PNG / JPEG images (sub-folders = classes; decoded with `images`). Errors name
/// the path and what is wrong.
SourcePtr open_source(const std::string& path, const ImageOptions& images = {});

/// A hold-out split of a source: `held_out_size` examples drawn in a seeded random order, and
/// the rest in their order (as hold_out for in-memory data sets).
std::pair<SourcePtr, SourcePtr> hold_out(SourcePtr source, int64_t held_out_size, uint64_t seed);

/// Batches over a source, in order or shuffled with (seed, epoch) as data::Batches does.
class SourceBatches {
 public:
  SourceBatches(SourcePtr source, const BatchOptions& options);
  /// The calibration data (semantics section 7): `num_batches` batches of `batch_size`
  /// distinct examples in a seeded random order (the same as calibration_subset for an
  /// in-memory data set). Read as iterated: memory does not grow with the number of batches.
  static SourceBatches calibration(SourcePtr source, int64_t num_batches, int64_t batch_size,
                                   uint64_t seed);
  int64_t size() const { return static_cast<int64_t>(chunks_.size()); }
  Batch operator[](int64_t i) const;
  /// Number of examples in batch i.
  int64_t rows(int64_t i) const;
  /// Rows [begin, end) of batch i, reading only those examples: a rank's share of a global
  /// batch in data-parallel training. Requires 0 <= begin <= end <= rows(i).
  Batch part(int64_t i, int64_t begin, int64_t end) const;

  /// The batches' images only, for calq::calibrate:
  ///   calq::calibrate(model, batches.images());
  class Images {
   public:
    explicit Images(const SourceBatches* batches) : batches_(batches) {}
    class Iterator {
     public:
      Iterator(const SourceBatches* batches, int64_t index) : batches_(batches), index_(index) {}
      at::Tensor operator*() const { return (*batches_)[index_].images; }
      Iterator& operator++() {
        ++index_;
        return *this;
      }
      bool operator!=(const Iterator& other) const { return index_ != other.index_; }

     private:
      const SourceBatches* batches_;
      int64_t index_;
    };
    Iterator begin() const { return Iterator(batches_, 0); }
    Iterator end() const { return Iterator(batches_, batches_->size()); }

   private:
    const SourceBatches* batches_;
  };
  Images images() const { return Images(this); }

  class Iterator {
   public:
    Iterator(const SourceBatches* batches, int64_t index) : batches_(batches), index_(index) {}
    Batch operator*() const { return (*batches_)[index_]; }
    Iterator& operator++() {
      ++index_;
      return *this;
    }
    bool operator!=(const Iterator& other) const { return index_ != other.index_; }

   private:
    const SourceBatches* batches_;
    int64_t index_;
  };
  Iterator begin() const { return Iterator(this, 0); }
  Iterator end() const { return Iterator(this, size()); }

 private:
  SourceBatches(SourcePtr source, std::vector<std::vector<int64_t>> chunks)
      : source_(std::move(source)), chunks_(std::move(chunks)) {}
  SourcePtr source_;
  std::vector<std::vector<int64_t>> chunks_;
};

}  // namespace data
}  // namespace calq
