#include "calq/observers/kl.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "calq/observers/histogram.h"
#include "calq/observers/histogram_observer.h"

namespace calq {
namespace observers {
namespace {

// The smallest power of two strictly above v > 0 (frexp: v = m 2^e with m in [0.5, 1)).
double power_of_two_above(double v) {
  int exponent = 0;
  std::frexp(v, &exponent);
  return std::ldexp(1.0, exponent);
}

bool is_power_of_two(int64_t v) {
  return v > 0 && (v & (v - 1)) == 0;
}

// Moving average over `window` neighbours (truncated at the ends); +inf stays +inf.
std::vector<double> smoothed(const std::vector<double>& d, int64_t window) {
  if (window <= 1) return d;
  const int64_t half = window / 2;
  const int64_t n = static_cast<int64_t>(d.size());
  std::vector<double> out(d.size());
  for (int64_t i = 0; i < n; ++i) {
    double sum = 0.0;
    int64_t count = 0;
    for (int64_t j = std::max<int64_t>(0, i - half); j <= std::min(n - 1, i + half); ++j) {
      sum += d[j];
      ++count;
    }
    out[i] = sum / static_cast<double>(count);
  }
  return out;
}

}  // namespace

double kl_search_range(const LogHistogram& h) {
  TORCH_CHECK(!h.empty(), "kl: the histogram is empty (no data)");
  if (h.max_abs == 0.0) return 0.0;
  const double bulk = log_histogram_quantile(h, kKLBulkTail);
  return std::min(power_of_two_above(2.0 * bulk), power_of_two_above(h.max_abs));
}

double kl_log_threshold(const LogHistogram& h, int64_t nq, const KLObserverOptions& options) {
  const double range = kl_search_range(h);
  if (range == 0.0) return 0.0;
  const int64_t bins = options.bins();
  if (bins <= nq) return h.max_abs;
  double beyond = 0.0;
  at::Tensor counts = linear_counts(h, range, bins, &beyond);
  if (options.zero_bin_as_neighbour()) {
    counts[0] = counts[1].item<double>();
  }
  const std::vector<double> divergence =
      smoothed(kl_divergences(counts, beyond, nq), options.smoothing());
  size_t best = 0;
  for (size_t j = 1; j < divergence.size(); ++j) {
    if (divergence[j] <= divergence[best]) best = j;
  }
  const double end_bin = static_cast<double>(nq) + static_cast<double>(best);
  return std::min(end_bin * range / static_cast<double>(bins), h.max_abs);
}

KLObserverImpl::KLObserverImpl(ObserverOptions common, KLObserverOptions options)
    : ObserverImpl("kl", std::move(common)), kl_options_(options) {
  TORCH_CHECK(is_power_of_two(options.bins()) && options.bins() >= 256 &&
                  options.bins() <= 2 * LogHistogram::kBinsPerOctave,
              "observer 'kl': bins = ", options.bins(),
              " is invalid; it must be a power of two in [256, ", 2 * LogHistogram::kBinsPerOctave,
              "] (the search starts at the 128 levels of qint8; above ",
              2 * LogHistogram::kBinsPerOctave, " the log histogram cannot resolve the bins)");
  TORCH_CHECK(options.update_interval() >= 1,
              "observer 'kl': update_interval = ", options.update_interval(),
              " is invalid; it must be >= 1");
  TORCH_CHECK(options.smoothing() >= 1 && options.smoothing() % 2 == 1,
              "observer 'kl': smoothing = ", options.smoothing(),
              " is invalid; it must be an odd number >= 1 (1 = no smoothing)");
  TORCH_CHECK(!spec().per_channel(),
              "observer 'kl' is per-tensor only (one histogram per "
              "tensor); got spec ",
              spec().str(), ". Use min_max, clip, clip_std or mse for per-channel weights");
  counts_ = register_buffer("log_histogram", at::empty({0}, at::kDouble));
  first_key_ = register_buffer("log_first_key", at::full({1}, -1, at::kLong));
  below_ = register_buffer("log_below", at::zeros({1}, at::kDouble));
  data_min_ = register_buffer("data_min", at::empty({0}, at::kFloat));
  data_max_ = register_buffer("data_max", at::empty({0}, at::kFloat));
  threshold_ = register_buffer("threshold", at::empty({0}, at::kDouble));
  search_range_ = register_buffer("search_range", at::empty({0}, at::kDouble));
}

nlohmann::json KLObserverImpl::config() const {
  return {{"bins", kl_options_.bins()},
          {"update_interval", kl_options_.update_interval()},
          {"zero_bin_as_neighbour", kl_options_.zero_bin_as_neighbour()},
          {"smoothing", kl_options_.smoothing()}};
}

std::shared_ptr<ObserverImpl> KLObserverImpl::clone_empty() const {
  return std::make_shared<KLObserverImpl>(options_, kl_options_);
}

LogHistogram KLObserverImpl::current() const {
  TORCH_CHECK(counts_.numel() == LogHistogram::kBins && data_min_.numel() == 1,
              "observer 'kl': no histogram yet; feed at least one batch with update() first");
  LogHistogram h;
  h.counts = counts_;
  h.first_key = first_key_.item<int64_t>();
  h.below = below_.item<double>();
  h.max_abs = std::max(std::abs(data_min_.item<double>()), std::abs(data_max_.item<double>()));
  return h;
}

LogHistogram KLObserverImpl::histogram() const {
  LogHistogram h = current();
  h.counts = h.counts.clone();
  return h;
}

void KLObserverImpl::store(const LogHistogram& h) {
  assign(counts_, h.counts);
  assign(first_key_, at::full({1}, h.first_key, at::kLong));
  assign(below_, at::full({1}, h.below, at::kDouble));
}

double KLObserverImpl::threshold() const {
  TORCH_CHECK(threshold_.numel() == 1,
              "observer 'kl': no threshold yet; feed at least one "
              "batch with update() first");
  return threshold_.item<double>();
}

double KLObserverImpl::search_range() const {
  TORCH_CHECK(search_range_.numel() == 1,
              "observer 'kl': no search range yet; feed at least "
              "one batch with update() first");
  return search_range_.item<double>();
}

void KLObserverImpl::refresh() {
  at::NoGradGuard guard;
  const LogHistogram h = current();
  const float data_min = data_min_.item<float>();
  const float data_max = data_max_.item<float>();
  const double t = effective_threshold(
      data_min, data_max, kl_log_threshold(h, kl_num_quantized_bins(spec()), kl_options_));
  float lo = 0.0f, hi = 0.0f;
  std::tie(lo, hi) = clipped_range(data_min, data_max, t);
  assign(threshold_, at::full({1}, t, at::kDouble));
  assign(search_range_, at::full({1}, kl_search_range(h), at::kDouble));
  assign(min_val_, at::full({1}, lo, at::kFloat));
  assign(max_val_, at::full({1}, hi, at::kFloat));
}

void KLObserverImpl::update_impl(const Batch& batch) {
  const bool first = counts_.numel() == 0;
  const at::Tensor lo = first ? batch.min_val : at::minimum(data_min_, batch.min_val);
  const at::Tensor hi = first ? batch.max_val : at::maximum(data_max_, batch.max_val);
  LogHistogram h = first ? make_log_histogram() : histogram();
  raise_max(h, std::max(std::abs(lo.item<double>()), std::abs(hi.item<double>())));
  accumulate_log_histogram(h, batch.x);
  store(h);
  assign(data_min_, lo);
  assign(data_max_, hi);
  if (first || (batches_seen() + 1) % kl_options_.update_interval() == 0) refresh();
}

void KLObserverImpl::merge_impl(const ObserverImpl& other_base) {
  const auto& other = static_cast<const KLObserverImpl&>(other_base);
  store(merge_log_histograms(histogram(), other.histogram()));
  assign(data_min_, at::minimum(data_min_, other.data_min_));
  assign(data_max_, at::maximum(data_max_, other.data_max_));
  refresh();
}

void KLObserverImpl::adopt_range_impl() {
  assign(counts_, at::empty({0}, at::kDouble));
  assign(first_key_, at::full({1}, -1, at::kLong));
  assign(below_, at::zeros({1}, at::kDouble));
  assign(data_min_, at::empty({0}, at::kFloat));
  assign(data_max_, at::empty({0}, at::kFloat));
  const double t =
      std::max(std::abs(min_val_.min().item<double>()), std::abs(max_val_.max().item<double>()));
  assign(threshold_, at::full({1}, t, at::kDouble));
  assign(search_range_, at::empty({0}, at::kDouble));
}

}  // namespace observers
}  // namespace calq
