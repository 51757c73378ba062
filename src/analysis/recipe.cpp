#include "calq/analysis/recipe.h"

#include <c10/util/Exception.h>
#include <torch/utils.h>

#include <algorithm>
#include <fstream>
#include <set>

#include "calq/util/atomic_file.h"
#include "calq/util/timer.h"

namespace calq {
namespace analysis {
namespace {

constexpr int kRecipeVersion = 1;

void check_keys(const nlohmann::json& j, const std::set<std::string>& valid,
                const std::string& context) {
  TORCH_CHECK(j.is_object(), context, ": expected a JSON object, got ", j.dump());
  for (const auto& item : j.items()) {
    if (valid.count(item.key()) > 0) continue;
    std::string names;
    for (const auto& v : valid) names += (names.empty() ? "" : ", ") + v;
    TORCH_CHECK(false, context, ": unknown key '", item.key(), "'; valid keys: ", names);
  }
}

nlohmann::json overrides_json(const std::map<std::string, QConfig>& map) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& item : map) j[item.first] = item.second.to_json();
  return j;
}

std::map<std::string, QConfig> overrides_from_json(const nlohmann::json& j,
                                                   const std::string& context) {
  TORCH_CHECK(j.is_object(), context, ": expected an object of module -> qconfig, got ", j.dump());
  std::map<std::string, QConfig> out;
  for (const auto& item : j.items()) {
    try {
      out[item.key()] = QConfig::from_json(item.value());
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, context, " '", item.key(), "': ", e.msg());
    }
  }
  return out;
}

nlohmann::json equalization_json(const EqualizationOptions& o) {
  return {{"relu6", to_string(o.relu6())},
          {"max_sweeps", o.max_sweeps()},
          {"tolerance", o.tolerance()},
          {"max_scale", o.max_scale()}};
}

EqualizationOptions equalization_from_json(const nlohmann::json& j) {
  const std::string context = "recipe steps.cross_layer_equalization";
  check_keys(j, {"relu6", "max_sweeps", "tolerance", "max_scale"}, context);
  EqualizationOptions o;
  try {
    if (j.contains("relu6")) o.relu6(relu6_policy_from_string(j["relu6"].get<std::string>()));
    if (j.contains("max_sweeps")) o.max_sweeps(j["max_sweeps"].get<int64_t>());
    if (j.contains("tolerance")) o.tolerance(j["tolerance"].get<double>());
    if (j.contains("max_scale")) o.max_scale(j["max_scale"].get<double>());
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, context, ": ", e.what());
  }
  return o;
}

// The recipe `c` with another method / observer, keeping only keywords the new pair accepts.
FakeQuantConfig switched(const FakeQuantConfig& c, const std::string& method,
                         const std::string& observer) {
  FakeQuantConfig out = c;
  out.method = method;
  out.observer = observer.empty() ? c.observer : observer;  // empty: the calibration's own
  out.qkwargs = nlohmann::json::object();
  const std::vector<std::string> valid = out.valid_keys();
  for (const auto& item : c.qkwargs.items()) {
    if (std::find(valid.begin(), valid.end(), item.key()) != valid.end()) {
      out.qkwargs[item.key()] = item.value();
    }
  }
  return out;
}

QConfig switched(const QConfig& q, const std::string& activation_method,
                 const std::string& weight_method, const std::string& activation_observer) {
  QConfig out = q;
  if (out.activation) {
    out.activation = switched(*q.activation, activation_method, activation_observer);
  }
  if (out.weight) out.weight = switched(*q.weight, weight_method, q.weight->observer);
  return out;
}

}  // namespace

nlohmann::json Recipe::to_json() const {
  nlohmann::json steps_json = {
      {"cross_layer_equalization", steps.cross_layer_equalization()
                                       ? equalization_json(steps.equalization())
                                       : nlohmann::json(false)},
      {"bias_correction", steps.bias_correction()}};
  nlohmann::json j = {{"calq_recipe", kRecipeVersion},
                      {"global", global.to_json()},
                      {"by_type", overrides_json(overrides.by_type)},
                      {"by_name", overrides_json(overrides.by_name)},
                      {"steps", steps_json}};
  if (!notes.is_null()) j["notes"] = notes;
  return j;
}

