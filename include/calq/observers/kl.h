#pragma once
// "kl": entropy calibration (semantics section 2) on a log-linear histogram of |x|, searched
// over the range that holds the bulk of the data, so that outliers cannot push the first
// candidate threshold past the data (docs/observers.md, "KL").

#include "calq/observers/log_histogram.h"
#include "calq/observers/observer.h"

namespace calq {
namespace observers {

/// Fraction of the values the search range may leave out: the entropy search runs over
/// [0, S) with S the smallest power of two above twice the (1 - kKLBulkTail) quantile of |x|,
/// or above max|x| when that is smaller. Values beyond S count as outliers of every candidate.
constexpr double kKLBulkTail = 1e-4;

struct KLObserverOptions {
  /// Linear bins of the search histogram over [0, S): a power of two in [256, 2048]
  /// (2048 is TensorRT's; the search starts at the number of quantized levels, 128 for
  /// qint8, so its first candidate is S * 128 / bins). Default 2048.
  TORCH_ARG(int64_t, bins) = 2048;
  /// The threshold is recomputed on the first batch and on every update_interval-th batch
  /// (the histogram itself is updated by every batch); call refresh() to recompute at any
  /// time. >= 1. Default 1.
  TORCH_ARG(int64_t, update_interval) = 1;
  /// Before the search, bin 0 takes the count of bin 1 (the plugin's rule: the spike of exact
  /// zeros after a ReLU would otherwise dominate the divergence and pull the threshold to the
  /// first candidates). Default true (docs/observers.md section 11: without it the zoo CNN
  /// lost 5 points at 8/8).
  TORCH_ARG(bool, zero_bin_as_neighbour) = true;
  /// The divergence is averaged over this many neighbouring end bins (odd, >= 1) before the
  /// minimum is taken; 1 = no smoothing. Default 9 (the plugin's; at 4/4 only the zero-bin rule
  /// together with smoothing kept the zoo CNN usable).
  TORCH_ARG(int64_t, smoothing) = 9;
};

/// The search range S of a histogram (see kKLBulkTail); 0 when every value is 0.
double kl_search_range(const LogHistogram& h);

/// The kl threshold of a histogram: the linear histogram over [0, kl_search_range(h)) with
/// options.bins() bins (linear_counts, exact), values beyond as outliers, optionally the zero
/// bin replaced and the divergence smoothed, then the TensorRT rule of histogram.h
/// (kl_divergences: every end bin i in [nq, bins], lowest divergence wins, largest i on ties)
/// and threshold i * S / bins, clamped to max|x|. With bins <= nq (qint16) every bin has its
/// own level and the threshold is max|x|.
double kl_log_threshold(const LogHistogram& h, int64_t num_quantized_bins,
                        const KLObserverOptions& options);

/// Per-tensor. State (buffers): "log_histogram" (float64 {LogHistogram::kBins}, empty before
/// data), "log_first_key" (int64 {1}), "log_below" (float64 {1}), "data_min" / "data_max"
/// (float32 {1}, exact extremes), "threshold" (float64 {1}). The result range is
/// [clamp(data_min, -t, t), clamp(data_max, -t, t)] with the constant-data rule of the
/// histogram observers (a threshold below every magnitude keeps max|x|).
class KLObserverImpl : public ObserverImpl {
 public:
  explicit KLObserverImpl(ObserverOptions common = {}, KLObserverOptions options = {});
  nlohmann::json config() const override;
  std::shared_ptr<ObserverImpl> clone_empty() const override;

  const KLObserverOptions& kl_options() const { return kl_options_; }
  /// The collected histogram (a copy). Throws without data.
  LogHistogram histogram() const;
  /// The current threshold t and search range S. Throw without data.
  double threshold() const;
  double search_range() const;
  /// Recomputes the result range from the histogram now.
  void refresh();

 protected:
  void update_impl(const Batch& batch) override;
  void merge_impl(const ObserverImpl& other) override;
  void adopt_range_impl() override;

 private:
  LogHistogram current() const;
  void store(const LogHistogram& h);

  KLObserverOptions kl_options_;
  at::Tensor counts_, first_key_, below_, data_min_, data_max_, threshold_, search_range_;
};

}  // namespace observers
}  // namespace calq
