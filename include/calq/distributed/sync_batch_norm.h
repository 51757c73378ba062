#pragma once
// Synchronized batch norm: training-mode batch statistics over the global batch of every rank
// of a data-parallel job (docs/distributed.md, "Batch norm").

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "calq/distributed/process_group.h"

namespace calq {
namespace distributed {

/// Batch norm of `input` (N, C, ...) in training mode with the mean and variance of the
/// concatenation of every rank's input, as one process would compute them on the whole global
/// batch: y = (x - mean) / sqrt(var + eps) * weight + bias, and the running statistics updated
/// in place as at::batch_norm does (running = (1 - momentum) * running + momentum * batch, the
/// unbiased variance over all ranks' N * H * W values). Differentiable in input, weight and
/// bias; the backward all-reduces the per-channel sums of grad and grad * (x - mean), so each
/// rank's input gradient is that of the loss summed over ranks (the gradient reducer then sums
/// the parameter gradients).
///
/// Each rank's batch statistics (count, mean, biased variance per channel, from
/// at::batch_norm_update_stats) are gathered and combined in rank order in float64 (Chan et
/// al.'s pairwise update), so every rank computes bit-identical statistics and running
/// statistics. Every rank must call it at the same point of its forward (one all-gather
/// here, one all-reduce in the backward). weight / bias may be undefined (affine = false);
/// running_mean / running_var may be undefined (no running statistics). A rank's input may
/// have no rows, but the global batch must have more than one value per channel.
at::Tensor sync_batch_norm(const at::Tensor& input, const at::Tensor& weight,
                           const at::Tensor& bias, at::Tensor running_mean, at::Tensor running_var,
                           double momentum, double eps, ProcessGroup& group);

}  // namespace distributed
}  // namespace calq
