#include "calq/observers/mse.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "calq/quant/qparams.h"

namespace calq {
namespace observers {
namespace {

constexpr int64_t kLastCandidate = 94;
// Values per task: a block stays in L1 while all candidates run over it.
constexpr int64_t kBlock = 4096;

typedef float vf8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));

// 1.5 * 2^23: adding and subtracting it rounds |v| < 2^22 to an integer, ties to even
// (the default FP rounding mode), without SSE4.1's round instruction.
constexpr float kRoundMagic = 12582912.0f;

struct Candidate {
  float inv_scale, scale, lo, hi;  // lo/hi: quant_min/max minus the zero point
};

// Sum of squared errors of x[0, n) for one candidate. Vector lanes hold partial sums in float;
// a block has at most kBlock values, so each lane sums at most kBlock / 8 squared errors.
__attribute__((target_clones("avx2", "default"))) double block_error(const float* x, int64_t n,
                                                                     Candidate c, bool half_up) {
  const vf8 zero = {0, 0, 0, 0, 0, 0, 0, 0};
  const vf8 lo_guard = zero + (c.lo - 1.0f), hi_guard = zero + (c.hi + 1.0f);
  const vf8 lo = zero + c.lo, hi = zero + c.hi, one = zero + 1.0f;
  vf8 acc = zero;
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    vf8 v;
    std::memcpy(&v, x + j, sizeof(v));
    vf8 q = v * c.inv_scale;
    q = q < lo_guard ? lo_guard : q;
    q = q > hi_guard ? hi_guard : q;
    vf8 r = (q + kRoundMagic) - kRoundMagic;
    if (half_up) {
      const vi8 tie = (q - r) == (zero + 0.5f);
      r = tie ? r + one : r;
    }
    r = r < lo ? lo : r;
    r = r > hi ? hi : r;
    const vf8 e = v - r * c.scale;
    acc += e * e;
  }
  double total = 0.0;
  for (int lane = 0; lane < 8; ++lane) {
    total += acc[lane];
  }
  for (; j < n; ++j) {
    float q = x[j] * c.inv_scale;
    q = std::min(std::max(q, c.lo - 1.0f), c.hi + 1.0f);
    float r = (q + kRoundMagic) - kRoundMagic;
    if (half_up && q - r == 0.5f) {
      r += 1.0f;
    }
    r = std::min(std::max(r, c.lo), c.hi);
    const float e = x[j] - r * c.scale;
    total += static_cast<double>(e) * e;
  }
  return total;
}

void check_error_args(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "mse: x must be float32 {C, N}");
  TORCH_CHECK(scale.dim() == 2 && scale.size(1) == x.size(0) && scale.sizes() == zero_point.sizes(),
              "mse: scale and zero_point must be {K, C} with C = ", x.size(0), ", got ",
              scale.sizes(), " and ", zero_point.sizes());
}

}  // namespace

at::Tensor mse_candidate_errors(const at::Tensor& x_in, const at::Tensor& scale_in,
                                const at::Tensor& zero_point_in, const QuantSpec& spec) {
  check_error_args(x_in, scale_in, zero_point_in);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor scale = scale_in.to(at::kFloat).contiguous();
  const at::Tensor zero_point = zero_point_in.to(at::kInt).contiguous();
  const int64_t channels = x.size(0), n = x.size(1), k_count = scale.size(0);
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<Candidate> candidates(static_cast<size_t>(k_count * channels));
  const float* s = scale.data_ptr<float>();
  const int32_t* zp = zero_point.data_ptr<int32_t>();
  for (int64_t i = 0; i < k_count * channels; ++i) {
    candidates[i] = {1.0f / s[i], s[i], static_cast<float>(spec.quant_min() - zp[i]),
                     static_cast<float>(spec.quant_max() - zp[i])};
  }
  const bool half_up = spec.rounding() == Rounding::half_up;
  // partial[(c * blocks + b) * K + k]: summed per channel afterwards in a fixed order, so the
  // result does not depend on the thread count.
  std::vector<double> partial(static_cast<size_t>(channels * blocks * k_count), 0.0);
  const float* data = x.data_ptr<float>();
  at::parallel_for(0, channels * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t c = item / blocks, b = item % blocks;
      const float* block = data + c * n + b * kBlock;
      const int64_t len = std::min(kBlock, n - b * kBlock);
      for (int64_t k = 0; k < k_count; ++k) {
        partial[item * k_count + k] =
            block_error(block, len, candidates[k * channels + c], half_up);
      }
    }
  });
  at::Tensor out = at::zeros({channels, k_count}, at::kDouble);
  double* o = out.data_ptr<double>();
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t b = 0; b < blocks; ++b) {
      for (int64_t k = 0; k < k_count; ++k) {
        o[c * k_count + k] += partial[(c * blocks + b) * k_count + k];
      }
    }
  }
  return out;
}

