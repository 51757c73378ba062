// Frontend of the fake-quant methods: validates user input, allocates, calls the kernels of
// src/kernels/ and wires them into autograd (docs/quantization.md, section 3).

#include "calq/quant/fake_quant.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>

#include <cmath>
#include <limits>

#include "calq/quant/qparams.h"
#include "kernels/fake_quant_kernels.h"
#include "quant/small_tensor.h"

namespace calq {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void check_x(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.defined(), op, ": x is an undefined tensor");
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor, got device ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64, got ", x.scalar_type());
}

// A scale is usable when it is finite and positive and, in x's dtype, neither it nor its
// reciprocal over- or underflows (the kernels multiply by 1 / scale).
void check_scale_value(double scale, at::ScalarType dtype, const char* op, const char* name,
                       int64_t index) {
  TORCH_CHECK(std::isfinite(scale) && scale > 0, op, ": ", name, "[", index, "] = ", scale,
              " is invalid; it must be finite and positive");
  bool representable = true;
  if (dtype == at::kFloat) {
    const float s = static_cast<float>(scale);
    representable = std::isnormal(s) && std::isfinite(1.0f / s);
  } else {
    representable = std::isnormal(scale) && std::isfinite(1.0 / scale);
  }
  TORCH_CHECK(representable, op, ": ", name, "[", index, "] = ", scale,
              " is invalid; it and its reciprocal must be finite, normalized numbers in ", dtype);
}

int64_t normalize_axis(int64_t axis, int64_t dim, const char* op) {
  TORCH_CHECK(axis >= -dim && axis < dim, op, ": ch_axis ", axis, " is out of range for x with ",
              dim, " dimensions; valid axes are [", -dim, ", ", dim - 1, "]");
  return axis < 0 ? axis + dim : axis;
}

// The zero points as int64 {C}.
at::Tensor zero_points(const at::Tensor& zero_point, const at::Tensor& scale, const QuantSpec& spec,
                       const char* op) {
  const int64_t n = scale.numel();
  TORCH_CHECK(zero_point.numel() == n, op, ": zero_point must have as many elements as scale (", n,
              "), got shape ", zero_point.sizes());
  const at::Tensor values = detail::to_double_vector(zero_point);
  const double* data = values.data_ptr<double>();
  at::Tensor out = at::empty({n}, at::kLong);
  int64_t* out_data = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(std::nearbyint(data[i]) == data[i], op, ": zero_point[", i, "] = ", data[i],
                " is invalid; zero points must be integers");
    TORCH_CHECK(data[i] >= spec.quant_min() && data[i] <= spec.quant_max(), op, ": zero_point[", i,
                "] = ", data[i], " is outside the quant range [", spec.quant_min(), ", ",
                spec.quant_max(), "]");
    out_data[i] = static_cast<int64_t>(data[i]);
  }
  return out;
}

kernels::Grid make_grid(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                        const QuantSpec& spec, const char* op) {
  check_x(x, op);
  spec.validate();
  TORCH_CHECK(scale.defined() && at::isFloatingType(scale.scalar_type()), op,
              ": scale must be a floating tensor");
  kernels::Grid grid;
  grid.quant_min = spec.quant_min();
  grid.quant_max = spec.quant_max();
  grid.rounding = spec.rounding();
  if (spec.per_channel()) {
    TORCH_CHECK(x.dim() > 0, op,
                ": per-channel quantization needs x with at least one "
                "dimension, got a 0-dim tensor");
    grid.axis = normalize_axis(spec.ch_axis(), x.dim(), op);
    const int64_t channels = x.size(grid.axis);
    TORCH_CHECK(scale.dim() == 1 && scale.numel() == channels, op,
                ": per-channel scale must have shape {", channels, "} (x.size(", grid.axis,
                ")), got shape ", scale.sizes());
  } else {
    TORCH_CHECK(scale.dim() <= 1 && scale.numel() == 1, op,
                ": per-tensor scale must have exactly one element (shape {1}), got shape ",
                scale.sizes());
  }
  grid.scale = detail::to_double_vector(scale);
  const double* s = grid.scale.data_ptr<double>();
  for (int64_t i = 0; i < grid.scale.numel(); ++i) {
    check_scale_value(s[i], x.scalar_type(), op, "scale", i);
  }
  grid.zero_point = zero_points(zero_point, scale, spec, op);
  return grid;
}

