// calq::onnx::Model -> calq::graph::Graph.
//
// 1. Initializers become tensors; nodes whose inputs are all constant are evaluated once
//    (constant folding: Constant, shape arithmetic on static shapes, weight transposes).
// 2. Values that depend on the graph inputs' data are "activations"; Shape/Size outputs and
//    what is computed from them only are side computations (dynamic batch: evaluated at run
//    time, never quantized).
// 3. Patterns fuse into calq blocks (Conv-BN-ReLU, MatMul+Add = Linear, Add+Relu, SiLU,
//    HardSwish, GELU); every group becomes one graph node with one calq::nn module.
// 4. Float operations are quantization points where their output reaches a quantized
//    operation (through pass-through ones): the deployed model runs DQ -> float op -> Q there.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/nn/modules/batchnorm.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "calq/nn.h"
#include "calq/onnx/import.h"
#include "onnx/import/geometry.h"
#include "onnx/import/kernels.h"
#include "onnx/import/qdq.h"

namespace calq {
namespace onnx {
namespace {

using detail::Kernel;
using graph::NodeFunction;

// How a group's module takes part in quantization.
enum class Role {
  weighted,      // calq layer with a weight slot and an output slot
  quantized,     // calq arithmetic / pooling module: a quantization point on quantized inputs
  pass_through,  // moves values (keeps its input's quantization)
  float_op,      // computes in float (a quantization point where it feeds quantized ops)
  side,          // shape / index computation (never quantized)
};

// ONNX op -> type name of its FloatFunction (per-type qconfig overrides).
std::string float_type_name(const std::string& op) {
  static const std::map<std::string, std::string> names = {
      {"LeakyRelu", "LeakyReLU"},
      {"Elu", "ELU"},
      {"Selu", "SELU"},
      {"Celu", "CELU"},
      {"Gelu", "GELU"},
      {"PRelu", "PReLU"},
      {"Equal", "Compare"},
      {"Less", "Compare"},
      {"Greater", "Compare"},
      {"LessOrEqual", "Compare"},
      {"GreaterOrEqual", "Compare"},
      {"And", "Logical"},
      {"Or", "Logical"},
      {"Xor", "Logical"},
      {"Not", "Logical"},
      {"CastLike", "Cast"},
      {"InstanceNormalization", "InstanceNorm"},
      {"BatchNormalization", "BatchNorm"},
      {"LayerNormalization", "LayerNorm"},
      {"AveragePool", "AvgPool"},
      {"Relu", "ReLU"},
      {"Add", "Add"},
      {"Mul", "Mul"}};
  auto it = names.find(op);
  return it == names.end() ? op : it->second;
}

struct Group {
  std::string op_type;        // "Conv+BatchNormalization+Relu"
  std::vector<size_t> nodes;  // indices into model.nodes
  std::vector<std::string> inputs, outputs;
  Role role = Role::float_op;
  std::vector<size_t> data_inputs;  // input positions that carry activations to quantize
  // A layer norm written out (opsets < 17): scale and shift constants, epsilon.
  std::string ln_scale, ln_shift;
  double ln_eps = 1e-5;
  // QDQ models: the output quantizer a Q -> DQ pair after the group gives it, and that
  // pair's nodes (implemented by the group's output quantizer). A stub is a QuantStub made
  // for a pair no module's output holds (after a pass-through op).
  c10::optional<detail::FixedQuant> fixed_activation;
  std::vector<size_t> quantizer_nodes;
  bool stub = false;
  // Filled when building:
  std::shared_ptr<torch::nn::Module> module;
  NodeFunction function;
  std::string module_name;
};

class Importer {
 public:
  Importer(const Model& model, const ImportOptions& options)
      : m_(model), options_(options), nodes_(model.nodes) {}

  ImportedModel run() {
    fold_constants();
    find_activations();
    index_consumers();
    read_qdq();
    form_groups();
    assign_fixed_quantizers();
    decide_quantization_points();
    return build();
  }

 private:
  // ---------------------------------------------------------------------------------------
  // 1. Constants.
  void fold_constants() {
    for (const auto& entry : m_.initializers)
      constants_[entry.first] = detail::to_tensor(entry.second);
    folded_.assign(nodes_.size(), false);
    for (size_t i = 0; i < nodes_.size(); ++i) {
      const Node& node = nodes_[i];
      bool all_constant = true;
      for (const auto& in : node.inputs) {
        if (!in.empty() && constants_.count(in) == 0) all_constant = false;
      }
      if (!all_constant) continue;
      std::vector<at::Tensor> inputs;
      for (const auto& in : node.inputs)
        inputs.push_back(in.empty() ? at::Tensor() : constants_.at(in));
      std::vector<at::Tensor> outputs;
      try {
        torch::NoGradGuard no_grad;
        outputs = detail::make_kernel(node)(inputs, /*training=*/false);
      } catch (const c10::Error& e) {
        TORCH_CHECK(false, node.describe(),
                    ": evaluating it on constant inputs failed: ", e.what_without_backtrace());
      } catch (const std::exception& e) {  // std::bad_alloc, std::length_error
        TORCH_CHECK(false, node.describe(),
                    ": evaluating it on constant inputs failed: ", e.what());
      }
      TORCH_CHECK(outputs.size() >= node.outputs.size(), node.describe(), " gave ", outputs.size(),
                  " outputs, expected ", node.outputs.size());
      for (size_t k = 0; k < node.outputs.size(); ++k) {
        if (!node.outputs[k].empty()) constants_[node.outputs[k]] = outputs[k].contiguous();
      }
      // A constant dequantized (a weight of a QDQ model): remember its quantization.
      if (auto w = detail::weight_quant_of(node, inputs)) weight_quant_[node.outputs[0]] = *w;
      folded_[i] = true;
    }
  }

  bool is_constant(const std::string& v) const { return !v.empty() && constants_.count(v) > 0; }

  // ---------------------------------------------------------------------------------------
  // 2. Activations.
  void find_activations() {
    for (const auto& in : m_.inputs) activations_.insert(in.name);
    for (size_t i = 0; i < nodes_.size(); ++i) {
      if (folded_[i]) continue;
      const Node& node = nodes_[i];
      if (node.op_type == "Shape" || node.op_type == "Size") continue;
      bool active = false;
      for (const auto& in : node.inputs) active = active || activations_.count(in) > 0;
      if (!active) continue;
      for (const auto& out : node.outputs) {
        if (!out.empty()) activations_.insert(out);
      }
    }
  }
  bool is_activation(const std::string& v) const { return activations_.count(v) > 0; }

  void index_consumers() {
    consumers_.clear();
    for (size_t i = 0; i < nodes_.size(); ++i) {
      if (folded_[i]) continue;
      for (const auto& in : nodes_[i].inputs) {
        if (!in.empty()) consumers_[in].push_back(i);
      }
    }
    for (const auto& out : m_.outputs) graph_outputs_.insert(out.name);
  }

  // QDQ models: Q -> DQ pairs on activations are taken out of the graph (their readers read
  // the float value) and remembered as fixed quantizers of that value (ImportOptions::
  // keep_qdq), then given to the module that produces it (assign_fixed_quantizers).
  void read_qdq() {
    const auto pairs =
        detail::find_qdq_pairs(nodes_, folded_, constants_, activations_, graph_outputs_);
    for (const auto& pair : pairs) {
      for (size_t n : pair.nodes) {
        folded_[n] = true;
        pair_of_node_[n] = pair.input;
      }
      pair_nodes_[pair.input] = pair.nodes;
      if (options_.keep_qdq()) fixed_[pair.input] = pair.quant;
      for (const auto& view : pair.views) {
        if (graph_outputs_.count(view) == 0) continue;
        alias_[view] = pair.input;  // the graph output is the quantized value
        graph_outputs_.insert(pair.input);
      }
    }
    qdq_model_ = options_.keep_qdq() && (!pairs.empty() || !weight_quant_.empty());
    index_consumers();
  }

