#include "calq/observers/log_histogram.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

namespace calq {
namespace observers {
namespace {

constexpr int64_t kBins = LogHistogram::kBins;
// Values per parallel task: the per-task counters (kBins + 1 of 32 bits, about 100 KB) are
// zeroed once per task, so tasks must be much larger than that.
constexpr int64_t kGrain = int64_t{1} << 18;
// At most this many values go to 32-bit counters before they are flushed.
constexpr int64_t kFlush = int64_t{1} << 31;

uint32_t bits_of(float v) {
  uint32_t u = 0;
  std::memcpy(&u, &v, sizeof(u));
  return u;
}

float float_of(uint32_t u) {
  float v = 0.0f;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}

// The counter slot of |v|: its bin in the window, or kBins (the "below" slot).
template <typename T>
inline int64_t slot_of(T v, int64_t first_key) {
  const int64_t k =
      static_cast<int64_t>(bits_of(static_cast<float>(std::abs(v))) >> LogHistogram::kShift) -
      first_key;
  return k < 0 ? kBins : k;
}

void check_histogram(const LogHistogram& h) {
  TORCH_CHECK(h.counts.defined() && h.counts.scalar_type() == at::kDouble &&
                  h.counts.numel() == kBins && h.counts.is_contiguous(),
              "log histogram counts must be a contiguous float64 vector of ", kBins, " bins");
}

template <typename T>
void accumulate_typed(LogHistogram& h, const T* x, int64_t n) {
  double* counts = h.counts.data_ptr<double>();
  const int64_t first_key = h.first_key;
  std::mutex mutex;
  double below = 0.0;
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> sub(static_cast<size_t>(kBins + 1));
    std::vector<int64_t> local(static_cast<size_t>(kBins + 1), 0);
    for (int64_t start = begin; start < end; start += kFlush) {
      std::fill(sub.begin(), sub.end(), 0u);
      const int64_t stop = std::min(end, start + kFlush);
      for (int64_t j = start; j < stop; ++j) ++sub[slot_of(x[j], first_key)];
      for (int64_t b = 0; b <= kBins; ++b) local[b] += sub[b];
    }
    std::lock_guard<std::mutex> lock(mutex);
    for (int64_t b = 0; b < kBins; ++b) counts[b] += static_cast<double>(local[b]);
    below += static_cast<double>(local[kBins]);
  });
  h.below += below;
}

void check_data(const LogHistogram& h, const at::Tensor& x) {
  check_histogram(h);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "log histogram data must be float32 or float64, got ", x.scalar_type());
}

}  // namespace

double LogHistogram::total() const {
  return empty() ? 0.0 : counts.sum().item<double>() + below;
}

double LogHistogram::edge(int64_t key) {
  return static_cast<double>(float_of(static_cast<uint32_t>(key << kShift)));
}

int64_t LogHistogram::key_of(float v) {
  return static_cast<int64_t>(bits_of(v) >> kShift);
}

int64_t LogHistogram::first_key_for(double max_abs) {
  const int64_t octave = key_of(static_cast<float>(max_abs)) >> kMantissaBits;
  return std::max<int64_t>(0, octave - (kOctaves - 1)) << kMantissaBits;
}

LogHistogram make_log_histogram() {
  return LogHistogram();
}

void raise_max(LogHistogram& h, double max_abs) {
  TORCH_CHECK(std::isfinite(max_abs) && max_abs >= 0.0, "log histogram: max|x| = ", max_abs,
              " must be finite and >= 0");
  const double new_max = std::max(h.max_abs, max_abs);
  const int64_t first = LogHistogram::first_key_for(new_max);
  if (h.empty()) {
    h.counts = at::zeros({kBins}, at::kDouble);
    h.first_key = first;
    h.max_abs = new_max;
    return;
  }
  check_histogram(h);
  h.max_abs = new_max;
  if (first <= h.first_key) return;
  const int64_t shift = first - h.first_key;  // whole octaves
  double* c = h.counts.data_ptr<double>();
  for (int64_t b = 0; b < std::min(shift, kBins); ++b) h.below += c[b];
  for (int64_t b = 0; b < kBins; ++b) c[b] = b + shift < kBins ? c[b + shift] : 0.0;
  h.first_key = first;
}

