#include "calq/graph/graph.h"

#include <c10/util/Exception.h>

#include <new>
#include <set>

namespace calq {
namespace graph {

nn::QuantModuleImpl* Node::quant_module() const {
  return dynamic_cast<nn::QuantModuleImpl*>(module.get());
}

void GraphImpl::define(const std::string& value, const char* what) {
  TORCH_CHECK(!value.empty(), "Graph: a ", what, " needs a non-empty value name");
  TORCH_CHECK(defined_.count(value) == 0, "Graph: value '", value, "' (", what,
              ") is already defined");
  const size_t slot = defined_.size();
  defined_[value] = slot;
  planned_ = false;
}

void GraphImpl::add_input(const std::string& value) {
  define(value, "graph input");
  inputs_.push_back(value);
}

std::string GraphImpl::add_constant(const std::string& value, const at::Tensor& tensor,
                                    bool trainable) {
  TORCH_CHECK(tensor.defined(), "Graph: constant '", value, "' is undefined");
  define(value, "constant");
  const std::string registered = unique_name("const_" + value);
  at::Tensor stored;
  if (trainable && tensor.is_floating_point()) {
    stored = register_parameter(registered, tensor.detach().clone(), /*requires_grad=*/true);
  } else {
    stored = register_buffer(registered, tensor.detach().clone());
  }
  constants_[value] = Constant{registered, stored};
  return registered;
}

const Node& GraphImpl::add_node(Node node) {
  TORCH_CHECK(node.module != nullptr, "Graph: node '", node.name, "' has no module");
  TORCH_CHECK(node.function, "Graph: node '", node.name, "' has no function");
  TORCH_CHECK(unique_name(node.name) == node.name, "Graph: node name '", node.name,
              "' is taken or not a valid module name; use unique_name()");
  for (const auto& in : node.inputs) {
    TORCH_CHECK(in.empty() || defined_.count(in) > 0, "Graph: node '", node.name, "' reads '", in,
                "', which is not defined yet (nodes must be added in topological order)");
  }
  for (const auto& out : node.outputs) {
    if (!out.empty()) define(out, "node output");
  }
  register_module(node.name, node.module);
  node_index_[node.name] = nodes_.size();
  nodes_.push_back(std::move(node));
  planned_ = false;
  return nodes_.back();
}

void GraphImpl::add_output(const std::string& value) {
  TORCH_CHECK(defined_.count(value) > 0, "Graph: output '", value, "' is not defined");
  outputs_.push_back(value);
  planned_ = false;
}

const Node* GraphImpl::find_node(const std::string& name) const {
  auto it = node_index_.find(name);
  return it == node_index_.end() ? nullptr : &nodes_[it->second];
}

at::Tensor GraphImpl::constant(const std::string& value) const {
  auto it = constants_.find(value);
  return it == constants_.end() ? at::Tensor() : it->second.tensor;
}

std::map<std::string, std::string> GraphImpl::constant_names() const {
  std::map<std::string, std::string> out;
  for (const auto& entry : constants_) out[entry.first] = entry.second.registered;
  return out;
}

std::string GraphImpl::unique_name(const std::string& wanted) const {
  std::string base;
  for (char c : wanted) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (ok) {
      base += c;
    } else if (!base.empty() && base.back() != '_') {
      base += '_';
    }
  }
  while (!base.empty() && base.back() == '_') base.pop_back();
  if (base.empty()) base = "node";
  auto taken = [this](const std::string& name) {
    return named_children().contains(name) || named_parameters(false).contains(name) ||
           named_buffers(false).contains(name);
  };
  if (!taken(base)) return base;
  for (int suffix = 2;; ++suffix) {
    const std::string candidate = base + "_" + std::to_string(suffix);
    if (!taken(candidate)) return candidate;
  }
}

void GraphImpl::plan() {
  const size_t slots = defined_.size();
  node_inputs_.assign(nodes_.size(), {});
  node_outputs_.assign(nodes_.size(), {});
  release_after_.assign(nodes_.size(), {});
  std::vector<int64_t> last_use(slots, -1);
  std::set<size_t> kept;
  input_slots_.clear();
  output_slots_.clear();
  constant_slots_.clear();
  for (const auto& in : inputs_) input_slots_.push_back(defined_.at(in));
  for (const auto& out : outputs_) {
    output_slots_.push_back(defined_.at(out));
    kept.insert(defined_.at(out));
  }
  for (const auto& c : constants_) {
    constant_slots_.emplace_back(defined_.at(c.first), c.second.tensor);
    kept.insert(defined_.at(c.first));
  }
  for (size_t i = 0; i < nodes_.size(); ++i) {
    for (const auto& in : nodes_[i].inputs) {
      const int64_t slot = in.empty() ? -1 : static_cast<int64_t>(defined_.at(in));
      node_inputs_[i].push_back(slot);
      if (slot >= 0) last_use[slot] = static_cast<int64_t>(i);
    }
    for (const auto& out : nodes_[i].outputs) {
      node_outputs_[i].push_back(out.empty() ? -1 : static_cast<int64_t>(defined_.at(out)));
    }
  }
  for (size_t slot = 0; slot < slots; ++slot) {
    if (last_use[slot] >= 0 && kept.count(slot) == 0)
      release_after_[last_use[slot]].push_back(slot);
  }
  planned_ = true;
}

std::vector<at::Tensor> GraphImpl::forward(const std::vector<at::Tensor>& inputs) {
  if (!planned_) plan();
  TORCH_CHECK(inputs.size() == inputs_.size(), "Graph: forward got ", inputs.size(),
              " inputs, the graph takes ", inputs_.size());
  std::vector<at::Tensor> values(defined_.size());
  for (size_t i = 0; i < inputs.size(); ++i) values[input_slots_[i]] = inputs[i];
  for (const auto& c : constant_slots_) values[c.first] = c.second;
  std::vector<at::Tensor> args;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const Node& node = nodes_[i];
    args.clear();
    for (int64_t slot : node_inputs_[i]) args.push_back(slot >= 0 ? values[slot] : at::Tensor());
    std::vector<at::Tensor> results;
    try {
      results = node.function(*node.module, args);
    } catch (const c10::Error& e) {
      std::string source;
      for (const auto& s : node.source_nodes) source += (source.empty() ? "" : ", ") + s;
      TORCH_CHECK(false, "node '", node.name, "' (", node.op_type,
                  source.empty() ? "" : ", from ONNX node " + source,
                  "): ", e.what_without_backtrace());
    } catch (const std::bad_alloc&) {
      TORCH_CHECK(false, "node '", node.name, "' (", node.op_type, "): out of memory");
    } catch (const std::exception& e) {
      // Some ATen checks throw std::runtime_error (e.g. reshape's size inference): callers
      // get a c10::Error naming the node all the same.
      TORCH_CHECK(false, "node '", node.name, "' (", node.op_type, "): ", e.what());
    }
    TORCH_CHECK(results.size() >= node_outputs_[i].size(), "node '", node.name, "' (", node.op_type,
                ") returned ", results.size(), " outputs, expected ", node_outputs_[i].size());
    for (size_t k = 0; k < node_outputs_[i].size(); ++k) {
      if (node_outputs_[i][k] >= 0) values[node_outputs_[i][k]] = std::move(results[k]);
    }
    for (size_t slot : release_after_[i]) values[slot] = at::Tensor();
  }
  std::vector<at::Tensor> out;
  out.reserve(output_slots_.size());
  for (size_t slot : output_slots_) out.push_back(values[slot]);
  return out;
}

