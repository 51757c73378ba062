#pragma once
// Writing an ONNX graph node by node: unique names, initializers from tensors, attributes.
// Internal to the deploy layer.

#include <ATen/core/Tensor.h>
#include <onnx/onnx_pb.h>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

namespace calq {
namespace deploy {
namespace detail {

/// An attribute of a node: exactly one of the value fields is used.
struct Attribute {
  std::string name;
  enum class Kind { integer, integers, real } kind = Kind::integer;
  int64_t i = 0;
  std::vector<int64_t> ints;
  float f = 0.0f;

  static Attribute integer(std::string name, int64_t value);
  static Attribute integers(std::string name, std::vector<int64_t> values);
  static Attribute real(std::string name, float value);
};

class GraphBuilder {
 public:
  explicit GraphBuilder(onnx::GraphProto* graph) : graph_(graph) {}

  /// A name not used yet, derived from `base` (characters ONNX tools dislike replaced).
  std::string unique(const std::string& base);
  /// Adds an initializer holding `values` (any shape) as `type` (TensorProto data type:
  /// FLOAT, INT8, UINT8, INT16, INT32, INT64); values are converted, they must fit the type
  /// (checked). Returns its name.
  std::string initializer(const std::string& base, const at::Tensor& values, int32_t type);
  /// Adds a node; returns the name of its (single) output.
  std::string node(const std::string& op_type, const std::vector<std::string>& inputs,
                   const std::string& output_base, const std::vector<Attribute>& attributes = {},
                   const std::string& domain = "");
  /// Domains used by the nodes (for the model's opset imports).
  const std::set<std::string>& domains() const { return domains_; }

 private:
  onnx::GraphProto* graph_;
  std::set<std::string> names_;
  std::set<std::string> domains_;
};

}  // namespace detail
}  // namespace deploy
}  // namespace calq