  // Whether fusing the reader of `v` into v's group would hide a fixed quantizer of the file
  // on v. Allowed only into a Relu / Clip(0, 6) whose output has the same quantizer (calq
  // writes op -> Q -> DQ -> Relu -> Q -> DQ; quantizing before and after such an activation
  // equals quantizing after it).
  bool hides_quantizer(const std::string& v) const {
    auto fixed = fixed_.find(v);
    if (fixed == fixed_.end()) return false;
    auto it = consumers_.find(v);
    if (it == consumers_.end() || it->second.size() != 1) return true;
    const Node& c = nodes_[it->second[0]];
    if (!(c.op_type == "Relu" || is_relu6(c)) || c.inputs[0] != v) return true;
    auto after = fixed_.find(c.outputs[0]);
    return after == fixed_.end() || after->second != fixed->second;
  }

  // The only consumer of value v (nullptr if it has several, none, or is a graph output).
  const Node* sole_consumer(const std::string& v, size_t* index = nullptr) const {
    if (graph_outputs_.count(v) > 0 || hides_quantizer(v)) return nullptr;
    auto it = consumers_.find(v);
    if (it == consumers_.end() || it->second.size() != 1) return nullptr;
    if (taken_.count(it->second[0]) > 0) return nullptr;
    if (index != nullptr) *index = it->second[0];
    return &nodes_[it->second[0]];
  }

  // Scalar value of a constant (nullopt when not a one-element constant).
  c10::optional<double> scalar(const std::string& v) const {
    if (!is_constant(v)) return c10::nullopt;
    const at::Tensor& t = constants_.at(v);
    if (t.numel() != 1) return c10::nullopt;
    return t.reshape({}).to(at::kDouble).item<double>();
  }

  static bool near(c10::optional<double> v, double target, double tolerance = 1e-4) {
    return v && std::abs(*v - target) <= tolerance * std::max(1.0, std::abs(target));
  }

  // Whether node is Clip(0, 6) (the ReLU6 of MobileNets); relu: Clip(0, +inf) counts too.
  bool is_relu6(const Node& node) const {
    if (node.op_type != "Clip") return false;
    return node.has_input(1) && node.has_input(2) && near(scalar(node.inputs[1]), 0.0, 0) &&
           near(scalar(node.inputs[2]), 6.0, 0);
  }

  // The other operand of a binary node whose one operand is `v` (or "" if neither).
  static std::string other_operand(const Node& node, const std::string& v) {
    if (node.inputs.size() != 2) return "";
    if (node.inputs[0] == v) return node.inputs[1];
    if (node.inputs[1] == v) return node.inputs[0];
    return "";
  }

  // ---------------------------------------------------------------------------------------
  // 3. Groups.
  void take(Group& g, size_t index) {
    g.nodes.push_back(index);
    taken_.insert(index);
  }

  void form_groups() {
    for (size_t i = 0; i < nodes_.size(); ++i) {
      if (folded_[i] || taken_.count(i) > 0) continue;
      const Node& node = nodes_[i];
      Group g;
      take(g, i);
      g.inputs = node.inputs;
      g.op_type = node.op_type;
      bool active = false;
      for (const auto& in : node.inputs) active = active || is_activation(in);
      if (!active) {
        g.role = Role::side;
      } else if (options_.fuse() && try_fuse(node, g)) {
        // g filled by the pattern.
      } else {
        classify(node, g);
      }
      if (g.outputs.empty()) g.outputs = nodes_[g.nodes.back()].outputs;
      // calq modules give one output: a fused BatchNormalization's unused running-statistics
      // outputs (training-mode exports) are dropped.
      if ((g.role == Role::weighted || g.role == Role::quantized) && g.outputs.size() > 1) {
        g.outputs.resize(1);
      }
      groups_.push_back(std::move(g));
    }
  }

  bool weight_ok(const Node& node) const {
    return node.has_input(1) && is_constant(node.inputs[1]) &&
           (!node.has_input(2) || is_constant(node.inputs[2])) && is_activation(node.inputs[0]);
  }

  bool conv_liftable(const Node& conv) const {
    if (conv.op_type != "Conv" || !weight_ok(conv)) return false;
    return constants_.at(conv.inputs[1]).dim() == 4 &&
           conv.attr_ints("kernel_shape", {2, 2}).size() == 2;
  }

  bool linear_weight(const Node& node) const {
    if (node.op_type == "Gemm") {
      return weight_ok(node) && node.attr_int("transA", 0) == 0 &&
             constants_.at(node.inputs[1]).dim() == 2 && gemm_bias_ok(node);
    }
    return node.op_type == "MatMul" && is_activation(node.inputs[0]) &&
           is_constant(node.inputs[1]) && constants_.at(node.inputs[1]).dim() == 2;
  }

  bool gemm_bias_ok(const Node& node) const {
    if (!node.has_input(2)) return true;
    const at::Tensor& c = constants_.at(node.inputs[2]);
    const at::Tensor& b = constants_.at(node.inputs[1]);
    const int64_t n = node.attr_int("transB", 0) != 0 ? b.size(0) : b.size(1);
    return c.numel() == 1 || (c.numel() == n && (c.dim() == 1 || (c.dim() == 2 && c.size(0) == 1)));
  }

  bool try_fuse(const Node& node, Group& g) {
    const std::string& op = node.op_type;
    size_t next = 0;
    if (op == "Conv" && conv_liftable(node)) {
      g.role = Role::weighted;
      g.data_inputs = {0};
      std::string out = node.outputs[0];
      const Node* c = sole_consumer(out, &next);
      // A weight of a QDQ model keeps its quantization: batch norm is not folded into it.
      const bool fixed_weight = qdq_model_ && weight_quant_.count(node.inputs[1]) > 0;
      if (c != nullptr && c->op_type == "BatchNormalization" && c->inputs[0] == out &&
          bn_foldable(*c) && !fixed_weight) {
        take(g, next);
        g.op_type += "+BatchNormalization";
        out = c->outputs[0];
        c = sole_consumer(out, &next);
      }
      if (c != nullptr && (c->op_type == "Relu" || is_relu6(*c)) && c->inputs[0] == out) {
        take(g, next);
        g.op_type += c->op_type == "Relu" ? "+Relu" : "+Clip";
      }
      return true;
    }
    if (linear_weight(node)) {
      g.role = Role::weighted;
      g.data_inputs = {0};
      std::string out = node.outputs[0];
      const Node* c = sole_consumer(out, &next);
      if (op == "MatMul" && c != nullptr && c->op_type == "Add") {
        const std::string bias = other_operand(*c, out);
        const int64_t n = constants_.at(node.inputs[1]).size(1);
        if (is_constant(bias) && constants_.at(bias).numel() == n &&
            constants_.at(bias).size(-1) == n) {
          take(g, next);
          g.op_type += "+Add";
          out = c->outputs[0];
          c = sole_consumer(out, &next);
        }
      }
      if (c != nullptr && c->op_type == "Relu") {
        take(g, next);
        g.op_type += "+Relu";
      }
      return true;
    }
    if (op == "Add" && is_activation(node.inputs[0]) && is_activation(node.inputs[1])) {
      g.role = Role::quantized;
      g.data_inputs = {0, 1};
      const Node* c = sole_consumer(node.outputs[0], &next);
      if (c != nullptr && c->op_type == "Relu") {
        take(g, next);
        g.op_type += "+Relu";
      }
      return true;
    }
    if (op == "Sigmoid" || op == "HardSigmoid") {
      const std::string& x = node.inputs[0];
      const Node* c = sole_consumer(node.outputs[0], &next);
      const bool hard_swish_constants =
          op == "Sigmoid" || (near(node.attr_float("alpha", 0.2), 1.0 / 6.0) &&
                              near(node.attr_float("beta", 0.5), 0.5));
      if (c != nullptr && c->op_type == "Mul" && other_operand(*c, node.outputs[0]) == x &&
          hard_swish_constants) {
        take(g, next);
        g.op_type += "+Mul";
        g.role = Role::float_op;
        g.data_inputs = {0};
        return true;
      }
      return false;
    }
    if (op == "Div" && near(scalar(node.inputs[1]), std::sqrt(2.0))) return try_gelu(node, g);
    if (op == "ReduceMean") return try_layer_norm(node, g);
    return false;
  }

