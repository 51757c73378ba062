#pragma once
// Running the PyTorch reference scripts next to a C++ suite: Debian's /usr/bin/python3 (which
// has python3-torch) runs bench/<script> and prints one JSON document.

#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

namespace calq_bench {

/// s quoted for /bin/sh.
inline std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

/// Runs `/usr/bin/python3 bench/<script> <arguments...>` and parses its standard output as
/// JSON; null (after a message naming `suite` and the command) when python3, PyTorch or the
/// script fails.
inline nlohmann::json run_python_reference(const std::string& suite, const std::string& script,
                                           const std::vector<std::string>& arguments) {
#ifdef CALQ_BENCH_DIR
  const std::string folder = CALQ_BENCH_DIR;
#else
  std::string folder = __FILE__;
  folder = folder.substr(0, folder.rfind('/'));
#endif
  std::string command = "/usr/bin/python3 " + shell_quote(folder + "/" + script);
  for (const std::string& argument : arguments) command += " " + shell_quote(argument);
  std::cerr << "running " << command << "\n";
  nlohmann::json result = nullptr;
  if (FILE* pipe = ::popen(command.c_str(), "r")) {
    std::string output;
    char buffer[4096];
    while (size_t n = std::fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, n);
    if (::pclose(pipe) == 0) {
      result = nlohmann::json::parse(output, nullptr, /*allow_exceptions=*/false);
    }
  }
  if (result.is_null() || result.is_discarded()) {
    std::cerr << suite << ": PyTorch timings unavailable (" << command << " failed)\n";
    return nullptr;
  }
  return result;
}

}  // namespace calq_bench
