#pragma once
// The observers by name (semantics section 2): "min_max", "fixed_scale", "clip",
// "percentile", "clip_std", "mse", "kl", "mix".

#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

#include "calq/observers/observer.h"

namespace calq {
namespace observers {

/// One registry entry.
struct ObserverInfo {
  std::string name;
  /// Keyword arguments the observer accepts (besides the common "skip_nonfinite").
  std::vector<std::string> keys;
  /// Whether a per-channel spec is supported (min_max, clip, clip_std, mse, fixed_scale with
  /// one scale per channel).
  bool per_channel;
  std::function<Observer(const ObserverOptions&, const nlohmann::json&)> factory;
};

/// Every observer, in the order of semantics section 2.
const std::vector<ObserverInfo>& observer_registry();
/// The entry for `name`; an unknown name throws and lists the valid ones.
const ObserverInfo& observer_info(const std::string& name);
/// "min_max, fixed_scale, clip, ..." for error messages.
std::string observer_names();

/// Builds an observer by name with keyword arguments, e.g. make_observer("percentile", spec,
/// {{"percentile", 99.9}}). kwargs: a JSON object; keys are the entry's keys plus
/// "skip_nonfinite"; an unknown key or a value of the wrong type throws and lists the valid
/// keys; invalid values throw naming the parameter. Missing keys take the defaults of the
/// observer's options struct.
Observer make_observer(const std::string& name, const QuantSpec& spec,
                       const nlohmann::json& kwargs = nlohmann::json::object());

}  // namespace observers
}  // namespace calq
