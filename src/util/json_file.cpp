#include "calq/util/json_file.h"

#include <cerrno>
#include <cstring>
#include <fstream>

#include "calq/util/atomic_file.h"

namespace calq {
namespace util {

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path);
  TORCH_CHECK(in.is_open(), "cannot read JSON file '", path, "': ", std::strerror(errno));
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    TORCH_CHECK(false, "JSON file '", path, "' does not parse: ", e.what());
  }
}

void write_json_atomic(const std::string& path, const nlohmann::json& value, int indent) {
  write_file_atomic(path, value.dump(indent) + "\n");
}

}  // namespace util
}  // namespace calq
