#include "config.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <fstream>
#include <set>

#include "calq/analysis/auto_recipe.h"
#include "calq/deploy/profile.h"
#include "calq/qconfig.h"
#include "calq/workflow.h"
#include "calq/zoo/models.h"

namespace calq {
namespace cli {
namespace {

QuantDtype dtype_for_bits(const std::string& bits, const std::string& which) {
  if (bits == "4") return QuantDtype::qint4;
  if (bits == "8") return QuantDtype::qint8;
  if (bits == "16") return QuantDtype::qint16;
  TORCH_CHECK(false, "--bits: ", which, " bit width '", bits,
              "' is not supported; valid: 4, 8, 16");
}

std::pair<std::string, std::string> split_bits(const std::string& bits) {
  const auto slash = bits.find('/');
  TORCH_CHECK(slash != std::string::npos,
              "--bits must be WEIGHTS/ACTIVATIONS, e.g. 8/8 or 4/4; got '", bits, "'");
  return {bits.substr(0, slash), bits.substr(slash + 1)};
}

std::string normalized_key(std::string key) {
  std::replace(key.begin(), key.end(), '-', '_');
  return key;
}

}  // namespace

QuantDtype RunConfig::weight_dtype() const {
  return dtype_for_bits(split_bits(bits).first, "weight");
}

QuantDtype RunConfig::activation_dtype() const {
  return dtype_for_bits(split_bits(bits).second, "activation");
}

bool RunConfig::unsigned_activations() const {
  return target != "accelerator" && deploy::profile_from_string(target).unsigned_activations;
}

void RunConfig::validate() const {
  weight_dtype();
  activation_dtype();
  const auto& models = zoo::model_names();
  const bool onnx_file = model.size() > 5 && model.substr(model.size() - 5) == ".onnx";
  TORCH_CHECK(onnx_file || std::find(models.begin(), models.end(), model) != models.end(),
              "--model: unknown model '", model,
              "'; valid models: cnn, resnet, mobilenet, or a path to an .onnx file");
  TORCH_CHECK(size.size() == 2 && size[0] > 0 && size[1] > 0, "--size must be two positive ",
              "numbers H W, got ", size.size(), " values");
  TORCH_CHECK(epochs >= 1, "--epochs must be >= 1, got ", epochs);
  TORCH_CHECK(qat_epochs >= 1, "--qat-epochs must be >= 1, got ", qat_epochs);
  TORCH_CHECK(calib_batches >= 1, "--calib-batches must be >= 1, got ", calib_batches);
  TORCH_CHECK(batch_size >= 1, "--batch-size must be >= 1, got ", batch_size);
  TORCH_CHECK(threads >= 0, "--threads must be >= 0 (0 = all cores), got ", threads);
  TORCH_CHECK(nproc >= 1, "--nproc must be >= 1 (local worker processes), got ", nproc);
  TORCH_CHECK(dist_timeout >= 1.0, "--dist-timeout must be >= 1 (seconds), got ", dist_timeout);
  TORCH_CHECK(limit_train >= 0 && limit_test >= 0, "--limit-train/--limit-test must be >= 0");
  TORCH_CHECK(lr > 0 && qat_lr > 0 && qat_scale_lr > 0,
              "--lr, --qat-lr and --qat-scale-lr must be > 0");
  TORCH_CHECK(qat_schedule == "cosine" || qat_schedule == "constant", "--qat-schedule: unknown ",
              "schedule '", qat_schedule, "'; valid schedules: cosine, constant");
  TORCH_CHECK(qat_freeze_bn_epochs >= 0 && qat_freeze_bn_epochs <= qat_epochs,
              "--qat-freeze-bn-epochs must lie in [0, --qat-epochs = ", qat_epochs, "], got ",
              qat_freeze_bn_epochs);
  TORCH_CHECK(val_size >= 1, "--val-size must be >= 1 (training images held out for choices), got ",
              val_size);
  TORCH_CHECK(!out.empty(), "--out must name a folder");
  TORCH_CHECK(!observers.empty(), "--observers must name at least one observer");
  TORCH_CHECK(!methods.empty(), "--methods must name at least one fake-quant method, or none");
  TORCH_CHECK(qat_loss == "auto" || qat_loss == "cross_entropy" || qat_loss == "distillation",
              "--qat-loss must be auto, cross_entropy or distillation, got '", qat_loss, "'");
  // Names are checked up front (errors list the valid ones), not after an hour of training.
  march_from_string(march);
  analysis::relu6_policy_from_string(cle_relu6);
  analysis::promotion_from_string(promotion);
  // --target and --arithmetic take an export profile or their own non-profile value.
  auto check_profile = [](const std::string& flag, const std::string& value,
                          const std::string& other) {
    if (value == other) return;
    try {
      deploy::profile_from_string(value);
    } catch (const c10::Error&) {
      TORCH_CHECK(false, flag, ": unknown value '", value, "'; valid: ", other, ", ort-cpu");
    }
  };
  check_profile("--target", target, "accelerator");
  check_profile("--arithmetic", arithmetic, "float");
  for (const auto& observer : observers) {
    if (observer == "auto") continue;  // calq::analysis::auto_recipe
    get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), observer).validate();
  }
  for (const auto& method : qat_methods()) {
    get_default_qconfig(method, std::string("fake_quant"),
                        qat_observer == "calibrated" ? std::string("min_max") : qat_observer)
        .validate();
  }
}

