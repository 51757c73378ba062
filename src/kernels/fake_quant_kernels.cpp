// Fake-quant CPU kernels. Every op is one fused pass over its inputs: no temporaries of the
// size of x. Work is split into items of about kBlock elements by a Plan that does not depend
// on the thread count, so sums (LSQ scale, PACT alpha) are the same for any number of threads.
//
// Vectorization: the inner loops below are plain loops written so that GCC/Clang vectorize
// them (branch-free selects, no loop-carried floating-point dependency). The chunk functions
// that hold them are compiled twice, for AVX2 and for the baseline ISA, and picked at load
// time (target_clones), so the library stays portable and still uses AVX2 where present.

#include "kernels/fake_quant_kernels.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__)
// The kernels never read floating-point exception flags. Under the default -ftrapping-math
// GCC must assume that a comparison may trap, and then refuses to turn the selects of the
// backward loops into blends: those loops would stay scalar.
#pragma GCC optimize("no-trapping-math")
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CALQ_TARGET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CALQ_TARGET_CLONES
#endif

#if defined(__GNUC__)
#define CALQ_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define CALQ_ALWAYS_INLINE inline
#endif

namespace calq {
namespace kernels {
namespace {

// Elements per work item: large enough to amortize a call and a parallel task, small enough
// (64 KiB of float) to balance the load and keep a block in L2.
constexpr int64_t kBlock = 16384;
// Per-channel slices shorter than this (channels on the last axes) are processed row by row
// with per-element parameter arrays instead of one call per slice.
constexpr int64_t kMinSegment = 16;
// Longest row for the per-element parameter arrays (4 arrays of this length).
constexpr int64_t kMaxRow = 65536;

// 1.5 * 2^(digits - 1): 12582912 for float, 6755399441055744 for double.
template <typename T>
constexpr T kRoundMagic = T(1.5) * T(int64_t{1} << (std::numeric_limits<T>::digits - 1));

// Eq. 3, exact for |v| < 2^(digits - 2) (2^22 for float). Adding kRoundMagic moves v into the
// binade where consecutive T values are exactly 1 apart, so the addition rounds v to an
// integer with the FPU's round-to-nearest-even, and the subtraction is exact. Example (float):
// 2.5 + 12582912 = 12582914.5, a tie, rounds to the even 12582914, minus 12582912 gives 2;
// 3.5 gives 12582916 - 12582912 = 4. NaN stays NaN.
template <typename T, Rounding R>
CALQ_ALWAYS_INLINE T round_to_integer(T v) {
  if constexpr (R == Rounding::half_to_even) {
    return (v + kRoundMagic<T>)-kRoundMagic<T>;
  } else {
    // floor(v + 0.5) evaluated in T, as the formula reads: round w to nearest, then step down
    // where that rounded up.
    const T w = v + T(0.5);
    const T r = (w + kRoundMagic<T>)-kRoundMagic<T>;
    return r > w ? r - T(1) : r;
  }
}

// Clamp that keeps NaN: every comparison with NaN is false.
template <typename T>
CALQ_ALWAYS_INLINE T clamp_keep_nan(T v, T lo, T hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// x / scale by a true division, as ONNX's QuantizeLinear (and ONNX Runtime's kernels) compute
// it, so that the simulation rounds exactly as the deployed model (eq. 2). ATen multiplies by
// 1 / scale instead; the two differ only where the quotient is within one ulp of a rounding tie.
// Clamping to [lo - 1, hi + 1] keeps every out-of-range value out of range after rounding (the
// masks of eqs. 5 and 6 are unchanged), maps +-Inf to finite values, and keeps |v| far below
// the 2^22 limit of the magic-number rounding.
template <typename T>
CALQ_ALWAYS_INLINE T scaled(T x, T scale, T lo, T hi) {
  return clamp_keep_nan(x / scale, lo - T(1), hi + T(1));
}

// Quantization parameters of a span: one set for all elements, or one per element.
// lo / hi are the bounds of round(x / scale) itself: quant_min - zero_point and
// quant_max - zero_point (exact, because zero points are integers).
template <typename T>
struct Uniform {
  T scale, lo, hi;
  CALQ_ALWAYS_INLINE T s(int64_t) const { return scale; }
  CALQ_ALWAYS_INLINE T low(int64_t) const { return lo; }
  CALQ_ALWAYS_INLINE T high(int64_t) const { return hi; }
};

template <typename T>
struct PerElement {
  const T* scale;
  const T* lo;
  const T* hi;
  CALQ_ALWAYS_INLINE T s(int64_t i) const { return scale[i]; }
  CALQ_ALWAYS_INLINE T low(int64_t i) const { return lo[i]; }
  CALQ_ALWAYS_INLINE T high(int64_t i) const { return hi[i]; }
};

// ---- One element of each op (the math of docs/quantization.md, written once). ----

// Eq. 2.
template <typename T, Rounding R, typename P>
CALQ_ALWAYS_INLINE T forward_element(T x, const P& p, int64_t i) {
  const T lo = p.low(i);
  const T hi = p.high(i);
  const T r = round_to_integer<T, R>(scaled(x, p.s(i), lo, hi));
  return clamp_keep_nan(r, lo, hi) * p.s(i);
}

// Eq. 5. NaN: rounded NaN != itself, so the gradient is 0.
template <typename T, Rounding R, typename P>
CALQ_ALWAYS_INLINE T ste_element(T x, T dy, const P& p, int64_t i) {
  const T lo = p.low(i);
  const T hi = p.high(i);
  const T r = round_to_integer<T, R>(scaled(x, p.s(i), lo, hi));
  return clamp_keep_nan(r, lo, hi) == r ? dy : T(0);
}

// Eqs. 5 and 6: returns dx and sets `contribution` to dy * q'. Everything is computed
// unconditionally so that the selects become blends.
template <typename T, Rounding R, typename P>
CALQ_ALWAYS_INLINE T lsq_element(T x, T dy, const P& p, int64_t i, T& contribution) {
  const T lo = p.low(i);
  const T hi = p.high(i);
  const T v = scaled(x, p.s(i), lo, hi);
  const T r = round_to_integer<T, R>(v);
  const T clamped = clamp_keep_nan(r, lo, hi);
  const bool inside = clamped == r;
  const T error = r - v;
  T q = inside ? error : clamped;  // round(x/s) - x/s inside; the bound that was hit outside
  q = r == r ? q : T(0);           // NaN x contributes nothing
  contribution = dy * q;
  return inside ? dy : T(0);
}

// Eq. 7, forward. lo / hi are quant_min / quant_max (zero point 0).
template <typename T, Rounding R>
CALQ_ALWAYS_INLINE T pact_element(T x, T alpha, const Uniform<T>& p) {
  const T clipped = clamp_keep_nan(x, -alpha, alpha);
  const T r = round_to_integer<T, R>(clipped / p.scale);
  return clamp_keep_nan(r, p.lo, p.hi) * p.scale;
}

// ---- Loops over a contiguous span. ----

template <typename T, Rounding R, typename P>
CALQ_ALWAYS_INLINE void forward_loop(const T* __restrict x, T* __restrict y, int64_t n, P p) {
  for (int64_t i = 0; i < n; ++i) {
    y[i] = forward_element<T, R>(x[i], p, i);
  }
}

template <typename T, Rounding R, typename P>
CALQ_ALWAYS_INLINE void ste_loop(const T* __restrict x, const T* __restrict dy, T* __restrict dx,
                                 int64_t n, P p) {
  for (int64_t i = 0; i < n; ++i) {
    dx[i] = ste_element<T, R>(x[i], dy[i], p, i);
  }
}

// A single running sum is a loop-carried dependency that the compiler may not reorder (no
// -ffast-math), which would keep the loop scalar; kLanes independent sums vectorize.
template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);

template <typename T, Rounding R>
CALQ_ALWAYS_INLINE double lsq_loop(const T* __restrict x, const T* __restrict dy, T* __restrict dx,
                                   int64_t n, Uniform<T> p) {
  T lanes[kLanes<T>] = {};
  int64_t i = 0;
  for (; i + kLanes<T> <= n; i += kLanes<T>) {
    for (int64_t j = 0; j < kLanes<T>; ++j) {
      T contribution;
      dx[i + j] = lsq_element<T, R>(x[i + j], dy[i + j], p, 0, contribution);
      lanes[j] += contribution;
    }
  }
  double sum = 0.0;
  for (; i < n; ++i) {
    T contribution;
    dx[i] = lsq_element<T, R>(x[i], dy[i], p, 0, contribution);
    sum += contribution;
  }
  for (int64_t j = 0; j < kLanes<T>; ++j) {
    sum += lanes[j];
  }
  return sum;
}

// Per-element parameters: each element adds to its own slot of `sums` (no dependency).
template <typename T, Rounding R>
CALQ_ALWAYS_INLINE void lsq_loop(const T* __restrict x, const T* __restrict dy, T* __restrict dx,
                                 int64_t n, PerElement<T> p, T* __restrict sums) {
  for (int64_t i = 0; i < n; ++i) {
    T contribution;
    dx[i] = lsq_element<T, R>(x[i], dy[i], p, i, contribution);
    sums[i] += contribution;
  }
}

template <typename T, Rounding R>
CALQ_ALWAYS_INLINE void pact_forward_loop(const T* __restrict x, T* __restrict y, int64_t n,
                                          T alpha, Uniform<T> p) {
  for (int64_t i = 0; i < n; ++i) {
    y[i] = pact_element<T, R>(x[i], alpha, p);
  }
}

// Eq. 7, backward; lanes as in lsq_loop. On an unsigned grid (eq. 7c) the clip is [0, alpha]:
// only the upper clip depends on alpha, and x passes its gradient for 0 <= x < alpha.
template <typename T>
CALQ_ALWAYS_INLINE double pact_backward_loop(const T* __restrict x, const T* __restrict dy,
                                             T* __restrict dx, int64_t n, T alpha,
                                             bool unsigned_grid) {
  T lanes[kLanes<T>] = {};
  int64_t i = 0;
  const T signed_factor = unsigned_grid ? T(0) : T(1);
  const auto element = [alpha, unsigned_grid, signed_factor](T xi, T g, T& contribution) {
    const T upper = xi >= alpha ? g : T(0);
    const T lower = xi <= -alpha ? g : T(0);
    contribution = upper - signed_factor * lower;
    const bool above_low = unsigned_grid ? xi >= T(0) : xi > -alpha;
    return above_low & (xi < alpha) ? g : T(0);
  };
  for (; i + kLanes<T> <= n; i += kLanes<T>) {
    for (int64_t j = 0; j < kLanes<T>; ++j) {
      T contribution;
      dx[i + j] = element(x[i + j], dy[i + j], contribution);
      lanes[j] += contribution;
    }
  }
  double sum = 0.0;
  for (; i < n; ++i) {
    T contribution;
    dx[i] = element(x[i], dy[i], contribution);
    sum += contribution;
  }
  for (int64_t j = 0; j < kLanes<T>; ++j) {
    sum += lanes[j];
  }
  return sum;
}

// ---- Chunk functions: the rounding mode is chosen once per chunk, outside the loop. ----

#define CALQ_BY_ROUNDING(rounding, call)             \
  do {                                               \
    if ((rounding) == Rounding::half_to_even) {      \
      constexpr Rounding R = Rounding::half_to_even; \
      call;                                          \
    } else {                                         \
      constexpr Rounding R = Rounding::half_up;      \
      call;                                          \
    }                                                \
  } while (false)

// Thin per-dtype entry points (one body each, above), cloned per ISA.
#define CALQ_DEFINE_CHUNKS(T)                                                                     \
  CALQ_TARGET_CLONES void forward_chunk(const T* x, T* y, int64_t n, Rounding rounding,           \
                                        Uniform<T> p) {                                           \
    CALQ_BY_ROUNDING(rounding, (forward_loop<T, R>(x, y, n, p)));                                 \
  }                                                                                               \
  CALQ_TARGET_CLONES void forward_chunk(const T* x, T* y, int64_t n, Rounding rounding,           \
                                        PerElement<T> p) {                                        \
    CALQ_BY_ROUNDING(rounding, (forward_loop<T, R>(x, y, n, p)));                                 \
  }                                                                                               \
  CALQ_TARGET_CLONES void ste_chunk(const T* x, const T* dy, T* dx, int64_t n, Rounding rounding, \
                                    Uniform<T> p) {                                               \
    CALQ_BY_ROUNDING(rounding, (ste_loop<T, R>(x, dy, dx, n, p)));                                \
  }                                                                                               \
  CALQ_TARGET_CLONES void ste_chunk(const T* x, const T* dy, T* dx, int64_t n, Rounding rounding, \
                                    PerElement<T> p) {                                            \
    CALQ_BY_ROUNDING(rounding, (ste_loop<T, R>(x, dy, dx, n, p)));                                \
  }                                                                                               \
  CALQ_TARGET_CLONES double lsq_chunk(const T* x, const T* dy, T* dx, int64_t n,                  \
                                      Rounding rounding, Uniform<T> p) {                          \
    double sum = 0.0;                                                                             \
    CALQ_BY_ROUNDING(rounding, (sum = lsq_loop<T, R>(x, dy, dx, n, p)));                          \
    return sum;                                                                                   \
  }                                                                                               \
  CALQ_TARGET_CLONES void lsq_chunk(const T* x, const T* dy, T* dx, int64_t n, Rounding rounding, \
                                    PerElement<T> p, T* sums) {                                   \
    CALQ_BY_ROUNDING(rounding, (lsq_loop<T, R>(x, dy, dx, n, p, sums)));                          \
  }                                                                                               \
  CALQ_TARGET_CLONES void pact_forward_chunk(const T* x, T* y, int64_t n, Rounding rounding,      \
                                             T alpha, Uniform<T> p) {                             \
    CALQ_BY_ROUNDING(rounding, (pact_forward_loop<T, R>(x, y, n, alpha, p)));                     \
  }                                                                                               \
  CALQ_TARGET_CLONES double pact_backward_chunk(const T* x, const T* dy, T* dx, int64_t n,        \
                                                T alpha, bool unsigned_grid) {                    \
    return pact_backward_loop<T>(x, dy, dx, n, alpha, unsigned_grid);                             \
  }

CALQ_DEFINE_CHUNKS(float)
CALQ_DEFINE_CHUNKS(double)

#undef CALQ_DEFINE_CHUNKS
#undef CALQ_BY_ROUNDING

// ---- Work decomposition. ----

// x seen as [outer, channels, inner]; per tensor: [1, 1, numel].
struct Layout {
  int64_t outer = 1;
  int64_t channels = 1;
  int64_t inner = 1;
};

Layout layout_of(const at::Tensor& x, int64_t axis) {
  Layout layout;
  if (axis < 0) {
    layout.inner = x.numel();
    return layout;
  }
  TORCH_INTERNAL_ASSERT(axis < x.dim(), "channel axis ", axis, " out of range for ", x.dim(),
                        " dims");
  for (int64_t d = 0; d < axis; ++d) {
    layout.outer *= x.size(d);
  }
  layout.channels = x.size(axis);
  for (int64_t d = axis + 1; d < x.dim(); ++d) {
    layout.inner *= x.size(d);
  }
  return layout;
}

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Splits the tensor into items of about kBlock elements. Two shapes of work:
//  * slices: each item belongs to one channel and covers `rows` slices of `inner` contiguous
//    elements (rows == 1 and a piece of the slice when a slice is longer than kBlock);
//  * rows (per_element): short slices; each item covers whole rows of channels * inner
//    elements, with one parameter per element.
class Plan {
 public:
  explicit Plan(Layout layout) : layout_(layout) {
    const int64_t row = layout.channels * layout.inner;
    per_element_ = layout.channels > 1 && layout.inner < kMinSegment && row <= kMaxRow;
    if (per_element_) {
      rows_ = std::max<int64_t>(16, ceil_div(kBlock, row));
      items_ = ceil_div(layout.outer, rows_);
    } else if (layout.inner >= kBlock) {
      pieces_ = ceil_div(layout.inner, kBlock);
      items_ = layout.outer * layout.channels * pieces_;
    } else {
      rows_ = ceil_div(kBlock, layout.inner);
      groups_ = ceil_div(layout.outer, rows_);
      items_ = layout.channels * groups_;
    }
  }

