#pragma once
// Graph: a module that runs a DAG of nodes in topological order. Each node's module is a
// registered child (calq::nn modules for layers and quantization points, FloatFunction for
// the rest), so every workflow function (fuse, prepare_qat, calibrate, load_observer_params,
// copy_float_state, check_qconfig, torch::save/load) treats a graph like a hand-written
// calq::nn model. Imported ONNX models are Graphs (calq/onnx/import.h); an exporter walks
// nodes() to read op types, attributes, value names and each node's module (folded weights,
// scales).

#include <c10/util/variant.h>
#include <torch/detail/static.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "calq/nn/quant_module.h"
#include "calq/workflow.h"

namespace calq {
namespace graph {

/// A node attribute: the ONNX attribute kinds, tensors as at::Tensor.
using AttributeValue = c10::variant<int64_t, double, std::string, std::vector<int64_t>,
                                    std::vector<double>, std::vector<std::string>, at::Tensor>;
using Attributes = std::map<std::string, AttributeValue>;

/// Computes a node's outputs from its inputs with its module (the node's child). Called in
/// topological order by GraphImpl::forward; inputs are in Node::inputs order (an undefined
/// tensor for an omitted optional input), outputs in Node::outputs order.
using NodeFunction = std::function<std::vector<at::Tensor>(torch::nn::Module& module,
                                                           const std::vector<at::Tensor>& inputs)>;

/// One node of the graph (an edge is a value name: written by one node, a graph input or a
/// constant, read by any number of nodes).
struct Node {
  /// The child module's name: unique in the graph, no dots (a sanitized ONNX node name,
  /// "quant" for the input stub). Module path in named_modules() and state names.
  std::string name;
  /// The operator: an ONNX op type ("Conv", "Softmax"), or a fused pattern written as its
  /// ops joined with '+' ("Conv+BatchNormalization+Relu", "MatMul+Add", "Sigmoid+Mul"), or
  /// "QuantStub".
  std::string op_type;
  /// The ONNX nodes this node implements, in graph order (one unless fused; empty for the
  /// stubs calq adds).
  std::vector<std::string> source_nodes;
  /// The attributes of the (first) ONNX node, as in the file (for exporters).
  Attributes attributes;
  /// Value names read, in order; "" = an omitted optional input.
  std::vector<std::string> inputs;
  /// Value names written, in order; "" = an unused optional output.
  std::vector<std::string> outputs;
  /// The child module (never null). calq::nn::QuantModuleImpl for every node an importer
  /// makes; graphs built by hand may hold any module.
  std::shared_ptr<torch::nn::Module> module;
  /// Runs the node (see NodeFunction).
  NodeFunction function;

  /// The module as a calq::nn module, or nullptr.
  nn::QuantModuleImpl* quant_module() const;
};

/// A DAG of nodes run in order. Build it with add_input, add_constant, add_node (each node's
/// inputs defined before it) and add_output.
///
/// Constants (weights of float operations, shapes, learned tokens) are registered on the
/// graph as parameters (trainable) or buffers, under unique sanitized names, so that they are
/// saved, loaded, copied by copy_float_state and trained like any module state.
class GraphImpl : public torch::nn::Module, public PrepareHook {
 public:
  GraphImpl() = default;

  /// Called by prepare_qat: link_input_quantizers(*this).
  void after_prepare() override;

  /// Declares the next graph input (forward's inputs in declaration order). Throws on a name
  /// already defined.
  void add_input(const std::string& value);
  /// Defines value `value` as a constant. Floating-point constants may be `trainable`
  /// (registered as parameters with requires_grad), others are buffers. Returns the name it
  /// is registered under.
  std::string add_constant(const std::string& value, const at::Tensor& tensor, bool trainable);
  /// Appends a node: registers node.module as child node.name (which must be free: use
  /// unique_name) and checks that every input is already defined and no output is. Returns
  /// the stored node.
  const Node& add_node(Node node);
  /// Declares a graph output (forward's outputs in declaration order); must be defined.
  void add_output(const std::string& value);

