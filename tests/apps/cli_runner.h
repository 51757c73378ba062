#pragma once
// Runs the real calq binary (CALQ_CLI_PATH, set by tests/CMakeLists.txt) for the command-line
// tests: exit code and combined stdout/stderr; the helpers the command-line tests share.

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

#include "calq/data/fashion_mnist.h"

namespace calq_test {

struct CliResult {
  int exit_code;
  std::string output;  // stdout and stderr
};

inline CliResult run_cli(const std::string& arguments) {
  const std::string command = std::string(CALQ_CLI_PATH) + " " + arguments + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  CliResult result{-1, ""};
  if (pipe == nullptr) return result;
  std::array<char, 4096> buffer{};
  while (fgets(buffer.data(), buffer.size(), pipe) != nullptr) result.output += buffer.data();
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

/// Whether Debian's Fashion-MNIST package is installed (tests on it skip otherwise).
inline bool dataset_installed() {
  return std::filesystem::exists(calq::data::fashion_mnist_file(
      calq::data::fashion_mnist_dir(), calq::data::Split::test, /*labels=*/false));
}

/// A path under the temporary folder named `name`, removed first if it exists.
inline std::string fresh_temp_dir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / name;
  std::filesystem::remove_all(dir);
  return dir.string();
}

}  // namespace calq_test