  bool per_element() const { return per_element_; }
  int64_t items() const { return items_; }

  /// Channel of a slice item.
  int64_t channel(int64_t item) const {
    return pieces_ > 0 ? (item / pieces_) % layout_.channels : item / groups_;
  }

  /// Calls f(offset, length) for each contiguous span of a slice item.
  template <typename F>
  void for_each_slice(int64_t item, F&& f) const {
    if (pieces_ > 0) {
      const int64_t slice = item / pieces_;
      const int64_t start = (item % pieces_) * kBlock;
      f(slice * layout_.inner + start, std::min(kBlock, layout_.inner - start));
      return;
    }
    const int64_t c = item / groups_;
    const int64_t first = (item % groups_) * rows_;
    const int64_t last = std::min(layout_.outer, first + rows_);
    for (int64_t o = first; o < last; ++o) {
      f((o * layout_.channels + c) * layout_.inner, layout_.inner);
    }
  }

  /// Calls f(offset) for each row of a per-element item (rows of channels * inner elements).
  template <typename F>
  void for_each_row(int64_t item, F&& f) const {
    const int64_t row = layout_.channels * layout_.inner;
    const int64_t first = item * rows_;
    const int64_t last = std::min(layout_.outer, first + rows_);
    for (int64_t o = first; o < last; ++o) {
      f(o * row);
    }
  }