void accumulate_log_histogram(LogHistogram& h, const at::Tensor& x_in) {
  check_data(h, x_in);
  const at::Tensor x = x_in.contiguous();
  if (x.scalar_type() == at::kFloat) {
    accumulate_typed(h, x.data_ptr<float>(), x.numel());
  } else {
    accumulate_typed(h, x.data_ptr<double>(), x.numel());
  }
}

void accumulate_log_histogram_ref(LogHistogram& h, const at::Tensor& x_in) {
  check_data(h, x_in);
  const at::Tensor x = x_in.to(at::kFloat).contiguous().view({-1});
  const float* p = x.data_ptr<float>();
  double* c = h.counts.data_ptr<double>();
  for (int64_t j = 0; j < x.numel(); ++j) {
    const int64_t key = LogHistogram::key_of(std::abs(p[j]));
    if (key < h.first_key) {
      h.below += 1.0;
    } else {
      TORCH_CHECK(key - h.first_key < kBins, "value ", p[j], " is above the histogram's maximum");
      c[key - h.first_key] += 1.0;
    }
  }
}

LogHistogram merge_log_histograms(const LogHistogram& a, const LogHistogram& b) {
  if (b.empty())
    return LogHistogram{a.empty() ? at::Tensor() : a.counts.clone(), a.first_key, a.below,
                        a.max_abs};
  LogHistogram out{b.counts.clone(), b.first_key, b.below, b.max_abs};
  if (a.empty()) return out;
  LogHistogram left{a.counts.clone(), a.first_key, a.below, a.max_abs};
  raise_max(left, out.max_abs);
  raise_max(out, left.max_abs);
  out.counts.add_(left.counts);
  out.below += left.below;
  return out;
}

double log_histogram_quantile(const LogHistogram& h, double tail) {
  TORCH_CHECK(!h.empty(), "log histogram quantile: the histogram is empty (no data)");
  check_histogram(h);
  TORCH_CHECK(tail >= 0.0 && tail < 1.0, "log histogram quantile: tail = ", tail,
              " must lie in [0, 1)");
  const double target = (1.0 - tail) * h.total() * (1.0 - 1e-12);
  double cumulative = h.below;
  if (cumulative >= target && h.below > 0) return LogHistogram::edge(h.first_key);
  const double* c = h.counts.data_ptr<double>();
  for (int64_t b = 0; b < kBins; ++b) {
    cumulative += c[b];
    if (cumulative >= target && c[b] > 0) return LogHistogram::edge(h.first_key + b + 1);
  }
  return h.max_abs;
}

at::Tensor linear_counts(const LogHistogram& h, double range, int64_t bins, double* beyond) {
  TORCH_CHECK(!h.empty(), "linear_counts: the histogram is empty (no data)");
  check_histogram(h);
  int exponent = 0;
  TORCH_CHECK(range > 0 && std::isfinite(range) && std::frexp(range, &exponent) == 0.5,
              "linear_counts: range = ", range, " must be a positive power of two");
  TORCH_CHECK(bins >= 2 && bins <= 2 * LogHistogram::kBinsPerOctave && (bins & (bins - 1)) == 0,
              "linear_counts: bins = ", bins, " must be a power of two in [2, ",
              2 * LogHistogram::kBinsPerOctave, "]");
  at::Tensor out = at::zeros({bins}, at::kDouble);
  double* o = out.data_ptr<double>();
  const double width = range / static_cast<double>(bins);  // a power of two: exact divisions
  const double* c = h.counts.data_ptr<double>();
  double over = 0.0;
  o[0] += h.below;
  for (int64_t b = 0; b < kBins; ++b) {
    if (c[b] == 0.0) continue;
    const double low = LogHistogram::edge(h.first_key + b);
    if (low >= range) {
      over += c[b];
    } else {
      o[static_cast<int64_t>(std::floor(low / width))] += c[b];
    }
  }
  if (beyond != nullptr) *beyond = over;
  return out;
}

}  // namespace observers
}  // namespace calq
