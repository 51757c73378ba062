#include "calq/observers/percentile.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace calq {
namespace observers {

void check_percentile(const std::string& kind, double percentile) {
  TORCH_CHECK(std::isfinite(percentile) && percentile > 0.0 && percentile <= 100.0, "observer '",
              kind, "': percentile = ", percentile, " is invalid; it must lie in (0, 100]");
}

PercentileObserverImpl::PercentileObserverImpl(ObserverOptions common,
                                               PercentileObserverOptions options)
    : HistogramObserverImpl("percentile", std::move(common), options.bins()),
      percentile_options_(options) {
  check_percentile(kind_, options.percentile());
}

nlohmann::json PercentileObserverImpl::config() const {
  return {{"percentile", percentile_options_.percentile()}, {"bins", bins_}};
}

std::shared_ptr<ObserverImpl> PercentileObserverImpl::clone_empty() const {
  return std::make_shared<PercentileObserverImpl>(options_, percentile_options_);
}

double PercentileObserverImpl::compute_threshold(const AbsHistogram& h) const {
  return percentile_threshold(h, percentile_options_.percentile());
}

}  // namespace observers
}  // namespace calq
