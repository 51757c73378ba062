#pragma once
// "kl": entropy calibration on a histogram of |x| (semantics section 2).

#include "calq/observers/histogram_observer.h"

namespace calq {
namespace observers {

struct KLObserverOptions {
  /// Histogram bins, >= 256 (the search starts at the number of quantized levels, 128 for
  /// qint8). Default 512.
  TORCH_ARG(int64_t, bins) = 512;
  /// The threshold is recomputed on the first batch and on every update_interval-th batch
  /// (the histogram itself is updated by every batch); call refresh() to recompute at any
  /// time. >= 1. Default 1.
  TORCH_ARG(int64_t, update_interval) = 1;
};

/// Threshold = kl_threshold(histogram, kl_num_quantized_bins(spec)) (histogram.h). Per-tensor.
class KLObserverImpl : public HistogramObserverImpl {
 public:
  explicit KLObserverImpl(ObserverOptions common = {}, KLObserverOptions options = {});
  nlohmann::json config() const override;
  std::shared_ptr<ObserverImpl> clone_empty() const override;

 protected:
  double compute_threshold(const AbsHistogram& h) const override;
  bool refresh_due(int64_t batches) const override;

 private:
  KLObserverOptions kl_options_;
};

}  // namespace observers
}  // namespace calq
