// The integer reference engine (docs/deploy.md, "Integer engine"). Integer tensors are held as
// float64 with integer values while they are combined (convolutions and matrix products of
// integers below 2^16 sum exactly in float64 up to 2^53) and as int64 otherwise; every float32
// step of the runtime is written out as one float32 operation (`fr` in the docs).
#include "calq/deploy/integer_engine.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <map>

#include "calq/fake_quantize.h"
#include "calq/graph/graph.h"
#include "calq/nn.h"
#include "calq/nn/float_function.h"
#include "calq/quant/integer_arithmetic.h"
#include "calq/quant/qparams.h"
#include "deploy/validation_scope.h"
#include "onnx/import/geometry.h"

namespace calq {
namespace deploy {
namespace {

// A value during the run: quantized (stored integers on a grid) or float.
struct EngineValue {
  bool quantized = false;
  at::Tensor q;     // int64 stored integers
  StoredGrid grid;  // their grid as stored
  at::Tensor real;  // float32, for float values
  QuantSpec spec;
  // A float value that keeps a grid for its readers without being on it (a constant Pad
  // whose value is off the grid: the export writes no QuantizeLinear after it, yet the
  // weighted layer reading it adds an int32 bias at this grid's scale and a pass-through op
  // after it is requantized onto the grid, as the simulation does).
  bool grid_hint = false;
};

// The stored grid of an output quantizer under the profile.
EngineValue grid_of(const FakeQuantizeImpl& fq, const Profile& profile) {
  TORCH_CHECK(!fq.spec().per_channel(),
              "integer engine: per-channel activations are not supported");
  EngineValue v;
  v.quantized = true;
  v.spec = fq.spec();
  v.grid = fq.stored_grid(profile.uint8_activations);
  return v;
}

at::Tensor quantize(const at::Tensor& x, const EngineValue& grid) {
  return integer::quantize_linear(x, grid.grid).to(at::kLong);
}

at::Tensor dequantize(const EngineValue& v) {
  if (!v.quantized) return v.real;
  return integer::dequantize_linear(v.q, v.grid);
}

class Engine {
 public:
  explicit Engine(const IntegerEngineOptions& options) : options_(options) {}

  IntegerResult run(const Trace& trace, const std::vector<at::Tensor>& inputs) {
    TORCH_CHECK(inputs.size() == trace.inputs.size(), "integer engine: the model takes ",
                trace.inputs.size(), " inputs, got ", inputs.size());
    values_.assign(trace.values.size(), EngineValue());
    for (size_t i = 0; i < inputs.size(); ++i) {
      EngineValue v;
      v.real = inputs[i].to(at::kFloat).contiguous();
      values_[trace.inputs[i]] = v;
    }
    // Values without producer that are not inputs: a parameter read directly by a module.
    std::vector<bool> known(trace.values.size(), false);
    for (int64_t id : trace.inputs) known[id] = true;
    for (const TracedCall& call : trace.calls) known[call.output] = true;
    IntegerResult result;
    for (const TracedCall& call : trace.calls) {
      for (int64_t id : call.inputs) {
        TORCH_CHECK(known[id], "integer engine: ", call.path,
                    " reads a parameter or buffer directly, not a model input or a calq::nn "
                    "module's output; the engine runs traced models on their dataflow only");
      }
      const EngineValue out = run_call(call);
      values_[call.output] = out;
      if (options_.keep_integers() && out.quantized) {
        result.integers[call.path] =
            IntegerTensor{out.q, at::full({1}, out.grid.scale), out.grid.zero};
      }
    }
    for (int64_t id : trace.outputs) add_output(result, values_[id]);
    return result;
  }

