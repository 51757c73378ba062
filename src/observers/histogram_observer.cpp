#include "calq/observers/histogram_observer.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

namespace calq {
namespace observers {

double effective_threshold(float data_min, float data_max, double t) {
  // A threshold below every magnitude in the data would clip all of it (constant data: the
  // bin-centre threshold of its one bin lies below the value); keep everything then.
  const double smallest_magnitude = data_min > 0 ? data_min : (data_max < 0 ? -data_max : 0.0);
  const double max_abs =
      std::max(std::abs(static_cast<double>(data_min)), std::abs(static_cast<double>(data_max)));
  return t < smallest_magnitude ? max_abs : t;
}

std::pair<float, float> clipped_range(float data_min, float data_max, double t) {
  auto clip = [t](float v) {
    return std::min(std::max(v, static_cast<float>(-t)), static_cast<float>(t));
  };
  return {clip(data_min), clip(data_max)};
}

HistogramObserverImpl::HistogramObserverImpl(std::string kind, ObserverOptions options,
                                             int64_t bins)
    : ObserverImpl(std::move(kind), std::move(options)), bins_(bins) {
  TORCH_CHECK(bins_ >= 2, "observer '", kind_, "': bins = ", bins_,
              " is invalid; a histogram needs at least 2 bins");
  TORCH_CHECK(!spec().per_channel(), "observer '", kind_,
              "' is per-tensor only (one histogram per tensor); got spec ", spec().str(),
              ". Use min_max, clip, clip_std or mse for per-channel weights");
  histogram_ = register_buffer("histogram", at::empty({0}, at::kDouble));
  hist_range_ = register_buffer("hist_range", at::zeros({1}, at::kDouble));
  data_min_ = register_buffer("data_min", at::empty({0}, at::kFloat));
  data_max_ = register_buffer("data_max", at::empty({0}, at::kFloat));
  threshold_ = register_buffer("threshold", at::empty({0}, at::kDouble));
}

AbsHistogram HistogramObserverImpl::current_histogram() const {
  TORCH_CHECK(histogram_.numel() == bins_, "observer '", kind_,
              "': no histogram yet; feed at least one batch with update() first");
  AbsHistogram h;
  h.counts = histogram_;
  h.range = hist_range_.item<double>();
  h.max_abs = std::max(std::abs(data_min_.item<double>()), std::abs(data_max_.item<double>()));
  return h;
}

AbsHistogram HistogramObserverImpl::histogram() const {
  AbsHistogram h = current_histogram();
  h.counts = h.counts.clone();
  return h;
}

double HistogramObserverImpl::threshold() const {
  TORCH_CHECK(threshold_.numel() == 1, "observer '", kind_,
              "': no threshold yet; feed at least one batch with update() first");
  return threshold_.item<double>();
}

void HistogramObserverImpl::refresh() {
  at::NoGradGuard guard;
  const float data_min = data_min_.item<float>();
  const float data_max = data_max_.item<float>();
  const double t = effective_threshold(data_min, data_max, compute_threshold(current_histogram()));
  // Scalar arithmetic and fills: this runs after every batch, where a chain of small ATen
  // ops would cost more than the rule itself.
  float lo = 0.0f, hi = 0.0f;
  std::tie(lo, hi) = clipped_range(data_min, data_max, t);
  auto set_scalar = [](at::Tensor& buffer, double value, at::ScalarType dtype) {
    if (buffer.numel() == 1 && buffer.scalar_type() == dtype) {
      buffer.fill_(value);
    } else {
      assign(buffer, at::full({1}, value, dtype));
    }
  };
  set_scalar(threshold_, t, at::kDouble);
  set_scalar(min_val_, lo, at::kFloat);
  set_scalar(max_val_, hi, at::kFloat);
}

bool HistogramObserverImpl::try_update_in_one_pass(const at::Tensor& x) {
  if (histogram_.numel() != bins_ || !histogram_.is_contiguous() ||
      histogram_.scalar_type() != at::kDouble || data_min_.numel() != 1 || data_max_.numel() != 1) {
    return false;  // first batch (no range yet) or a state update_impl must normalize
  }
  float lo = 0.0f;
  float hi = 0.0f;
  if (!accumulate_abs_histogram_in_range(histogram_, hist_range_.item<double>(), x, &lo, &hi)) {
    return false;
  }
  data_min_.fill_(std::min(data_min_.item<float>(), lo));
  data_max_.fill_(std::max(data_max_.item<float>(), hi));
  if (refresh_due(batches_seen() + 1)) {
    refresh();
  }
  return true;
}

void HistogramObserverImpl::update_impl(const Batch& batch) {
  const bool first = histogram_.numel() == 0;
  const at::Tensor lo = first ? batch.min_val : at::minimum(data_min_, batch.min_val);
  const at::Tensor hi = first ? batch.max_val : at::maximum(data_max_, batch.max_val);
  const double max_abs = std::max(std::abs(lo.item<double>()), std::abs(hi.item<double>()));
  const double range = first ? 0.0 : hist_range_.item<double>();
  const double new_range = std::max(range, histogram_range_for(max_abs));
  at::Tensor counts =
      first ? at::zeros({bins_}, at::kDouble) : widen_histogram(histogram_, range, new_range);
  accumulate_abs_histogram(counts, new_range, batch.x);
  assign(histogram_, counts);
  assign(hist_range_, at::full({1}, new_range, at::kDouble));
  assign(data_min_, lo);
  assign(data_max_, hi);
  if (first || refresh_due(batches_seen() + 1)) {
    refresh();
  }
}

void HistogramObserverImpl::adopt_range_impl() {
  assign(histogram_, at::empty({0}, at::kDouble));
  assign(hist_range_, at::zeros({1}, at::kDouble));
  assign(data_min_, at::empty({0}, at::kFloat));
  assign(data_max_, at::empty({0}, at::kFloat));
  const double t =
      std::max(std::abs(min_val_.min().item<double>()), std::abs(max_val_.max().item<double>()));
  assign(threshold_, at::full({1}, t, at::kDouble));
}

void HistogramObserverImpl::merge_impl(const ObserverImpl& other_base) {
  const auto& other = static_cast<const HistogramObserverImpl&>(other_base);
  const AbsHistogram merged = merge_histograms(histogram(), other.histogram());
  assign(histogram_, merged.counts);
  assign(hist_range_, at::full({1}, merged.range, at::kDouble));
  assign(data_min_, at::minimum(data_min_, other.data_min_));
  assign(data_max_, at::maximum(data_max_, other.data_max_));
  refresh();
}

}  // namespace observers
}  // namespace calq
