#include "calq/observers/fixed_scale.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "calq/quant/qparams.h"

namespace calq {
namespace observers {

FixedScaleObserverImpl::FixedScaleObserverImpl(ObserverOptions common,
                                               FixedScaleObserverOptions options)
    : ObserverImpl("fixed_scale", std::move(common)), fixed_options_(options) {
  TORCH_CHECK(std::isfinite(options.scale()) && options.scale() > 0.0,
              "observer 'fixed_scale': scale = ", options.scale(),
              " is invalid; it must be finite and > 0");
  TORCH_CHECK(!spec().per_channel(), "observer 'fixed_scale' is per-tensor only; got spec ",
              spec().str());
  // The range the scale represents: -+s * half the steps (eq. 1), or [0, s * quant_max] on an
  // unsigned grid (eq. 1c).
  const double steps = static_cast<double>(spec().quant_max() - spec().quant_min());
  const double lo = spec().unsigned_grid() ? 0.0 : -effective_scale() * steps / 2.0;
  const double hi = effective_scale() * (spec().unsigned_grid() ? steps : steps / 2.0);
  assign(min_val_, at::full({1}, lo, at::kFloat));
  assign(max_val_, at::full({1}, hi, at::kFloat));
}

nlohmann::json FixedScaleObserverImpl::config() const {
  return {{"scale", fixed_options_.scale()}};
}

std::shared_ptr<ObserverImpl> FixedScaleObserverImpl::clone_empty() const {
  return std::make_shared<FixedScaleObserverImpl>(options_, fixed_options_);
}

double FixedScaleObserverImpl::effective_scale() const {
  return spec().power_of_two() ? power_of_two_scale(fixed_options_.scale())
                               : fixed_options_.scale();
}

bool FixedScaleObserverImpl::power_of_two_clamped() const {
  return spec().power_of_two() && calq::power_of_two_clamped(fixed_options_.scale());
}

std::pair<at::Tensor, at::Tensor> FixedScaleObserverImpl::qparams_impl() const {
  return {at::full({1}, effective_scale(), at::kFloat), at::zeros({1}, at::kInt)};
}

}  // namespace observers
}  // namespace calq
