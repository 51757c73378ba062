#include "calq/deploy/onnxruntime.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <sys/wait.h>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "calq/util/npy.h"

#ifndef CALQ_SOURCE_DIR_DEFAULT
#define CALQ_SOURCE_DIR_DEFAULT "."
#endif

namespace calq {
namespace deploy {
namespace {

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs a shell command; returns its exit status and standard output (standard error is kept
// in `err_file`).
int run_command(const std::string& command, std::string* out) {
  FILE* pipe = popen(command.c_str(), "r");
  TORCH_CHECK(pipe != nullptr, "cannot start '", command, "'");
  std::array<char, 4096> buffer{};
  size_t n = 0;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) out->append(buffer.data(), n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

struct TempDir {
  std::string path;
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "calq_ort_XXXXXX").string();
    TORCH_CHECK(mkdtemp(&pattern[0]) != nullptr, "cannot create a temporary folder");
    path = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
};

}  // namespace

std::string onnxruntime_script() {
  if (const char* env = std::getenv("CALQ_ORT_SCRIPT")) return env;
  return std::string(CALQ_SOURCE_DIR_DEFAULT) + "/tools/ort/run.js";
}

bool onnxruntime_available(std::string* why) {
  const std::string script = onnxruntime_script();
  const std::filesystem::path modules =
      std::filesystem::path(script).parent_path() / "node_modules" / "onnxruntime-node";
  std::string out;
  if (run_command("node --version 2>/dev/null", &out) != 0) {
    if (why) *why = "node is not installed (Debian: apt-get install nodejs)";
    return false;
  }
  if (!std::filesystem::exists(script) || !std::filesystem::exists(modules)) {
    if (why) {
      *why = "onnxruntime-node is not installed next to " + script +
             " (run: npm install --ignore-scripts --prefix " +
             std::filesystem::path(script).parent_path().string() + ")";
    }
    return false;
  }
  return true;
}

OrtResult run_onnxruntime(const std::string& model_path, const std::vector<at::Tensor>& inputs,
                          const OrtOptions& options) {
  std::string why;
  TORCH_CHECK(onnxruntime_available(&why), "ONNX Runtime is not available: ", why);
  TORCH_CHECK(!inputs.empty(), "run_onnxruntime: give at least one input");
  TempDir dir;
  std::string command = "node " + quote(onnxruntime_script()) + " --model " + quote(model_path);
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string file = dir.path + "/input" + std::to_string(i) + ".npy";
    util::write_npy(file, inputs[i].to(at::kFloat));
    command += i == 0 ? " --input " + quote(file) : "";
    TORCH_CHECK(i == 0,
                "run_onnxruntime: models with several inputs are fed by name; not yet "
                "supported by this helper");
  }
  const std::string outputs = dir.path + "/outputs";
  std::filesystem::create_directories(outputs);
  command += " --outputs " + quote(outputs) + " --threads " + std::to_string(options.threads) +
             " --level " + options.level;
  if (options.batch > 0) command += " --batch " + std::to_string(options.batch);
  if (!options.optimized_model_path.empty()) {
    command += " --optimized " + quote(options.optimized_model_path);
  }
  command += " 2>" + quote(dir.path + "/stderr.txt");
  std::string out;
  const int status = run_command(command, &out);
  if (status != 0) {
    std::string err;
    run_command("cat " + quote(dir.path + "/stderr.txt"), &err);
    TORCH_CHECK(false, "ONNX Runtime failed on '", model_path, "' (exit ", status, "): ", err);
  }
  nlohmann::json result;
  try {
    result = nlohmann::json::parse(out.substr(out.rfind('{')));
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "ONNX Runtime driver printed no result: ", out);
  }
  OrtResult r;
  for (const auto& file : result.at("outputs")) r.outputs.push_back(util::read_npy(file));
  r.seconds = result.value("seconds", 0.0);
  r.cpu = result.value("cpu", std::string());
  r.version = result.value("ort", std::string());
  return r;
}

}  // namespace deploy
}  // namespace calq