  // Reduction axes of a ReduceMean (attribute or constant input); nullopt when not constant.
  c10::optional<std::vector<int64_t>> reduce_axes(const Node& node) const {
    if (node.has_input(1)) {
      if (!is_constant(node.inputs[1])) return c10::nullopt;
      return detail::int_list(constants_.at(node.inputs[1]), "ReduceMean axes");
    }
    return node.attr_ints("axes", {});
  }

  // The layer norm of opsets < 17, as torch.onnx writes it over the last k dims:
  //   mean = ReduceMean(x); d = x - mean; var = ReduceMean(d ^ 2);
  //   y = d / Sqrt(var + eps) * scale + shift
  bool try_layer_norm(const Node& mean, Group& g) {
    const std::string& x = mean.inputs[0];
    const auto axes = reduce_axes(mean);
    if (!axes || axes->empty() || mean.attr_int("keepdims", 1) == 0) return false;
    // Trailing axes written as negatives: -k, ..., -1.
    std::vector<int64_t> sorted = *axes;
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 0; i < sorted.size(); ++i) {
      if (sorted[i] != static_cast<int64_t>(i) - static_cast<int64_t>(sorted.size())) return false;
    }
    size_t sub_i = 0, pow_i = 0, var_i = 0, add_i = 0, sqrt_i = 0, div_i = 0, mul_i = 0,
           shift_i = 0;
    const Node* sub = sole_consumer(mean.outputs[0], &sub_i);
    if (sub == nullptr || sub->op_type != "Sub" || sub->inputs[0] != x ||
        sub->inputs[1] != mean.outputs[0]) {
      return false;
    }
    const std::string& d = sub->outputs[0];
    if (fixed_.count(d) > 0) return false;
    auto readers = consumers_.find(d);
    if (readers == consumers_.end() || readers->second.size() != 2 || graph_outputs_.count(d)) {
      return false;
    }
    const Node* pow = nullptr;
    const Node* div = nullptr;
    for (size_t r : readers->second) {
      const Node& n = nodes_[r];
      if (n.op_type == "Pow" && n.inputs[0] == d && near(scalar(n.inputs[1]), 2.0, 0)) {
        pow = &n;
        pow_i = r;
      } else if (n.op_type == "Div" && n.inputs[0] == d) {
        div = &n;
        div_i = r;
      }
    }
    if (pow == nullptr || div == nullptr || taken_.count(pow_i) || taken_.count(div_i))
      return false;
    const Node* var = sole_consumer(pow->outputs[0], &var_i);
    if (var == nullptr || var->op_type != "ReduceMean" || reduce_axes(*var) != axes ||
        var->attr_int("keepdims", 1) == 0) {
      return false;
    }
    const Node* add = sole_consumer(var->outputs[0], &add_i);
    if (add == nullptr || add->op_type != "Add") return false;
    const auto eps = scalar(other_operand(*add, var->outputs[0]));
    if (!eps || *eps < 0) return false;
    const Node* sqrt = sole_consumer(add->outputs[0], &sqrt_i);
    if (sqrt == nullptr || sqrt->op_type != "Sqrt") return false;
    if (sole_consumer(sqrt->outputs[0]) != div || div->inputs[1] != sqrt->outputs[0]) return false;
    const Node* mul = sole_consumer(div->outputs[0], &mul_i);
    if (mul == nullptr || mul->op_type != "Mul") return false;
    const std::string scale = other_operand(*mul, div->outputs[0]);
    if (!is_constant(scale) || constants_.at(scale).dim() != static_cast<int64_t>(axes->size())) {
      return false;
    }
    const Node* shift = sole_consumer(mul->outputs[0], &shift_i);
    std::string shift_value;
    if (shift != nullptr && shift->op_type == "Add") {
      shift_value = other_operand(*shift, mul->outputs[0]);
      if (!is_constant(shift_value) ||
          constants_.at(shift_value).sizes() != constants_.at(scale).sizes()) {
        shift = nullptr;
        shift_value.clear();
      }
    } else {
      shift = nullptr;
    }
    for (size_t i : {sub_i, pow_i, var_i, add_i, sqrt_i, div_i, mul_i}) take(g, i);
    if (shift != nullptr) take(g, shift_i);
    g.op_type = "ReduceMean+Sub+Pow+ReduceMean+Add+Sqrt+Div+Mul" + std::string(shift ? "+Add" : "");
    g.inputs = {x};
    g.outputs = nodes_[g.nodes.back()].outputs;
    g.role = Role::float_op;
    g.data_inputs = {0};
    g.ln_scale = scale;
    g.ln_shift = shift_value;
    g.ln_eps = *eps;
    return true;
  }

  // x / sqrt(2) -> Erf -> + 1 -> * x -> * 0.5 (torch's export of exact GELU, opsets < 20).
  bool try_gelu(const Node& div, Group& g) {
    const std::string& x = div.inputs[0];
    size_t erf_i = 0, add_i = 0, mul_i = 0, half_i = 0;
    const Node* erf = sole_consumer(div.outputs[0], &erf_i);
    if (erf == nullptr || erf->op_type != "Erf") return false;
    const Node* add = sole_consumer(erf->outputs[0], &add_i);
    if (add == nullptr || add->op_type != "Add" ||
        !near(scalar(other_operand(*add, erf->outputs[0])), 1.0)) {
      return false;
    }
    const Node* mul = sole_consumer(add->outputs[0], &mul_i);
    if (mul == nullptr || mul->op_type != "Mul" || other_operand(*mul, add->outputs[0]) != x) {
      return false;
    }
    const Node* half = sole_consumer(mul->outputs[0], &half_i);
    if (half == nullptr || half->op_type != "Mul" ||
        !near(scalar(other_operand(*half, mul->outputs[0])), 0.5)) {
      return false;
    }
    for (size_t i : {erf_i, add_i, mul_i, half_i}) take(g, i);
    g.op_type = "Div+Erf+Add+Mul+Mul";
    g.inputs = {x};
    g.role = Role::float_op;
    g.data_inputs = {0};
    return true;
  }

  bool bn_foldable(const Node& bn) const {
    for (size_t k = 1; k < 5; ++k) {
      if (!is_constant(bn.inputs[k])) return false;
    }
    for (size_t k = 1; k < bn.outputs.size(); ++k) {
      if (!bn.outputs[k].empty() && consumers_.count(bn.outputs[k]) > 0) return false;
    }
    return true;
  }

