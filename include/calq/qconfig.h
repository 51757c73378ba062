#pragma once
// QConfig: which fake-quant method and observer a quantization point gets
// (semantics section 4; the seed's get_default_qconfig).

#include <c10/util/Optional.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "calq/fake_quantize.h"

namespace calq {

/// Recipe for one FakeQuantize: method name, observer name and their keyword arguments.
///
/// qkwargs go to both the fake-quant and its observer and are validated against both:
///   grid:     "dtype" ("qint4" | "qint8" | "qint16", default "qint8"), "quant_min",
///             "quant_max" (override the dtype's range; a missing end keeps the dtype's),
///             "rounding" ("half_to_even" | "half_up"), "power_of_two" (bool),
///             "symmetric" (bool, default true), "per_channel" (bool, default is_weight),
///             "ch_axis" (int, default 0), "unsigned" (bool, default false: the grid
///             [0, 2^b - 1] with zero point 0 for outputs known non-negative, eq. 1c;
///             prepare_qat refuses it elsewhere);
///   observer: the observer's keys (registry.h, e.g. "percentile", "bins",
///             "averaging_constant") and "skip_nonfinite";
///   method:   lsq "grad_factor"; pact "alpha", "init_alpha_from_observer".
/// Any other key is an error listing the valid ones for this method and observer.
struct FakeQuantConfig {
  std::string method = "fake_quant";
  std::string observer = "min_max";
  nlohmann::json qkwargs = nlohmann::json::object();
  /// Weight recipes default to per-channel symmetric along ch_axis 0.
  bool is_weight = false;

  /// Builds a new FakeQuantize (state QAT). Throws on unknown names / keywords (listing the
  /// valid ones) and on invalid values (naming the parameter).
  FakeQuantize create() const;
  /// The QuantSpec the recipe yields (dtype, per-channel, rounding, ...).
  QuantSpec spec() const;
  /// Checks names, keywords and values (builds the recipe once and discards it).
  void validate() const;
  /// Every keyword valid for this method and observer.
  std::vector<std::string> valid_keys() const;

  /// {"method": ..., "observer": ..., "qkwargs": {...}} (is_weight is the slot, not stored).
  nlohmann::json to_json() const;
  static FakeQuantConfig from_json(const nlohmann::json& j, bool is_weight);
  bool operator==(const FakeQuantConfig& other) const;
  bool operator!=(const FakeQuantConfig& other) const { return !(*this == other); }
};

/// activation / weight: absent (c10::nullopt) = that tensor stays float (for activations the
/// seed's "32-bit output", used for a model's last layer).
struct QConfig {
  c10::optional<FakeQuantConfig> activation;
  c10::optional<FakeQuantConfig> weight;

  /// {"activation": recipe or null, "weight": recipe or null}; both keys required on read.
  nlohmann::json to_json() const;
  static QConfig from_json(const nlohmann::json& j);
  /// Checks both recipes (FakeQuantConfig::validate).
  void validate() const;
  bool operator==(const QConfig& other) const;
  bool operator!=(const QConfig& other) const { return !(*this == other); }
};

/// The seed's get_default_qconfig. A null fake-quant name (c10::nullopt) leaves that tensor
/// float. Names: methods fake_quant, lsq, pact; observers as in registry.h. qkwargs as in
/// FakeQuantConfig. Throws on unknown names or keywords (listing the valid ones) and on
/// invalid values. Recommended: activation observer "min_max" for QAT, "percentile" for
/// calibration; weights "min_max" (weights must use a per-channel observer: min_max, clip,
/// clip_std or mse, unless weight_qkwargs sets "per_channel": false).
QConfig get_default_qconfig(
    const c10::optional<std::string>& activation_fake_quant = std::string("fake_quant"),
    const c10::optional<std::string>& weight_fake_quant = std::string("fake_quant"),
    const std::string& activation_observer = "min_max",
    const std::string& weight_observer = "min_max",
    const nlohmann::json& activation_qkwargs = nlohmann::json::object(),
    const nlohmann::json& weight_qkwargs = nlohmann::json::object());

/// The older calibration API: activations observed by a 2048-bin, 99.99 percentile observer
/// (method fake_quant); weights not calibrated (weight = nullopt).
QConfig get_default_calib_qconfig();

/// Presets.
QConfig qconfig_8bit();                                ///< get_default_qconfig()
QConfig qconfig_16bit_activation();                    ///< activations qint16, weights qint8
QConfig qconfig_fixed_activation_scale(double scale);  ///< fixed_scale activation observer
QConfig qconfig_float_output();                        ///< weights quantized, output float

/// Reads a QConfig file (JSON as QConfig::to_json); errors name the path. The result is
/// validated.
QConfig load_qconfig(const std::string& path);
/// Writes a QConfig file atomically (temporary file in the same directory, then rename), so
/// a crash never leaves a partial file.
void save_qconfig(const QConfig& qconfig, const std::string& path);

}  // namespace calq