  // A graph (an imported ONNX model) node by node: calq::nn modules as in a trace; every
  // FloatFunction node in float on the dequantized values of its inputs, its outputs quantized
  // where the export writes a QuantizeLinear (its own output quantizer, or the input's grid
  // for a pass-through op such as MaxPool or Reshape, whose outputs are input values: there the
  // float detour is exact, as the runtime's int8 kernels of those ops are).
  IntegerResult run(graph::GraphImpl& g, const std::vector<at::Tensor>& inputs) {
    TORCH_CHECK(inputs.size() == g.input_names().size(), "integer engine: the model takes ",
                g.input_names().size(), " inputs, got ", inputs.size());
    values_.clear();
    graph_ = &g;
    std::map<std::string, int64_t> ids;
    auto id_of = [&](const std::string& name) {
      auto it = ids.find(name);
      if (it != ids.end()) return it->second;
      const auto id = static_cast<int64_t>(values_.size());
      values_.emplace_back();
      if (!name.empty()) ids[name] = id;
      if (g.is_constant(name)) values_.back().real = g.constant(name).detach();
      return id;
    };
    for (size_t i = 0; i < inputs.size(); ++i) {
      // Floating inputs as float32 (the export's input type); integer inputs (token ids) as
      // they are.
      const at::Tensor& x = inputs[i];
      values_[id_of(g.input_names()[i])].real =
          (at::isFloatingType(x.scalar_type()) ? x.to(at::kFloat) : x).contiguous();
    }
    IntegerResult result;
    for (const graph::Node& node : g.nodes()) {
      TracedCall call;
      call.path = node.name;
      call.module = node.quant_module();
      TORCH_CHECK(call.module != nullptr, "integer engine: node '", node.name, "' (", node.op_type,
                  ") holds a module that is not a calq::nn module");
      for (const std::string& in : node.inputs) call.inputs.push_back(id_of(in));
      std::vector<int64_t> outputs;
      for (const std::string& out : node.outputs) outputs.push_back(id_of(out));
      try {
        if (auto* ff = dynamic_cast<nn::FloatFunctionImpl*>(call.module)) {
          run_float_function(node, *ff, call, outputs);
        } else if (runs_in_float(*call.module)) {
          run_float_module(node, call, outputs);
        } else {
          TORCH_CHECK(!outputs.empty(), "the node has no output");
          pad_explicitly(node, call);
          values_[outputs[0]] = run_call(call);
        }
      } catch (const c10::Error& e) {
        std::string why = e.what_without_backtrace();
        const std::string prefix = "integer engine: ";
        if (why.compare(0, prefix.size(), prefix) == 0) why = why.substr(prefix.size());
        TORCH_CHECK(false, "integer engine: node '", node.name, "' (", node.op_type, "): ", why);
      } catch (const std::exception& e) {
        TORCH_CHECK(false, "integer engine: node '", node.name, "' (", node.op_type,
                    "): ", e.what());
      }
      if (!options_.keep_integers()) continue;
      for (size_t k = 0; k < outputs.size(); ++k) {
        const EngineValue& v = values_[outputs[k]];
        if (node.outputs[k].empty() || !v.quantized) continue;
        const std::string key =
            outputs.size() == 1 ? node.name : node.name + "/" + std::to_string(k);
        result.integers[key] = IntegerTensor{v.q, at::full({1}, v.grid.scale), v.grid.zero};
      }
    }
    for (const std::string& name : g.output_names()) add_output(result, values_[id_of(name)]);
    return result;
  }

 private:
  const EngineValue& input(const TracedCall& call, size_t i) const {
    return values_[call.inputs.at(i)];
  }

  static void add_output(IntegerResult& result, const EngineValue& v) {
    result.outputs.push_back(dequantize(v));
    result.output_integers.push_back(v.quantized
                                         ? c10::optional<IntegerTensor>(IntegerTensor{
                                               v.q, at::full({1}, v.grid.scale), v.grid.zero})
                                         : c10::nullopt);
  }

  // The node's inputs as real numbers (an undefined tensor for an omitted optional input).
  std::vector<at::Tensor> dequantized_inputs(const graph::Node& node,
                                             const TracedCall& call) const {
    std::vector<at::Tensor> args;
    for (size_t i = 0; i < call.inputs.size(); ++i) {
      args.push_back(node.inputs[i].empty() ? at::Tensor() : dequantize(input(call, i)));
    }
    return args;
  }

