#include "calq/observers/clip_std.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace calq {
namespace observers {
namespace {

// Values per task; float lane sums over one block stay accurate (at most kBlock / 8 terms).
constexpr int64_t kBlock = 4096;

typedef float vf8 __attribute__((vector_size(32)));

// Sums of d and d^2 with d = x - shift over x[0, n), float lanes, returned in double.
__attribute__((target_clones("avx2", "default"))) void block_moments(const float* x, int64_t n,
                                                                     float shift, double* sum,
                                                                     double* sum_sq) {
  const vf8 zero = {0, 0, 0, 0, 0, 0, 0, 0};
  vf8 s1 = zero, s2 = zero;
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    vf8 v;
    std::memcpy(&v, x + j, sizeof(v));
    const vf8 d = v - shift;
    s1 += d;
    s2 += d * d;
  }
  double a = 0.0, b = 0.0;
  for (int lane = 0; lane < 8; ++lane) {
    a += s1[lane];
    b += s2[lane];
  }
  for (; j < n; ++j) {
    const double d = static_cast<double>(x[j]) - shift;
    a += d;
    b += d * d;
  }
  *sum = a;
  *sum_sq = b;
}

}  // namespace

std::pair<at::Tensor, at::Tensor> channel_mean_var(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) > 0, "channel_mean_var: x must be {C, N}, N > 0");
  if (x_in.scalar_type() != at::kFloat) {
    at::Tensor var, mean;
    std::tie(var, mean) = at::var_mean(x_in.to(at::kDouble), {1}, /*unbiased=*/false);
    return {mean, var};
  }
  const at::Tensor x = x_in.contiguous();
  const int64_t channels = x.size(0), n = x.size(1);
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  // Shifting by the channel's first value keeps E[d^2] - E[d]^2 free of cancellation when
  // the mean is large compared with the spread.
  const float* data = x.data_ptr<float>();
  std::vector<double> sums(static_cast<size_t>(channels * blocks));
  std::vector<double> squares(static_cast<size_t>(channels * blocks));
  at::parallel_for(0, channels * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t c = item / blocks, b = item % blocks;
      block_moments(data + c * n + b * kBlock, std::min(kBlock, n - b * kBlock), data[c * n],
                    &sums[item], &squares[item]);
    }
  });
  at::Tensor mean = at::empty({channels}, at::kDouble);
  at::Tensor var = at::empty({channels}, at::kDouble);
  double* mean_data = mean.data_ptr<double>();
  double* var_data = var.data_ptr<double>();
  for (int64_t c = 0; c < channels; ++c) {
    double s1 = 0.0, s2 = 0.0;
    for (int64_t b = 0; b < blocks; ++b) {  // fixed order: independent of the thread count
      s1 += sums[c * blocks + b];
      s2 += squares[c * blocks + b];
    }
    const double m = s1 / static_cast<double>(n);
    mean_data[c] = static_cast<double>(data[c * n]) + m;
    var_data[c] = std::max(s2 / static_cast<double>(n) - m * m, 0.0);
  }
  return {mean, var};
}

ClipStdObserverImpl::ClipStdObserverImpl(ObserverOptions common, ClipStdObserverOptions options)
    : RunningRangeObserverImpl("clip_std", std::move(common), options.averaging_constant()),
      std_options_(options) {
  TORCH_CHECK(std::isfinite(options.std_scale()) && options.std_scale() >= 0.0,
              "observer 'clip_std': std_scale = ", options.std_scale(),
              " is invalid; it must be finite and >= 0");
}

nlohmann::json ClipStdObserverImpl::config() const {
  return {{"std_scale", std_options_.std_scale()}, {"averaging_constant", averaging_constant_}};
}

std::shared_ptr<ObserverImpl> ClipStdObserverImpl::clone_empty() const {
  return std::make_shared<ClipStdObserverImpl>(options_, std_options_);
}

std::pair<at::Tensor, at::Tensor> ClipStdObserverImpl::batch_range(const Batch& batch) {
  at::Tensor mean, var;
  std::tie(mean, var) = channel_mean_var(as_channels(batch.x));
  const at::Tensor band = var.sqrt() * std_options_.std_scale();
  const at::Tensor lo = at::maximum(batch.min_val.to(at::kDouble), mean - band);
  const at::Tensor hi = at::minimum(batch.max_val.to(at::kDouble), mean + band);
  return {lo.to(at::kFloat), hi.to(at::kFloat)};
}

}  // namespace observers
}  // namespace calq
