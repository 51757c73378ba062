// Bad input is a c10::Error that names the problem, never a crash: unsupported operators,
// malformed and truncated files, cycles, missing initializers, external data that is absent
// or leaves the model's folder, shapes that do not fit.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "calq/onnx/import.h"
#include "onnx/import/kernels.h"

namespace {

const std::string kModels = std::string(CALQ_TEST_MODELS) + "/";

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  ADD_FAILURE() << "expected a c10::Error";
  return "";
}

void expect_contains(const std::string& what, const std::vector<std::string>& fragments) {
  for (const auto& f : fragments) EXPECT_NE(what.find(f), std::string::npos) << what;
}

TEST(ImportErrors, UnsupportedOperatorNamesNodeOpTypeOpsetAndListsTheSupportedOnes) {
  const std::string what = error_of([] { calq::onnx::import(kModels + "unsupported_op.onnx"); });
  expect_contains(what, {"unsupported_op.onnx", "'my_topk'", "TopK", "opset 13",
                         "supported operators:", "Conv", "Softmax", "Resize"});
}

TEST(ImportErrors, TruncatedAndMalformedFiles) {
  const std::string bytes = read_file(kModels + "workflow_op13.onnx");
  ASSERT_GT(bytes.size(), 1000u);
  // Every truncation point in a sweep is an error (or, when the cut falls between fields
  // and leaves a complete model, a model that imports); never a crash.
  int errors = 0;
  for (size_t cut : {size_t(1), size_t(7), size_t(64), bytes.size() / 3, bytes.size() / 2,
                     bytes.size() - 300, bytes.size() - 1}) {
    try {
      calq::onnx::import_bytes(bytes.data(), cut);
    } catch (const c10::Error& e) {
      ++errors;
    }
  }
  EXPECT_GE(errors, 6);
  expect_contains(error_of([&] { calq::onnx::import_bytes(bytes.data(), bytes.size() / 2); }),
                  {"not a valid ONNX ModelProto"});
  const std::string garbage = "this is not a protobuf at all \x01\x02\x03";
  error_of([&] { calq::onnx::import_bytes(garbage.data(), garbage.size()); });
  expect_contains(error_of([] { calq::onnx::import_bytes("", 0); }), {"empty"});
  expect_contains(error_of([] { calq::onnx::import(kModels + "no_such_model.onnx"); }),
                  {"no_such_model.onnx"});
  expect_contains(error_of([] { calq::onnx::import(kModels); }), {"not a regular file"});
}

TEST(ImportErrors, CycleNamesItsNodes) {
  expect_contains(error_of([] { calq::onnx::import(kModels + "cycle.onnx"); }),
                  {"cycle", "'add_a'", "'relu_b'"});
}

TEST(ImportErrors, MissingInitializer) {
  expect_contains(error_of([] { calq::onnx::import(kModels + "missing_initializer.onnx"); }),
                  {"'matmul_w'", "'W'", "missing initializer"});
}

TEST(ImportErrors, ExternalDataStaysInTheModelsFolder) {
  auto ok = calq::onnx::import(kModels + "external_ok/model.onnx");
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({1, 4});
  EXPECT_TRUE(torch::equal(ok.graph(x), x * 2)) << "W = 2 I read at offset 16";
  expect_contains(error_of([] { calq::onnx::import(kModels + "external_dotdot/model.onnx"); }),
                  {"leaves the model's folder"});
  expect_contains(error_of([] { calq::onnx::import(kModels + "external_absolute/model.onnx"); }),
                  {"absolute path"});
  expect_contains(error_of([] { calq::onnx::import(kModels + "external_symlink/model.onnx"); }),
                  {"outside the model's folder"});
  expect_contains(error_of([] { calq::onnx::import(kModels + "external_short/model.onnx"); }),
                  {"runs past the end"});
  expect_contains(error_of([] { calq::onnx::import(kModels + "external_missing/model.onnx"); }),
                  {"does not exist"});
  // From bytes there is no folder: external data is an error, not a read of the cwd.
  const std::string bytes = read_file(kModels + "external_ok/model.onnx");
  expect_contains(error_of([&] { calq::onnx::import_bytes(bytes.data(), bytes.size()); }),
                  {"cannot be read from a model given as bytes"});
}

TEST(ImportErrors, WrongInputShapeNamesTheNode) {
  auto m = calq::onnx::import(kModels + "valid_matmul.onnx");
  torch::NoGradGuard no_grad;
  expect_contains(error_of([&] { m.graph(torch::randn({1, 5})); }), {"matmul_w"});
  expect_contains(error_of([&] {
                    calq::onnx::check_input(m.inputs[0], torch::randn({1, 5}));
                  }),
                  {"[1, 5]", "[1, 4]"});
}

TEST(SupportedOperators, EveryListedOperatorHasAKernel) {
  // Names unique and sorted, opset ranges within calq's; the kernel table is checked
  // against this list in the import tests (every listed operator builds).
  const auto& ops = calq::onnx::supported_operators();
  EXPECT_GT(ops.size(), 90u);
  for (size_t i = 0; i < ops.size(); ++i) {
    EXPECT_LE(ops[i].since_opset, ops[i].until_opset) << ops[i].op_type;
    EXPECT_GE(ops[i].since_opset, calq::onnx::kMinOpset);
    if (i > 0) EXPECT_LT(ops[i - 1].op_type, ops[i].op_type);
  }
}

TEST(SupportedOperators, EveryOperatorHasAKernelAndNothingElseHasOne) {
  const auto& kernels = calq::onnx::detail::kernel_table();
  for (const auto& op : calq::onnx::supported_operators()) {
    EXPECT_EQ(kernels.count(op.op_type), 1u) << op.op_type << " is listed but has no kernel";
  }
  EXPECT_EQ(kernels.size(), calq::onnx::supported_operators().size());
}

}  // namespace