  void run_float_function(const graph::Node& node, nn::FloatFunctionImpl& ff,
                          const TracedCall& call, const std::vector<int64_t>& outputs) {
    const std::vector<at::Tensor> args = dequantized_inputs(node, call);
    std::vector<at::Tensor> results;
    {
      // The quantizers are applied below, on the stored grid; the node's own must neither
      // round twice nor observe.
      PassThroughScope pass_through;
      results = node.function(ff, args);
    }
    const FakeQuantize fq = ff.output_fake_quant();
    const bool pass = graph::is_pass_through(node) && !call.inputs.empty() &&
                      !node.inputs[0].empty() &&
                      (input(call, 0).quantized || input(call, 0).grid_hint);
    for (size_t k = 0; k < outputs.size() && k < results.size(); ++k) {
      EngineValue v;
      v.real = results[k];
      const bool floating = results[k].defined() && at::isFloatingType(results[k].scalar_type());
      if (floating && !fq.is_empty()) {
        v = grid_of(*fq, options_.profile());
        v.q = quantize(results[k], v);
      } else if (floating && pass && pads_off_grid(node)) {
        v = input(call, 0);
        v.quantized = false;
        v.grid_hint = true;
        v.q = at::Tensor();
        v.real = results[k];
      } else if (floating && pass) {
        v = input(call, 0);
        v.quantized = true;
        v.grid_hint = false;
        v.real = at::Tensor();
        v.q = quantize(results[k], v);
      }
      values_[outputs[k]] = v;
    }
  }

  // A convolution node with asymmetric or automatic padding: the importer builds its module
  // without padding and pads the input in the node's function; here the input is padded with
  // the zero point (real 0, exact on the grid), as the exported Conv's pads do.
  void pad_explicitly(const graph::Node& node, TracedCall& call) {
    auto* conv = dynamic_cast<nn::detail::ConvBlockImpl*>(call.module);
    if (conv == nullptr || call.inputs.empty()) return;
    const auto& o = conv->conv->options;
    const auto& padding = c10::get<torch::ExpandingArray<2>>(o.padding());
    const EngineValue& x = input(call, 0);
    const at::Tensor& t = x.quantized ? x.q : x.real;
    TORCH_CHECK(t.dim() == 4, "Conv: input must be 4-d, got ", t.sizes());
    // The importer's padding rule (explicit pads or auto_pad) on the node's attributes.
    onnx::detail::Window window;
    window.spatial = 2;
    window.kernel = conv->conv->weight.sizes().slice(2).vec();
    window.strides = {(*o.stride())[0], (*o.stride())[1]};
    window.dilations = {(*o.dilation())[0], (*o.dilation())[1]};
    window.pads = {0, 0, 0, 0};
    if (auto it = node.attributes.find("auto_pad"); it != node.attributes.end()) {
      if (const auto* v = c10::get_if<std::string>(&it->second)) window.auto_pad = *v;
    }
    if (auto it = node.attributes.find("pads"); it != node.attributes.end()) {
      if (const auto* v = c10::get_if<std::vector<int64_t>>(&it->second)) window.pads = *v;
    }
    TORCH_CHECK(window.pads.size() == 4, "Conv: pads has ", window.pads.size(),
                " values, expected 4");
    const auto pads = window.resolve(t.sizes().slice(2));
    bool explicit_pads = false;
    for (size_t i = 0; i < pads.size(); ++i) {
      explicit_pads |= pads[i].first != pads[i].second || pads[i].first != (*padding)[i];
    }
    if (!explicit_pads) return;
    TORCH_CHECK((*padding)[0] == 0 && (*padding)[1] == 0,
                "asymmetric pads on a module that pads itself");
    EngineValue padded = x;
    if (x.quantized) {
      padded.q = onnx::detail::pad_spatial(x.q, pads, static_cast<double>(x.grid.zero));
    } else {
      padded.real = onnx::detail::pad_spatial(x.real, pads, 0.0);
    }
    call.inputs[0] = static_cast<int64_t>(values_.size());
    values_.push_back(padded);
  }

  // Quantization points the runtime runs as DequantizeLinear -> float op -> QuantizeLinear
  // (ConvTranspose's weights dequantized, LayerNormalization, ReduceMean over other axes than
  // a global average).
  static bool runs_in_float(const nn::QuantModuleImpl& m) {
    return dynamic_cast<const nn::ConvTranspose2dImpl*>(&m) != nullptr ||
           dynamic_cast<const nn::LayerNormImpl*>(&m) != nullptr ||
           dynamic_cast<const nn::ReduceMeanImpl*>(&m) != nullptr;
  }