std::vector<std::string> RunConfig::qat_methods() const {
  std::vector<std::string> out;
  for (const auto& m : methods) {
    if (m != "none") out.push_back(m);
  }
  return out;
}

bool RunConfig::distills(bool labelled) const {
  TORCH_CHECK(labelled || qat_loss != "cross_entropy",
              "--qat-loss cross_entropy needs labelled data; this data has no labels (use auto "
              "or distillation)");
  return qat_loss == "distillation" || (qat_loss == "auto" && !labelled);
}

nlohmann::json RunConfig::to_json() const {
  return {{"model", model},
          {"bits", bits},
          {"epochs", epochs},
          {"qat_epochs", qat_epochs},
          {"calib_batches", calib_batches},
          {"batch_size", batch_size},
          {"threads", threads},
          {"seed", seed},
          {"out", out},
          {"data_dir", data_dir},
          {"limit_train", limit_train},
          {"limit_test", limit_test},
          {"lr", lr},
          {"qat_lr", qat_lr},
          {"qat_scale_lr", qat_scale_lr},
          {"qat_schedule", qat_schedule},
          {"qat_freeze_bn_epochs", qat_freeze_bn_epochs},
          {"val_size", val_size},
          {"data", data},
          {"test_data", test_data},
          {"size", size},
          {"channels", channels},
          {"order", order},
          {"mean", mean},
          {"std", std},
          {"exclude", exclude},
          {"march", march},
          {"observers", observers},
          {"methods", methods},
          {"qat_observer", qat_observer},
          {"qat_loss", qat_loss},
          {"cle", cle},
          {"cle_relu6", cle_relu6},
          {"bias_correction", bias_correction},
          {"target_drop", target_drop},
          {"promotion", promotion},
          {"target", target},
          {"arithmetic", arithmetic},
          {"nproc", nproc},
          {"dist_timeout", dist_timeout}};
}

void RunConfig::merge_json(const nlohmann::json& j) {
  TORCH_CHECK(j.is_object(), "--config: the settings file must hold a JSON object");
  const nlohmann::json known = to_json();
  for (const auto& item : j.items()) {
    const std::string key = normalized_key(item.key());
    if (key == "resume" || key == "quiet") continue;
    if (!known.contains(key)) {
      std::string valid;
      for (const auto& k : known.items()) valid += (valid.empty() ? "" : ", ") + k.key();
      TORCH_CHECK(false, "--config: unknown setting '", item.key(), "'; valid settings: ", valid);
    }
  }
  try {
    auto get = [&](const char* key, auto& field) {
      for (const auto& item : j.items()) {
        if (normalized_key(item.key()) == key) item.value().get_to(field);
      }
    };
    get("model", model);
    get("bits", bits);
    get("epochs", epochs);
    get("qat_epochs", qat_epochs);
    get("calib_batches", calib_batches);
    get("batch_size", batch_size);
    get("threads", threads);
    get("seed", seed);
    get("out", out);
    get("data_dir", data_dir);
    get("limit_train", limit_train);
    get("limit_test", limit_test);
    get("lr", lr);
    get("qat_lr", qat_lr);
    get("qat_scale_lr", qat_scale_lr);
    get("qat_schedule", qat_schedule);
    get("qat_freeze_bn_epochs", qat_freeze_bn_epochs);
    get("val_size", val_size);
    get("data", data);
    get("test_data", test_data);
    get("size", size);
    get("channels", channels);
    get("order", order);
    get("mean", mean);
    get("std", std);
    get("exclude", exclude);
    get("march", march);
    get("observers", observers);
    get("methods", methods);
    get("qat_observer", qat_observer);
    get("qat_loss", qat_loss);
    get("cle", cle);
    get("cle_relu6", cle_relu6);
    get("bias_correction", bias_correction);
    get("target_drop", target_drop);
    get("promotion", promotion);
    get("target", target);
    get("arithmetic", arithmetic);
    get("nproc", nproc);
    get("dist_timeout", dist_timeout);
  } catch (const nlohmann::json::exception& error) {
    TORCH_CHECK(false, "--config: a setting has the wrong type: ", error.what());
  }
}

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path);
  TORCH_CHECK(in.good(), "cannot open '", path, "' for reading");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& error) {
    TORCH_CHECK(false, "'", path, "' is not valid JSON: ", error.what());
  }
}

}  // namespace cli
}  // namespace calq
