#include "calq/observers/histogram.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>

#include "calq/quant/qparams.h"
#include "observers/histogram_kernels.h"

namespace calq {
namespace observers {
namespace {

// Values per parallel task; large enough that the per-task histogram setup is negligible.
constexpr int64_t kGrain = 1 << 15;

bool is_power_of_two(int64_t v) {
  return v > 0 && (v & (v - 1)) == 0;
}

// Whether the float32 kernel may bin over [0, range] with `bins` bins: bins a power of two and
// k = bins / range a normal float32 (for a range below about bins * 2^-126, k would overflow or
// lose exactness; such data takes the float64 path).
bool float_kernel_fits(int64_t bins, double range) {
  if (!is_power_of_two(bins) || bins > (int64_t{1} << 24) || !(range > 0.0)) return false;
  return std::isnormal(static_cast<float>(static_cast<double>(bins) / range));
}

void check_counts(const at::Tensor& counts) {
  TORCH_CHECK(counts.defined() && counts.scalar_type() == at::kDouble && counts.dim() == 1 &&
                  counts.is_contiguous() && counts.numel() >= 2,
              "histogram counts must be a contiguous float64 vector of at least 2 bins, got ",
              counts.defined() ? counts.toString() : "undefined", " of shape ",
              counts.defined() ? counts.sizes() : at::IntArrayRef{});
}

template <typename scalar_t, typename acc_t>
void bin_values(const scalar_t* x, int64_t n, acc_t k, int64_t bins, int64_t* sub) {
  static_assert(detail::kCounterCopies == 4, "h0..h3 below are the counter copies");
  using detail::bin_index;
  const int64_t last = bins - 1;
  int64_t* h0 = sub;
  int64_t* h1 = sub + bins;
  int64_t* h2 = sub + 2 * bins;
  int64_t* h3 = sub + 3 * bins;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const int64_t i0 = bin_index<acc_t>(static_cast<acc_t>(std::abs(x[j])) * k, last);
    const int64_t i1 = bin_index<acc_t>(static_cast<acc_t>(std::abs(x[j + 1])) * k, last);
    const int64_t i2 = bin_index<acc_t>(static_cast<acc_t>(std::abs(x[j + 2])) * k, last);
    const int64_t i3 = bin_index<acc_t>(static_cast<acc_t>(std::abs(x[j + 3])) * k, last);
    ++h0[i0];
    ++h1[i1];
    ++h2[i2];
    ++h3[i3];
  }
  for (; j < n; ++j) {
    ++h0[bin_index<acc_t>(static_cast<acc_t>(std::abs(x[j])) * k, last)];
  }
}

using detail::Extremes;

// Float32 data, power-of-two bins: the float kernel (histogram_kernels.h), flushed into
// 64-bit counts often enough that no 32-bit copy can overflow. Adds to `counts` unless
// `only_if_in_range` and some value is non-finite or beyond the range; returns the extremes either
// way.
Extremes accumulate_float_pow2(double* counts, int64_t bins, double range, const float* x,
                               int64_t n, bool only_if_in_range) {
  constexpr int64_t kFlush = int64_t{1} << 31;  // at most 2^31 values per flush, < 2^32 per copy
  const float k = static_cast<float>(static_cast<double>(bins) / range);
  std::vector<int64_t> total(static_cast<size_t>(bins), 0);
  Extremes extremes;
  std::mutex mutex;
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> sub(static_cast<size_t>(detail::kCounterCopies * bins));
    std::vector<int64_t> local(static_cast<size_t>(bins), 0);
    Extremes local_extremes;
    for (int64_t start = begin; start < end; start += kFlush) {
      std::fill(sub.begin(), sub.end(), 0u);
      local_extremes.add(
          detail::bin_float_values(x + start, std::min(kFlush, end - start), k, bins, sub.data()));
      for (int64_t b = 0; b < bins; ++b) {
        local[b] +=
            static_cast<int64_t>(sub[b]) + sub[bins + b] + sub[2 * bins + b] + sub[3 * bins + b];
      }
    }
    std::lock_guard<std::mutex> lock(mutex);
    extremes.add(local_extremes);
    for (int64_t b = 0; b < bins; ++b) {
      total[b] += local[b];
    }
  });
  if (!only_if_in_range || extremes.within(range)) {
    for (int64_t b = 0; b < bins; ++b) {
      counts[b] += static_cast<double>(total[b]);
    }
  }
  return extremes;
}