  // The module's own forward (in VALIDATION: weights fake-quantized as the export dequantizes
  // them, the output on its grid) on the dequantized inputs; the result is stored as integers.
  void run_float_module(const graph::Node& node, const TracedCall& call,
                        const std::vector<int64_t>& outputs) {
    const std::vector<at::Tensor> results =
        node.function(*node.module, dequantized_inputs(node, call));
    TORCH_CHECK(!outputs.empty() && !results.empty(), "no output");
    values_[outputs[0]] = close_float(call, results[0]);
  }

  // A constant Pad whose value is not on the input's grid: the export keeps the padded
  // tensor float (no QuantizeLinear after it).
  bool pads_off_grid(const graph::Node& node) const {
    if (node.op_type != "Pad" || node.inputs.size() < 3 || node.inputs[2].empty()) return false;
    auto mode = node.attributes.find("mode");
    if (mode != node.attributes.end()) {
      const auto* name = c10::get_if<std::string>(&mode->second);
      if (name != nullptr && *name != "constant") return false;
    }
    if (graph_ == nullptr || !graph_->is_constant(node.inputs[2])) return true;
    return graph_->constant(node.inputs[2]).to(at::kDouble).reshape({}).item<double>() != 0.0;
  }

  // The module's output quantizer applied to a float value, or the float value itself.
  EngineValue close_float(const TracedCall& call, const at::Tensor& real) {
    const FakeQuantize fq = call.module->output_fake_quant();
    if (fq.is_empty()) {
      EngineValue v;
      v.real = real;
      return v;
    }
    EngineValue v = grid_of(*fq, options_.profile());
    v.q = quantize(real, v);
    return v;
  }

  // ReLU / ReLU6 after an op whose output is already on the grid (the export writes
  // op -> Q -> DQ -> activation -> Q -> DQ): ReLU is max(q, z); ReLU6 clips the dequantized
  // values at [0, 6] in float and quantizes them again.
  EngineValue activate(EngineValue v, const char* activation) const {
    if (activation == nullptr) return v;
    if (!v.quantized) {
      v.real = std::string(activation) == "relu" ? at::relu(v.real) : at::clamp(v.real, 0.0, 6.0);
      return v;
    }
    v.q = (std::string(activation) == "relu" ? integer::relu(v.q, v.grid)
                                             : integer::relu6(v.q, v.grid))
              .to(at::kLong);
    return v;
  }

  // Integer weights and bias of a weighted module, per output channel.
  static nn::IntegerWeights integer_weights(const TracedCall& call, const at::Tensor& weight,
                                            const at::Tensor& bias, const EngineValue& x) {
    TORCH_CHECK(!call.module->weight_fake_quant().is_empty(), "integer engine: ", call.path,
                " has a float weight; every weight must be quantized");
    return call.module->integer_weights(weight, bias, x.grid.scale);
  }

  // The bias a float-input layer adds: int32 at s_x * s_w (dequantized) when its input keeps a
  // grid (grid_hint), as the export writes it; the float bias otherwise.
  static at::Tensor hinted_bias(nn::QuantModuleImpl& m, const at::Tensor& bias,
                                const EngineValue& x) {
    if (!x.grid_hint || !bias.defined() || m.weight_fake_quant().is_empty()) return bias;
    return quantize_bias(bias, x.grid.scale, m.deployed_weight_scale(bias, x.grid.scale))
        .dequantized();
  }

  EngineValue weighted_output(const TracedCall& call, const at::Tensor& acc,
                              const nn::IntegerWeights& w, const EngineValue& x,
                              const char* activation) {
    const FakeQuantize fq = call.module->output_fake_quant();
    if (fq.is_empty()) {
      // No output quantizer: fr(float(acc) * fr(s_x * s_w)) (QGemm / MatMulIntegerToFloat).
      EngineValue v;
      v.real = integer::float_output(acc, x.grid.scale, w.scale);
      return activate(v, activation);
    }
    EngineValue v = grid_of(*fq, options_.profile());
    v.q = integer::requantize(
              acc, integer::requantization_multipliers(x.grid.scale, w.scale, v.grid.scale), v.grid,
              options_.requantization())
              .to(at::kLong);
    return activate(v, activation);
  }

