#include "observers/kwargs.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

namespace calq {
namespace detail {

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) {
    out += out.empty() ? n : ", " + n;
  }
  return out;
}

void check_kwargs(const nlohmann::json& kwargs, const std::vector<std::string>& valid,
                  const std::string& context) {
  TORCH_CHECK(kwargs.is_object() || kwargs.is_null(), context,
              ": keyword arguments must be a JSON object, got ", kwargs.dump());
  if (kwargs.is_null()) {
    return;
  }
  for (const auto& item : kwargs.items()) {
    TORCH_CHECK(std::find(valid.begin(), valid.end(), item.key()) != valid.end(), context,
                ": unknown keyword '", item.key(), "'; valid keywords: ", join(valid));
  }
}

namespace {
const nlohmann::json* find(const nlohmann::json& kwargs, const std::string& key) {
  if (!kwargs.is_object()) {
    return nullptr;
  }
  auto it = kwargs.find(key);
  return it == kwargs.end() ? nullptr : &*it;
}
}  // namespace

double kwarg_double(const nlohmann::json& kwargs, const std::string& key, double fallback,
                    const std::string& context) {
  const nlohmann::json* v = find(kwargs, key);
  if (v == nullptr) {
    return fallback;
  }
  TORCH_CHECK(v->is_number(), context, ": keyword '", key, "' must be a number, got ", v->dump());
  return v->get<double>();
}

int64_t kwarg_int(const nlohmann::json& kwargs, const std::string& key, int64_t fallback,
                  const std::string& context) {
  const nlohmann::json* v = find(kwargs, key);
  if (v == nullptr) {
    return fallback;
  }
  if (v->is_number_integer()) {
    return v->get<int64_t>();
  }
  TORCH_CHECK(v->is_number_float() && std::floor(v->get<double>()) == v->get<double>(), context,
              ": keyword '", key, "' must be an integer, got ", v->dump());
  return static_cast<int64_t>(v->get<double>());
}

bool kwarg_bool(const nlohmann::json& kwargs, const std::string& key, bool fallback,
                const std::string& context) {
  const nlohmann::json* v = find(kwargs, key);
  if (v == nullptr) {
    return fallback;
  }
  TORCH_CHECK(v->is_boolean(), context, ": keyword '", key, "' must be true or false, got ",
              v->dump());
  return v->get<bool>();
}

std::string kwarg_string(const nlohmann::json& kwargs, const std::string& key,
                         const std::string& fallback, const std::string& context) {
  const nlohmann::json* v = find(kwargs, key);
  if (v == nullptr) {
    return fallback;
  }
  TORCH_CHECK(v->is_string(), context, ": keyword '", key, "' must be a string, got ", v->dump());
  return v->get<std::string>();
}

std::vector<double> kwarg_doubles(const nlohmann::json& kwargs, const std::string& key,
                                  const std::vector<double>& fallback, const std::string& context) {
  const nlohmann::json* v = find(kwargs, key);
  if (v == nullptr) {
    return fallback;
  }
  TORCH_CHECK(v->is_array(), context, ": keyword '", key, "' must be a list of numbers, got ",
              v->dump());
  std::vector<double> out;
  for (const auto& e : *v) {
    TORCH_CHECK(e.is_number(), context, ": keyword '", key, "' must be a list of numbers, got ",
                v->dump());
    out.push_back(e.get<double>());
  }
  return out;
}

}  // namespace detail
}  // namespace calq
