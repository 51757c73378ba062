#pragma once
// "percentile": histogram of |x|, threshold at a percentile (semantics section 2).

#include "calq/observers/histogram_observer.h"

namespace calq {
namespace observers {

struct PercentileObserverOptions {
  /// Share of |x| kept below the threshold, in percent. In (0, 100]. Default 99.99.
  TORCH_ARG(double, percentile) = 99.99;
  /// Histogram bins, >= 2. Default 2048.
  TORCH_ARG(int64_t, bins) = 2048;
};

/// Threshold = percentile_threshold(histogram, percentile) (histogram.h): the centre of the
/// first bin whose cumulative count reaches percentile / 100 of all values, clamped to
/// max|x|. Per-tensor.
class PercentileObserverImpl : public HistogramObserverImpl {
 public:
  explicit PercentileObserverImpl(ObserverOptions common = {},
                                  PercentileObserverOptions options = {});
  nlohmann::json config() const override;
  std::shared_ptr<ObserverImpl> clone_empty() const override;

 protected:
  double compute_threshold(const AbsHistogram& h) const override;

 private:
  PercentileObserverOptions percentile_options_;
};

/// The percentile check shared with mix: (0, 100].
void check_percentile(const std::string& kind, double percentile);

}  // namespace observers
}  // namespace calq