  void classify(const Node& node, Group& g) {
    const std::string& op = node.op_type;
    g.data_inputs = {0};
    if (op == "Conv" && conv_liftable(node)) {
      g.role = Role::weighted;
    } else if (op == "ConvTranspose" && weight_ok(node) &&
               constants_.at(node.inputs[1]).dim() == 4) {
      g.role = Role::weighted;
    } else if (linear_weight(node)) {
      g.role = Role::weighted;
    } else if (op == "Add" || op == "Mul" || op == "Concat" || op == "MatMul") {
      g.role = Role::quantized;
      g.data_inputs.clear();
      for (size_t k = 0; k < node.inputs.size(); ++k) g.data_inputs.push_back(k);
    } else if (op == "Relu" || is_relu6(node) || op == "GlobalAveragePool" || op == "AveragePool" ||
               (op == "ReduceMean" && reduce_axes_constant(node))) {
      g.role = Role::quantized;
    } else if (op == "LayerNormalization" && layer_norm_liftable(node)) {
      g.role = Role::float_op;  // calq::nn::LayerNorm, a float op with parameters
    } else if (op == "Resize" ? node.attr_string("mode", "nearest") == "nearest"
                              : graph::pass_through_op_types().count(op) > 0) {
      g.role = Role::pass_through;
    } else {
      g.role = Role::float_op;
    }
  }

  bool reduce_axes_constant(const Node& node) const {
    return !node.has_input(1) || is_constant(node.inputs[1]);
  }

  bool layer_norm_liftable(const Node& node) const {
    if (!is_constant(node.inputs[1]) || (node.has_input(2) && !is_constant(node.inputs[2]))) {
      return false;
    }
    for (size_t k = 1; k < node.outputs.size(); ++k) {
      if (!node.outputs[k].empty() && consumers_.count(node.outputs[k]) > 0) return false;
    }
    const at::Tensor& scale = constants_.at(node.inputs[1]);
    if (node.has_input(2) && constants_.at(node.inputs[2]).sizes() != scale.sizes()) return false;
    return scale.dim() >= 1 && node.attr_int("axis", -1) == -scale.dim();
  }

  // ---------------------------------------------------------------------------------------
  // 4. Quantization points of float operations.
  // QDQ models: each fixed quantizer goes to the group whose single output it quantizes, as
  // that module's output quantizer. A graph input's goes to its input stub; a value that no
  // such group produces (the output of a pass-through op) gets a QuantStub of its own right
  // after its producer; a value inside a fused group (before an equal activation's pair, see
  // hides_quantizer) needs none.
  void assign_fixed_quantizers() {
    if (fixed_.empty()) return;
    std::map<std::string, size_t> producer;
    std::map<size_t, size_t> group_of_node;
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      for (const auto& out : groups_[gi].outputs) {
        if (!out.empty()) producer[out] = gi;
      }
      for (size_t n : groups_[gi].nodes) group_of_node[n] = gi;
    }
    std::set<std::string> inputs;
    for (const auto& in : m_.inputs) inputs.insert(in.name);
    std::vector<std::pair<size_t, Group>> stubs;
    for (const auto& entry : fixed_) {
      const std::string& x = entry.first;
      const std::vector<size_t>& pair = pair_nodes_.at(x);
      if (inputs.count(x) > 0) {
        input_fixed_[x] = entry.second;
        continue;
      }
      auto p = producer.find(x);
      if (p == producer.end()) {
        for (size_t n = 0; n < nodes_.size(); ++n) {
          const auto& outs = nodes_[n].outputs;
          if (std::find(outs.begin(), outs.end(), x) == outs.end()) continue;
          auto g = group_of_node.find(n);
          if (g != group_of_node.end()) {
            auto& q = groups_[g->second].quantizer_nodes;
            q.insert(q.end(), pair.begin(), pair.end());
          }
        }
        continue;
      }
      Group& g = groups_[p->second];
      size_t outputs = 0;
      for (const auto& out : g.outputs) outputs += out.empty() ? 0 : 1;
      const bool holds =
          (g.role == Role::weighted || g.role == Role::quantized || g.role == Role::float_op) &&
          outputs == 1 && !g.fixed_activation;
      if (holds) {
        g.fixed_activation = entry.second;
        g.quantizer_nodes.insert(g.quantizer_nodes.end(), pair.begin(), pair.end());
        continue;
      }
      Group stub;
      stub.op_type = "QuantizeLinear+DequantizeLinear";
      stub.nodes = pair;
      stub.inputs = {x};
      stub.outputs = {x + ":quantized"};
      stub.role = Role::quantized;
      stub.data_inputs = {0};
      stub.fixed_activation = entry.second;
      stub.stub = true;
      alias_[x] = stub.outputs[0];  // every reader of x read the pair's output
      stubs.emplace_back(p->second, std::move(stub));
    }
    std::stable_sort(stubs.begin(), stubs.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    for (auto& s : stubs) {
      groups_.insert(groups_.begin() + static_cast<std::ptrdiff_t>(s.first) + 1,
                     std::move(s.second));
    }
  }

  // The fixed weight recipe of a weighted group whose weight a DequantizeLinear gave
  // (nullopt: the weight stays float, its values exactly the file's).
  c10::optional<FakeQuantConfig> fixed_weight_recipe(const Group& g) const {
    const Node& first = nodes_[g.nodes.front()];
    if (!first.has_input(1)) return c10::nullopt;
    auto w = weight_quant_.find(first.inputs[1]);
    if (w == weight_quant_.end()) return c10::nullopt;
    const at::Tensor& weight = constants_.at(first.inputs[1]);
    const int64_t rank = weight.dim();
    if (first.op_type == "Conv") return detail::weight_recipe(w->second, 0, rank, weight.size(0));
    if (first.op_type == "ConvTranspose") {
      return detail::weight_recipe(w->second, 1, rank, weight.size(1) * first.attr_int("group", 1));
    }
    if (first.op_type == "Gemm") {
      // The module's weight is alpha * B': a fixed grid only without the factor.
      if (first.attr_float("alpha", 1.0) != 1.0) return c10::nullopt;
      const bool trans_b = first.attr_int("transB", 0) != 0;
      return detail::weight_recipe(w->second, trans_b ? 0 : 1, rank,
                                   trans_b ? weight.size(0) : weight.size(1));
    }
    if (first.op_type == "MatMul") return detail::weight_recipe(w->second, 1, rank, weight.size(1));
    return c10::nullopt;
  }

  // A QDQ model's module computes what the file says: its own qconfig holds the file's fixed
  // quantizers, and float where the file has none.
  void set_own_qconfig(torch::nn::Module& module, const c10::optional<detail::FixedQuant>& output,
                       const c10::optional<FakeQuantConfig>& weight) const {
    if (!qdq_model_) return;
    auto* q = dynamic_cast<nn::QuantModuleImpl*>(&module);
    if (q == nullptr) return;
    QConfig own;
    if (output) own.activation = detail::activation_recipe(*output);
    own.weight = weight;
    q->qconfig = own;
  }

  void decide_quantization_points() {
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      for (const auto& out : groups_[gi].outputs) {
        if (!out.empty()) producer_[out] = gi;
      }
      for (size_t k = 0; k < groups_[gi].inputs.size(); ++k) {
        const auto& in = groups_[gi].inputs[k];
        if (!in.empty()) readers_[in].emplace_back(gi, k);
      }
    }
  }

  // Whether value v reaches a quantized operation's data input (through pass-throughs).
  bool feeds_quantized(const std::string& v, int depth = 0) const {
    if (depth > 64) return false;
    auto it = readers_.find(v);
    if (it == readers_.end()) return false;
    for (const auto& reader : it->second) {
      const Group& g = groups_[reader.first];
      const bool data = std::find(g.data_inputs.begin(), g.data_inputs.end(), reader.second) !=
                        g.data_inputs.end();
      if (!data) continue;
      if (g.role == Role::weighted || g.role == Role::quantized) return true;
      if (g.role == Role::pass_through) {
        for (const auto& out : g.outputs) {
          if (!out.empty() && feeds_quantized(out, depth + 1)) return true;
        }
      }
    }
    return false;
  }

  // ---------------------------------------------------------------------------------------
  // 5. The graph.
  std::string value(std::string v) const {
    for (size_t step = 0; step <= alias_.size(); ++step) {
      auto it = alias_.find(v);
      if (it == alias_.end()) break;
      v = it->second;
    }
    return v;
  }

