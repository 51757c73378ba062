#pragma once
// "mix": several percentiles, the one with the lowest L2 error wins (semantics section 2).

#include <vector>

#include "calq/observers/histogram_observer.h"

namespace calq {
namespace observers {

struct MixObserverOptions {
  /// Candidate percentiles, each in (0, 100], at least one. Default 99.9, 99.99, 99.999,
  /// 99.9999.
  TORCH_ARG(std::vector<double>, percentiles) = std::vector<double>{99.9, 99.99, 99.999, 99.9999};
  /// Histogram bins, >= 2. Default 2048.
  TORCH_ARG(int64_t, bins) = 2048;
};

/// Threshold = mix_threshold(histogram, spec, percentiles) (histogram.h): each percentile's
/// threshold is scored by histogram_l2_error, the lowest wins. Per-tensor.
class MixObserverImpl : public HistogramObserverImpl {
 public:
  explicit MixObserverImpl(ObserverOptions common = {}, MixObserverOptions options = {});
  nlohmann::json config() const override;
  std::shared_ptr<ObserverImpl> clone_empty() const override;

 protected:
  double compute_threshold(const AbsHistogram& h) const override;

 private:
  MixObserverOptions mix_options_;
};

}  // namespace observers
}  // namespace calq