at::Tensor mse_candidate_errors_ref(const at::Tensor& x_in, const at::Tensor& scale_in,
                                    const at::Tensor& zero_point_in, const QuantSpec& spec) {
  check_error_args(x_in, scale_in, zero_point_in);
  const at::Tensor x = x_in.to(at::kDouble).contiguous();
  const at::Tensor scale = scale_in.to(at::kDouble).contiguous();
  const at::Tensor zero_point = zero_point_in.to(at::kDouble).contiguous();
  const int64_t channels = x.size(0), n = x.size(1), k_count = scale.size(0);
  at::Tensor out = at::zeros({channels, k_count}, at::kDouble);
  const auto xs = x.accessor<double, 2>();
  const auto ss = scale.accessor<double, 2>();
  const auto zs = zero_point.accessor<double, 2>();
  auto os = out.accessor<double, 2>();
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t k = 0; k < k_count; ++k) {
      const double s = ss[k][c], z = zs[k][c];
      double total = 0.0;
      for (int64_t j = 0; j < n; ++j) {
        const double v = xs[c][j];
        const double r =
            spec.rounding() == Rounding::half_up ? std::floor(v / s + 0.5) : std::nearbyint(v / s);
        const double q = std::min(std::max(r + z, static_cast<double>(spec.quant_min())),
                                  static_cast<double>(spec.quant_max()));
        const double e = v - (q - z) * s;
        total += e * e;
      }
      os[c][k] = total;
    }
  }
  return out;
}

MSEObserverImpl::MSEObserverImpl(ObserverOptions common, MSEObserverOptions options)
    : RunningRangeObserverImpl("mse", std::move(common), options.averaging_constant()),
      mse_options_(options) {
  TORCH_CHECK(options.stride() >= 1 && options.stride() <= kLastCandidate,
              "observer 'mse': stride = ", options.stride(), " is invalid; it must lie in [1, ",
              kLastCandidate, "]");
}

nlohmann::json MSEObserverImpl::config() const {
  return {{"stride", mse_options_.stride()}, {"averaging_constant", averaging_constant_}};
}

std::shared_ptr<ObserverImpl> MSEObserverImpl::clone_empty() const {
  return std::make_shared<MSEObserverImpl>(options_, mse_options_);
}

std::pair<at::Tensor, at::Tensor> MSEObserverImpl::batch_range(const Batch& batch) {
  std::vector<double> factors;
  for (int64_t i = 0; i <= kLastCandidate; i += mse_options_.stride()) {
    factors.push_back(1.0 - 0.01 * static_cast<double>(i));
  }
  const int64_t k_count = static_cast<int64_t>(factors.size());
  const at::Tensor f = at::tensor(factors, at::kDouble).unsqueeze(1);    // {K, 1}
  const at::Tensor lo = f * batch.min_val.to(at::kDouble).unsqueeze(0);  // {K, C}
  const at::Tensor hi = f * batch.max_val.to(at::kDouble).unsqueeze(0);
  at::Tensor scale, zero_point;
  std::tie(scale, zero_point) = compute_qparams(lo.reshape({-1}), hi.reshape({-1}), spec());
  const int64_t channels = batch.min_val.numel();
  const at::Tensor errors =
      mse_candidate_errors(as_channels(batch.x.to(at::kFloat)), scale.view({k_count, channels}),
                           zero_point.view({k_count, channels}), spec());  // {C, K}
  // First minimum per channel: argmin returns the first index of the minimum.
  const at::Tensor best = errors.argmin(1);  // {C}
  const at::Tensor rows = at::arange(channels, at::kLong);
  return {lo.t().index({rows, best}).to(at::kFloat), hi.t().index({rows, best}).to(at::kFloat)};
}

}  // namespace observers
}  // namespace calq
