#pragma once
// Gradient all-reduce of data-parallel training, in buckets that start while the backward is
// still running (LibTorch 1.13 has no C++ DistributedDataParallel; its reducer is internal).
// docs/distributed.md, "Gradients".

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "calq/distributed/process_group.h"

namespace torch {
namespace autograd {
struct Node;
}  // namespace autograd
}  // namespace torch

namespace calq {
namespace distributed {

struct GradientReducerOptions {
  /// Largest bucket, in bytes of gradient (a parameter larger than this gets a bucket of its
  /// own). Smaller buckets start earlier during the backward; larger ones pay the per-
  /// collective latency less often. >= 1. Default 4 MiB.
  TORCH_ARG(int64_t, bucket_bytes) = int64_t{4} << 20;
  /// Start each bucket's all-reduce from a hook as soon as the backward produced its last
  /// gradient (true), or all of them in finish() (false). Default true.
  TORCH_ARG(bool, overlap) = true;
};

/// Sums the gradients of `parameters` over the ranks. Parameters are assigned to buckets in
/// reverse order (the backward produces the last layers' gradients first); a post-hook on each
/// parameter's gradient accumulator notes when its gradient is final, and once every gradient
/// of a bucket is, the bucket is copied into one flat buffer and its all-reduce starts
/// (buckets start in bucket order on every rank, which the collectives require). finish()
/// starts what is left, waits, and writes the sums back into each parameter's grad.
///
/// The sum is the gradient of the sum of the ranks' losses: weight each rank's loss so that
/// this sum is the loss you want (pipeline::train weights rank r's mean loss by n_r / n, so the
/// sum is the mean loss of the global batch of n rows). Every parameter must get a gradient
/// on every rank in every step (as DistributedDataParallel without find_unused_parameters); a
/// parameter without one on some rank is counted as zero there and ends with a defined grad.
/// One backward per finish(). The constructor checks (one all-gather) that every rank has the
/// same parameter shapes and dtypes, in the same order. A parameter resized in place later (an
/// lsq scale takes its shape at its first quantizing forward) makes the next step rebuild the
/// buckets, alike on every rank. Hooks are removed on destruction.
class GradientReducer {
 public:
  GradientReducer(std::vector<at::Tensor> parameters, std::shared_ptr<ProcessGroup> group,
                  GradientReducerOptions options = {});
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  /// Call after the backward, before the optimizer step.
  void finish();

  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }
  /// Bytes all-reduced per step (the sum of the bucket sizes).
  int64_t bytes_per_step() const;
  /// Buckets whose all-reduce started during the last backward, before finish().
  int64_t buckets_overlapped() const { return last_overlapped_; }

 private:
  struct Bucket {
    std::vector<size_t> parameters;  // indices into parameters_
    std::vector<int64_t> offsets;    // element offsets in flat
    at::Tensor flat;
    int64_t pending = 0;
    ProcessGroup::Pending work;
  };
  void build_buckets();
  void rebuild_buckets_if_resized();  // caller holds mutex_
  void on_gradient_ready(size_t parameter);
  void start(size_t bucket);  // fill and launch; caller holds mutex_

  std::vector<at::Tensor> parameters_;
  std::shared_ptr<ProcessGroup> group_;
  GradientReducerOptions options_;
  std::vector<Bucket> buckets_;
  std::vector<int64_t> numels_;    // per parameter, when the buckets were built
  bool layout_checked_ = false;    // this step
  std::vector<size_t> bucket_of_;  // per parameter
  std::vector<bool> ready_;        // per parameter, this step
  size_t next_bucket_ = 0;         // buckets [0, next_bucket_) started this step
  int64_t overlapped_ = 0;         // this step
  int64_t last_overlapped_ = 0;    // the last finished step
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;
  std::vector<uintptr_t> hook_keys_;
  std::mutex mutex_;
};

}  // namespace distributed
}  // namespace calq
