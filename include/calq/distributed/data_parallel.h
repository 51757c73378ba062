#pragma once
// A model as one replica of a data-parallel job: identical start, synchronized batch norm,
// synchronized observers, summed gradients, and a check that the replicas stay bit-identical
// (docs/distributed.md, "Data-parallel QAT"). pipeline::train uses it when TrainOptions has a
// process group.

#include <torch/arg.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "calq/distributed/gradient_reducer.h"
#include "calq/distributed/process_group.h"

namespace calq {
class FakeQuantizeImpl;
namespace nn {
namespace detail {
class ConvBlockImpl;
}  // namespace detail
}  // namespace nn

namespace distributed {

struct DataParallelOptions {
  /// Gradient buckets (GradientReducerOptions::bucket_bytes). Default 4 MiB.
  TORCH_ARG(int64_t, bucket_bytes) = int64_t{4} << 20;
  /// Start bucket all-reduces during the backward (GradientReducerOptions::overlap).
  /// Default true.
  TORCH_ARG(bool, overlap) = true;
};

/// For its lifetime, makes `model` one replica of a data-parallel job whose global batch is
/// the rank-order concatenation of the ranks' batches:
///   * on construction, every parameter and buffer is broadcast from rank 0;
///   * every Conv-BN block with batch norm (calq::nn, folded or not) normalizes in training
///     with the statistics of the global batch (sync_batch_norm), so running statistics stay
///     identical; a batch norm outside a calq::nn Conv-BN block is an error (it would drift);
///   * the observer of every activation quantizer (every FakeQuantize not named
///     "weight_fake_quant") is fed global_observer_input(x) in states QAT and CALIBRATION, so
///     it takes the step one process would take on the global batch; weight quantizers see
///     the same weights on every rank and need nothing;
///   * the gradient of every activation lsq scale (or log2_scale) is multiplied by
///     sqrt(local rows / global rows) (set_batch_share): LSQ's gradient factor
///     1 / sqrt(numel * quant_max) counts the values of the batch it sees, so a rank's factor
///     is that much larger than one process's on the global batch;
///   * finish_gradients() sums the gradients over the ranks (GradientReducer).
/// With identical replicas, summed gradients and deterministic optimizers, every rank then
/// holds the same parameters and buffers after every step (check_replicas verifies it). The
/// hooks are removed on destruction. Every rank must construct it at the same point.
class DataParallel {
 public:
  DataParallel(torch::nn::Module& model, std::shared_ptr<ProcessGroup> group,
               DataParallelOptions options = {});
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  ProcessGroup& group() { return *group_; }
  /// This rank's rows and the global batch's rows of the coming step (default 1 / 1).
  void set_batch_share(int64_t local_rows, int64_t global_rows);
  /// Call after the backward, before the optimizer step.
  void finish_gradients() { reducer_->finish(); }
  const GradientReducer& reducer() const { return *reducer_; }

 private:
  torch::nn::Module& model_;
  std::shared_ptr<ProcessGroup> group_;
  std::vector<nn::detail::ConvBlockImpl*> batch_norm_blocks_;
  std::vector<FakeQuantizeImpl*> activation_quantizers_;
  std::vector<std::pair<at::Tensor, unsigned>> lsq_scale_hooks_;  // parameter, hook handle
  double lsq_gradient_scale_ = 1.0;
  std::unique_ptr<GradientReducer> reducer_;
};

/// Every parameter and buffer of `module` set, in place, to rank `root`'s (shapes may differ
/// before, e.g. an observer without data).
void broadcast_state(torch::nn::Module& module, ProcessGroup& group, int64_t root = 0);

/// Throws unless every parameter and buffer of `module` has the same shape and bits on every
/// rank, naming the first entry that differs and the ranks (one all-gather of a 64-bit hash
/// per entry).
void check_replicas(const torch::nn::Module& module, ProcessGroup& group);

/// `module`'s parameters and buffers as one archive (torch::save format) in memory, and back.
std::string serialize_state(const torch::nn::Module& module);
void deserialize_state(torch::nn::Module& module, const std::string& bytes);

}  // namespace distributed
}  // namespace calq
