#pragma once
// The dataflow of a model built from calq::nn modules, recorded by running it once: which
// module reads which tensor. A hand-written C++ model's forward is opaque; its trace is what
// the deployment exporter, the integer engine and the per-layer analysis walk.

#include <torch/nn/module.h>

#include <functional>
#include <string>
#include <vector>

#include "calq/fake_quantize.h"
#include "calq/nn/quant_module.h"

namespace calq {

/// One tensor of the traced forward.
struct TracedValue {
  int64_t id = 0;
  std::vector<int64_t> shape;
  /// Index into Trace::calls of the call that produced it; -1 for a model input.
  int64_t producer = -1;
};

/// One call of a calq::nn module.
struct TracedCall {
  std::string path;                       ///< module path as in named_modules()
  nn::QuantModuleImpl* module = nullptr;  ///< the module (owned by the model)
  std::vector<int64_t> inputs;            ///< value ids, in argument order
  int64_t output = -1;                    ///< value id
};

/// Calls in execution order (a topological order of the dataflow graph).
struct Trace {
  std::vector<TracedCall> calls;
  std::vector<TracedValue> values;
  std::vector<int64_t> inputs;   ///< value ids of the model inputs
  std::vector<int64_t> outputs;  ///< value ids of the model outputs
  /// Indices of the calls that read value `id`.
  std::vector<int64_t> consumers(int64_t id) const;
  /// The call that produced value `id`, or nullptr for a model input.
  const TracedCall* producer(int64_t id) const;
};

/// images -> outputs of a model.
using TraceForward = std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>&)>;

/// Runs `forward` once on `inputs` (without gradients, in eval mode, quantizers passing values
/// through and observing nothing: the model, its observers and modes are left as they
/// are) and records every calq::nn module call. Every tensor a module reads must be a model
/// input or the output of an earlier calq::nn module: a tensor computed in between by plain
/// ATen code (at::add, a view) is an error naming the module that read it, since export and
/// analysis could not see that computation. Every module of the model that ran appears once
/// per call (a module called twice appears twice).
Trace trace(torch::nn::Module& model, const TraceForward& forward,
            const std::vector<at::Tensor>& inputs);
/// Single input, single output.
Trace trace(torch::nn::Module& model, const std::function<at::Tensor(const at::Tensor&)>& forward,
            const at::Tensor& input);

/// The output quantizer whose grid value `id` lies on: the producing module's output
/// quantizer, looking through pass-through modules (MaxPool2d, Flatten, Identity,
/// DeQuantStub, and any module that is not a quantization point) to their input. Empty for a
/// model input or a float value.
FakeQuantize quantizer_of(const Trace& trace, int64_t id);

/// For every module, records the quantizer of each input (QuantModuleImpl::
/// set_input_quantizers), so that in VALIDATION a weighted module adds its bias as the deployed
/// integer kernel does (quantize_bias) and integer arithmetic (calq::set_integer_arithmetic)
/// knows every operand's grid. Call it after prepare_qat (and after a load); returns how many
/// weighted modules were linked to an input quantizer.
int64_t link_input_quantizers(const Trace& trace);

}  // namespace calq