  // Registers constant v on the graph the first time a node reads it.
  void use_constant(const std::string& v, bool trainable) {
    if (v.empty() || !is_constant(v) || graph_->is_constant(v)) return;
    const at::Tensor& t = constants_.at(v);
    graph_->add_constant(
        v, t,
        trainable && options_.trainable_constants() && t.is_floating_point() && t.numel() > 1);
  }

  ImportedModel build() {
    graph_ = graph::Graph();
    ImportedModel result;
    result.opset = m_.opset;
    result.ir_version = m_.ir_version;
    result.qdq = qdq_model_;
    result.producer =
        m_.producer_name + (m_.producer_version.empty() ? "" : " " + m_.producer_version);
    for (const auto& in : m_.inputs) {
      InputInfo info;
      info.name = in.name;
      info.type = in.type;
      if (in.has_shape) {
        for (const auto& d : in.shape) {
          info.shape.push_back(d.value);
          info.symbols.push_back(d.symbol);
        }
      }
      result.inputs.push_back(info);
      graph_->add_input(in.name);
    }
    std::map<std::string, std::string> module_of;  // onnx node name -> module
    for (const auto& in : m_.inputs) {
      if (!is_float(in.type) || consumers_.count(in.name) == 0) continue;
      const std::string name =
          graph_->unique_name(m_.inputs.size() == 1 ? "quant" : "quant_" + in.name);
      graph::Node stub;
      stub.name = name;
      stub.op_type = "QuantStub";
      stub.inputs = {in.name};
      stub.outputs = {in.name + ":quantized"};
      stub.module = nn::QuantStub().ptr();
      stub.function = [](torch::nn::Module& m, const std::vector<at::Tensor>& x) {
        return std::vector<at::Tensor>{static_cast<nn::QuantStubImpl&>(m).forward(x[0])};
      };
      auto fixed = input_fixed_.find(in.name);
      set_own_qconfig(
          *stub.module,
          fixed == input_fixed_.end() ? c10::nullopt : c10::make_optional(fixed->second),
          c10::nullopt);
      if (fixed != input_fixed_.end()) {
        for (size_t n : pair_nodes_.at(in.name)) {
          stub.source_nodes.push_back(nodes_[n].name);
          module_of[nodes_[n].name] = name;
        }
      }
      graph_->add_node(std::move(stub));
      alias_[in.name] = in.name + ":quantized";
    }
    for (auto& g : groups_) {
      const Node& first = nodes_[g.nodes.front()];
      g.module_name = graph_->unique_name(first.name);
      build_group(g);
      graph::Node node;
      node.name = g.module_name;
      node.op_type = g.op_type;
      for (size_t i : g.nodes) node.source_nodes.push_back(nodes_[i].name);
      for (size_t i : g.quantizer_nodes) node.source_nodes.push_back(nodes_[i].name);
      node.attributes = attributes_of(first);
      // A stub reads the value itself (its readers are aliased to the stub's output).
      for (const auto& in : g.inputs) node.inputs.push_back(g.stub ? in : value(in));
      node.outputs = g.outputs;
      node.module = g.module;
      node.function = g.function;
      set_own_qconfig(*g.module, g.fixed_activation,
                      g.role == Role::weighted ? fixed_weight_recipe(g) : c10::nullopt);
      for (const auto& in : g.inputs) use_constant(in, trainable_input(g, in));
      graph_->add_node(std::move(node));
      for (size_t i : g.nodes) module_of[nodes_[i].name] = g.module_name;
      for (size_t i : g.quantizer_nodes) module_of[nodes_[i].name] = g.module_name;
    }
    for (const auto& out : m_.outputs) {
      use_constant(out.name, false);
      graph_->add_output(value(out.name));
      result.outputs.push_back(out.name);
    }
    for (size_t i = 0; i < nodes_.size(); ++i) {
      NodeMapping mapping;
      mapping.onnx_name = nodes_[i].name;
      mapping.op_type = nodes_[i].op_type;
      auto it = module_of.find(mapping.onnx_name);
      if (it != module_of.end()) {
        mapping.module = it->second;
        const graph::Node* node = graph_->find_node(it->second);
        if (auto* q = node->quant_module()) {
          mapping.quantization_point = q->is_quantization_point();
          mapping.has_weight = q->has_weight();
        }
      }
      result.nodes.push_back(mapping);
    }
    result.graph = graph_;
    if (options_.check_shapes()) check_shapes(result);
    return result;
  }

  static bool is_float(ElementType t) {
    return t == ElementType::float32 || t == ElementType::float64 || t == ElementType::float16 ||
           t == ElementType::bfloat16;
  }

  bool trainable_input(const Group& g, const std::string& v) const {
    const std::string& op = nodes_[g.nodes.front()].op_type;
    static const std::set<std::string> data_ops = {"Add",    "Sub",   "Mul",   "Div",   "Concat",
                                                   "MatMul", "PRelu", "Where", "Expand"};
    if (data_ops.count(op) > 0) return true;
    // Normalization scale and shift (not the running statistics); layer weights kept float.
    static const std::set<std::string> weight_ops = {"BatchNormalization", "InstanceNormalization",
                                                     "LayerNormalization", "Conv",
                                                     "ConvTranspose",      "Gemm"};
    if (weight_ops.count(op) == 0) return false;
    const auto& in = g.inputs;
    for (size_t k = 1; k < in.size() && k < 3; ++k) {
      if (in[k] == v) return true;
    }
    return false;
  }

  static graph::Attributes attributes_of(const Node& node) {
    graph::Attributes out;
    for (const auto& entry : node.attributes) {
      const Attribute& a = entry.second;
      switch (a.kind) {
        case Attribute::Kind::float_:
          out[entry.first] = a.f;
          break;
        case Attribute::Kind::int_:
          out[entry.first] = a.i;
          break;
        case Attribute::Kind::string:
          out[entry.first] = a.s;
          break;
        case Attribute::Kind::tensor:
          out[entry.first] = detail::to_tensor(*a.t);
          break;
        case Attribute::Kind::floats:
          out[entry.first] = a.floats;
          break;
        case Attribute::Kind::ints:
          out[entry.first] = a.ints;
          break;
        case Attribute::Kind::strings:
          out[entry.first] = a.strings;
          break;
      }
    }
    return out;
  }

  // Function calling a FloatFunction module.
  static NodeFunction call_float_function() {
    return [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
      return static_cast<nn::FloatFunctionImpl&>(m).forward(in);
    };
  }

  void make_float_function(Group& g, const std::string& type_name,
                           nn::FloatFunctionImpl::Function fn, bool quantization_point) {
    g.module =
        std::make_shared<nn::FloatFunctionImpl>(type_name, std::move(fn), quantization_point);
    g.function = call_float_function();
  }

  void build_group(Group& g) {
    const Node& first = nodes_[g.nodes.front()];
    const std::string& op = first.op_type;
    try {
      switch (g.role) {
        case Role::weighted:
          if (op == "Conv") return build_conv(g);
          if (op == "ConvTranspose") return build_conv_transpose(g);
          return build_linear(g);
        case Role::quantized:
          return build_quantized(g);
        case Role::pass_through:
          make_float_function(g, float_type_name(op), detail::make_kernel(first), false);
          return;
        case Role::side:
          make_float_function(g, "ShapeComputation", detail::make_kernel(first), false);
          return;
        case Role::float_op:
          return build_float_op(g);
      }
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, first.describe(), ": ", e.what_without_backtrace());
    }
  }

