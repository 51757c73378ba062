#pragma once
// Runs the real calq binary (CALQ_CLI_PATH, set by tests/CMakeLists.txt) for the command-line
// tests: exit code and combined stdout/stderr.

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

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

}  // namespace calq_test
