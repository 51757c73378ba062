#pragma once
// JSON files: read with errors that name the file, write atomically.

#include <nlohmann/json.hpp>

#include <string>

namespace calq {
namespace util {

/// Parses the JSON file at `path`. Throws c10::Error naming the path if it cannot be opened
/// (with the errno text) or does not parse (with the parser's message, which gives the byte
/// position).
nlohmann::json read_json_file(const std::string& path);

/// Writes `value` to `path` atomically (write_file_atomic), pretty-printed with `indent`
/// spaces (-1 = one line) and a final newline.
void write_json_atomic(const std::string& path, const nlohmann::json& value, int indent = 2);

}  // namespace util
}  // namespace calq