template <typename scalar_t, typename acc_t>
void accumulate_typed(double* counts, int64_t bins, double range, const scalar_t* x, int64_t n) {
  const acc_t k = static_cast<acc_t>(static_cast<double>(bins) / range);
  std::mutex mutex;
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> sub(static_cast<size_t>(detail::kCounterCopies * bins), 0);
    bin_values<scalar_t, acc_t>(x + begin, end - begin, k, bins, sub.data());
    std::lock_guard<std::mutex> lock(mutex);
    for (int64_t b = 0; b < bins; ++b) {
      counts[b] +=
          static_cast<double>(sub[b] + sub[bins + b] + sub[2 * bins + b] + sub[3 * bins + b]);
    }
  });
}

void check_accumulate_args(const at::Tensor& counts, double range, const at::Tensor& x) {
  check_counts(counts);
  TORCH_CHECK(std::isfinite(range) && range >= 0.0, "histogram range = ", range,
              " is invalid; it must be finite and >= 0");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "histogram data must be float32 or float64, got ", x.scalar_type());
}

}  // namespace

double AbsHistogram::total() const {
  return counts.sum().item<double>();
}

double histogram_range_for(double max_abs) {
  TORCH_CHECK(std::isfinite(max_abs) && max_abs >= 0.0, "histogram max_abs = ", max_abs,
              " is invalid; it must be finite and >= 0");
  if (max_abs == 0.0) {
    return 0.0;
  }
  int exponent = 0;
  const double mantissa = std::frexp(max_abs, &exponent);  // max_abs = mantissa * 2^exponent
  return mantissa == 0.5 ? max_abs : std::ldexp(1.0, exponent);
}

void accumulate_abs_histogram(at::Tensor& counts, double range, const at::Tensor& x_in) {
  check_accumulate_args(counts, range, x_in);
  const at::Tensor x = x_in.contiguous();
  const int64_t bins = counts.numel();
  double* out = counts.data_ptr<double>();
  if (range == 0.0) {  // every value is 0 (the caller sized the range from max|x|)
    out[0] += static_cast<double>(x.numel());
    return;
  }
  if (x.scalar_type() == at::kFloat) {
    if (float_kernel_fits(bins, range)) {
      accumulate_float_pow2(out, bins, range, x.data_ptr<float>(), x.numel(),
                            /*only_if_in_range=*/false);
    } else {
      accumulate_typed<float, double>(out, bins, range, x.data_ptr<float>(), x.numel());
    }
  } else {
    accumulate_typed<double, double>(out, bins, range, x.data_ptr<double>(), x.numel());
  }
}

bool accumulate_abs_histogram_in_range(at::Tensor& counts, double range, const at::Tensor& x,
                                       float* min_out, float* max_out) {
  check_accumulate_args(counts, range, x);
  const int64_t bins = counts.numel();
  if (x.scalar_type() != at::kFloat || !x.is_contiguous() || x.numel() == 0 ||
      !float_kernel_fits(bins, range)) {
    return false;
  }
  const Extremes e =
      accumulate_float_pow2(counts.data_ptr<double>(), bins, range, x.data_ptr<float>(), x.numel(),
                            /*only_if_in_range=*/true);
  if (!e.within(range)) return false;
  *min_out = e.min;
  *max_out = e.max;
  return true;
}

void accumulate_abs_histogram_ref(at::Tensor& counts, double range, const at::Tensor& x_in) {
  check_accumulate_args(counts, range, x_in);
  const at::Tensor x = x_in.to(at::kDouble).contiguous().view({-1});
  const int64_t bins = counts.numel();
  double* out = counts.data_ptr<double>();
  const double* data = x.data_ptr<double>();
  for (int64_t j = 0; j < x.numel(); ++j) {
    const double a = std::abs(data[j]);
    int64_t b = 0;
    if (range > 0.0 && a > 0.0) {
      b = static_cast<int64_t>(std::ceil(a / range * static_cast<double>(bins))) - 1;
      b = std::min(std::max<int64_t>(b, 0), bins - 1);
    }
    out[b] += 1.0;
  }
}

at::Tensor widen_histogram(const at::Tensor& counts, double range, double new_range) {
  check_counts(counts);
  TORCH_CHECK(new_range >= range, "widen_histogram: new range ", new_range,
              " is smaller than the current range ", range);
  if (new_range == range) {
    return counts.clone();
  }
  const int64_t bins = counts.numel();
  at::Tensor out = at::zeros({bins}, at::kDouble);
  const double* src = counts.data_ptr<double>();
  double* dst = out.data_ptr<double>();
  if (range == 0.0) {
    dst[0] = counts.sum().item<double>();
    return out;
  }
  int shift = 0;
  const double ratio = std::frexp(new_range / range, &shift);
  TORCH_CHECK(ratio == 0.5, "widen_histogram: new range ", new_range, " is not the range ", range,
              " times a power of two");
  shift -= 1;  // new_range / range = 2^shift
  for (int64_t b = 0; b < bins; ++b) {
    dst[shift >= 63 ? 0 : (b >> shift)] += src[b];
  }
  return out;
}