  EngineValue run_conv(const TracedCall& call, nn::detail::ConvBlockImpl& conv) {
    const EngineValue& x = input(call, 0);
    const char* activation = conv.activation() == nn::Activation::relu    ? "relu"
                             : conv.activation() == nn::Activation::relu6 ? "relu6"
                                                                          : nullptr;
    const auto folded = conv.folded_weight_and_bias();
    const auto& o = conv.conv->options;
    const auto& padding = c10::get<torch::ExpandingArray<2>>(o.padding());
    if (!x.quantized || conv.output_fake_quant().is_empty()) {
      // A float input, or a float output (QLinearConv needs an output quantizer): the runtime
      // dequantizes and runs this convolution in float, adding the dequantized int32 bias.
      const bool quantized_bias = x.quantized || x.grid_hint;
      const at::Tensor weight =
          conv.weight_fake_quant().is_empty() ? folded.first
          : quantized_bias ? conv.deployed_weight(folded.first, folded.second, x.grid.scale)
                           : conv.weight_fake_quant()->forward(folded.first);
      const at::Tensor bias =
          x.quantized && !conv.weight_fake_quant().is_empty()
              ? quantize_bias(folded.second, x.grid.scale,
                              conv.deployed_weight_scale(folded.second, x.grid.scale))
                    .dequantized()
              : hinted_bias(conv, folded.second, x);
      const at::Tensor y =
          at::conv2d(dequantize(x), weight, bias, *o.stride(), *padding, *o.dilation(), o.groups());
      return activate(close_float(call, y), activation);
    }
    const nn::IntegerWeights w = integer_weights(call, folded.first, folded.second, x);
    at::Tensor acc = at::conv2d((x.q - x.grid.zero).to(at::kDouble), w.values, {}, *o.stride(),
                                *padding, *o.dilation(), o.groups());
    acc = acc + w.bias.reshape({1, -1, 1, 1});
    return weighted_output(call, acc, w, x, activation);
  }

  EngineValue run_linear(const TracedCall& call, nn::detail::LinearBlockImpl& linear) {
    const EngineValue& x = input(call, 0);
    const at::Tensor bias = linear.linear->bias.defined()
                                ? linear.linear->bias
                                : at::zeros({linear.linear->weight.size(0)});
    const char* activation = linear.relu() ? "relu" : nullptr;
    if (linear.weight_fake_quant().is_empty()) {
      // A float weight (kept float by the qconfig): the runtime dequantizes the input and
      // runs the product in float with the float bias.
      return activate(
          close_float(call, at::linear(dequantize(x), linear.linear->weight, linear.linear->bias)),
          activation);
    }
    if (!x.quantized) {  // a float input: the product in float, the bias as the export writes it
      const at::Tensor weight =
          x.grid_hint ? linear.deployed_weight(linear.linear->weight, bias, x.grid.scale)
                      : linear.weight_fake_quant()->forward(linear.linear->weight);
      return activate(close_float(call, at::linear(x.real, weight, hinted_bias(linear, bias, x))),
                      activation);
    }
    const nn::IntegerWeights w = integer_weights(call, linear.linear->weight, bias, x);
    // Inputs of more than 2 dimensions ([N, T, K] of a transformer's MatMul): the product over
    // the last axis, channels requantized as rows of a 2-d accumulator, shape restored.
    const int64_t k = x.q.size(-1);
    const at::Tensor acc =
        at::mm((x.q - x.grid.zero).to(at::kDouble).reshape({-1, k}), w.values.t()) + w.bias;
    EngineValue out = weighted_output(call, acc, w, x, activation);
    std::vector<int64_t> shape = x.q.sizes().vec();
    shape.back() = acc.size(1);
    if (out.quantized) {
      out.q = out.q.reshape(shape);
    } else {
      out.real = out.real.reshape(shape);
    }
    return out;
  }

  // QLinearAdd (calq::integer::add).
  EngineValue run_add(const TracedCall& call, bool relu) {
    const EngineValue& a = input(call, 0);
    const EngineValue& b = input(call, 1);
    const FakeQuantize fq = call.module->output_fake_quant();
    if (!a.quantized || !b.quantized || fq.is_empty()) {
      const at::Tensor y = at::add(dequantize(a), dequantize(b));
      return activate(close_float(call, y), relu ? "relu" : nullptr);
    }
    EngineValue out = grid_of(*fq, options_.profile());
    out.q = integer::add(a.q, a.grid, b.q, b.grid, out.grid).to(at::kLong);
    return activate(out, relu ? "relu" : nullptr);
  }

