#include "calq/observers/min_max.h"

namespace calq {
namespace observers {

MinMaxObserverImpl::MinMaxObserverImpl(ObserverOptions common, MinMaxObserverOptions options)
    : RunningRangeObserverImpl("min_max", std::move(common), options.averaging_constant()) {}

nlohmann::json MinMaxObserverImpl::config() const {
  return {{"averaging_constant", averaging_constant_}};
}

std::shared_ptr<ObserverImpl> MinMaxObserverImpl::clone_empty() const {
  return std::make_shared<MinMaxObserverImpl>(
      options_, MinMaxObserverOptions().averaging_constant(averaging_constant_));
}

std::pair<at::Tensor, at::Tensor> MinMaxObserverImpl::batch_range(const Batch& batch) {
  return {batch.min_val, batch.max_val};
}

}  // namespace observers
}  // namespace calq