void save_grid(AutogradContext* ctx, const kernels::Grid& grid) {
  ctx->saved_data["scale"] = grid.scale;
  ctx->saved_data["zero_point"] = grid.zero_point;
  ctx->saved_data["quant_min"] = grid.quant_min;
  ctx->saved_data["quant_max"] = grid.quant_max;
  ctx->saved_data["rounding"] = static_cast<int64_t>(grid.rounding);
  ctx->saved_data["axis"] = grid.axis;
}

kernels::Grid load_grid(AutogradContext* ctx) {
  kernels::Grid grid;
  grid.scale = ctx->saved_data["scale"].toTensor();
  grid.zero_point = ctx->saved_data["zero_point"].toTensor();
  grid.quant_min = ctx->saved_data["quant_min"].toInt();
  grid.quant_max = ctx->saved_data["quant_max"].toInt();
  grid.rounding = static_cast<Rounding>(ctx->saved_data["rounding"].toInt());
  grid.axis = ctx->saved_data["axis"].toInt();
  return grid;
}

// The kernels write raw memory that autograd does not record, so a second derivative would be
// silently wrong: refuse it.
void check_first_order(const char* op) {
  TORCH_CHECK(!at::GradMode::is_enabled(), op,
              ": double backward (create_graph=true) is not supported");
}

