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

/// An attribute of a node: exactly one of the value fields is used, as `kind` says.
struct Attribute {
  std::string name;
  enum class Kind { integer, integers, real, reals, string, strings, tensor } kind = Kind::integer;
  int64_t i = 0;
  std::vector<int64_t> ints;
  float f = 0.0f;
  std::vector<float> floats;
  std::string s;
  std::vector<std::string> strings;
  at::Tensor t;

  static Attribute integer(std::string name, int64_t value);
  static Attribute integers(std::string name, std::vector<int64_t> values);
  static Attribute real(std::string name, float value);
  static Attribute reals(std::string name, std::vector<float> values);
  static Attribute string(std::string name, std::string value);
  static Attribute string_list(std::string name, std::vector<std::string> values);
  static Attribute tensor(std::string name, at::Tensor value);
};

/// The TensorProto data type of an ATen dtype (float32/64/16, bfloat16, int8-64, uint8,
/// bool); others throw naming `what`.
int32_t onnx_type(at::ScalarType type, const std::string& what);

class GraphBuilder {
 public:
  explicit GraphBuilder(::onnx::GraphProto* graph) : graph_(graph) {}

  /// A name not used yet, derived from `base` (characters ONNX tools dislike replaced).
  std::string unique(const std::string& base);
  /// Reserves `name` exactly (graph input and output names keep the user's spelling); throws
  /// if it is taken.
  void reserve(const std::string& name);
  /// Adds an initializer holding `values` (any shape) as `type` (TensorProto data type:
  /// FLOAT, INT8, UINT8, INT16, INT32, INT64); values are converted, they must fit the type
  /// (checked). Returns its name.
  std::string initializer(const std::string& base, const at::Tensor& values, int32_t type);
  /// Adds an initializer with the tensor's own dtype (onnx_type), bytes copied as they are.
  std::string initializer(const std::string& base, const at::Tensor& values);
  /// Adds a node; returns the name of its (single) output.
  std::string node(const std::string& op_type, const std::vector<std::string>& inputs,
                   const std::string& output_base, const std::vector<Attribute>& attributes = {},
                   const std::string& domain = "");
  /// Adds a node with several outputs, one per entry of `output_bases` ("" = an unused
  /// optional output, written as ""); returns the output names.
  std::vector<std::string> node(const std::string& op_type, const std::vector<std::string>& inputs,
                                const std::vector<std::string>& output_bases,
                                const std::vector<Attribute>& attributes,
                                const std::string& domain = "");
  /// Domains used by the nodes (for the model's opset imports).
  const std::set<std::string>& domains() const { return domains_; }

 private:
  ::onnx::GraphProto* graph_;
  std::set<std::string> names_;
  std::set<std::string> domains_;
};

/// Fills `proto` around its graph (IR version, producer, the default-domain `opset` and
/// version 1 of every other domain `builder` used) and serializes it.
std::string serialize_model(::onnx::ModelProto& proto, const GraphBuilder& builder, int64_t opset);

}  // namespace detail
}  // namespace deploy
}  // namespace calq
