#include "calq/distributed/sync_batch_norm.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>

#include <cmath>
#include <vector>

namespace calq {
namespace distributed {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Per-channel sums of dy and of dy * x over a contiguous (rows, channels, plane) block, in
// float64 (four partial sums per channel so the additions do not wait on each other).
template <typename scalar_t>
void channel_sums(const scalar_t* dy, const scalar_t* x, int64_t rows, int64_t channels,
                  int64_t plane, double* sum_dy, double* sum_dy_x) {
  at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double a[4] = {0, 0, 0, 0}, b[4] = {0, 0, 0, 0};
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* g = dy + (r * channels + c) * plane;
        const scalar_t* v = x + (r * channels + c) * plane;
        int64_t j = 0;
        for (; j + 4 <= plane; j += 4) {
          for (int k = 0; k < 4; ++k) {
            a[k] += static_cast<double>(g[j + k]);
            b[k] += static_cast<double>(g[j + k]) * static_cast<double>(v[j + k]);
          }
        }
        for (; j < plane; ++j) {
          a[0] += static_cast<double>(g[j]);
          b[0] += static_cast<double>(g[j]) * static_cast<double>(v[j]);
        }
      }
      sum_dy[c] = (a[0] + a[1]) + (a[2] + a[3]);
      sum_dy_x[c] = (b[0] + b[1]) + (b[2] + b[3]);
    }
  });
}

// out = dy * k_dy[c] + x * k_x[c] + k_1[c] over a contiguous (rows, channels, plane) block: the
// input gradient in one pass.
template <typename scalar_t>
void affine_planes(const scalar_t* dy, const scalar_t* x, scalar_t* out, int64_t rows,
                   int64_t channels, int64_t plane, const scalar_t* k_dy, const scalar_t* k_x,
                   const scalar_t* k_1) {
  at::parallel_for(0, rows * channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % channels;
      const scalar_t a = k_dy[c], b = k_x[c], d = k_1[c];
      const scalar_t* g = dy + p * plane;
      const scalar_t* v = x + p * plane;
      scalar_t* o = out + p * plane;
      for (int64_t j = 0; j < plane; ++j) o[j] = g[j] * a + v[j] * b + d;
    }
  });
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

    // Per-channel sums of dy and dy * x over this rank's rows, then over every rank; then
    //   dx = w invstd (dy - A - (x - mean) B),  A = sum dy / n,  B = invstd^2 sum dy (x - mean) / n
    // as one affine map of (dy, x) per channel.
    at::Tensor sums = at::zeros({2 * channels}, at::kDouble);
    const int64_t rows = input.numel() > 0 ? input.size(0) : 0;
    const int64_t plane = channels > 0 && rows > 0 ? input.numel() / (rows * channels) : 0;
    if (rows > 0) {
      AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "sync_batch_norm_backward", [&] {
        channel_sums(grad.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), rows, channels, plane,
                     sums.data_ptr<double>(), sums.data_ptr<double>() + channels);
      });
    }
    const at::Tensor local = sums.clone();
    std::vector<at::Tensor> reduce{sums};
    group.all_reduce(reduce);

    const at::Tensor mean_d = mean.to(at::kDouble);
    const at::Tensor invstd_d = invstd.to(at::kDouble);
    const at::Tensor gamma =
        weight.defined() ? weight.detach().to(at::kDouble) : at::ones({channels}, at::kDouble);
    auto dy_x_centered = [&](const at::Tensor& s) {  // sum dy (x - mean) from sum dy, sum dy x
      return s.narrow(0, channels, channels) - mean_d * s.narrow(0, 0, channels);
    };
    at::Tensor grad_input;
    if (ctx->needs_input_grad(0)) {
      grad_input = at::empty_like(input);
      if (rows > 0) {
        const at::Tensor a = sums.narrow(0, 0, channels) / n;
        const at::Tensor b = invstd_d * invstd_d * dy_x_centered(sums) / n;
        const at::Tensor scale = gamma * invstd_d;
        const at::Tensor k_dy = scale.to(input.scalar_type()).contiguous();
        const at::Tensor k_x = (-scale * b).to(input.scalar_type()).contiguous();
        const at::Tensor k_1 = (-scale * (a - mean_d * b)).to(input.scalar_type()).contiguous();
        AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "sync_batch_norm_input_grad", [&] {
          affine_planes(grad.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(),
                        grad_input.data_ptr<scalar_t>(), rows, channels, plane,
                        k_dy.data_ptr<scalar_t>(), k_x.data_ptr<scalar_t>(),
                        k_1.data_ptr<scalar_t>());
        });
      }
    }
    at::Tensor grad_weight, grad_bias;
    if (weight.defined() && ctx->needs_input_grad(1)) {
      grad_weight = (dy_x_centered(local) * invstd_d).to(input.scalar_type());
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