Recipe Recipe::from_json(const nlohmann::json& j) {
  TORCH_CHECK(j.is_object(), "recipe: expected a JSON object, got ", j.dump());
  Recipe r;
  if (!j.contains("calq_recipe") && !j.contains("global")) {
    r.global = QConfig::from_json(j);  // a plain QConfig file
    return r;
  }
  check_keys(j, {"calq_recipe", "global", "by_type", "by_name", "steps", "notes"}, "recipe");
  TORCH_CHECK(j.contains("global"), "recipe: key 'global' (a qconfig) is required");
  if (j.contains("calq_recipe")) {
    TORCH_CHECK(
        j["calq_recipe"].is_number_integer() && j["calq_recipe"].get<int64_t>() == kRecipeVersion,
        "recipe: version ", j["calq_recipe"].dump(), " is not supported; this calq reads ",
        "version ", kRecipeVersion);
  }
  r.global = QConfig::from_json(j["global"]);
  if (j.contains("by_type"))
    r.overrides.by_type = overrides_from_json(j["by_type"], "recipe by_type");
  if (j.contains("by_name"))
    r.overrides.by_name = overrides_from_json(j["by_name"], "recipe by_name");
  if (j.contains("steps")) {
    const nlohmann::json& s = j["steps"];
    check_keys(s, {"cross_layer_equalization", "bias_correction"}, "recipe steps");
    if (s.contains("cross_layer_equalization")) {
      const nlohmann::json& cle = s["cross_layer_equalization"];
      if (cle.is_boolean()) {
        r.steps.cross_layer_equalization(cle.get<bool>());
      } else {
        r.steps.cross_layer_equalization(true);
        r.steps.equalization(equalization_from_json(cle));
      }
    }
    if (s.contains("bias_correction")) {
      TORCH_CHECK(s["bias_correction"].is_boolean(),
                  "recipe steps.bias_correction: expected true or false, got ",
                  s["bias_correction"].dump());
      r.steps.bias_correction(s["bias_correction"].get<bool>());
    }
  }
  if (j.contains("notes")) r.notes = j["notes"];
  return r;
}

void Recipe::validate() const {
  global.validate();
  for (const auto& item : overrides.by_type) item.second.validate();
  for (const auto& item : overrides.by_name) item.second.validate();
}

Recipe Recipe::for_qat(const std::string& activation_method, const std::string& weight_method,
                       const std::string& activation_observer) const {
  Recipe r;
  r.steps = steps;
  r.global = switched(global, activation_method, weight_method, activation_observer);
  for (const auto& item : overrides.by_type) {
    r.overrides.by_type[item.first] =
        switched(item.second, activation_method, weight_method, activation_observer);
  }
  for (const auto& item : overrides.by_name) {
    r.overrides.by_name[item.first] =
        switched(item.second, activation_method, weight_method, activation_observer);
  }
  r.validate();
  return r;
}

bool Recipe::operator==(const Recipe& other) const {
  return global == other.global && overrides.by_type == other.overrides.by_type &&
         overrides.by_name == other.overrides.by_name &&
         steps.cross_layer_equalization() == other.steps.cross_layer_equalization() &&
         (!steps.cross_layer_equalization() ||
          steps.equalization() == other.steps.equalization()) &&
         steps.bias_correction() == other.steps.bias_correction();
}

Recipe load_recipe(const std::string& path) {
  std::ifstream in(path);
  TORCH_CHECK(in.good(), "load_recipe: cannot open '", path, "'");
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, "load_recipe: '", path, "' is not valid JSON: ", e.what());
  }
  try {
    Recipe r = Recipe::from_json(j);
    r.validate();
    return r;
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "load_recipe: '", path, "': ", e.msg());
  }
}

void save_recipe(const Recipe& recipe, const std::string& path) {
  util::write_file_atomic(path, recipe.to_json().dump(2) + "\n");
}

QConfigOverrides unsigned_activation_overrides(torch::nn::Module& model, const QConfig& global,
                                               const QConfigOverrides& base) {
  QConfigOverrides out = base;
  for (const auto& item : model.named_modules("", /*include_self=*/true)) {
    auto* m = dynamic_cast<nn::QuantModuleImpl*>(item.value().get());
    if (m == nullptr || !m->is_quantization_point() || !m->output_non_negative()) continue;
    if (m->qconfig) continue;  // the module's own qconfig wins over any override
    QConfig resolved = global;
    auto by_type = base.by_type.find(m->type_name());
    if (by_type != base.by_type.end()) resolved = by_type->second;
    auto by_name = base.by_name.find(item.key());
    if (by_name != base.by_name.end()) resolved = by_name->second;
    if (!resolved.activation) continue;
    resolved.activation->qkwargs["unsigned"] = true;
    out.by_name[item.key()] = resolved;
  }
  return out;
}

RecipeApplication apply_recipe(torch::nn::Module& model, const Forward& forward,
                               const Recipe& recipe, const std::vector<at::Tensor>& batches) {
  TORCH_CHECK(!batches.empty(), "apply_recipe: no calibration batches were given");
  RecipeApplication out;
  if (recipe.steps.cross_layer_equalization()) {
    set_all(model, FakeQuantState::FLOAT);  // trace without touching any observer
    out.equalization = equalize(model, forward, batches[0], recipe.steps.equalization());
    out.equalized = true;
  }
  util::Timer timer;
  set_all(model, FakeQuantState::CALIBRATION);
  {
    torch::NoGradGuard no_grad;
    for (const at::Tensor& x : batches) forward(x);
  }
  out.calibration_seconds = timer.seconds();
  if (recipe.steps.bias_correction()) {
    out.bias_correction = correct_bias(model, forward, batches);
    out.bias_corrected = true;
  }
  set_all(model, FakeQuantState::VALIDATION);
  return out;
}

}  // namespace analysis
}  // namespace calq