AbsHistogram merge_histograms(const AbsHistogram& a, const AbsHistogram& b) {
  TORCH_CHECK(a.bins() == b.bins(), "merge_histograms: bin counts differ (", a.bins(), " vs ",
              b.bins(), ")");
  AbsHistogram out;
  out.range = std::max(a.range, b.range);
  out.max_abs = std::max(a.max_abs, b.max_abs);
  out.counts = widen_histogram(a.counts, a.range, out.range);
  out.counts.add_(widen_histogram(b.counts, b.range, out.range));
  return out;
}

double percentile_threshold(const AbsHistogram& h, double percentile) {
  check_counts(h.counts);
  TORCH_CHECK(std::isfinite(percentile) && percentile > 0.0 && percentile <= 100.0,
              "percentile = ", percentile, " is invalid; it must lie in (0, 100]");
  const double total = h.total();
  TORCH_CHECK(total > 0.0, "percentile_threshold: the histogram is empty (no data)");
  const double target = percentile / 100.0 * total * (1.0 - 1e-12);
  const double* c = h.counts.data_ptr<double>();
  double cumulative = 0.0;
  int64_t i = 0;
  for (; i < h.bins(); ++i) {
    cumulative += c[i];
    if (cumulative >= target) {
      break;
    }
  }
  i = std::min(i, h.bins() - 1);
  return std::min((static_cast<double>(i) + 0.5) * h.bin_width(), h.max_abs);
}

int64_t kl_num_quantized_bins(const QuantSpec& spec) {
  // Levels on [0, t]: half of a signed grid's, every level of an unsigned one.
  const int64_t levels = spec.quant_max() - spec.quant_min() + 1;
  return spec.unsigned_grid() ? levels : levels / 2;
}

std::vector<double> kl_divergences(const AbsHistogram& h, int64_t nq) {
  check_counts(h.counts);
  return kl_divergences(h.counts, 0.0, nq);
}

std::vector<double> kl_divergences(const at::Tensor& counts, double beyond, int64_t nq) {
  check_counts(counts);
  TORCH_CHECK(nq >= 1, "kl: number of quantized bins = ", nq, " must be >= 1");
  TORCH_CHECK(std::isfinite(beyond) && beyond >= 0.0,
              "kl: outlier count beyond the histogram = ", beyond, " must be finite and >= 0");
  const int64_t bins = counts.numel();
  std::vector<double> out;
  if (bins < nq) {
    return out;
  }
  const double* c = counts.data_ptr<double>();
  // Prefix sums over bins [0, j): counts, c log c, and the number of non-empty bins.
  std::vector<double> sum(bins + 1, 0.0), plogp(bins + 1, 0.0), nonzero(bins + 1, 0.0);
  for (int64_t j = 0; j < bins; ++j) {
    sum[j + 1] = sum[j] + c[j];
    plogp[j + 1] = plogp[j] + (c[j] > 0.0 ? c[j] * std::log(c[j]) : 0.0);
    nonzero[j + 1] = nonzero[j] + (c[j] > 0.0 ? 1.0 : 0.0);
  }
  const double total = sum[bins] + beyond;
  TORCH_CHECK(total > 0.0, "kl: the histogram is empty (no data)");
  const double log_total = std::log(total);
  const double inf = std::numeric_limits<double>::infinity();
  out.reserve(static_cast<size_t>(bins - nq + 1));
  for (int64_t i = nq; i <= bins; ++i) {
    const double outliers = total - sum[i];
    const double kept = sum[i];  // sum of Q before normalization
    if (kept <= 0.0) {
      out.push_back(inf);
      continue;
    }
    const double p_last = c[i - 1] + outliers;
    // sum over j of P_j log P_j: bins before i-1 from the prefix, bin i-1 with its outliers.
    const double sum_plogp = plogp[i - 1] + (p_last > 0.0 ? p_last * std::log(p_last) : 0.0);
    const int64_t m = i / nq;
    double cross = 0.0;  // sum over chunks of T_c * log(q per bin), unnormalized
    bool infinite = false;
    for (int64_t chunk = 0; chunk < nq; ++chunk) {
      const int64_t start = chunk * m;
      const bool is_last = chunk == nq - 1;
      const int64_t stop = is_last ? i : start + m;
      const double s = sum[stop] - sum[start];
      double nz = nonzero[stop] - nonzero[start];
      double t = s;
      if (is_last) {
        nz += (p_last > 0.0 ? 1.0 : 0.0) - (c[i - 1] > 0.0 ? 1.0 : 0.0);
        t += outliers;
      }
      if (t <= 0.0) {
        continue;
      }
      if (s <= 0.0) {
        infinite = true;
        break;
      }
      cross += t * (std::log(s) - std::log(nz));
    }
    if (infinite) {
      out.push_back(inf);
      continue;
    }
    // KL = (1/N) [sum P log P - N log N] - (1/N) [sum_c T_c log(S_c / nz_c) - N log sum(Q)]
    const double kl = (sum_plogp - cross) / total - log_total + std::log(kept);
    out.push_back(std::max(kl, 0.0));
  }
  return out;
}

