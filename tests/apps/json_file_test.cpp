// JSON files: round trip and error messages.

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "calq/util/json_file.h"

namespace {

std::string error_of(const std::string& path) {
  try {
    calq::util::read_json_file(path);
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

TEST(JsonFile, RoundTripAndErrors) {
  const auto dir = std::filesystem::temp_directory_path() / "calq_json_test";
  std::filesystem::remove_all(dir);
  const std::string path = (dir / "sub/report.json").string();
  const nlohmann::json value = {{"float", {{"top1", 91.25}}}, {"config", {{"bits", "8/8"}}}};
  calq::util::write_json_atomic(path, value);
  EXPECT_EQ(calq::util::read_json_file(path), value);
  std::ifstream in(path);
  std::string first_line;
  std::getline(in, first_line);
  EXPECT_EQ(first_line, "{");  // pretty-printed

  const std::string missing = error_of((dir / "none.json").string());
  EXPECT_NE(missing.find("cannot read JSON file '" + (dir / "none.json").string() + "'"),
            std::string::npos)
      << missing;
  EXPECT_NE(missing.find("No such file or directory"), std::string::npos) << missing;

  std::ofstream((dir / "bad.json").string()) << "{\"a\": 1,";
  const std::string bad = error_of((dir / "bad.json").string());
  EXPECT_NE(bad.find("JSON file '" + (dir / "bad.json").string() + "' does not parse"),
            std::string::npos)
      << bad;
  std::filesystem::remove_all(dir);
}

}  // namespace