  /// Runs every node. `inputs` in input order, one per graph input. Errors raised by a node
  /// name it: "node 'layer1_0_conv1' (Conv): ...".
  std::vector<at::Tensor> forward(const std::vector<at::Tensor>& inputs);
  /// For one-input graphs: forward({input})[0].
  at::Tensor forward(const at::Tensor& input);

  const std::vector<Node>& nodes() const { return nodes_; }
  /// The node whose module is `name`, or nullptr.
  const Node* find_node(const std::string& name) const;
  const std::vector<std::string>& input_names() const { return inputs_; }
  const std::vector<std::string>& output_names() const { return outputs_; }
  /// Whether `value` is a constant, and its tensor (undefined if not a constant).
  bool is_constant(const std::string& value) const { return constants_.count(value) > 0; }
  at::Tensor constant(const std::string& value) const;
  /// Value name -> registered parameter/buffer name of every constant.
  std::map<std::string, std::string> constant_names() const;

  /// A child/parameter/buffer name derived from `wanted` that is free in this graph: every
  /// character other than [A-Za-z0-9_] becomes '_', runs of '_' are merged, leading and
  /// trailing '_' dropped ("/layer1/layer1.0/conv1/Conv" -> "layer1_layer1_0_conv1_Conv"),
  /// "_2", "_3", ... appended when taken. Does not reserve it.
  std::string unique_name(const std::string& wanted) const;

 private:
  struct Constant {
    std::string registered;
    at::Tensor tensor;
  };
  void define(const std::string& value, const char* what);
  void plan();

  std::vector<std::string> inputs_;
  std::vector<std::string> outputs_;
  std::vector<Node> nodes_;
  std::map<std::string, Constant> constants_;
  std::map<std::string, size_t> defined_;  // value -> slot
  std::map<std::string, size_t> node_index_;
  // Execution plan (slots), rebuilt when the graph changes.
  bool planned_ = false;
  std::vector<std::vector<int64_t>> node_inputs_;   // -1: omitted
  std::vector<std::vector<int64_t>> node_outputs_;  // -1: unused
  std::vector<std::vector<size_t>> release_after_;  // slots last read by node i
  std::vector<size_t> input_slots_, output_slots_;
  std::vector<std::pair<size_t, at::Tensor>> constant_slots_;
};

/// ONNX operators that move values without computing new ones (Reshape, Transpose, Slice,
/// MaxPool, nearest Resize, ...): every output value is one of the first input's values, so
/// it lies on that input's quantization grid. Graph nodes of these types (FloatFunction,
/// not quantization points) pass their input's quantization through.
const std::set<std::string>& pass_through_op_types();
/// Whether `node` is such a node (a Resize only in "nearest" mode).
bool is_pass_through(const Node& node);

/// For every node with a calq::nn module, records the quantizer of each input with
/// QuantModuleImpl::set_input_quantizers: the output quantizer of the node that produced the
/// value, looking through pass-through nodes (is_pass_through) to their first input; empty
/// for a graph input that no stub quantizes, a constant or a float value. Weighted modules
/// then add their bias in VALIDATION as the deployed integer kernel does (int32 at s_x * s_w),
/// and integer arithmetic (calq::set_integer_arithmetic) knows every operand's grid. The graph
/// analogue of calq::link_input_quantizers(Trace); prepare_qat calls it (GraphImpl::after_prepare).
/// Returns how many weighted modules were linked to a quantizer.
int64_t link_input_quantizers(GraphImpl& graph);

}  // namespace graph
}  // namespace calq

// The holder's operator() deduces forward's return type from &GraphImpl::forward, which an
// overloaded forward makes ambiguous: state that GraphImpl has a forward, so that
// graph(x) and graph(inputs) resolve like graph->forward(...).
namespace torch {
namespace detail {
template <>
struct has_forward<calq::graph::GraphImpl> {
  static constexpr bool value = true;
};
}  // namespace detail
}  // namespace torch

namespace calq {
namespace graph {
TORCH_MODULE(Graph);
}  // namespace graph
}  // namespace calq