// The backward recomputes the in-range mask from the saved x instead of saving a mask in the
// forward: x has to stay alive anyway (LSQ needs it for the scale gradient, and the layer
// input is usually kept by autograd), and a mask would cost an extra allocation and a write of
// numel bytes in the forward, which on large activations is dominated by page faults.
struct FakeQuantFunction : public torch::autograd::Function<FakeQuantFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale,
                            const at::Tensor& zero_point, const QuantSpec& spec) {
    const kernels::Grid grid = make_grid(x, scale, zero_point, spec, "fake_quantize");
    const at::Tensor input = x.contiguous();
    at::Tensor y = at::empty(input.sizes(), input.options());
    kernels::fake_quant_forward(input, grid, y);
    ctx->save_for_backward({input});
    save_grid(ctx, grid);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    check_first_order("fake_quantize");
    const at::Tensor input = ctx->get_saved_variables()[0];
    const at::Tensor dy = grad_outputs[0].contiguous();
    at::Tensor dx = at::empty(input.sizes(), input.options());
    kernels::fake_quant_backward(input, dy, load_grid(ctx), dx);
    return {dx, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// values (float64, contiguous) times factor, as a tensor of `dtype` and shape `sizes`: the
// scale gradient in the scale's own layout. One allocation and a loop: this runs for every
// learned scale on every step, where a chain of ATen ops would cost more than the values.
at::Tensor scaled_as(const at::Tensor& values, double factor, at::ScalarType dtype,
                     const std::vector<int64_t>& sizes) {
  const double* v = values.data_ptr<double>();
  at::Tensor out = at::empty(sizes, at::TensorOptions().dtype(dtype));
  TORCH_INTERNAL_ASSERT(out.numel() == values.numel(), "scale gradient size mismatch");
  if (dtype == at::kFloat) {
    float* o = out.data_ptr<float>();
    for (int64_t i = 0; i < out.numel(); ++i) o[i] = static_cast<float>(v[i] * factor);
  } else if (dtype == at::kDouble) {
    double* o = out.data_ptr<double>();
    for (int64_t i = 0; i < out.numel(); ++i) o[i] = v[i] * factor;
  } else {
    return (values * factor).to(dtype).view(sizes);
  }
  return out;
}

struct LsqFunction : public torch::autograd::Function<LsqFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale,
                            const at::Tensor& zero_point, const QuantSpec& spec,
                            double grad_factor) {
    const kernels::Grid grid = make_grid(x, scale, zero_point, spec, "lsq_fake_quantize");
    TORCH_CHECK(std::isfinite(grad_factor), "lsq_fake_quantize: grad_factor ", grad_factor,
                " must be finite (<= 0 selects 1 / sqrt(n * quant_max))");
    if (grad_factor <= 0) {
      TORCH_CHECK(spec.quant_max() > 0,
                  "lsq_fake_quantize: the default grad factor "
                  "1 / sqrt(n * quant_max) needs quant_max > 0, got ",
                  spec.quant_max());
      // eq. 6: n is the number of elements sharing one scale.
      const int64_t scales = grid.scale.numel();
      const int64_t per_scale = scales == 0 ? 0 : x.numel() / scales;
      grad_factor = per_scale == 0 ? 0.0
                                   : 1.0 / std::sqrt(static_cast<double>(per_scale) *
                                                     static_cast<double>(spec.quant_max()));
    }
    const at::Tensor input = x.contiguous();
    at::Tensor y = at::empty(input.sizes(), input.options());
    kernels::fake_quant_forward(input, grid, y);
    ctx->save_for_backward({input});
    save_grid(ctx, grid);
    ctx->saved_data["grad_factor"] = grad_factor;
    ctx->saved_data["scale_sizes"] = scale.sizes().vec();
    ctx->saved_data["scale_dtype"] = static_cast<int64_t>(scale.scalar_type());
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    check_first_order("lsq_fake_quantize");
    const at::Tensor input = ctx->get_saved_variables()[0];
    const at::Tensor dy = grad_outputs[0].contiguous();
    const kernels::Grid grid = load_grid(ctx);
    at::Tensor dx = at::empty(input.sizes(), input.options());
    at::Tensor dscale = at::empty({grid.scale.numel()}, at::kDouble);
    kernels::lsq_backward(input, dy, grid, dx, dscale);
    const auto scale_dtype = static_cast<at::ScalarType>(ctx->saved_data["scale_dtype"].toInt());
    return {dx,
            scaled_as(dscale, ctx->saved_data["grad_factor"].toDouble(), scale_dtype,
                      ctx->saved_data["scale_sizes"].toIntVector()),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct PactFunction : public torch::autograd::Function<PactFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& alpha,
                            const QuantSpec& spec) {
    const char* op = "pact_fake_quantize";
    check_x(x, op);
    spec.validate();
    TORCH_CHECK(!spec.per_channel(), op, ": PACT is per-tensor only; got a per-channel spec (",
                spec.str(), ")");
    TORCH_CHECK(spec.symmetric(), op, ": PACT is symmetric (zero point 0); got ", spec.str());
    TORCH_CHECK(alpha.defined() && at::isFloatingType(alpha.scalar_type()) && alpha.numel() == 1 &&
                    alpha.dim() <= 1,
                op, ": alpha must be a floating tensor with one element (shape {1})");
    const double alpha_value = alpha.detach().to(at::kCPU, at::kDouble).item<double>();
    check_scale_value(alpha_value, x.scalar_type(), op, "alpha", 0);
    const double scale = pact_scale(alpha_value, spec);
    check_scale_value(scale, x.scalar_type(), op, "alpha / pact_steps(spec)", 0);
    // eq. 7b: on the power-of-two grid the clip moves with the scale; otherwise this is alpha.
    const double clip = spec.power_of_two() ? scale * pact_steps(spec) : alpha_value;
    const at::Tensor input = x.contiguous();
    at::Tensor y = at::empty(input.sizes(), input.options());
    kernels::pact_forward(input, clip, scale, spec.quant_min(), spec.quant_max(), spec.rounding(),
                          y);
    ctx->save_for_backward({input});
    ctx->saved_data["alpha"] = clip;
    ctx->saved_data["unsigned"] = spec.unsigned_grid();
    ctx->saved_data["alpha_sizes"] = alpha.sizes().vec();
    ctx->saved_data["alpha_dtype"] = static_cast<int64_t>(alpha.scalar_type());
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    check_first_order("pact_fake_quantize");
    const at::Tensor input = ctx->get_saved_variables()[0];
    const at::Tensor dy = grad_outputs[0].contiguous();
    at::Tensor dx = at::empty(input.sizes(), input.options());
    const double dalpha = kernels::pact_backward(input, dy, ctx->saved_data["alpha"].toDouble(), dx,
                                                 ctx->saved_data["unsigned"].toBool());
    const auto alpha_dtype = static_cast<at::ScalarType>(ctx->saved_data["alpha_dtype"].toInt());
    at::Tensor dalpha_tensor = at::full(ctx->saved_data["alpha_sizes"].toIntVector(), dalpha,
                                        at::TensorOptions().dtype(alpha_dtype));
    return {dx, dalpha_tensor, at::Tensor()};
  }
};

// eq. 6b: 2^round(l) forward, straight-through backward.
struct PowerOfTwoScaleFunction : public torch::autograd::Function<PowerOfTwoScaleFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& log2_scale) {
    TORCH_CHECK(log2_scale.defined() && at::isFloatingType(log2_scale.scalar_type()),
                "learned_power_of_two_scale: log2_scale must be a floating tensor");
    const at::Tensor values = detail::to_double_vector(log2_scale);
    const double* l = values.data_ptr<double>();
    at::Tensor out = at::empty({values.numel()}, at::kDouble);
    double* o = out.data_ptr<double>();
    for (int64_t i = 0; i < values.numel(); ++i) {
      TORCH_CHECK(std::isfinite(l[i]), "learned_power_of_two_scale: log2_scale[", i, "] = ", l[i],
                  " is invalid; it must be finite");
      const double k = std::min<double>(
          std::max<double>(std::floor(l[i] + 0.5), kPowerOfTwoMinExponent), kPowerOfTwoMaxExponent);
      o[i] = std::ldexp(1.0, static_cast<int>(k));
    }
    at::Tensor scale = out.to(log2_scale.scalar_type()).view(log2_scale.sizes());
    ctx->save_for_backward({scale});
    return scale;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor scale = ctx->get_saved_variables()[0];
    return {grad_outputs[0] * scale * std::log(2.0)};
  }
};

