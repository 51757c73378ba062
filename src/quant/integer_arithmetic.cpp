#include "calq/quant/integer_arithmetic.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

namespace calq {

Requantization requantization_from_string(const std::string& name) {
  if (name == "float") return Requantization::float_multiplier;
  if (name == "fixed") return Requantization::fixed_point;
  TORCH_CHECK(false, "unknown requantization '", name, "'; valid: float, fixed");
}

bool IntegerArithmetic::computes_in_integers(QuantDtype dtype) const {
  return std::find(integer_dtypes.begin(), integer_dtypes.end(), dtype) != integer_dtypes.end();
}

bool spans_storage_range(const QuantSpec& spec) {
  const bool wide = spec.dtype() == QuantDtype::qint16;
  if (spec.unsigned_grid()) {
    return spec.quant_min() == 0 && spec.quant_max() == (wide ? 65535 : 255);
  }
  return spec.quant_min() == (wide ? -32768 : -128) && spec.quant_max() == (wide ? 32767 : 127);
}

StoredGrid stored_grid(const QuantSpec& spec, float scale, int64_t zero_point,
                       bool uint8_activations) {
  // Signed 8-bit grids are stored shifted to uint8; unsigned grids are uint8 / uint16 as they
  // are (zero point 0).
  const bool shifted =
      spec.dtype() != QuantDtype::qint16 && !spec.unsigned_grid() && uint8_activations;
  const int64_t shift = shifted ? 128 : 0;
  StoredGrid g;
  g.scale = scale;
  g.zero = zero_point + shift;
  g.lo = spec.quant_min() + shift;
  g.hi = spec.quant_max() + shift;
  return g;
}

namespace integer {

at::Tensor quantize_linear(const at::Tensor& x, const StoredGrid& grid) {
  at::Tensor v = at::div(x.to(at::kFloat), grid.scale).round();  // float32 division, RNE
  return v.add_(static_cast<double>(grid.zero))
      .clamp_(static_cast<double>(grid.lo), static_cast<double>(grid.hi));
}

at::Tensor dequantize_linear(const at::Tensor& q, const StoredGrid& grid) {
  return (q.to(at::kFloat) - static_cast<double>(grid.zero)) * grid.scale;
}

std::vector<float> requantization_multipliers(float s_x, const std::vector<float>& s_w, float s_y) {
  std::vector<float> m;
  m.reserve(s_w.size());
  for (float w : s_w) {
    const float product = s_x * w;
    m.push_back(product / s_y);
  }
  return m;
}

at::Tensor requantize(const at::Tensor& acc, const std::vector<float>& multiplier,
                      const StoredGrid& out, Requantization mode) {
  const int64_t channels = static_cast<int64_t>(multiplier.size());
  std::vector<int64_t> shape(acc.dim(), 1);
  shape[1] = channels;
  if (mode == Requantization::float_multiplier) {
    const at::Tensor m = at::tensor(multiplier, at::kFloat).reshape(shape);
    at::Tensor y = (acc.to(at::kFloat) * m).round();  // fr(float(acc) * M), RNE
    return y.add_(static_cast<double>(out.zero))
        .clamp_(static_cast<double>(out.lo), static_cast<double>(out.hi));
  }
  // Fixed point: M = m * 2^-(31 + n), m in [2^30, 2^31); ties round up.
  at::Tensor result = at::empty(acc.sizes(), at::kLong);
  const at::Tensor a = acc.to(at::kLong).contiguous();
  const int64_t per_channel = a.numel() / a.size(0) / channels;
  const int64_t* pa = a.data_ptr<int64_t>();
  int64_t* po = result.data_ptr<int64_t>();
  for (int64_t c = 0; c < channels; ++c) {
    int exponent = 0;
    const double mantissa = std::frexp(static_cast<double>(multiplier[c]), &exponent);
    // M = mantissa * 2^exponent, mantissa in [0.5, 1): m = round(mantissa * 2^31).
    int64_t m = static_cast<int64_t>(std::llround(mantissa * 2147483648.0));
    int shift = 31 - exponent;
    if (m == (int64_t{1} << 31)) {  // rounding reached 2^31: renormalize
      m >>= 1;
      shift -= 1;
    }
    TORCH_CHECK(shift > 0 && shift < 62, "integer arithmetic: multiplier ", multiplier[c],
                " is out of the fixed-point range");
    for (int64_t n = 0; n < a.size(0); ++n) {
      for (int64_t k = 0; k < per_channel; ++k) {
        const int64_t i = (n * channels + c) * per_channel + k;
        const __int128 product = static_cast<__int128>(pa[i]) * m;
        const int64_t y =
            static_cast<int64_t>((product + (static_cast<__int128>(1) << (shift - 1))) >> shift);
        po[i] = std::min(std::max(y + out.zero, out.lo), out.hi);
      }
    }
  }
  return result.to(at::kFloat);
}

at::Tensor float_output(const at::Tensor& acc, float s_x, const std::vector<float>& s_w) {
  std::vector<float> product;
  product.reserve(s_w.size());
  for (float s : s_w) product.push_back(s_x * s);
  std::vector<int64_t> shape(acc.dim(), 1);
  shape[1] = -1;
  return acc.to(at::kFloat) * at::tensor(product, at::kFloat).reshape(shape);
}

at::Tensor add(const at::Tensor& a, const StoredGrid& ga, const at::Tensor& b, const StoredGrid& gb,
               const StoredGrid& out) {
  const float r_ac = ga.scale / out.scale;
  const float r_bc = gb.scale / out.scale;
  const float fixed = static_cast<float>(out.zero) - std::fma(r_ac, static_cast<float>(ga.zero),
                                                              r_bc * static_cast<float>(gb.zero));
  // Broadcasting (an imported graph's Add of a [N, C, 1, 1] tensor): the same formula per
  // element of the broadcast shape.
  const auto both = at::broadcast_tensors({a.to(at::kFloat), b.to(at::kFloat)});
  const at::Tensor qa = both[0].contiguous();
  const at::Tensor qb = both[1].contiguous();
  at::Tensor result = at::empty(qa.sizes(), at::kFloat);
  const float* pa = qa.data_ptr<float>();
  const float* pb = qb.data_ptr<float>();
  float* po = result.data_ptr<float>();
  const int64_t n = qa.numel();
  const float lo = static_cast<float>(out.lo), hi = static_cast<float>(out.hi);
  for (int64_t i = 0; i < n; ++i) {
    const float v = std::fma(pa[i], r_ac, std::fma(pb[i], r_bc, fixed));
    po[i] = std::min(std::max(std::nearbyint(v), lo), hi);
  }
  return result;
}

at::Tensor mul(const at::Tensor& a, const StoredGrid& ga, const at::Tensor& b, const StoredGrid& gb,
               const StoredGrid& out) {
  const float m = (ga.scale * gb.scale) / out.scale;
  // float((a - za)(b - zb)): the exact integer product rounded to float once, as the float
  // product of the exact differences is.
  const at::Tensor product = (a.to(at::kFloat) - static_cast<double>(ga.zero)) *
                             (b.to(at::kFloat) - static_cast<double>(gb.zero));
  at::Tensor v = (product * m + static_cast<float>(out.zero)).round();
  return v.clamp_(static_cast<double>(out.lo), static_cast<double>(out.hi));
}

at::Tensor matmul(const at::Tensor& a, const StoredGrid& ga, const at::Tensor& b,
                  const StoredGrid& gb, const StoredGrid& out) {
  const at::Tensor acc = at::matmul(a.to(at::kDouble) - static_cast<double>(ga.zero),
                                    b.to(at::kDouble) - static_cast<double>(gb.zero));
  const float m = (ga.scale * gb.scale) / out.scale;
  at::Tensor v = (acc.to(at::kFloat) * m).round();
  return v.add_(static_cast<double>(out.zero))
      .clamp_(static_cast<double>(out.lo), static_cast<double>(out.hi));
}

at::Tensor global_average(const at::Tensor& q, const StoredGrid& x, const StoredGrid& out) {
  const int64_t n = q.size(2) * q.size(3);
  TORCH_CHECK(n < (int64_t{1} << 24), "integer arithmetic: global average over ", n,
              " values (ONNX Runtime requires fewer than 2^24)");
  // Exact integer sums (float64), as the runtime's int32 ones.
  const at::Tensor sum =
      q.to(at::kDouble).sum({2, 3}, /*keepdim=*/true) - static_cast<double>(n * x.zero);
  const float m = x.scale / (out.scale * static_cast<float>(n));
  at::Tensor v = (sum.to(at::kFloat) * m).round();
  return v.add_(static_cast<double>(out.zero))
      .clamp_(static_cast<double>(out.lo), static_cast<double>(out.hi));
}

at::Tensor window_average(const at::Tensor& q, const StoredGrid& x, const StoredGrid& out,
                          const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
                          const std::vector<int64_t>& pad, bool count_include_pad, bool ceil_mode) {
  const at::Tensor real = dequantize_linear(q, x).contiguous();
  const int64_t N = real.size(0), C = real.size(1), H = real.size(2), W = real.size(3);
  auto out_size = [&](int64_t in, int64_t k, int64_t s, int64_t p) {
    const int64_t span = in + 2 * p - k;
    int64_t o = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
    if (ceil_mode && (o - 1) * s >= in + p) --o;
    return o;
  };
  const int64_t OH = out_size(H, kernel[0], stride[0], pad[0]);
  const int64_t OW = out_size(W, kernel[1], stride[1], pad[1]);
  at::Tensor result = at::empty({N, C, OH, OW}, at::kFloat);
  const float* pr = real.data_ptr<float>();
  float* po = result.data_ptr<float>();
  for (int64_t nc = 0; nc < N * C; ++nc) {
    for (int64_t oh = 0; oh < OH; ++oh) {
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t h0 = oh * stride[0] - pad[0], w0 = ow * stride[1] - pad[1];
        const int64_t h1 = std::min(h0 + kernel[0], H + pad[0]);
        const int64_t w1 = std::min(w0 + kernel[1], W + pad[1]);
        float sum = 0.0f;
        int64_t count = 0;
        for (int64_t h = std::max<int64_t>(h0, 0); h < std::min(h1, H); ++h) {
          for (int64_t w = std::max<int64_t>(w0, 0); w < std::min(w1, W); ++w) {
            sum += pr[(nc * H + h) * W + w];
            ++count;
          }
        }
        if (count_include_pad) count = (h1 - h0) * (w1 - w0);
        const float avg = sum / static_cast<float>(count);
        const int64_t r =
            static_cast<int64_t>(std::nearbyint(avg / out.scale + static_cast<float>(out.zero)));
        po[(nc * OH + oh) * OW + ow] = static_cast<float>(std::min(std::max(r, out.lo), out.hi));
      }
    }
  }
  return result;
}

at::Tensor relu(const at::Tensor& q, const StoredGrid& grid) {
  return at::clamp_min(q.to(at::kFloat), static_cast<double>(grid.zero));
}

at::Tensor relu6(const at::Tensor& q, const StoredGrid& grid) {
  return quantize_linear(at::clamp(dequantize_linear(q, grid), 0.0, 6.0), grid);
}

}  // namespace integer
}  // namespace calq
