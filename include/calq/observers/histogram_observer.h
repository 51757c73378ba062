#pragma once
// Shared base of the histogram observers (percentile, kl, mix): accumulation, merge and the
// result range; each subclass only supplies its threshold rule (histogram.h).

#include "calq/observers/histogram.h"
#include "calq/observers/observer.h"

namespace calq {
namespace observers {

/// The threshold a clipping rule's t becomes on data with extremes [data_min, data_max]: t
/// itself, or max|x| when t lies below every magnitude in the data (data_min when all values
/// are positive, -data_max when all are negative), where it would clip every value.
double effective_threshold(float data_min, float data_max, double t);
/// [clamp(data_min, -t, t), clamp(data_max, -t, t)] (t from effective_threshold).
std::pair<float, float> clipped_range(float data_min, float data_max, double t);

/// Accumulates every batch into one AbsHistogram (histogram.h: exact, range grows by powers
/// of two). The result range is [clamp(data_min, -t, t), clamp(data_max, -t, t)] with t the
/// subclass's threshold, refreshed after each update for which refresh_due() holds and after
/// merges; averaging_constant does not apply (the histogram holds the whole stream).
/// Per-tensor only.
///
/// Constant and one-sided data: a threshold below the smallest magnitude in the data
/// (data_min when every value is positive, -data_max when every value is negative) would clip
/// every value; then t = max|x| instead. So constant data (a saturated ReLU6 at 6.0, a bias
/// map at -2.0) gets the range [v, v], which represents v within half a step.
///
/// Extra buffers: "histogram" (float64 {bins}, empty {0} before data), "hist_range"
/// (float64 {1}), "data_min" / "data_max" (float32 {1}, exact extremes, empty before data).
class HistogramObserverImpl : public ObserverImpl {
 public:
  HistogramObserverImpl(std::string kind, ObserverOptions options, int64_t bins);

  int64_t bins() const { return bins_; }
  /// The collected histogram (a copy), for evaluating other rules on the same data
  /// (percentile_threshold, kl_threshold, mse_threshold, mix_threshold). Throws without data.
  AbsHistogram histogram() const;
  /// The current clipping threshold t (>= 0). Throws without data.
  double threshold() const;
  /// Recomputes the result range from the histogram now (e.g. a kl observer between its
  /// update_interval points).
  void refresh();

 protected:
  /// The subclass's rule, on a non-empty histogram.
  virtual double compute_threshold(const AbsHistogram& h) const = 0;
  /// Whether the update that makes `batches` batches refreshes the range. Default: always.
  virtual bool refresh_due(int64_t batches) const { return true; }

  void update_impl(const Batch& batch) final;
  /// Once the histogram has a range, a batch within it is binned and its extremes found in
  /// one read (accumulate_abs_histogram_in_range); a batch that widens the range, holds
  /// non-finite values or is float64 takes update_impl.
  bool try_update_in_one_pass(const at::Tensor& x) final;
  void merge_impl(const ObserverImpl& other) final;
  /// The histogram is dropped; the next batch starts a fresh one.
  void adopt_range_impl() override;

  /// The histogram buffer itself (no copy), for the threshold rules.
  AbsHistogram current_histogram() const;

  int64_t bins_;
  at::Tensor histogram_;
  at::Tensor hist_range_;
  at::Tensor data_min_;
  at::Tensor data_max_;
  at::Tensor threshold_;
};

}  // namespace observers
}  // namespace calq
