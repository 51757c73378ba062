#include "calq/nn/stubs.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace calq {
namespace nn {

QuantStubImpl::QuantStubImpl(QuantStubOptions options_)
    : QuantModuleImpl("QuantStub"), options(std::move(options_)) {
  if (options.fixed_scale()) {
    const double scale = *options.fixed_scale();
    TORCH_CHECK(std::isfinite(scale) && scale > 0, "QuantStub: fixed_scale must be finite and ",
                "> 0, got ", scale);
  }
}

void QuantStubImpl::prepare(const QConfig& resolved) {
  if (!options.fixed_scale() || !resolved.activation) {
    QuantModuleImpl::prepare(resolved);
    return;
  }
  // Keep the grid (dtype, range, rounding, power of two) of the qconfig, replace the
  // observer: the input scale is given, not observed.
  QConfig fixed = resolved;
  FakeQuantConfig& activation = *fixed.activation;
  nlohmann::json qkwargs = nlohmann::json::object();
  for (const char* key : {"dtype", "quant_min", "quant_max", "rounding", "power_of_two"}) {
    if (activation.qkwargs.contains(key)) qkwargs[key] = activation.qkwargs[key];
  }
  qkwargs["scale"] = *options.fixed_scale();
  activation.method = "fake_quant";
  activation.observer = "fixed_scale";
  activation.qkwargs = qkwargs;
  QuantModuleImpl::prepare(fixed);
}

}  // namespace nn
}  // namespace calq