at::Tensor GraphImpl::forward(const at::Tensor& input) {
  TORCH_CHECK(inputs_.size() == 1, "Graph: forward(Tensor) needs a graph with one input, this ",
              "one takes ", inputs_.size(), "; call forward(std::vector<Tensor>)");
  return forward(std::vector<at::Tensor>{input}).at(0);
}

void GraphImpl::after_prepare() {
  link_input_quantizers(*this);
}

const std::set<std::string>& pass_through_op_types() {
  static const std::set<std::string> ops = {
      "Identity",     "Dropout",      "Reshape",   "Flatten",   "Transpose",
      "Squeeze",      "Unsqueeze",    "Slice",     "Split",     "Gather",
      "Expand",       "Tile",         "Pad",       "MaxPool",   "GlobalMaxPool",
      "DepthToSpace", "SpaceToDepth", "ReduceMax", "ReduceMin", "Resize"};
  return ops;
}

bool is_pass_through(const Node& node) {
  if (pass_through_op_types().count(node.op_type) == 0) return false;
  if (node.op_type == "Resize") {
    auto mode = node.attributes.find("mode");
    if (mode != node.attributes.end()) {
      const auto* name = c10::get_if<std::string>(&mode->second);
      if (name == nullptr || *name != "nearest") return false;
    }
  }
  const nn::QuantModuleImpl* q = node.quant_module();
  return q != nullptr && !q->is_quantization_point();
}

int64_t link_input_quantizers(GraphImpl& graph) {
  std::map<std::string, const Node*> producer;
  for (const Node& node : graph.nodes()) {
    for (const auto& out : node.outputs) {
      if (!out.empty()) producer[out] = &node;
    }
  }
  auto quantizer_of = [&producer](std::string value) {
    for (size_t steps = 0; steps <= producer.size(); ++steps) {
      auto it = producer.find(value);
      if (it == producer.end()) break;  // a graph input or a constant
      const Node& node = *it->second;
      const nn::QuantModuleImpl* q = node.quant_module();
      if (q == nullptr) break;
      if (!q->output_fake_quant().is_empty()) return q->output_fake_quant();
      if (!is_pass_through(node) || node.inputs.empty()) break;
      value = node.inputs[0];
    }
    return FakeQuantize(nullptr);
  };
  int64_t linked = 0;
  for (const Node& node : graph.nodes()) {
    nn::QuantModuleImpl* q = node.quant_module();
    if (q == nullptr) continue;
    std::vector<FakeQuantize> quantizers;
    for (const std::string& input : node.inputs) {
      quantizers.push_back(input.empty() ? FakeQuantize(nullptr) : quantizer_of(input));
    }
    if (q->has_weight() && !quantizers.empty() && !quantizers[0].is_empty()) ++linked;
    q->set_input_quantizers(std::move(quantizers));
  }
  return linked;
}

}  // namespace graph
}  // namespace calq
