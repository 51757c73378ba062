#pragma once
// An ONNX model read and validated into plain C++ data (no LibTorch, no protobuf in this
// header): the importer's input, and the part of the importer that hostile files reach
// first (fuzzed on its own, tests/fuzz/). docs/onnx.md describes what is checked.

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace calq {
namespace onnx {

/// Element types calq reads, with their TensorProto.DataType numbers. Strings, complex
/// numbers and 8-bit floats are rejected with an error naming the tensor.
enum class ElementType : int32_t {
  float32 = 1,
  uint8 = 2,
  int8 = 3,
  uint16 = 4,
  int16 = 5,
  int32 = 6,
  int64 = 7,
  boolean = 9,
  float16 = 10,
  float64 = 11,
  uint32 = 12,
  uint64 = 13,
  bfloat16 = 16,
};
/// "float32", "int64", ...
const char* to_string(ElementType type);
/// Bytes per element (bool: 1).
size_t element_size(ElementType type);
/// Whether a TensorProto.DataType number is one of ElementType.
bool is_supported_element_type(int32_t data_type);

/// A constant tensor (initializer, Constant node value, tensor attribute).
struct TensorData {
  std::string name;
  ElementType type = ElementType::float32;
  /// Each >= 0; empty = scalar.
  std::vector<int64_t> dims;
  /// numel() * element_size(type) bytes, little-endian, C order (row major).
  std::string bytes;

  /// Product of dims (1 for a scalar).
  int64_t numel() const;
};

/// One node attribute. `kind` says which member holds the value.
struct Attribute {
  enum class Kind { float_, int_, string, tensor, floats, ints, strings };
  Kind kind = Kind::int_;
  double f = 0.0;
  int64_t i = 0;
  std::string s;
  std::shared_ptr<const TensorData> t;
  std::vector<double> floats;
  std::vector<int64_t> ints;
  std::vector<std::string> strings;
};
/// "float", "int", "string", "tensor", "floats", "ints", "strings".
const char* to_string(Attribute::Kind kind);

/// One dimension of a declared shape: a number, a symbol ("batch", "N"), or unknown.
struct Dim {
  /// >= 0 when known, -1 otherwise.
  int64_t value = -1;
  /// The dim_param, if any ("" otherwise).
  std::string symbol;
  bool known() const { return value >= 0; }
};

/// A graph input or output as declared in the file.
struct ValueInfo {
  std::string name;
  ElementType type = ElementType::float32;
  /// False when the file declares no shape (rank unknown).
  bool has_shape = false;
  std::vector<Dim> shape;
};

/// One node, with its inputs and outputs as value names.
struct Node {
  /// The node's name in the file; nodes without one are named "<op_type>_<index>" (index in
  /// file order), made unique with a suffix if needed. Unique in the model.
  std::string name;
  std::string op_type;
  /// "" for the default domain ("ai.onnx" is read as "").
  std::string domain;
  /// Opset of the node's domain in this model.
  int64_t opset = 0;
  /// Value names; "" marks an omitted optional input. Trailing omitted inputs are dropped.
  std::vector<std::string> inputs;
  /// Value names; "" marks an unused optional output.
  std::vector<std::string> outputs;
  std::map<std::string, Attribute> attributes;

  bool has_attribute(const std::string& key) const { return attributes.count(key) > 0; }
  /// Typed attribute getters: the default when absent; an error naming the node and the
  /// attribute when present with another kind.
  int64_t attr_int(const std::string& key, int64_t fallback) const;
  double attr_float(const std::string& key, double fallback) const;
  std::string attr_string(const std::string& key, const std::string& fallback) const;
  std::vector<int64_t> attr_ints(const std::string& key,
                                 const std::vector<int64_t>& fallback = {}) const;
  std::vector<double> attr_floats(const std::string& key,
                                  const std::vector<double>& fallback = {}) const;
  /// Null when absent.
  std::shared_ptr<const TensorData> attr_tensor(const std::string& key) const;
  /// Whether input `index` is given (present and not "").
  bool has_input(size_t index) const { return index < inputs.size() && !inputs[index].empty(); }
  /// "node 'name' (op_type, opset N)" for messages.
  std::string describe() const;
};

/// A validated model: every node input is defined, nodes are in topological order, every
/// initializer's data matches its type and shape, every node is a supported operator with a
/// valid number of inputs and outputs and attributes of the right kinds.
struct Model {
  int64_t ir_version = 0;
  /// Opset of the default domain (11..21).
  int64_t opset = 0;
  std::string producer_name;
  std::string producer_version;
  std::string graph_name;
  /// Graph inputs that are not initializers, in file order.
  std::vector<ValueInfo> inputs;
  std::vector<ValueInfo> outputs;
  /// Initializers by name.
  std::map<std::string, TensorData> initializers;
  /// Topological order (file order where the file is already sorted).
  std::vector<Node> nodes;
};

/// How parse_model reads a file.
struct ParseOptions {
  /// Folder that external data locations are relative to. parse_model_file sets it to the
  /// model's folder; empty (the default for parse_model_bytes) makes external data an error.
  std::string base_dir;
  /// Run libonnx's checker (opsets <= 17 and IR <= 8, which libonnx 1.12 knows) after calq's
  /// own validation. Default true.
  bool run_checker = true;
};

/// Reads and validates a model file. Errors (c10::Error) name the file and the problem: not
/// a file, not a ModelProto (malformed or truncated), unsupported opset or operator (naming
/// the node, its op type and opset and listing the supported operators), undefined values
/// ("missing initializer"), cycles, bad tensors, external data that is absent, leaves the
/// model's folder or is out of the file's range.
Model parse_model_file(const std::string& path, ParseOptions options = {});
/// The same from bytes in memory.
Model parse_model_bytes(const void* data, size_t size, const ParseOptions& options = {});

/// Reads a serialized TensorProto (e.g. the input_N.pb / output_N.pb files of ONNX's test
/// data). External data is an error. Errors name `what`.
TensorData parse_tensor_bytes(const void* data, size_t size, const std::string& what);

/// One supported operator: name and the opset range in which calq implements it.
struct OperatorSupport {
  std::string op_type;
  int64_t since_opset;
  int64_t until_opset;
};
/// Every supported operator of the default domain, sorted by name.
const std::vector<OperatorSupport>& supported_operators();
/// "Add, AveragePool, ..." (the list errors print).
std::string supported_operator_list();
/// Lowest and highest default-domain opset calq reads.
constexpr int64_t kMinOpset = 11;
constexpr int64_t kMaxOpset = 21;

}  // namespace onnx
}  // namespace calq
