#pragma once
// QConfig: which fake-quant method and observer a quantization point gets
// (docs/quantization.md, section 4; the seed's get_default_qconfig).

#include <nlohmann/json.hpp>

#include <map>
#include <string>

#include "calq/fake_quantize.h"

namespace calq {

/// Recipe for one FakeQuantize: method name, observer name and their keyword arguments.
/// qkwargs go to both the fake-quant and its observer; keys are validated against both.
struct FakeQuantConfig {
  std::string method = "fake_quant";
  std::string observer = "min_max";
  nlohmann::json qkwargs = nlohmann::json::object();
  /// Weight recipes default to per-channel symmetric along ch_axis 0.
  bool is_weight = false;

  /// Builds a new FakeQuantize (throws on unknown names / keywords, listing the valid ones).
  FakeQuantize create() const;
  /// The QuantSpec the recipe yields (dtype, per-channel, rounding, ...).
  QuantSpec spec() const;

  nlohmann::json to_json() const;
  static FakeQuantConfig from_json(const nlohmann::json& j, bool is_weight);
  bool operator==(const FakeQuantConfig& other) const;
};

/// activation / weight: absent (c10::nullopt) = that tensor stays float (for activations the
/// seed's "32-bit output", used for a model's last layer).
struct QConfig {
  c10::optional<FakeQuantConfig> activation;
  c10::optional<FakeQuantConfig> weight;

  nlohmann::json to_json() const;
  static QConfig from_json(const nlohmann::json& j);
  void validate() const;  ///< builds nothing; checks names and keywords
  bool operator==(const QConfig& other) const;
};

/// The seed's get_default_qconfig. A null name (c10::nullopt) for a fake-quant leaves that
/// tensor float. Throws on unknown names or keywords, listing the valid ones.
QConfig get_default_qconfig(
    const c10::optional<std::string>& activation_fake_quant = std::string("fake_quant"),
    const c10::optional<std::string>& weight_fake_quant = std::string("fake_quant"),
    const std::string& activation_observer = "min_max",
    const std::string& weight_observer = "min_max",
    const nlohmann::json& activation_qkwargs = nlohmann::json::object(),
    const nlohmann::json& weight_qkwargs = nlohmann::json::object());

/// The older calibration API: activations observed by a 2048-bin, 99.99 percentile observer;
/// weights not calibrated (weight = nullopt).
QConfig get_default_calib_qconfig();

/// Presets.
QConfig qconfig_8bit();                          ///< get_default_qconfig()
QConfig qconfig_16bit_activation();              ///< activations qint16, weights qint8
QConfig qconfig_fixed_activation_scale(double scale);  ///< fixed_scale activation observer
QConfig qconfig_float_output();                  ///< weights quantized, output float

/// Reads / writes a QConfig file (JSON, atomically written).
QConfig load_qconfig(const std::string& path);
void save_qconfig(const QConfig& qconfig, const std::string& path);

}  // namespace calq
