#include "calq/qconfig.h"

#include <c10/util/Exception.h>

#include <fstream>
#include <sstream>

#include "calq/observers/registry.h"
#include "calq/util/atomic_file.h"
#include "observers/kwargs.h"

namespace calq {
namespace {

const std::vector<std::string>& grid_keys() {
  static const std::vector<std::string> keys = {"dtype",       "quant_min",    "quant_max",
                                                "rounding",    "power_of_two", "symmetric",
                                                "per_channel", "ch_axis",      "unsigned"};
  return keys;
}

bool contains(const std::vector<std::string>& keys, const std::string& key) {
  return std::find(keys.begin(), keys.end(), key) != keys.end();
}

// The entries of `kwargs` whose keys are in `keys`.
nlohmann::json select(const nlohmann::json& kwargs, const std::vector<std::string>& keys) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& item : kwargs.items()) {
    if (contains(keys, item.key())) {
      out[item.key()] = item.value();
    }
  }
  return out;
}

std::string slot(bool is_weight) {
  return is_weight ? "weight" : "activation";
}

}  // namespace

std::vector<std::string> FakeQuantConfig::valid_keys() const {
  std::vector<std::string> keys = grid_keys();
  const auto& info = observers::observer_info(observer);
  keys.insert(keys.end(), info.keys.begin(), info.keys.end());
  keys.push_back("skip_nonfinite");
  const auto method_keys = fake_quant_method_keys(fake_quant_method_from_string(method));
  keys.insert(keys.end(), method_keys.begin(), method_keys.end());
  return keys;
}

QuantSpec FakeQuantConfig::spec() const {
  const std::string context = slot(is_weight) + " qconfig (" + method + " / " + observer + ")";
  detail::check_kwargs(qkwargs, valid_keys(), context);
  QuantSpec s(quant_dtype_from_string(detail::kwarg_string(qkwargs, "dtype", "qint8", context)));
  s.unsigned_grid(detail::kwarg_bool(qkwargs, "unsigned", false, context));
  if (qkwargs.contains("quant_min") || qkwargs.contains("quant_max")) {
    s.quant_range(detail::kwarg_int(qkwargs, "quant_min",
                                    default_quant_min(s.dtype(), s.unsigned_grid()), context),
                  detail::kwarg_int(qkwargs, "quant_max",
                                    default_quant_max(s.dtype(), s.unsigned_grid()), context));
  }
  s.rounding(rounding_from_string(
      detail::kwarg_string(qkwargs, "rounding", to_string(Rounding::half_to_even), context)));
  s.power_of_two(detail::kwarg_bool(qkwargs, "power_of_two", false, context));
  s.symmetric(detail::kwarg_bool(qkwargs, "symmetric", true, context));
  s.per_channel(detail::kwarg_bool(qkwargs, "per_channel", is_weight, context));
  s.ch_axis(detail::kwarg_int(qkwargs, "ch_axis", 0, context));
  s.validate();
  return s;
}

FakeQuantize FakeQuantConfig::create() const {
  const FakeQuantMethod m = fake_quant_method_from_string(method);
  const auto& info = observers::observer_info(observer);
  const QuantSpec s = spec();  // checks every key
  std::vector<std::string> observer_keys = info.keys;
  observer_keys.push_back("skip_nonfinite");
  observers::Observer obs = observers::make_observer(observer, s, select(qkwargs, observer_keys));
  return FakeQuantize(m, obs, fake_quantize_options(m, select(qkwargs, fake_quant_method_keys(m))));
}

void FakeQuantConfig::validate() const {
  (void)create();
}

nlohmann::json FakeQuantConfig::to_json() const {
  return {{"method", method}, {"observer", observer}, {"qkwargs", qkwargs}};
}

FakeQuantConfig FakeQuantConfig::from_json(const nlohmann::json& j, bool is_weight) {
  const std::string context = slot(is_weight) + " recipe";
  TORCH_CHECK(j.is_object(), context,
              ": expected an object with keys method, observer, qkwargs; "
              "got ",
              j.dump());
  detail::check_kwargs(j, {"method", "observer", "qkwargs"}, context);
  TORCH_CHECK(j.contains("method") && j.contains("observer"), context,
              ": keys 'method' and 'observer' are required; got ", j.dump());
  FakeQuantConfig c;
  c.method = detail::kwarg_string(j, "method", "", context);
  c.observer = detail::kwarg_string(j, "observer", "", context);
  if (j.contains("qkwargs")) {
    TORCH_CHECK(j["qkwargs"].is_object(), context, ": 'qkwargs' must be an object, got ",
                j["qkwargs"].dump());
    c.qkwargs = j["qkwargs"];
  }
  c.is_weight = is_weight;
  return c;
}