  void build_float_op(Group& g) {
    const Node& first = nodes_[g.nodes.front()];
    bool qp = false;
    for (const auto& out : g.outputs) qp = qp || (!out.empty() && feeds_quantized(out));
    if (qdq_model_) qp = g.fixed_activation.has_value();  // the file says where
    if (g.op_type == "Sigmoid+Mul") {
      make_float_function(
          g, "SiLU",
          [](const std::vector<at::Tensor>& in, bool) {
            return std::vector<at::Tensor>{in[0] * at::sigmoid(in[0])};
          },
          qp);
      g.inputs = {first.inputs[0]};
      return;
    }
    if (g.op_type == "HardSigmoid+Mul") {
      make_float_function(
          g, "HardSwish",
          [](const std::vector<at::Tensor>& in, bool) {
            return std::vector<at::Tensor>{at::hardswish(in[0])};
          },
          qp);
      g.inputs = {first.inputs[0]};
      return;
    }
    if (g.op_type == "Div+Erf+Add+Mul+Mul") {
      make_float_function(
          g, "GELU",
          [](const std::vector<at::Tensor>& in, bool) {
            return std::vector<at::Tensor>{at::gelu(in[0])};
          },
          qp);
      return;
    }
    if (!g.ln_scale.empty()) {
      const at::Tensor& scale = constants_.at(g.ln_scale);
      auto options =
          nn::LayerNormOptions(scale.sizes().vec()).eps(g.ln_eps).bias(!g.ln_shift.empty());
      auto module = std::make_shared<nn::LayerNormImpl>(options);
      {
        torch::NoGradGuard no_grad;
        module->weight.copy_(scale);
        if (!g.ln_shift.empty()) module->bias.copy_(constants_.at(g.ln_shift));
      }
      g.module = module;
      g.function = [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
        return std::vector<at::Tensor>{static_cast<nn::LayerNormImpl&>(m).forward(in[0])};
      };
      return;
    }
    if (first.op_type == "LayerNormalization" && layer_norm_liftable(first)) {
      const at::Tensor& scale = constants_.at(first.inputs[1]);
      auto options = nn::LayerNormOptions(scale.sizes().vec())
                         .eps(first.attr_float("epsilon", 1e-5))
                         .bias(first.has_input(2));
      auto module = std::make_shared<nn::LayerNormImpl>(options);
      {
        torch::NoGradGuard no_grad;
        module->weight.copy_(scale);
        if (first.has_input(2)) module->bias.copy_(constants_.at(first.inputs[2]));
      }
      g.inputs = {first.inputs[0]};
      g.module = module;
      g.function = [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
        return std::vector<at::Tensor>{static_cast<nn::LayerNormImpl&>(m).forward(in[0])};
      };
      return;
    }
    make_float_function(g, float_type_name(first.op_type), detail::make_kernel(first), qp);
  }

