#pragma once
// Observers across the ranks of a job: distributed calibration (each rank observes a shard,
// the observers merge in rank order) and the per-batch synchronization of QAT
// (docs/distributed.md, "Calibration" and "Observers in QAT").

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "calq/distributed/process_group.h"
#include "calq/observers/observer.h"
#include "calq/workflow.h"

namespace calq {
namespace distributed {

/// Replaces every observer of `model` (the observer of every FakeQuantize, in named_modules
/// order) on every rank by the merge, in rank order 0 .. N-1, of that observer's state on each
/// rank (ObserverImpl::merge): the state of one observer that saw rank 0's batches, then rank
/// 1's, ... Every rank ends with the same bits. Histogram observers (percentile, kl, mix)
/// merge exactly; running-average ones (min_max, clip, clip_std, mse) by the closed form of
/// running_range.h, which is exact for averaging_constant 0 and 1 and otherwise within the
/// bound of docs/distributed.md. Ranks whose observers saw no data are fine. Throws if the
/// ranks' models have different quantizers (paths, observer kinds or configurations).
/// Quantizers' cached fake_quant scales are recomputed at their next quantizing forward.
void merge_observers(torch::nn::Module& model, ProcessGroup& group);

/// Distributed calibration (seed steps 3-4): `batches` is the whole calibration set, the same
/// on every rank; rank r forwards its contiguous shard, batches [r * B / N, (r + 1) * B / N)
/// (shard()), in state CALIBRATION without gradients, then merge_observers. The result equals
/// calq::calibrate(model, batches) in one process: bit for bit for histogram and fixed_scale
/// observers and for averaging_constant 0 or 1 (kl with update_interval > 1: when B is a
/// multiple of it), within docs/distributed.md's bound otherwise. A rank whose shard is empty
/// (B < N) only merges. Leaves the model in state CALIBRATION. Throws if B is 0.
void calibrate(torch::nn::Module& model,
               const std::function<at::Tensor(const at::Tensor&)>& forward,
               const std::vector<at::Tensor>& batches, ProcessGroup& group);

/// The same with the calibration set read lazily: `batch(i)` returns batch i of `num_batches`
/// (the same on every rank); rank r reads only its shard's batches.
void calibrate(torch::nn::Module& model,
               const std::function<at::Tensor(const at::Tensor&)>& forward, int64_t num_batches,
               const std::function<at::Tensor(int64_t)>& batch, ProcessGroup& group);

/// The same for a module holder with forward(Tensor) (as calq::calibrate).
template <typename ModelHolder>
void calibrate(ModelHolder& model, const std::vector<at::Tensor>& batches, ProcessGroup& group) {
  calibrate(
      *model, [&model](const at::Tensor& x) { return model->forward(x); }, batches, group);
}

/// What `observer` must be fed so that it takes the step one process would take on the global
/// batch, given this rank's part `x` of it (rows along dimension 0, the global batch being
/// the rank-order concatenation of the parts). Every rank calls it at the same point.
///   min_max, clip (per-tensor or per-channel): the global minimum and maximum (one
///     all-gather of 2 values per channel), as a small tensor with exactly those extremes:
///     these observers only use a batch's extremes.
///   fixed_scale: x itself (it ignores data).
///   percentile, kl, mix, clip_std, mse, and any observer with skip_nonfinite: the global
///     batch itself (an all-gather of the activation: exact, and as costly as it sounds).
/// Non-finite values reach every rank's observer alike, which then fails alike.
at::Tensor global_observer_input(const at::Tensor& x, const observers::ObserverImpl& observer,
                                 ProcessGroup& group);

}  // namespace distributed
}  // namespace calq