// autograd::Function::apply cannot take undefined tensors: an undefined zero point becomes
// explicit zeros here.
at::Tensor defined_zero_point(const at::Tensor& zero_point, const at::Tensor& scale,
                              const char* op) {
  TORCH_CHECK(scale.defined(), op, ": scale is an undefined tensor");
  return zero_point.defined() ? zero_point : at::zeros(scale.sizes(), at::kInt);
}

}  // namespace

at::Tensor fake_quantize(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                         const QuantSpec& spec) {
  return FakeQuantFunction::apply(x, scale, defined_zero_point(zero_point, scale, "fake_quantize"),
                                  spec);
}

at::Tensor lsq_fake_quantize(const at::Tensor& x, const at::Tensor& scale,
                             const at::Tensor& zero_point, const QuantSpec& spec,
                             double grad_factor) {
  return LsqFunction::apply(x, scale, defined_zero_point(zero_point, scale, "lsq_fake_quantize"),
                            spec, grad_factor);
}

at::Tensor pact_fake_quantize(const at::Tensor& x, const at::Tensor& alpha, const QuantSpec& spec) {
  return PactFunction::apply(x, alpha, spec);
}

double pact_steps(const QuantSpec& spec) {
  const double steps = static_cast<double>(spec.quant_max() - spec.quant_min());
  return spec.unsigned_grid() ? steps : steps / 2.0;
}

double pact_scale(double alpha, const QuantSpec& spec) {
  TORCH_CHECK(std::isfinite(alpha) && alpha > 0, "pact: alpha = ", alpha,
              " is invalid; it must be finite and > 0");
  // eq. 7: alpha maps to half the number of steps (every step on an unsigned grid, eq. 7c).
  const double scale = alpha / pact_steps(spec);
  return spec.power_of_two() ? power_of_two_scale(scale, PowerOfTwoRounding::nearest) : scale;
}

at::Tensor learned_power_of_two_scale(const at::Tensor& log2_scale) {
  return PowerOfTwoScaleFunction::apply(log2_scale);
}

}  // namespace calq