  void build_quantized(Group& g) {
    const Node& first = nodes_[g.nodes.front()];
    const std::string& op = first.op_type;
    if (g.stub) {
      g.module = nn::QuantStub().ptr();
      g.function = [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
        return std::vector<at::Tensor>{static_cast<nn::QuantStubImpl&>(m).forward(in[0])};
      };
      return;
    }
    if (op == "Add") {
      if (g.nodes.size() == 2) {
        g.module = nn::AddReLU().ptr();
        g.function = [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
          return std::vector<at::Tensor>{static_cast<nn::AddReLUImpl&>(m).forward(in[0], in[1])};
        };
      } else {
        g.module = nn::Add().ptr();
        g.function = [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
          return std::vector<at::Tensor>{static_cast<nn::AddImpl&>(m).forward(in[0], in[1])};
        };
      }
    } else if (op == "Mul") {
      g.module = nn::Mul().ptr();
      g.function = [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
        return std::vector<at::Tensor>{static_cast<nn::MulImpl&>(m).forward(in[0], in[1])};
      };
    } else if (op == "MatMul") {
      g.module = nn::MatMul().ptr();
      g.function = [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
        return std::vector<at::Tensor>{static_cast<nn::MatMulImpl&>(m).forward(in[0], in[1])};
      };
    } else if (op == "Concat") {
      TORCH_CHECK(first.has_attribute("axis"), first.describe(), ": axis is required");
      const int64_t axis = first.attr_int("axis", 0);
      g.module = nn::Cat(axis).ptr();
      g.function = [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
        for (const auto& t : in) TORCH_CHECK(t.defined(), "Concat: every input must be given");
        return std::vector<at::Tensor>{static_cast<nn::CatImpl&>(m).forward(in)};
      };
    } else if (op == "Relu") {
      g.module = nn::ReLU().ptr();
      g.function = [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
        return std::vector<at::Tensor>{static_cast<nn::ReLUImpl&>(m).forward(in[0])};
      };
    } else if (op == "Clip") {
      g.inputs = {first.inputs[0]};
      g.module = nn::ReLU6().ptr();
      g.function = [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
        return std::vector<at::Tensor>{static_cast<nn::ReLU6Impl&>(m).forward(in[0])};
      };
    } else if (op == "GlobalAveragePool") {
      g.module = nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions(1)).ptr();
      g.function = [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
        TORCH_CHECK(in[0].dim() == 4, "GlobalAveragePool: calq quantizes 4-d inputs [N, C, H, W], ",
                    "got shape ", in[0].sizes());
        return std::vector<at::Tensor>{static_cast<nn::AdaptiveAvgPool2dImpl&>(m).forward(in[0])};
      };
    } else if (op == "ReduceMean") {
      std::vector<int64_t> axes = first.attr_ints("axes", {});
      if (first.has_input(1))
        axes = detail::int_list(constants_.at(first.inputs[1]), "ReduceMean axes");
      g.inputs = {first.inputs[0]};
      if (axes.empty()) {
        // All dims (rank known only at run time) or, with noop_with_empty_axes, identity.
        const bool noop = first.attr_int("noop_with_empty_axes", 0) != 0;
        const bool keepdims = first.attr_int("keepdims", 1) != 0;
        make_float_function(
            g, "ReduceMean",
            [noop, keepdims](const std::vector<at::Tensor>& in, bool) {
              if (noop || in[0].dim() == 0) return std::vector<at::Tensor>{in[0]};
              std::vector<int64_t> all;
              for (int64_t d = 0; d < in[0].dim(); ++d) all.push_back(d);
              return std::vector<at::Tensor>{in[0].mean(all, keepdims)};
            },
            !noop);
        return;
      }
      auto options = nn::ReduceMeanOptions(axes).keepdim(first.attr_int("keepdims", 1) != 0);
      g.module = nn::ReduceMean(options).ptr();
      g.function = [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
        return std::vector<at::Tensor>{static_cast<nn::ReduceMeanImpl&>(m).forward(in[0])};
      };
    } else if (op == "AveragePool") {
      build_average_pool(g);
    } else {
      TORCH_INTERNAL_ASSERT(false, "no quantized module for ", op);
    }
  }

  void build_average_pool(Group& g) {
    const Node& node = nodes_[g.nodes.front()];
    const auto kernel = node.attr_ints("kernel_shape", {});
    const bool two_d = kernel.size() == 2;
    if (two_d) {
      const detail::Window win = detail::Window::read(node, 2, {});
      bool fits = win.symmetric() && !win.ceil_mode;
      for (int64_t i = 0; i < 2 && fits; ++i) fits = win.pads[i] * 2 <= win.kernel[i];
      if (fits) {
        auto options = nn::AvgPool2dOptions({win.kernel[0], win.kernel[1]})
                           .stride({win.strides[0], win.strides[1]})
                           .padding({win.pads[0], win.pads[1]})
                           .count_include_pad(node.attr_int("count_include_pad", 0) != 0);
        g.module = nn::AvgPool2d(options).ptr();
        g.function = [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
          return std::vector<at::Tensor>{static_cast<nn::AvgPool2dImpl&>(m).forward(in[0])};
        };
        return;
      }
    }
    // Other geometries: ONNX's exact definition, still a quantization point.
    make_float_function(g, "AvgPool", detail::make_kernel(node), true);
  }

  template <typename Block>
  std::shared_ptr<nn::detail::ConvBlockImpl> conv_block(nn::Conv2dOptions o) {
    return std::make_shared<Block>(std::move(o));
  }

  void build_conv(Group& g) {
    const Node& conv = nodes_[g.nodes[0]];
    const at::Tensor& w = constants_.at(conv.inputs[1]);
    const int64_t group = conv.attr_int("group", 1);
    TORCH_CHECK(w.numel() > 0, conv.describe(), ": the weight ", w.sizes(), " is empty");
    TORCH_CHECK(group >= 1 && group <= w.size(0) && w.size(0) % group == 0, conv.describe(),
                ": group ", group, " does not divide the ", w.size(0), " output channels");
    const detail::Window win = detail::Window::read(conv, 2, {w.size(2), w.size(3)});
    TORCH_CHECK(win.kernel[0] == w.size(2) && win.kernel[1] == w.size(3), conv.describe(),
                ": kernel_shape ", at::IntArrayRef(win.kernel), " differs from the weight's ",
                w.sizes());
    const bool bias = conv.has_input(2);
    if (bias) {
      TORCH_CHECK(constants_.at(conv.inputs[2]).numel() == w.size(0), conv.describe(),
                  ": bias has ", constants_.at(conv.inputs[2]).numel(), " values for ", w.size(0),
                  " output channels");
    }
    const bool symmetric = win.symmetric();
    auto options = nn::Conv2dOptions(w.size(1) * group, w.size(0), {w.size(2), w.size(3)})
                       .stride({win.strides[0], win.strides[1]})
                       .dilation({win.dilations[0], win.dilations[1]})
                       .groups(group)
                       .bias(bias);
    if (symmetric)
      options.padding(torch::ExpandingArray<2>({win.pads[0], win.pads[1]}));
    else
      options.padding(torch::ExpandingArray<2>({0, 0}));
    const Node* bn = nullptr;
    std::string activation;
    for (size_t k = 1; k < g.nodes.size(); ++k) {
      const Node& n = nodes_[g.nodes[k]];
      if (n.op_type == "BatchNormalization")
        bn = &n;
      else
        activation = n.op_type;
    }
    std::shared_ptr<nn::detail::ConvBlockImpl> block;
    if (bn == nullptr) {
      block = activation.empty()     ? conv_block<nn::Conv2dImpl>(options)
              : activation == "Relu" ? conv_block<nn::ConvReLU2dImpl>(options)
                                     : conv_block<nn::ConvReLU6_2dImpl>(options);
    } else {
      block = activation.empty()     ? conv_block<nn::ConvBn2dImpl>(options)
              : activation == "Relu" ? conv_block<nn::ConvBnReLU2dImpl>(options)
                                     : conv_block<nn::ConvBnReLU6_2dImpl>(options);
    }
    {
      torch::NoGradGuard no_grad;
      block->conv->weight.copy_(w);
      if (bias) block->conv->bias.copy_(constants_.at(conv.inputs[2]).reshape({-1}));
      if (bn != nullptr) {
        const int64_t c = w.size(0);
        auto param = [&](size_t k, const char* what) {
          const at::Tensor& t = constants_.at(bn->inputs[k]);
          TORCH_CHECK(t.numel() == c, bn->describe(), ": ", what, " has ", t.numel(),
                      " values for ", c, " channels");
          return t.reshape({-1});
        };
        block->bn->weight.copy_(param(1, "scale"));
        block->bn->bias.copy_(param(2, "B"));
        block->bn->running_mean.copy_(param(3, "input_mean"));
        block->bn->running_var.copy_(param(4, "input_var"));
        block->bn->options.eps(bn->attr_float("epsilon", 1e-5));
        // ONNX momentum weighs the running value, PyTorch's the batch value.
        block->bn->options.momentum(1.0 - bn->attr_float("momentum", 0.9));
      }
    }
    g.inputs = {conv.inputs[0]};
    g.module = block;
    if (symmetric) {
      g.function = [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
        return std::vector<at::Tensor>{static_cast<nn::detail::ConvBlockImpl&>(m).forward(in[0])};
      };
    } else {
      // Asymmetric or automatic padding: zero-pad the input explicitly (pass-through), then
      // the convolution without padding.
      g.function = [win](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
        TORCH_CHECK(in[0].dim() == 4, "Conv: input must be 4-d, got ", in[0].sizes());
        const auto pads = win.resolve(in[0].sizes().slice(2));
        return std::vector<at::Tensor>{static_cast<nn::detail::ConvBlockImpl&>(m).forward(
            detail::pad_spatial(in[0], pads, 0.0))};
      };
    }
  }

  void build_conv_transpose(Group& g) {
    const Node& node = nodes_[g.nodes[0]];
    const at::Tensor& w = constants_.at(node.inputs[1]);
    const int64_t group = node.attr_int("group", 1);
    TORCH_CHECK(w.numel() > 0, node.describe(), ": the weight ", w.sizes(), " is empty");
    TORCH_CHECK(group >= 1 && group <= w.size(0) && w.size(0) % group == 0, node.describe(),
                ": group ", group, " does not divide the ", w.size(0), " input channels");
    const detail::TransposedWindow t =
        detail::TransposedWindow::read(node, 2, {w.size(2), w.size(3)});
    TORCH_CHECK(t.window.kernel[0] == w.size(2) && t.window.kernel[1] == w.size(3), node.describe(),
                ": kernel_shape differs from the weight's ", w.sizes());
    const bool bias = node.has_input(2);
    auto options = nn::ConvTranspose2dOptions(w.size(0), w.size(1) * group, {w.size(2), w.size(3)})
                       .stride({t.window.strides[0], t.window.strides[1]})
                       .dilation({t.window.dilations[0], t.window.dilations[1]})
                       .groups(group)
                       .bias(bias);
    auto module = std::make_shared<nn::ConvTranspose2dImpl>(options);
    {
      torch::NoGradGuard no_grad;
      module->conv->weight.copy_(w);
      if (bias) {
        const at::Tensor& b = constants_.at(node.inputs[2]);
        TORCH_CHECK(b.numel() == w.size(1) * group, node.describe(), ": bias has ", b.numel(),
                    " values for ", w.size(1) * group, " output channels");
        module->conv->bias.copy_(b.reshape({-1}));
      }
    }
    g.inputs = {node.inputs[0]};
    g.module = module;
    g.function = [t](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
      auto& ct = static_cast<nn::ConvTranspose2dImpl&>(m);
      TORCH_CHECK(in[0].dim() == 4, "ConvTranspose: input must be 4-d, got ", in[0].sizes());
      const auto pads = t.resolve(in[0].sizes().slice(2));
      std::vector<int64_t> padding(2), output_padding(2);
      std::vector<std::pair<int64_t, int64_t>> crop(2);
      for (int i = 0; i < 2; ++i) {
        TORCH_CHECK(pads[i].first >= 0 && pads[i].second >= 0,
                    "ConvTranspose: an output larger than the full transposed convolution ",
                    "(negative padding) is not supported");
        padding[i] = std::min(pads[i].first, pads[i].second);
        output_padding[i] = t.output_padding[i];
        TORCH_CHECK(output_padding[i] < std::max(t.window.strides[i], t.window.dilations[i]),
                    "ConvTranspose: output_padding must be smaller than stride or dilation");
        crop[i] = {padding[i] - pads[i].first, padding[i] - pads[i].second};
      }
      return std::vector<at::Tensor>{
          detail::pad_spatial(ct.forward_with(in[0], padding, output_padding), crop, 0.0)};
    };
  }

  void build_linear(Group& g) {
    const Node& node = nodes_[g.nodes[0]];
    at::Tensor weight, bias;
    if (node.op_type == "Gemm") {
      const at::Tensor& b = constants_.at(node.inputs[1]);
      weight = node.attr_int("transB", 0) != 0 ? b : b.t();
      weight = weight * node.attr_float("alpha", 1.0);
      if (node.has_input(2)) {
        bias = constants_.at(node.inputs[2]).reshape({-1}) * node.attr_float("beta", 1.0);
        if (bias.numel() == 1) bias = bias.expand({weight.size(0)});
      }
    } else {
      weight = constants_.at(node.inputs[1]).t();
    }
    bool relu = false;
    for (size_t k = 1; k < g.nodes.size(); ++k) {
      const Node& n = nodes_[g.nodes[k]];
      if (n.op_type == "Add") {
        bias = constants_.at(other_operand(n, node.outputs[0])).reshape({-1});
      } else if (n.op_type == "Relu") {
        relu = true;
      }
    }
    auto options = nn::LinearOptions(weight.size(1), weight.size(0)).bias(bias.defined());
    std::shared_ptr<nn::detail::LinearBlockImpl> module;
    if (relu)
      module = std::make_shared<nn::LinearReLUImpl>(options);
    else
      module = std::make_shared<nn::LinearImpl>(options);
    {
      torch::NoGradGuard no_grad;
      module->linear->weight.copy_(weight);
      if (bias.defined()) module->linear->bias.copy_(bias);
    }
    g.inputs = {node.inputs[0]};
    g.module = module;
    const bool gemm = node.op_type == "Gemm";
    g.function = [gemm](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
      TORCH_CHECK(!gemm || in[0].dim() == 2, "Gemm: A must be 2-d, got ", in[0].sizes());
      TORCH_CHECK(in[0].dim() >= 1, "MatMul: input must have rank >= 1");
      return std::vector<at::Tensor>{static_cast<nn::detail::LinearBlockImpl&>(m).forward(in[0])};
    };
  }

  // ---------------------------------------------------------------------------------------
  void check_shapes(const ImportedModel& result) {
    std::vector<at::Tensor> inputs;
    for (const auto& in : result.inputs) {
      if (in.shape.empty() && !m_.inputs.empty()) {
        for (const auto& declared : m_.inputs) {
          if (declared.name == in.name && !declared.has_shape) return;  // rank unknown
        }
      }
      std::vector<int64_t> shape;
      int64_t numel = 1;
      for (int64_t d : in.shape) {
        shape.push_back(d < 0 ? 1 : d);
        numel *= std::max<int64_t>(shape.back(), 1);
        if (numel > (int64_t(1) << 22)) return;  // too large for a quick check
      }
      const at::ScalarType type = detail::to_scalar_type(static_cast<int64_t>(in.type), in.name);
      inputs.push_back(at::zeros(shape, at::TensorOptions().dtype(type)));
    }
    torch::NoGradGuard no_grad;
    const bool training = graph_->is_training();
    graph_->eval();
    try {
      graph_->forward(inputs);
    } catch (const c10::Error& e) {
      graph_->train(training);
      TORCH_CHECK(false, "the model's shapes do not fit (checked with zeros of the declared ",
                  "input shapes, dynamic dims as 1): ", e.what_without_backtrace());
    }
    graph_->train(training);
  }

  const Model& m_;
  const ImportOptions& options_;
  std::map<std::string, at::Tensor> constants_;
  std::vector<bool> folded_;
  std::set<std::string> activations_;
  std::map<std::string, std::vector<size_t>> consumers_;
  std::set<std::string> graph_outputs_;
  std::set<size_t> taken_;
  std::vector<Group> groups_;
  std::map<std::string, size_t> producer_;
  std::map<std::string, std::vector<std::pair<size_t, size_t>>> readers_;
  std::map<std::string, std::string> alias_;
  graph::Graph graph_{nullptr};
  // QDQ models.
  std::vector<Node> nodes_;  // the model's nodes, readers of Q -> DQ pairs rewired
  std::map<std::string, detail::WeightQuant> weight_quant_;  // dequantized constants
  std::map<std::string, detail::FixedQuant> fixed_;          // value -> its pair's quantizer
  std::map<std::string, std::vector<size_t>> pair_nodes_;    // value -> its pair's nodes
  std::map<size_t, std::string> pair_of_node_;
  std::map<std::string, detail::FixedQuant> input_fixed_;
  bool qdq_model_ = false;
};

}  // namespace

