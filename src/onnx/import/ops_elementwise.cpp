// Element-wise operators: activations, arithmetic (numpy broadcasting, as ONNX), comparisons.
#include <c10/util/Exception.h>

#include <cmath>

#include "onnx/import/kernels.h"

namespace calq {
namespace onnx {
namespace detail {
namespace {

template <at::Tensor (*F)(const at::Tensor&)>
Kernel unary(const Node&) {
  return [](const std::vector<at::Tensor>& in, bool) { return one(F(in[0])); };
}

at::Tensor f_relu(const at::Tensor& x) {
  return at::relu(x);
}
at::Tensor f_sigmoid(const at::Tensor& x) {
  return at::sigmoid(x);
}
at::Tensor f_tanh(const at::Tensor& x) {
  return at::tanh(x);
}
at::Tensor f_exp(const at::Tensor& x) {
  return at::exp(x);
}
at::Tensor f_log(const at::Tensor& x) {
  return at::log(x);
}
at::Tensor f_sqrt(const at::Tensor& x) {
  return at::sqrt(x);
}
at::Tensor f_abs(const at::Tensor& x) {
  return at::abs(x);
}
at::Tensor f_neg(const at::Tensor& x) {
  return at::neg(x);
}
at::Tensor f_erf(const at::Tensor& x) {
  return at::erf(x);
}
at::Tensor f_floor(const at::Tensor& x) {
  return at::floor(x);
}
at::Tensor f_ceil(const at::Tensor& x) {
  return at::ceil(x);
}
at::Tensor f_round(const at::Tensor& x) {
  return at::round(x);
}  // half to even, as ONNX
at::Tensor f_sign(const at::Tensor& x) {
  return at::sign(x);
}
at::Tensor f_sin(const at::Tensor& x) {
  return at::sin(x);
}
at::Tensor f_cos(const at::Tensor& x) {
  return at::cos(x);
}
at::Tensor f_logical_not(const at::Tensor& x) {
  return at::logical_not(x);
}
at::Tensor f_softsign(const at::Tensor& x) {
  return x / (at::abs(x) + 1);
}
at::Tensor f_hardswish(const at::Tensor& x) {
  return at::hardswish(x);
}
at::Tensor f_reciprocal(const at::Tensor& x) {
  return at::reciprocal(x);
}
// log(exp(x) + 1) without overflow: max(x, 0) + log1p(exp(-|x|)).
at::Tensor f_softplus(const at::Tensor& x) {
  return at::relu(x) + at::log1p(at::exp(-at::abs(x)));
}
at::Tensor f_mish(const at::Tensor& x) {
  return x * at::tanh(f_softplus(x));
}

Kernel hard_sigmoid(const Node& node) {
  const double alpha = node.attr_float("alpha", 0.2), beta = node.attr_float("beta", 0.5);
  return [alpha, beta](const std::vector<at::Tensor>& in, bool) {
    return one(at::clamp(in[0] * alpha + beta, 0.0, 1.0));
  };
}

Kernel leaky_relu(const Node& node) {
  const double alpha = node.attr_float("alpha", 0.01);
  return [alpha](const std::vector<at::Tensor>& in, bool) {
    return one(at::where(in[0] >= 0, in[0], in[0] * alpha));
  };
}

Kernel elu(const Node& node) {
  const double alpha = node.attr_float("alpha", 1.0);
  return [alpha](const std::vector<at::Tensor>& in, bool) {
    return one(at::where(in[0] >= 0, in[0], (at::exp(in[0]) - 1) * alpha));
  };
}

Kernel selu(const Node& node) {
  const double alpha = node.attr_float("alpha", 1.67326319217681884765625);
  const double gamma = node.attr_float("gamma", 1.05070102214813232421875);
  return [alpha, gamma](const std::vector<at::Tensor>& in, bool) {
    return one(at::where(in[0] > 0, in[0] * gamma, (at::exp(in[0]) - 1) * (alpha * gamma)));
  };
}

Kernel celu(const Node& node) {
  const double alpha = node.attr_float("alpha", 1.0);
  TORCH_CHECK(alpha != 0.0, node.describe(), ": alpha must not be 0");
  return [alpha](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    return one(at::relu(x) + at::clamp_max((at::exp(x / alpha) - 1) * alpha, 0.0));
  };
}

Kernel gelu(const Node& node) {
  const std::string approximate = node.attr_string("approximate", "none");
  TORCH_CHECK(approximate == "none" || approximate == "tanh", node.describe(),
              ": approximate must be 'none' or 'tanh', got '", approximate, "'");
  return [approximate](const std::vector<at::Tensor>& in, bool) {
    return one(at::gelu(in[0], approximate));
  };
}

Kernel prelu(const Node&) {
  return [](const std::vector<at::Tensor>& in, bool) {
    return one(at::where(in[0] >= 0, in[0], in[0] * in[1]));
  };
}

Kernel clip(const Node&) {
  return [](const std::vector<at::Tensor>& in, bool) {
    at::Tensor y = in[0];
    auto bound = [](const at::Tensor& t, const char* which) {
      TORCH_CHECK(t.numel() == 1, "Clip: ", which, " must be a scalar, got shape ", t.sizes());
      return t.reshape({}).item();
    };
    c10::optional<at::Scalar> lo, hi;
    if (in.size() > 1 && in[1].defined()) lo = bound(in[1], "min");
    if (in.size() > 2 && in[2].defined()) hi = bound(in[2], "max");
    if (!lo && !hi) return one(y);
    return one(at::clamp(y, lo, hi));
  };
}

template <at::Tensor (*F)(const at::Tensor&, const at::Tensor&)>
Kernel binary(const Node&) {
  return [](const std::vector<at::Tensor>& in, bool) { return one(F(in[0], in[1])); };
}

at::Tensor f_add(const at::Tensor& a, const at::Tensor& b) {
  return at::add(a, b);
}
at::Tensor f_sub(const at::Tensor& a, const at::Tensor& b) {
  return at::sub(a, b);
}
at::Tensor f_mul(const at::Tensor& a, const at::Tensor& b) {
  return at::mul(a, b);
}
at::Tensor f_div(const at::Tensor& a, const at::Tensor& b) {
  // Integer division truncates toward zero (as C), floats divide.
  if (!a.is_floating_point() && !b.is_floating_point()) return at::div(a, b, "trunc");
  return at::div(a, b);
}
at::Tensor f_pow(const at::Tensor& a, const at::Tensor& b) {
  // The result has the base's type.
  return at::pow(a, b).to(a.scalar_type());
}
at::Tensor f_equal(const at::Tensor& a, const at::Tensor& b) {
  return at::eq(a, b);
}
at::Tensor f_less(const at::Tensor& a, const at::Tensor& b) {
  return at::lt(a, b);
}
at::Tensor f_greater(const at::Tensor& a, const at::Tensor& b) {
  return at::gt(a, b);
}
at::Tensor f_less_equal(const at::Tensor& a, const at::Tensor& b) {
  return at::le(a, b);
}
at::Tensor f_greater_equal(const at::Tensor& a, const at::Tensor& b) {
  return at::ge(a, b);
}
at::Tensor f_logical_and(const at::Tensor& a, const at::Tensor& b) {
  return at::logical_and(a, b);
}
at::Tensor f_logical_or(const at::Tensor& a, const at::Tensor& b) {
  return at::logical_or(a, b);
}
at::Tensor f_logical_xor(const at::Tensor& a, const at::Tensor& b) {
  return at::logical_xor(a, b);
}

Kernel mod(const Node& node) {
  const bool fmod = node.attr_int("fmod", 0) != 0;
  return [fmod](const std::vector<at::Tensor>& in, bool) {
    if (fmod) return one(at::fmod(in[0], in[1]));
    TORCH_CHECK(!in[0].is_floating_point(), "Mod: fmod=0 requires integer inputs (ONNX)");
    return one(at::remainder(in[0], in[1]));  // sign of the divisor, as Python's %
  };
}

Kernel where(const Node&) {
  return [](const std::vector<at::Tensor>& in, bool) {
    return one(at::where(in[0].to(at::kBool), in[1], in[2]));
  };
}

enum class Variadic { max, min, sum, mean };
template <Variadic V>
Kernel variadic(const Node&) {
  return [](const std::vector<at::Tensor>& in, bool) {
    at::Tensor y = in[0];
    for (size_t i = 1; i < in.size(); ++i) {
      TORCH_CHECK(in[i].defined(), "every input must be given");
      switch (V) {
        case Variadic::max:
          y = at::maximum(y, in[i]);
          break;
        case Variadic::min:
          y = at::minimum(y, in[i]);
          break;
        default:
          y = y + in[i];
      }
    }
    if (V == Variadic::mean) y = y / static_cast<double>(in.size());
    // A single input still broadcasts nothing: return a fresh tensor (not an alias).
    return one(in.size() == 1 ? y.clone() : y);
  };
}

}  // namespace

void add_elementwise_kernels(KernelTable& t) {
  t["Relu"] = unary<f_relu>;
  t["Sigmoid"] = unary<f_sigmoid>;
  t["Tanh"] = unary<f_tanh>;
  t["Exp"] = unary<f_exp>;
  t["Log"] = unary<f_log>;
  t["Sqrt"] = unary<f_sqrt>;
  t["Abs"] = unary<f_abs>;
  t["Neg"] = unary<f_neg>;
  t["Erf"] = unary<f_erf>;
  t["Floor"] = unary<f_floor>;
  t["Ceil"] = unary<f_ceil>;
  t["Round"] = unary<f_round>;
  t["Sign"] = unary<f_sign>;
  t["Sin"] = unary<f_sin>;
  t["Cos"] = unary<f_cos>;
  t["Not"] = unary<f_logical_not>;
  t["Softsign"] = unary<f_softsign>;
  t["Softplus"] = unary<f_softplus>;
  t["Mish"] = unary<f_mish>;
  t["HardSwish"] = unary<f_hardswish>;
  t["Reciprocal"] = unary<f_reciprocal>;
  t["HardSigmoid"] = hard_sigmoid;
  t["LeakyRelu"] = leaky_relu;
  t["Elu"] = elu;
  t["Selu"] = selu;
  t["Celu"] = celu;
  t["Gelu"] = gelu;
  t["PRelu"] = prelu;
  t["Clip"] = clip;
  t["Add"] = binary<f_add>;
  t["Sub"] = binary<f_sub>;
  t["Mul"] = binary<f_mul>;
  t["Div"] = binary<f_div>;
  t["Pow"] = binary<f_pow>;
  t["Equal"] = binary<f_equal>;
  t["Less"] = binary<f_less>;
  t["Greater"] = binary<f_greater>;
  t["LessOrEqual"] = binary<f_less_equal>;
  t["GreaterOrEqual"] = binary<f_greater_equal>;
  t["And"] = binary<f_logical_and>;
  t["Or"] = binary<f_logical_or>;
  t["Xor"] = binary<f_logical_xor>;
  t["Mod"] = mod;
  t["Where"] = where;
  t["Max"] = variadic<Variadic::max>;
  t["Min"] = variadic<Variadic::min>;
  t["Sum"] = variadic<Variadic::sum>;
  t["Mean"] = variadic<Variadic::mean>;
}

}  // namespace detail
}  // namespace onnx
}  // namespace calq