  // QLinearMul (calq::integer::mul).
  EngineValue run_mul(const TracedCall& call) {
    const EngineValue& a = input(call, 0);
    const EngineValue& b = input(call, 1);
    const FakeQuantize fq = call.module->output_fake_quant();
    if (!a.quantized || !b.quantized || fq.is_empty()) {
      return close_float(call, at::mul(dequantize(a), dequantize(b)));
    }
    EngineValue out = grid_of(*fq, options_.profile());
    out.q = integer::mul(a.q, a.grid, b.q, b.grid, out.grid).to(at::kLong);
    return out;
  }

  // QLinearMatMul of two activations (calq::integer::matmul).
  EngineValue run_matmul(const TracedCall& call) {
    const EngineValue& a = input(call, 0);
    const EngineValue& b = input(call, 1);
    const FakeQuantize fq = call.module->output_fake_quant();
    if (!a.quantized || !b.quantized || fq.is_empty()) {
      return close_float(call, at::matmul(dequantize(a), dequantize(b)));
    }
    EngineValue out = grid_of(*fq, options_.profile());
    out.q = integer::matmul(a.q, a.grid, b.q, b.grid, out.grid).to(at::kLong);
    return out;
  }

  // QLinearConcat: each input requantized as Q_y(DQ_x(x)) (a copy when the grids are equal).
  EngineValue run_cat(const TracedCall& call, const nn::CatImpl& cat) {
    const FakeQuantize fq = call.module->output_fake_quant();
    bool all_quantized = !fq.is_empty();
    for (size_t i = 0; i < call.inputs.size(); ++i) all_quantized &= input(call, i).quantized;
    if (!all_quantized) {
      std::vector<at::Tensor> parts;
      for (size_t i = 0; i < call.inputs.size(); ++i) parts.push_back(dequantize(input(call, i)));
      return close_float(call, at::cat(parts, cat.dim));
    }
    EngineValue out = grid_of(*fq, options_.profile());
    std::vector<at::Tensor> parts;
    for (size_t i = 0; i < call.inputs.size(); ++i) {
      const EngineValue& x = input(call, i);
      parts.push_back(x.grid.scale == out.grid.scale && x.grid.zero == out.grid.zero
                          ? x.q
                          : quantize(dequantize(x), out));
    }
    out.q = at::cat(parts, cat.dim);
    return out;
  }

  EngineValue run_pool(const TracedCall& call, std::vector<int64_t> kernel,
                       std::vector<int64_t> stride, std::vector<int64_t> pad,
                       bool count_include_pad, bool ceil_mode) {
    const EngineValue& x = input(call, 0);
    const FakeQuantize fq = call.module->output_fake_quant();
    const at::Tensor real_out =
        at::avg_pool2d(dequantize(x), kernel, stride, pad, ceil_mode, count_include_pad);
    if (!x.quantized || fq.is_empty()) return close_float(call, real_out);
    EngineValue out = grid_of(*fq, options_.profile());
    const bool whole_image =
        kernel[0] == x.q.size(2) && kernel[1] == x.q.size(3) && pad[0] == 0 && pad[1] == 0;
    out.q = (whole_image ? integer::global_average(x.q, x.grid, out.grid)
                         : integer::window_average(x.q, x.grid, out.grid, kernel, stride, pad,
                                                   count_include_pad, ceil_mode))
                .to(at::kLong);
    return out;
  }