std::string ImportedModel::module_path(const std::string& onnx_name) const {
  for (const auto& n : nodes) {
    if (n.onnx_name != onnx_name) continue;
    TORCH_CHECK(!n.module.empty(), "ONNX node '", onnx_name, "' (", n.op_type,
                ") was folded into a constant at import; it has no module");
    return n.module;
  }
  std::string some;
  for (size_t i = 0; i < nodes.size() && i < 10; ++i) some += (i ? ", " : "") + nodes[i].onnx_name;
  TORCH_CHECK(false, "the model has no ONNX node named '", onnx_name, "'; nodes include: ", some,
              nodes.size() > 10 ? ", ..." : "");
}

std::vector<std::string> ImportedModel::quantized_modules() const {
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (const auto& node : graph->nodes()) {
    auto* q = node.quant_module();
    if (q != nullptr && (q->is_quantization_point() || q->has_weight()) &&
        seen.insert(node.name).second) {
      out.push_back(node.name);
    }
  }
  return out;
}

std::map<std::string, QConfig> ImportedModel::keep_float(
    const std::vector<std::string>& onnx_names) const {
  std::map<std::string, QConfig> out;
  for (const auto& name : onnx_names) out[module_path(name)] = QConfig{};
  return out;
}

void check_input(const InputInfo& info, const at::Tensor& input) {
  auto declared = [&] {
    std::string s = "[";
    for (size_t i = 0; i < info.shape.size(); ++i) {
      s += (i ? ", " : "") + (info.shape[i] < 0
                                  ? (info.symbols[i].empty() ? std::string("?") : info.symbols[i])
                                  : std::to_string(info.shape[i]));
    }
    return s + "]";
  };
  TORCH_CHECK(input.defined(), "input '", info.name, "' is undefined");
  if (info.shape.empty()) return;
  bool fits = input.dim() == static_cast<int64_t>(info.shape.size());
  for (size_t i = 0; fits && i < info.shape.size(); ++i) {
    fits = info.shape[i] < 0 || input.size(static_cast<int64_t>(i)) == info.shape[i];
  }
  TORCH_CHECK(fits, "input '", info.name, "' has shape ", input.sizes(), " but the model expects ",
              declared());
}

at::Tensor to_tensor(const TensorData& data) {
  return detail::to_tensor(data);
}

ImportedModel import_model(const Model& model, const ImportOptions& options) {
  try {
    return Importer(model, options).run();
  } catch (const c10::Error&) {
    throw;
  } catch (const std::exception& e) {
    // ATen throws std::runtime_error from a few checks; callers get a c10::Error.
    TORCH_CHECK(false, "importing the model failed: ", e.what());
  }
}

ImportedModel import_bytes(const void* data, size_t size, const ImportOptions& options) {
  ParseOptions parse;
  parse.run_checker = options.run_checker();
  return import_model(parse_model_bytes(data, size, parse), options);
}

ImportedModel import(const std::string& path, const ImportOptions& options) {
  ParseOptions parse;
  parse.run_checker = options.run_checker();
  Model model = parse_model_file(path, parse);
  try {
    return import_model(model, options);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "ONNX model '", path, "': ", e.what_without_backtrace());
  }
}

}  // namespace onnx
}  // namespace calq