double kl_threshold(const AbsHistogram& h, int64_t nq) {
  const std::vector<double> divergence = kl_divergences(h, nq);
  if (divergence.empty()) {
    return h.max_abs;
  }
  size_t best = 0;
  for (size_t j = 1; j < divergence.size(); ++j) {
    if (divergence[j] <= divergence[best]) {
      best = j;
    }
  }
  const double end_bin = static_cast<double>(nq) + static_cast<double>(best);
  return std::min(end_bin * h.bin_width(), h.max_abs);
}

std::vector<double> histogram_l2_errors(const AbsHistogram& h,
                                        const std::vector<double>& thresholds,
                                        const QuantSpec& spec) {
  check_counts(h.counts);
  if (thresholds.empty()) {
    return {};
  }
  QuantSpec symmetric = spec;
  symmetric.symmetric(true).per_channel(false);
  const at::Tensor t = at::tensor(thresholds, at::kDouble);
  const at::Tensor scales = compute_qparams(-t, t, symmetric).first.to(at::kDouble).contiguous();
  const double* s_data = scales.data_ptr<double>();
  const double quant_max = static_cast<double>(symmetric.quant_max());
  const double* c = h.counts.data_ptr<double>();
  const double w = h.bin_width();
  std::vector<double> errors(thresholds.size(), 0.0);
  for (size_t k = 0; k < thresholds.size(); ++k) {
    const double s = s_data[k];
    const double edge = (quant_max + 0.5) * s;  // values above round to quant_max and clamp
    // E(x) = integral over [0, x] of (u - q(u))^2 du; inside the grid a full cell
    // contributes s^3 / 12, so with n = round(x / s) and r = x - n s, E = n s^3 / 12 + r^3 / 3.
    auto integral = [&](double x) {
      if (x <= edge) {
        const double n = std::nearbyint(x / s);
        const double r = x - n * s;
        return n * s * s * s / 12.0 + r * r * r / 3.0;
      }
      const double d = x - quant_max * s;
      const double half = 0.5 * s;
      return quant_max * s * s * s / 12.0 + half * half * half / 3.0 +
             (d * d * d - half * half * half) / 3.0;
    };
    double error = 0.0;
    if (w == 0.0) {
      errors[k] = 0.0;  // every value is 0 and 0 is on the grid
      continue;
    }
    double lower = integral(0.0);
    for (int64_t b = 0; b < h.bins(); ++b) {
      const double upper = integral(static_cast<double>(b + 1) * w);
      if (c[b] > 0.0) {
        error += c[b] * (upper - lower) / w;
      }
      lower = upper;
    }
    errors[k] = error;
  }
  return errors;
}

double histogram_l2_error(const AbsHistogram& h, double threshold, const QuantSpec& spec) {
  TORCH_CHECK(std::isfinite(threshold) && threshold >= 0.0,
              "histogram_l2_error: threshold = ", threshold, " must be finite and >= 0");
  return histogram_l2_errors(h, {threshold}, spec)[0];
}

namespace {
double argmin_threshold(const std::vector<double>& thresholds, const std::vector<double>& errors) {
  size_t best = 0;
  for (size_t k = 1; k < errors.size(); ++k) {
    if (errors[k] < errors[best]) {
      best = k;
    }
  }
  return thresholds[best];
}
}  // namespace

double mse_threshold(const AbsHistogram& h, const QuantSpec& spec, int64_t stride) {
  TORCH_CHECK(stride >= 1 && stride <= 94, "mse: stride = ", stride,
              " is invalid; it must lie in [1, 94]");
  TORCH_CHECK(h.total() > 0.0, "mse_threshold: the histogram is empty (no data)");
  std::vector<double> thresholds;
  for (int64_t i = 0; i <= 94; i += stride) {
    thresholds.push_back((1.0 - 0.01 * static_cast<double>(i)) * h.max_abs);
  }
  return argmin_threshold(thresholds, histogram_l2_errors(h, thresholds, spec));
}

double mix_threshold(const AbsHistogram& h, const QuantSpec& spec,
                     const std::vector<double>& percentiles) {
  TORCH_CHECK(!percentiles.empty(), "mix: percentiles is empty; give at least one percentile");
  std::vector<double> thresholds;
  for (double p : percentiles) {
    thresholds.push_back(percentile_threshold(h, p));
  }
  return argmin_threshold(thresholds, histogram_l2_errors(h, thresholds, spec));
}

}  // namespace observers
}  // namespace calq