  EngineValue run_call(const TracedCall& call) {
    nn::QuantModuleImpl* m = call.module;
    const std::string& type = m->type_name();
    if (type == "QuantStub") {
      const EngineValue& x = input(call, 0);
      return close_float(call, dequantize(x));
    }
    if (type == "DeQuantStub" || type == "Identity") return input(call, 0);
    if (auto* conv = dynamic_cast<nn::detail::ConvBlockImpl*>(m)) return run_conv(call, *conv);
    if (auto* linear = dynamic_cast<nn::detail::LinearBlockImpl*>(m)) {
      return run_linear(call, *linear);
    }
    if (type == "Add" || type == "AddReLU") return run_add(call, type == "AddReLU");
    if (type == "Mul") return run_mul(call);
    if (type == "MatMul") return run_matmul(call);
    if (auto* cat = dynamic_cast<nn::CatImpl*>(m)) return run_cat(call, *cat);
    if (type == "ReLU" || type == "ReLU6") {
      const EngineValue& x = input(call, 0);
      const FakeQuantize fq = call.module->output_fake_quant();
      if (!x.quantized || fq.is_empty()) {
        const at::Tensor y =
            type == "ReLU" ? at::relu(dequantize(x)) : at::clamp(dequantize(x), 0.0, 6.0);
        return close_float(call, y);
      }
      // DQ -> activation -> Q onto the module's own grid.
      EngineValue out = grid_of(*fq, options_.profile());
      const at::Tensor y =
          type == "ReLU" ? at::relu(dequantize(x)) : at::clamp(dequantize(x), 0.0, 6.0);
      out.q = quantize(y, out);
      return out;
    }
    if (auto* pool = dynamic_cast<nn::MaxPool2dImpl*>(m)) {
      const EngineValue& x = input(call, 0);
      const auto& o = pool->pool->options;
      EngineValue out = x;
      const at::Tensor source = x.quantized ? x.q.to(at::kDouble) : x.real;
      const at::Tensor y = at::max_pool2d(source, *o.kernel_size(), *o.stride(), *o.padding(),
                                          *o.dilation(), o.ceil_mode());
      if (x.quantized) {
        out.q = y.to(at::kLong);
      } else {
        out.real = y;
      }
      return out;
    }
    if (auto* pool = dynamic_cast<nn::AvgPool2dImpl*>(m)) {
      const auto& o = pool->pool->options;
      return run_pool(call, {(*o.kernel_size())[0], (*o.kernel_size())[1]},
                      {(*o.stride())[0], (*o.stride())[1]}, {(*o.padding())[0], (*o.padding())[1]},
                      o.count_include_pad(), o.ceil_mode());
    }
    if (auto* adaptive = dynamic_cast<nn::AdaptiveAvgPool2dImpl*>(m)) {
      const at::Tensor x = dequantize(input(call, 0));
      const at::Tensor y = adaptive->pool->forward(x);
      TORCH_CHECK(x.size(2) % y.size(2) == 0 && x.size(3) % y.size(3) == 0,
                  "integer engine: ", call.path, " pools ", x.sizes(), " to ", y.sizes(),
                  "; only whole windows (sizes that divide) are supported");
      const std::vector<int64_t> k = {x.size(2) / y.size(2), x.size(3) / y.size(3)};
      return run_pool(call, k, k, {0, 0}, true, false);
    }
    if (auto* flatten = dynamic_cast<nn::FlattenImpl*>(m)) {
      EngineValue out = input(call, 0);
      const int64_t start = flatten->flatten->options.start_dim();
      if (out.quantized) {
        out.q = out.q.flatten(start);
      } else {
        out.real = out.real.flatten(start);
      }
      return out;
    }
    TORCH_CHECK(false, "integer engine: ", type, " '", call.path, "' is not supported");
  }

  const IntegerEngineOptions& options_;
  std::vector<EngineValue> values_;
  const graph::GraphImpl* graph_ = nullptr;  // while running a graph
};

}  // namespace

// Both entry points run the model in eval mode with every quantizer in VALIDATION (no
// observer updates; a module's own forward quantizes its weights as exported), whatever state
// the caller left it in; the states are restored on return and on error.
IntegerResult run_integer(torch::nn::Module& model, const Trace& trace,
                          const std::vector<at::Tensor>& inputs,
                          const IntegerEngineOptions& options) {
  at::NoGradGuard no_grad;
  detail::ValidationScope validation(model);
  return Engine(options).run(trace, inputs);
}

IntegerResult run_integer(graph::GraphImpl& graph, const std::vector<at::Tensor>& inputs,
                          const IntegerEngineOptions& options) {
  at::NoGradGuard no_grad;
  detail::ValidationScope validation(graph);
  return Engine(options).run(graph, inputs);
}

}  // namespace deploy
}  // namespace calq
