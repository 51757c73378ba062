#include "calq/observers/clip_std.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace calq {
namespace observers {

ClipStdObserverImpl::ClipStdObserverImpl(ObserverOptions common, ClipStdObserverOptions options)
    : RunningRangeObserverImpl("clip_std", std::move(common), options.averaging_constant()),
      std_options_(options) {
  TORCH_CHECK(std::isfinite(options.std_scale()) && options.std_scale() >= 0.0,
              "observer 'clip_std': std_scale = ", options.std_scale(),
              " is invalid; it must be finite and >= 0");
}

nlohmann::json ClipStdObserverImpl::config() const {
  return {{"std_scale", std_options_.std_scale()}, {"averaging_constant", averaging_constant_}};
}

std::shared_ptr<ObserverImpl> ClipStdObserverImpl::clone_empty() const {
  return std::make_shared<ClipStdObserverImpl>(options_, std_options_);
}

std::pair<at::Tensor, at::Tensor> ClipStdObserverImpl::batch_range(const Batch& batch) {
  // ATen's var_mean accumulates float32 input in double (Welford), so no converted copy.
  at::Tensor var, mean;
  std::tie(var, mean) = at::var_mean(as_channels(batch.x), {1}, /*unbiased=*/false);
  var = var.to(at::kDouble);
  mean = mean.to(at::kDouble);
  const at::Tensor band = var.sqrt() * std_options_.std_scale();
  const at::Tensor lo = at::maximum(batch.min_val.to(at::kDouble), mean - band);
  const at::Tensor hi = at::minimum(batch.max_val.to(at::kDouble), mean + band);
  return {lo.to(at::kFloat), hi.to(at::kFloat)};
}

}  // namespace observers
}  // namespace calq
