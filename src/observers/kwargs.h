#pragma once
// Typed reading of JSON keyword arguments (observer and fake-quant configuration), with errors
// that name the context, the key, the offending value and the expected type.

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace calq {
namespace detail {

/// Throws unless kwargs is an object whose keys all appear in `valid`; the message lists them.
void check_kwargs(const nlohmann::json& kwargs, const std::vector<std::string>& valid,
                  const std::string& context);
/// "a, b, c".
std::string join(const std::vector<std::string>& names);

double kwarg_double(const nlohmann::json& kwargs, const std::string& key, double fallback,
                    const std::string& context);
/// Integers; a float with an integral value (2048.0) is accepted.
int64_t kwarg_int(const nlohmann::json& kwargs, const std::string& key, int64_t fallback,
                  const std::string& context);
bool kwarg_bool(const nlohmann::json& kwargs, const std::string& key, bool fallback,
                const std::string& context);
std::string kwarg_string(const nlohmann::json& kwargs, const std::string& key,
                         const std::string& fallback, const std::string& context);
std::vector<double> kwarg_doubles(const nlohmann::json& kwargs, const std::string& key,
                                  const std::vector<double>& fallback, const std::string& context);

}  // namespace detail
}  // namespace calq