 private:
  Layout layout_;
  bool per_element_ = false;
  int64_t items_ = 0;
  int64_t pieces_ = 0;
  int64_t rows_ = 1;
  int64_t groups_ = 1;
};

// Per-channel parameters in T, and their per-element expansion for row items.
template <typename T>
struct Params {
  std::vector<T> scale, lo, hi;

  Params(const Grid& grid, const Layout& layout, bool per_element) {
    const int64_t channels = grid.scale.numel();
    TORCH_INTERNAL_ASSERT(channels == layout.channels, "grid has ", channels, " scales for ",
                          layout.channels, " channels");
    const double* s = grid.scale.data_ptr<double>();
    const int64_t* zp = grid.zero_point.data_ptr<int64_t>();
    const int64_t repeat = per_element ? layout.inner : 1;
    for (int64_t c = 0; c < channels; ++c) {
      const T scale_c = static_cast<T>(s[c]);
      const T lo_c = static_cast<T>(grid.quant_min - zp[c]);
      const T hi_c = static_cast<T>(grid.quant_max - zp[c]);
      for (int64_t k = 0; k < repeat; ++k) {
        scale.push_back(scale_c);
        lo.push_back(lo_c);
        hi.push_back(hi_c);
      }
    }
  }

  Uniform<T> channel(int64_t c) const { return {scale[c], lo[c], hi[c]}; }
  PerElement<T> elements() const { return {scale.data(), lo.data(), hi.data()}; }
};

void check_same(const at::Tensor& a, const at::Tensor& b) {
  TORCH_INTERNAL_ASSERT(a.is_contiguous() && b.is_contiguous(), "kernel inputs must be contiguous");
  TORCH_INTERNAL_ASSERT(a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type(),
                        "kernel tensors differ: ", a.sizes(), " ", a.scalar_type(), " vs ",
                        b.sizes(), " ", b.scalar_type());
}

template <typename F>
void parallel_items(const Plan& plan, F&& f) {
  at::parallel_for(0, plan.items(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      f(item);
    }
  });
}

template <typename T>
void forward_impl(const at::Tensor& x, const Grid& grid, at::Tensor& y) {
  const Layout layout = layout_of(x, grid.axis);
  const Plan plan(layout);
  const Params<T> params(grid, layout, plan.per_element());
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  parallel_items(plan, [&](int64_t item) {
    if (plan.per_element()) {
      plan.for_each_row(item, [&](int64_t offset) {
        forward_chunk(xp + offset, yp + offset, layout.channels * layout.inner, grid.rounding,
                      params.elements());
      });
    } else {
      const Uniform<T> p = params.channel(plan.channel(item));
      plan.for_each_slice(item, [&](int64_t offset, int64_t n) {
        forward_chunk(xp + offset, yp + offset, n, grid.rounding, p);
      });
    }
  });
}

template <typename T>
void ste_impl(const at::Tensor& x, const at::Tensor& dy, const Grid& grid, at::Tensor& dx) {
  const Layout layout = layout_of(x, grid.axis);
  const Plan plan(layout);
  const Params<T> params(grid, layout, plan.per_element());
  const T* xp = x.data_ptr<T>();
  const T* gp = dy.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  parallel_items(plan, [&](int64_t item) {
    if (plan.per_element()) {
      plan.for_each_row(item, [&](int64_t offset) {
        ste_chunk(xp + offset, gp + offset, dxp + offset, layout.channels * layout.inner,
                  grid.rounding, params.elements());
      });
    } else {
      const Uniform<T> p = params.channel(plan.channel(item));
      plan.for_each_slice(item, [&](int64_t offset, int64_t n) {
        ste_chunk(xp + offset, gp + offset, dxp + offset, n, grid.rounding, p);
      });
    }
  });
}

template <typename T>
void lsq_impl(const at::Tensor& x, const at::Tensor& dy, const Grid& grid, at::Tensor& dx,
              at::Tensor& dscale) {
  const Layout layout = layout_of(x, grid.axis);
  const Plan plan(layout);
  const Params<T> params(grid, layout, plan.per_element());
  const T* xp = x.data_ptr<T>();
  const T* gp = dy.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  const int64_t channels = layout.channels;
  const int64_t row = channels * layout.inner;
  // One partial sum per item (per item and channel for row items), added in item order.
  std::vector<double> partial(plan.items() * (plan.per_element() ? channels : 1), 0.0);
  parallel_items(plan, [&](int64_t item) {
    if (plan.per_element()) {
      std::vector<T> sums(row, T(0));
      plan.for_each_row(item, [&](int64_t offset) {
        lsq_chunk(xp + offset, gp + offset, dxp + offset, row, grid.rounding, params.elements(),
                  sums.data());
      });
      for (int64_t c = 0; c < channels; ++c) {
        double sum = 0.0;
        for (int64_t k = 0; k < layout.inner; ++k) {
          sum += sums[c * layout.inner + k];
        }
        partial[item * channels + c] = sum;
      }
    } else {
      const Uniform<T> p = params.channel(plan.channel(item));
      double sum = 0.0;
      plan.for_each_slice(item, [&](int64_t offset, int64_t n) {
        sum += lsq_chunk(xp + offset, gp + offset, dxp + offset, n, grid.rounding, p);
      });
      partial[item] = sum;
    }
  });
  double* ds = dscale.data_ptr<double>();
  std::fill(ds, ds + channels, 0.0);
  for (int64_t item = 0; item < plan.items(); ++item) {
    if (plan.per_element()) {
      for (int64_t c = 0; c < channels; ++c) {
        ds[c] += partial[item * channels + c];
      }
    } else {
      ds[plan.channel(item)] += partial[item];
    }
  }
}

template <typename T>
void pact_forward_impl(const at::Tensor& x, double alpha, double scale, int64_t quant_min,
                       int64_t quant_max, Rounding rounding, at::Tensor& y) {
  const Plan plan(layout_of(x, -1));
  const T scale_t = static_cast<T>(scale);
  const Uniform<T> p{scale_t, static_cast<T>(quant_min), static_cast<T>(quant_max)};
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  parallel_items(plan, [&](int64_t item) {
    plan.for_each_slice(item, [&](int64_t offset, int64_t n) {
      pact_forward_chunk(xp + offset, yp + offset, n, rounding, static_cast<T>(alpha), p);
    });
  });
}

template <typename T>
double pact_backward_impl(const at::Tensor& x, const at::Tensor& dy, double alpha,
                          bool unsigned_grid, at::Tensor& dx) {
  const Plan plan(layout_of(x, -1));
  const T* xp = x.data_ptr<T>();
  const T* gp = dy.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  std::vector<double> partial(plan.items(), 0.0);
  parallel_items(plan, [&](int64_t item) {
    plan.for_each_slice(item, [&](int64_t offset, int64_t n) {
      partial[item] += pact_backward_chunk(xp + offset, gp + offset, dxp + offset, n,
                                           static_cast<T>(alpha), unsigned_grid);
    });
  });
  double sum = 0.0;
  for (double v : partial) {
    sum += v;
  }
  return sum;
}

// Only float and double: the frontend rejects every other dtype with a user-facing message.
#define CALQ_DISPATCH_FLOAT_DOUBLE(dtype, call)                                               \
  [&] {                                                                                       \
    if ((dtype) == at::kFloat) {                                                              \
      using T = float;                                                                        \
      return call;                                                                            \
    }                                                                                         \
    TORCH_INTERNAL_ASSERT((dtype) == at::kDouble, "fake-quant kernel called with ", (dtype)); \
    using T = double;                                                                         \
    return call;                                                                              \
  }()

}  // namespace

void fake_quant_forward(const at::Tensor& x, const Grid& grid, at::Tensor& y) {
  check_same(x, y);
  if (x.numel() == 0) {
    return;
  }
  CALQ_DISPATCH_FLOAT_DOUBLE(x.scalar_type(), forward_impl<T>(x, grid, y));
}

void fake_quant_backward(const at::Tensor& x, const at::Tensor& dy, const Grid& grid,
                         at::Tensor& dx) {
  check_same(x, dy);
  check_same(x, dx);
  if (x.numel() == 0) {
    return;
  }
  CALQ_DISPATCH_FLOAT_DOUBLE(x.scalar_type(), ste_impl<T>(x, dy, grid, dx));
}

void lsq_backward(const at::Tensor& x, const at::Tensor& dy, const Grid& grid, at::Tensor& dx,
                  at::Tensor& dscale) {
  check_same(x, dy);
  check_same(x, dx);
  TORCH_INTERNAL_ASSERT(dscale.scalar_type() == at::kDouble && dscale.is_contiguous() &&
                            dscale.numel() == grid.scale.numel(),
                        "dscale must be float64 with one value per scale");
  if (x.numel() == 0) {
    dscale.zero_();
    return;
  }
  CALQ_DISPATCH_FLOAT_DOUBLE(x.scalar_type(), lsq_impl<T>(x, dy, grid, dx, dscale));
}

void pact_forward(const at::Tensor& x, double alpha, double scale, int64_t quant_min,
                  int64_t quant_max, Rounding rounding, at::Tensor& y) {
  check_same(x, y);
  if (x.numel() == 0) {
    return;
  }
  CALQ_DISPATCH_FLOAT_DOUBLE(
      x.scalar_type(), pact_forward_impl<T>(x, alpha, scale, quant_min, quant_max, rounding, y));
}

double pact_backward(const at::Tensor& x, const at::Tensor& dy, double alpha, at::Tensor& dx,
                     bool unsigned_grid) {
  check_same(x, dy);
  check_same(x, dx);
  if (x.numel() == 0) {
    return 0.0;
  }
  return CALQ_DISPATCH_FLOAT_DOUBLE(x.scalar_type(),
                                    pact_backward_impl<T>(x, dy, alpha, unsigned_grid, dx));
}

}  // namespace kernels
}  // namespace calq
