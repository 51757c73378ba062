#pragma once
// The operator table of the ONNX reader: every supported operator with its opset range, its
// numbers of inputs and outputs and the kinds of its attributes. The reader validates each
// node against it; the importer implements exactly these operators (a test checks both
// lists agree).

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "calq/onnx/model.h"

namespace calq {
namespace onnx {
namespace detail {

struct OperatorSchema {
  std::string op_type;
  int64_t since_opset = kMinOpset;
  int64_t until_opset = kMaxOpset;
  int min_inputs = 1;
  int max_inputs = 1;  ///< -1: variadic
  int min_outputs = 1;
  int max_outputs = 1;  ///< -1: variadic
  /// Attribute name -> kind.
  std::map<std::string, Attribute::Kind> attributes;
};

/// ONNX Runtime's contrib domain, whose QuantizeLinear / DequantizeLinear (16-bit types at
/// any opset) calq reads besides the default domain.
constexpr const char* kContribDomain = "com.microsoft";
/// Whether `node` is one of those two.
bool is_contrib_quantization(const Node& node);

/// The schema of `op_type`, or nullptr when calq does not implement it.
const OperatorSchema* find_schema(const std::string& op_type);
/// Every schema, sorted by op type.
const std::vector<OperatorSchema>& schemas();

/// Checks that the node's domain and op type are supported and its opset in range (before
/// its attributes are read). Errors name the node, its op type and opset and list the
/// supported operators.
void validate_support(const Node& node);

/// Checks a node against its schema: supported op type and domain, opset in range, input and
/// output counts, attribute kinds. Errors name the node, its op type and opset.
void validate_node(const Node& node);

}  // namespace detail
}  // namespace onnx
}  // namespace calq
