// ONNX's own backend node tests (Debian's libonnx-testdata): every test model whose operators
// calq supports, at opsets 11 and later, imported and run in float on input_N.pb, compared
// with output_N.pb within ONNX's backend tolerances.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <dirent.h>

#include <algorithm>
#include <fstream>
#include <set>

#include "calq/onnx/import.h"

namespace {

const char* kNodeDir = "/usr/share/libonnx-testdata/data/node";
// onnx/backend/test/runner: assert_allclose(rtol=1e-3, atol=1e-7) unless a test says else.
constexpr double kRtol = 1e-3;
constexpr double kAtol = 1e-7;

std::vector<std::string> node_cases() {
  std::vector<std::string> out;
  if (DIR* d = opendir(kNodeDir)) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name.rfind("test_", 0) == 0) out.push_back(name);
    }
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

bool exists(const std::string& path) {
  return std::ifstream(path).good();
}

at::Tensor read_pb(const std::string& path) {
  const std::string bytes = read_file(path);
  return calq::onnx::to_tensor(calq::onnx::parse_tensor_bytes(bytes.data(), bytes.size(), path));
}

// Variants of supported operators that calq rejects on purpose, with the reason; the test
// checks that import (or the run) fails with a message naming the problem.
const std::map<std::string, std::string>& expected_errors() {
  static const std::map<std::string, std::string> cases = {
      {"test_resize_tf_crop_and_resize", "tf_crop_and_resize"},
      {"test_maxpool_with_argmax_2d_precomputed_pads", "Indices"},
      {"test_maxpool_with_argmax_2d_precomputed_strides", "Indices"},
      {"test_cast_FLOAT_to_STRING", "element type"},
      {"test_cast_STRING_to_FLOAT", "element type"},
      {"test_castlike_FLOAT_to_STRING", "element type"},
      {"test_castlike_STRING_to_FLOAT", "element type"},
      {"test_castlike_FLOAT_to_STRING_expanded", "element type"},
      {"test_castlike_STRING_to_FLOAT_expanded", "element type"},
  };
  return cases;
}

// Test data calq cannot compare with, and why (everything else that imports must match).
const std::map<std::string, std::string>& not_comparable() {
  static const std::map<std::string, std::string> cases = {
      {"test_training_dropout", "random mask drawn by numpy"},
      {"test_training_dropout_default", "random mask drawn by numpy"},
      {"test_training_dropout_default_mask", "random mask drawn by numpy"},
      {"test_training_dropout_mask", "random mask drawn by numpy"},
      {"test_cast_FLOAT_to_BFLOAT16",
       "reference holds truncated bfloat16 bits as uint16; calq "
       "rounds to nearest even as PyTorch"},
      {"test_castlike_FLOAT_to_BFLOAT16", "as cast_FLOAT_to_BFLOAT16"},
      {"test_castlike_FLOAT_to_BFLOAT16_expanded", "as cast_FLOAT_to_BFLOAT16"},
      {"test_cast_BFLOAT16_to_FLOAT", "input holds bfloat16 bits as uint16"},
      {"test_castlike_BFLOAT16_to_FLOAT", "input holds bfloat16 bits as uint16"},
      {"test_castlike_BFLOAT16_to_FLOAT_expanded", "input holds bfloat16 bits as uint16"},
  };
  return cases;
}

class NodeTest : public ::testing::TestWithParam<std::string> {};

TEST_P(NodeTest, MatchesReferenceOutputs) {
  const std::string dir = std::string(kNodeDir) + "/" + GetParam();
  auto skip = not_comparable().find(GetParam());
  if (skip != not_comparable().end()) GTEST_SKIP() << skip->second;
  calq::onnx::Model model;
  try {
    model = calq::onnx::parse_model_file(dir + "/model.onnx");
  } catch (const c10::Error& e) {
    const std::string what = e.what_without_backtrace();
    const bool unsupported =
        what.find("unsupported operator") != std::string::npos ||
        what.find("is not supported; calq reads opsets") != std::string::npos ||
        what.find("is not a tensor (sequences") != std::string::npos ||
        what.find("which calq does not read") != std::string::npos;
    auto expected = expected_errors().find(GetParam());
    if (expected != expected_errors().end()) {
      EXPECT_NE(what.find(expected->second), std::string::npos) << what;
      return;
    }
    if (unsupported) GTEST_SKIP() << "operator or opset outside calq's set: " << what;
    FAIL() << what;
  }
  auto expected = expected_errors().find(GetParam());
  std::vector<at::Tensor> inputs;
  for (int i = 0; exists(dir + "/test_data_set_0/input_" + std::to_string(i) + ".pb"); ++i) {
    inputs.push_back(read_pb(dir + "/test_data_set_0/input_" + std::to_string(i) + ".pb"));
  }
  std::vector<at::Tensor> outputs;
  try {
    calq::onnx::ImportedModel imported =
        calq::onnx::import_model(model, calq::onnx::ImportOptions().check_shapes(false));
    ASSERT_EQ(inputs.size(), imported.inputs.size());
    imported.graph->eval();
    torch::NoGradGuard no_grad;
    outputs = imported.graph->forward(inputs);
  } catch (const c10::Error& e) {
    const std::string what = e.what_without_backtrace();
    if (expected != expected_errors().end()) {
      EXPECT_NE(what.find(expected->second), std::string::npos) << what;
      return;
    }
    FAIL() << what;
  }
  ASSERT_EQ(expected, expected_errors().end())
      << "expected an error naming '" << expected->second << "'";
  for (size_t i = 0; i < outputs.size(); ++i) {
    const std::string path = dir + "/test_data_set_0/output_" + std::to_string(i) + ".pb";
    if (!exists(path)) continue;
    const at::Tensor ref = read_pb(path);
    const at::Tensor got = outputs[i];
    ASSERT_TRUE(got.defined()) << "output " << i;
    ASSERT_EQ(got.sizes(), ref.sizes()) << "output " << i;
    if (ref.scalar_type() == at::kBool || !at::isFloatingType(ref.scalar_type())) {
      EXPECT_TRUE(torch::equal(got.to(ref.scalar_type()), ref)) << "output " << i << "\n"
                                                                << got << "\n"
                                                                << ref;
      continue;
    }
    EXPECT_EQ(got.scalar_type(), ref.scalar_type()) << "output " << i;
    const at::Tensor a = got.to(at::kDouble), b = ref.to(at::kDouble);
    const at::Tensor both_nan = at::isnan(a) & at::isnan(b);
    const at::Tensor ok = ((a - b).abs() <= kAtol + kRtol * b.abs()) | both_nan | (a == b);
    EXPECT_TRUE(ok.all().item<bool>())
        << "output " << i << ": max |diff| " << (a - b).abs().nan_to_num(0).max().item<double>();
  }
}

std::string case_name(const ::testing::TestParamInfo<std::string>& info) {
  return info.param.substr(5);
}

INSTANTIATE_TEST_SUITE_P(Onnx, NodeTest, ::testing::ValuesIn(node_cases()), case_name);

// The suite is not vacuous: the test data is installed and most of it runs.
TEST(NodeTestData, IsInstalled) {
  EXPECT_GT(node_cases().size(), 500u) << "install Debian's libonnx-testdata";
}

}  // namespace
