#include "calq/observers/clip.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace calq {
namespace observers {

ClipObserverImpl::ClipObserverImpl(ObserverOptions common, ClipObserverOptions options)
    : RunningRangeObserverImpl("clip", std::move(common), options.averaging_constant()),
      clip_options_(options) {
  TORCH_CHECK(std::isfinite(options.xmin()) && std::isfinite(options.xmax()) &&
                  options.xmin() <= options.xmax(),
              "observer 'clip': xmin = ", options.xmin(), ", xmax = ", options.xmax(),
              " is invalid; both must be finite with xmin <= xmax");
}

nlohmann::json ClipObserverImpl::config() const {
  return {{"xmin", clip_options_.xmin()},
          {"xmax", clip_options_.xmax()},
          {"averaging_constant", averaging_constant_}};
}

std::shared_ptr<ObserverImpl> ClipObserverImpl::clone_empty() const {
  return std::make_shared<ClipObserverImpl>(options_, clip_options_);
}

std::pair<at::Tensor, at::Tensor> ClipObserverImpl::batch_range(const Batch& batch) {
  const double lo = clip_options_.xmin();
  const double hi = clip_options_.xmax();
  return {batch.min_val.clamp(lo, hi), batch.max_val.clamp(lo, hi)};
}

}  // namespace observers
}  // namespace calq
