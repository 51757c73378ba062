#include "calq/distributed/sync_batch_norm.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>

#include <cmath>
#include <vector>

namespace calq {
namespace distributed {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Reduction dimensions (every one but the channel dimension 1) and the shape that broadcasts a
// per-channel vector against the input.
std::vector<int64_t> reduce_dims(const at::Tensor& x) {
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  return dims;
}
std::vector<int64_t> channel_shape(const at::Tensor& x) {
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[1] = x.size(1);
  return shape;
}

struct SyncBatchNormFunction : public torch::autograd::Function<SyncBatchNormFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const at::Tensor& bias, at::Tensor running_mean, at::Tensor running_var,
                            double momentum, double eps, int64_t group_address) {
    auto& group = *reinterpret_cast<ProcessGroup*>(group_address);
    const int64_t channels = input.size(1);
    const int64_t count = channels > 0 ? input.numel() / channels : 0;

    // This rank's count, mean and sum of squared deviations (M2) per channel, in float64.
    at::Tensor stats = at::zeros({1 + 2 * channels}, at::kDouble);
    stats[0] = static_cast<double>(count);
    if (count > 0) {
      at::Tensor mean, var;  // biased variance, accumulated in float64 by ATen
      std::tie(mean, var) = at::batch_norm_update_stats(input, {}, {}, 0.0);
      stats.narrow(0, 1, channels).copy_(mean);
      stats.narrow(0, 1 + channels, channels)
          .copy_(var.to(at::kDouble) * static_cast<double>(count));
    }
    const std::vector<at::Tensor> all = group.all_gather(stats);

    // Chan et al.'s pairwise combination, in rank order: the same bits on every rank.
    double n = 0.0;
    at::Tensor mean = at::zeros({channels}, at::kDouble);
    at::Tensor m2 = at::zeros({channels}, at::kDouble);
    for (const at::Tensor& s : all) {
      const double nb = s[0].item<double>();
      if (nb == 0.0) continue;
      const at::Tensor mean_b = s.narrow(0, 1, channels);
      const at::Tensor m2_b = s.narrow(0, 1 + channels, channels);
      if (n == 0.0) {
        mean = mean_b.clone();
        m2 = m2_b.clone();
        n = nb;
        continue;
      }
      const double total = n + nb;
      const at::Tensor delta = mean_b - mean;
      mean = mean + delta * (nb / total);
      m2 = m2 + m2_b + delta * delta * (n * nb / total);
      n = total;
    }
    TORCH_CHECK(n > 1.0, "sync_batch_norm: the global batch has ", n,
                " value(s) per channel over all ranks; batch norm in training needs more than 1");
    const at::Tensor var = m2 / n;
    if (running_mean.defined()) {
      running_mean.copy_(mean * momentum + running_mean.to(at::kDouble) * (1.0 - momentum));
    }
    if (running_var.defined()) {
      running_var.copy_((m2 / (n - 1.0)) * momentum +
                        running_var.to(at::kDouble) * (1.0 - momentum));
    }
    const at::Tensor mean_f = mean.to(input.scalar_type());
    const at::Tensor var_f = var.to(input.scalar_type());
    const at::Tensor invstd = (var + eps).rsqrt().to(input.scalar_type());

    ctx->save_for_backward({input, weight, mean_f, invstd});
    ctx->saved_data["count"] = n;
    ctx->saved_data["group"] = group_address;
    if (count == 0) return input.clone();
    // Normalizing with given statistics is batch norm's inference form.
    return at::batch_norm(input, weight, bias, mean_f, var_f, /*training=*/false, 0.0, eps,
                          /*cudnn_enabled=*/false);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& mean = saved[2];
    const at::Tensor& invstd = saved[3];
    const double n = ctx->saved_data["count"].toDouble();
    auto& group = *reinterpret_cast<ProcessGroup*>(ctx->saved_data["group"].toInt());
    const int64_t channels = input.size(1);
    at::Tensor grad = grad_outputs[0];
    if (!grad.defined()) grad = at::zeros_like(input);
    grad = grad.contiguous();

    const auto dims = reduce_dims(input);
    const auto shape = channel_shape(input);
    const bool has_rows = input.numel() > 0;
    const at::Tensor xmu = has_rows ? input - mean.view(shape) : input;
    // Per-channel sums of grad and grad * (x - mean) over this rank's rows, then over all.
    at::Tensor sums = at::zeros({2 * channels}, at::kDouble);
    if (has_rows) {
      sums.narrow(0, 0, channels).copy_(at::sum(grad, dims, false, at::kDouble));
      sums.narrow(0, channels, channels).copy_(at::sum(grad * xmu, dims, false, at::kDouble));
    }
    const at::Tensor local = sums.clone();
    std::vector<at::Tensor> reduce{sums};
    group.all_reduce(reduce);
    const at::Tensor mean_dy = (sums.narrow(0, 0, channels) / n).to(input.scalar_type());
    const at::Tensor mean_dy_xmu = (sums.narrow(0, channels, channels) / n).to(input.scalar_type());

    at::Tensor grad_input;
    if (ctx->needs_input_grad(0) && has_rows) {
      const at::Tensor scale = weight.defined() ? invstd * weight : invstd;
      grad_input =
          (grad - mean_dy.view(shape) - xmu * (invstd * invstd * mean_dy_xmu).view(shape)) *
          scale.view(shape);
    } else if (ctx->needs_input_grad(0)) {
      grad_input = at::zeros_like(input);
    }
    at::Tensor grad_weight, grad_bias;
    if (weight.defined() && ctx->needs_input_grad(1)) {
      grad_weight = (local.narrow(0, channels, channels).to(input.scalar_type()) * invstd);
    }
    if (ctx->needs_input_grad(2)) {
      grad_bias = local.narrow(0, 0, channels).to(input.scalar_type());
    }
    return {grad_input,   grad_weight,  grad_bias,    at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor sync_batch_norm(const at::Tensor& input, const at::Tensor& weight,
                           const at::Tensor& bias, at::Tensor running_mean, at::Tensor running_var,
                           double momentum, double eps, ProcessGroup& group) {
  TORCH_CHECK(input.dim() >= 2, "sync_batch_norm: input must be (N, C, ...), got shape ",
              input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "sync_batch_norm: input must be floating, got ", input.scalar_type());
  TORCH_CHECK(std::isfinite(momentum) && momentum >= 0.0 && momentum <= 1.0,
              "sync_batch_norm: momentum must lie in [0, 1], got ", momentum);
  return SyncBatchNormFunction::apply(input.contiguous(), weight, bias, running_mean, running_var,
                                      momentum, eps, reinterpret_cast<int64_t>(&group));
}

}  // namespace distributed
}  // namespace calq
