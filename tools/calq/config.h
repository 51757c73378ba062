#pragma once
// Settings of every calq subcommand: command-line flags, optionally read from a JSON file
// (--config FILE, keys = long flag names with '-' or '_'); flags given on the command line win.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "calq/quant/quant_spec.h"

namespace calq {
namespace cli {

struct RunConfig {
  std::string model = "cnn";  ///< zoo name (cnn, resnet, mobilenet) or an .onnx file
  std::string bits = "8/8";   ///< weights/activations: 4, 8 or 16 each
  int64_t epochs = 8;         ///< float training epochs
  int64_t qat_epochs = 2;
  int64_t calib_batches = 32;
  int64_t batch_size = 128;
  int64_t threads = 0;  ///< 0 = all cores
  uint64_t seed = 0;
  std::string out = "out";
  std::string data_dir;        ///< empty = default location of dataset-fashion-mnist
  int64_t limit_train = 0;     ///< 0 = all 60000
  int64_t limit_test = 0;      ///< 0 = all 10000
  double lr = 1e-3;            ///< float training (Adam, cosine decay)
  double qat_lr = 1e-4;        ///< QAT weights (Adam)
  double qat_scale_lr = 1e-5;  ///< QAT quantizer parameters (lsq scales, pact alphas): own group
  std::string qat_schedule = "cosine";  ///< QAT learning rates: cosine (decay to 0) | constant
  int64_t qat_freeze_bn_epochs = 1;     ///< last QAT epochs with batch norm frozen
  int64_t val_size = 5000;  ///< training images held out for every choice (best observer)
  std::string data;         ///< user data: .npz (x, y), .npy (inputs) or an image folder
  std::string test_data;    ///< user test data (same formats); none by default
  std::vector<int64_t> size = {224, 224};  ///< image folders: resize to H W
  int64_t channels = 3;                    ///< image folders: 3 (colour) or 1 (grey)
  std::string order = "RGB";               ///< image folders: RGB or BGR
  std::vector<double> mean = {0.0};        ///< image folders: per-channel mean of pixel / 255
  std::vector<double> std = {1.0};         ///< image folders: per-channel std of pixel / 255
  std::vector<std::string> exclude;        ///< layers (ONNX node names / module paths) kept float
  std::string march = "bayes";
  std::vector<std::string> observers = {"min_max", "percentile", "kl",   "mse",
                                        "mix",     "clip_std",   "clip", "fixed_scale"};
  std::vector<std::string> methods = {"fake_quant", "lsq", "pact"};
  std::string qat_observer = "calibrated";
  /// QAT loss: cross_entropy (labels), distillation (from the float model's outputs), or auto
  /// (cross_entropy when the data has labels).
  std::string qat_loss = "auto";
  /// Label-free recovery steps around calibration (calq::analysis): cross-layer equalization
  /// before, bias correction after. With --observer auto they are tried and kept only where
  /// they score better on the held-out split.
  bool cle = false;
  std::string cle_relu6 = "to_relu";  ///< keep | to_relu (ReLU6 blocks around an equalized pair)
  bool bias_correction = false;
  /// auto: promote points until the label-free top-1 drop (disagreement with the float model
  /// on the validation split, in points) is at most this; < 0 = no target.
  double target_drop = -1.0;
  std::string promotion = "int16";  ///< int16 | float
  /// Where the model runs: "accelerator" (signed grids, the default) or an export profile
  /// ("ort-cpu": unsigned grids after ReLU / ReLU6).
  std::string target = "accelerator";
  /// How VALIDATION computes the top-1 the command reports: "float" (the simulation, the
  /// default) or an export profile ("ort-cpu": ONNX Runtime's integer kernels, bit for bit).
  std::string arithmetic = "float";
  /// Local worker processes (ranks) of a data-parallel job started by this command; under an
  /// external launcher (RANK set) the environment describes the job instead.
  int64_t nproc = 1;
  double dist_timeout = 60.0;  ///< seconds: a dead or stuck rank fails the others within it
  bool resume = false;
  bool quiet = false;

  /// --methods without "none" (`--methods none`: calibration only, no QAT).
  std::vector<std::string> qat_methods() const;
  /// Whether QAT distills from the float model, given whether the data has labels.
  bool distills(bool labelled) const;
  QuantDtype weight_dtype() const;
  QuantDtype activation_dtype() const;
  /// Whether --target accepts unsigned activation grids.
  bool unsigned_activations() const;
  /// Checks every field; throws naming the offending one and the valid values.
  void validate() const;
  nlohmann::json to_json() const;
  /// Overwrites the fields present in `j`; unknown keys are an error listing the valid ones.
  void merge_json(const nlohmann::json& j);
};

/// Reads a JSON settings file (errors name the file and the parse problem).
nlohmann::json read_json_file(const std::string& path);

}  // namespace cli
}  // namespace calq
