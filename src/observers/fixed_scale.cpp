#include "calq/observers/fixed_scale.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "calq/quant/qparams.h"

namespace calq {
namespace observers {

FixedScaleObserverImpl::FixedScaleObserverImpl(ObserverOptions common,
                                               FixedScaleObserverOptions options)
    : ObserverImpl("fixed_scale", std::move(common)), fixed_options_(std::move(options)) {
  const QuantSpec& s = spec();
  const auto& o = fixed_options_;
  if (s.per_channel()) {
    TORCH_CHECK(!o.channel_scales().empty(), "observer 'fixed_scale' with a single scale is ",
                "per-tensor only; a per-channel spec (", s.str(),
                ") needs one scale per channel (\"scale\": [s0, s1, ...])");
    TORCH_CHECK(o.channel_zero_points().empty() ||
                    o.channel_zero_points().size() == o.channel_scales().size(),
                "observer 'fixed_scale': ", o.channel_zero_points().size(), " zero points for ",
                o.channel_scales().size(), " channel scales; give one per channel (or none)");
  } else {
    TORCH_CHECK(o.channel_scales().empty() && o.channel_zero_points().empty(),
                "observer 'fixed_scale': a list of scales or zero points needs a per-channel spec "
                "(per_channel true); got ",
                s.str());
  }
  for (double scale : scales()) {
    TORCH_CHECK(std::isfinite(scale) && scale > 0.0, "observer 'fixed_scale': scale = ", scale,
                " is invalid; it must be finite and > 0");
  }
  for (int64_t z : zero_points()) {
    TORCH_CHECK(z >= s.quant_min() && z <= s.quant_max(), "observer 'fixed_scale': zero point ", z,
                " is outside the quant range [", s.quant_min(), ", ", s.quant_max(), "]");
    TORCH_CHECK(z == 0 || !s.symmetric(), "observer 'fixed_scale': zero point ", z,
                " needs an affine spec (symmetric false); got ", s.str());
  }
  const at::Tensor scale = qparams_impl().first.to(at::kDouble);
  const at::Tensor zero = at::tensor(zero_points(), at::kDouble);
  const double half_steps = static_cast<double>(s.quant_max() - s.quant_min()) / 2.0;
  const at::Tensor affine = zero.ne(0);
  assign(min_val_,
         at::where(affine, (s.quant_min() - zero) * scale, -scale * half_steps).to(at::kFloat));
  assign(max_val_,
         at::where(affine, (s.quant_max() - zero) * scale, scale * half_steps).to(at::kFloat));
}

std::vector<double> FixedScaleObserverImpl::scales() const {
  if (spec().per_channel()) return fixed_options_.channel_scales();
  return {fixed_options_.scale()};
}

std::vector<int64_t> FixedScaleObserverImpl::zero_points() const {
  if (!spec().per_channel()) return {fixed_options_.zero_point()};
  if (fixed_options_.channel_zero_points().empty()) {
    return std::vector<int64_t>(fixed_options_.channel_scales().size(), 0);
  }
  return fixed_options_.channel_zero_points();
}

nlohmann::json FixedScaleObserverImpl::config() const {
  nlohmann::json j = nlohmann::json::object();
  if (spec().per_channel()) {
    j["scale"] = fixed_options_.channel_scales();
    if (!fixed_options_.channel_zero_points().empty()) {
      j["zero_point"] = fixed_options_.channel_zero_points();
    }
  } else {
    j["scale"] = fixed_options_.scale();
    if (fixed_options_.zero_point() != 0) j["zero_point"] = fixed_options_.zero_point();
  }
  return j;
}

std::shared_ptr<ObserverImpl> FixedScaleObserverImpl::clone_empty() const {
  return std::make_shared<FixedScaleObserverImpl>(options_, fixed_options_);
}

double FixedScaleObserverImpl::effective_scale() const {
  const double scale = scales().front();
  return spec().power_of_two() ? power_of_two_scale(scale) : scale;
}

bool FixedScaleObserverImpl::power_of_two_clamped() const {
  if (!spec().power_of_two()) return false;
  for (double scale : scales()) {
    if (calq::power_of_two_clamped(scale)) return true;
  }
  return false;
}

std::pair<at::Tensor, at::Tensor> FixedScaleObserverImpl::qparams_impl() const {
  std::vector<double> s = scales();
  if (spec().power_of_two()) {
    for (double& v : s) v = power_of_two_scale(v);
  }
  const std::vector<int64_t> z = zero_points();
  return {at::tensor(s, at::kDouble).to(at::kFloat), at::tensor(z, at::kLong).to(at::kInt)};
}

}  // namespace observers
}  // namespace calq
