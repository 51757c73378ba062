#include "calq/observers/mix.h"

#include <c10/util/Exception.h>

#include "calq/observers/percentile.h"

namespace calq {
namespace observers {

MixObserverImpl::MixObserverImpl(ObserverOptions common, MixObserverOptions options)
    : HistogramObserverImpl("mix", std::move(common), options.bins()), mix_options_(options) {
  TORCH_CHECK(!options.percentiles().empty(),
              "observer 'mix': percentiles is empty; give at least one candidate percentile");
  for (double p : options.percentiles()) {
    check_percentile(kind_, p);
  }
}

nlohmann::json MixObserverImpl::config() const {
  return {{"percentiles", mix_options_.percentiles()}, {"bins", bins_}};
}

std::shared_ptr<ObserverImpl> MixObserverImpl::clone_empty() const {
  return std::make_shared<MixObserverImpl>(options_, mix_options_);
}

double MixObserverImpl::compute_threshold(const AbsHistogram& h) const {
  return mix_threshold(h, spec(), mix_options_.percentiles());
}

}  // namespace observers
}  // namespace calq
