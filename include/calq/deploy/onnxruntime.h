#pragma once
// ONNX Runtime (CPU), driven through Node.js and the npm package onnxruntime-node
// (tools/ort/run.js): the deployed engine calq checks its exports against. Not linked into
// calq: a separate process, found at run time.

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace calq {
namespace deploy {

struct OrtOptions {
  /// Intra-op threads. Default 1.
  int64_t threads = 1;
  /// Inputs are run in batches of this many (0: all at once).
  int64_t batch = 0;
  /// If non-empty, ONNX Runtime saves its optimized graph here (to check which nodes became
  /// integer kernels).
  std::string optimized_model_path;
  /// Graph optimization level: all, extended, basic, disabled.
  std::string level = "all";
};

struct OrtResult {
  std::vector<at::Tensor> outputs;  ///< every model output, float32, in the model's order
  double seconds = 0.0;             ///< time of the runs inside ONNX Runtime
  std::string cpu;                  ///< CPU model and its AVX2 / AVX-512 / VNNI / AMX flags
  std::string version;              ///< onnxruntime-node version
};

/// The driver script: $CALQ_ORT_SCRIPT, else tools/ort/run.js of calq's source tree.
std::string onnxruntime_script();
/// Whether node and onnxruntime-node can be used; otherwise *why says what to install.
bool onnxruntime_available(std::string* why = nullptr);
/// Runs `model_path` on `inputs` (float32, fed to the model's inputs in order). Throws with the
/// driver's message on any failure.
OrtResult run_onnxruntime(const std::string& model_path, const std::vector<at::Tensor>& inputs,
                          const OrtOptions& options = {});

}  // namespace deploy
}  // namespace calq
