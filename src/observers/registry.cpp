#include "calq/observers/registry.h"

#include <c10/util/Exception.h>

#include <cmath>

#include "calq/observers/clip.h"
#include "calq/observers/clip_std.h"
#include "calq/observers/fixed_scale.h"
#include "calq/observers/kl.h"
#include "calq/observers/min_max.h"
#include "calq/observers/mix.h"
#include "calq/observers/mse.h"
#include "calq/observers/percentile.h"
#include "observers/kwargs.h"

namespace calq {
namespace observers {
namespace {

using detail::kwarg_double;
using detail::kwarg_doubles;
using detail::kwarg_int;
using nlohmann::json;

template <typename Impl, typename Options>
Observer build(const ObserverOptions& common, const Options& options) {
  // Converted first: the holder's forwarding constructor would otherwise take the
  // shared_ptr<Impl> as constructor arguments of the abstract base.
  std::shared_ptr<ObserverImpl> impl = std::make_shared<Impl>(common, options);
  return Observer(impl);
}

std::vector<ObserverInfo> make_registry() {
  std::vector<ObserverInfo> r;
  r.push_back(
      {"min_max", {"averaging_constant"}, true, [](const ObserverOptions& o, const json& k) {
         MinMaxObserverOptions d;
         return build<MinMaxObserverImpl>(
             o, d.averaging_constant(
                    kwarg_double(k, "averaging_constant", d.averaging_constant(), "min_max")));
       }});
  r.push_back(
      {"fixed_scale", {"scale", "zero_point"}, true, [](const ObserverOptions& o, const json& k) {
         FixedScaleObserverOptions d;
         // A number per tensor, a list per channel.
         if (k.contains("scale") && k.at("scale").is_array()) {
           d.channel_scales(kwarg_doubles(k, "scale", {}, "fixed_scale"));
         } else {
           d.scale(kwarg_double(k, "scale", d.scale(), "fixed_scale"));
         }
         if (k.contains("zero_point") && k.at("zero_point").is_array()) {
           std::vector<int64_t> zero_points;
           for (double z : kwarg_doubles(k, "zero_point", {}, "fixed_scale")) {
             TORCH_CHECK(std::nearbyint(z) == z, "fixed_scale: keyword 'zero_point' ",
                         "must hold integers, got ", z);
             zero_points.push_back(static_cast<int64_t>(z));
           }
           d.channel_zero_points(zero_points);
         } else {
           d.zero_point(kwarg_int(k, "zero_point", d.zero_point(), "fixed_scale"));
         }
         return build<FixedScaleObserverImpl>(o, d);
       }});
  r.push_back({"clip",
               {"xmin", "xmax", "averaging_constant"},
               true,
               [](const ObserverOptions& o, const json& k) {
                 ClipObserverOptions d;
                 d.xmin(kwarg_double(k, "xmin", d.xmin(), "clip"))
                     .xmax(kwarg_double(k, "xmax", d.xmax(), "clip"))
                     .averaging_constant(
                         kwarg_double(k, "averaging_constant", d.averaging_constant(), "clip"));
                 return build<ClipObserverImpl>(o, d);
               }});
  r.push_back(
      {"percentile", {"percentile", "bins"}, false, [](const ObserverOptions& o, const json& k) {
         PercentileObserverOptions d;
         d.percentile(kwarg_double(k, "percentile", d.percentile(), "percentile"))
             .bins(kwarg_int(k, "bins", d.bins(), "percentile"));
         return build<PercentileObserverImpl>(o, d);
       }});
  r.push_back({"clip_std",
               {"std_scale", "averaging_constant"},
               true,
               [](const ObserverOptions& o, const json& k) {
                 ClipStdObserverOptions d;
                 d.std_scale(kwarg_double(k, "std_scale", d.std_scale(), "clip_std"))
                     .averaging_constant(
                         kwarg_double(k, "averaging_constant", d.averaging_constant(), "clip_std"));
                 return build<ClipStdObserverImpl>(o, d);
               }});
  r.push_back(
      {"mse", {"stride", "averaging_constant"}, true, [](const ObserverOptions& o, const json& k) {
         MSEObserverOptions d;
         d.stride(kwarg_int(k, "stride", d.stride(), "mse"))
             .averaging_constant(
                 kwarg_double(k, "averaging_constant", d.averaging_constant(), "mse"));
         return build<MSEObserverImpl>(o, d);
       }});
  r.push_back({"kl",
               {"bins", "update_interval", "zero_bin_as_neighbour", "smoothing"},
               false,
               [](const ObserverOptions& o, const json& k) {
                 KLObserverOptions d;
                 d.bins(kwarg_int(k, "bins", d.bins(), "kl"))
                     .update_interval(kwarg_int(k, "update_interval", d.update_interval(), "kl"))
                     .zero_bin_as_neighbour(detail::kwarg_bool(k, "zero_bin_as_neighbour",
                                                               d.zero_bin_as_neighbour(), "kl"))
                     .smoothing(kwarg_int(k, "smoothing", d.smoothing(), "kl"));
                 return build<KLObserverImpl>(o, d);
               }});
  r.push_back({"mix", {"percentiles", "bins"}, false, [](const ObserverOptions& o, const json& k) {
                 MixObserverOptions d;
                 d.percentiles(kwarg_doubles(k, "percentiles", d.percentiles(), "mix"))
                     .bins(kwarg_int(k, "bins", d.bins(), "mix"));
                 return build<MixObserverImpl>(o, d);
               }});
  return r;
}

}  // namespace

const std::vector<ObserverInfo>& observer_registry() {
  static const std::vector<ObserverInfo> registry = make_registry();
  return registry;
}

std::string observer_names() {
  std::vector<std::string> names;
  for (const auto& info : observer_registry()) {
    names.push_back(info.name);
  }
  return detail::join(names);
}

const ObserverInfo& observer_info(const std::string& name) {
  for (const auto& info : observer_registry()) {
    if (info.name == name) {
      return info;
    }
  }
  TORCH_CHECK(false, "unknown observer '", name, "'; valid observers: ", observer_names());
}

Observer make_observer(const std::string& name, const QuantSpec& spec,
                       const nlohmann::json& kwargs) {
  const ObserverInfo& info = observer_info(name);
  std::vector<std::string> valid = info.keys;
  valid.push_back("skip_nonfinite");
  detail::check_kwargs(kwargs, valid, "observer '" + name + "'");
  TORCH_CHECK(info.per_channel || !spec.per_channel(), "observer '", name,
              "' is per-tensor only; got spec ", spec.str(),
              ". Per-channel observers: min_max, clip, clip_std, mse, fixed_scale");
  ObserverOptions common(spec);
  common.skip_nonfinite(detail::kwarg_bool(kwargs, "skip_nonfinite", false, name));
  return info.factory(common, kwargs);
}

}  // namespace observers
}  // namespace calq