bool FakeQuantConfig::operator==(const FakeQuantConfig& other) const {
  return method == other.method && observer == other.observer && qkwargs == other.qkwargs &&
         is_weight == other.is_weight;
}

nlohmann::json QConfig::to_json() const {
  return {{"activation", activation ? activation->to_json() : nlohmann::json(nullptr)},
          {"weight", weight ? weight->to_json() : nlohmann::json(nullptr)}};
}

QConfig QConfig::from_json(const nlohmann::json& j) {
  TORCH_CHECK(j.is_object(), "qconfig: expected an object with keys activation, weight; got ",
              j.dump());
  detail::check_kwargs(j, {"activation", "weight"}, "qconfig");
  TORCH_CHECK(j.contains("activation") && j.contains("weight"),
              "qconfig: keys 'activation' and 'weight' are required (null = float); got ",
              j.dump());
  QConfig q;
  if (!j["activation"].is_null()) {
    q.activation = FakeQuantConfig::from_json(j["activation"], false);
  }
  if (!j["weight"].is_null()) {
    q.weight = FakeQuantConfig::from_json(j["weight"], true);
  }
  return q;
}

void QConfig::validate() const {
  if (activation) {
    activation->validate();
  }
  if (weight) {
    weight->validate();
  }
}

bool QConfig::operator==(const QConfig& other) const {
  return activation == other.activation && weight == other.weight;
}

QConfig get_default_qconfig(const c10::optional<std::string>& activation_fake_quant,
                            const c10::optional<std::string>& weight_fake_quant,
                            const std::string& activation_observer,
                            const std::string& weight_observer,
                            const nlohmann::json& activation_qkwargs,
                            const nlohmann::json& weight_qkwargs) {
  auto recipe = [](const std::string& method, const std::string& observer,
                   const nlohmann::json& qkwargs, bool is_weight) {
    TORCH_CHECK(qkwargs.is_object() || qkwargs.is_null(), slot(is_weight),
                "_qkwargs must be a JSON object, got ", qkwargs.dump());
    FakeQuantConfig c;
    c.method = method;
    c.observer = observer;
    c.qkwargs = qkwargs.is_null() ? nlohmann::json::object() : qkwargs;
    c.is_weight = is_weight;
    return c;
  };
  QConfig q;
  if (activation_fake_quant) {
    q.activation = recipe(*activation_fake_quant, activation_observer, activation_qkwargs, false);
  }
  if (weight_fake_quant) {
    q.weight = recipe(*weight_fake_quant, weight_observer, weight_qkwargs, true);
  }
  q.validate();
  return q;
}

QConfig get_default_calib_qconfig() {
  return get_default_qconfig(std::string("fake_quant"), c10::nullopt, "percentile", "min_max",
                             {{"percentile", 99.99}, {"bins", 2048}});
}

QConfig qconfig_8bit() {
  return get_default_qconfig();
}

QConfig qconfig_16bit_activation() {
  return get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), "min_max",
                             "min_max", {{"dtype", "qint16"}});
}

QConfig qconfig_fixed_activation_scale(double scale) {
  return get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), "fixed_scale",
                             "min_max", {{"scale", scale}});
}

QConfig qconfig_float_output() {
  return get_default_qconfig(c10::nullopt, std::string("fake_quant"));
}

QConfig load_qconfig(const std::string& path) {
  std::ifstream in(path);
  TORCH_CHECK(in.good(), "load_qconfig: cannot open '", path, "'");
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, "load_qconfig: '", path, "' is not valid JSON: ", e.what());
  }
  try {
    QConfig q = QConfig::from_json(j);
    q.validate();
    return q;
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "load_qconfig: '", path, "': ", e.msg());
  }
}

void save_qconfig(const QConfig& qconfig, const std::string& path) {
  util::write_file_atomic(path, qconfig.to_json().dump(2) + "\n");
}

}  // namespace calq
