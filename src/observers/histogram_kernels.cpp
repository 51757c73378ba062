#include "observers/histogram_kernels.h"

#include <c10/util/Exception.h>
// GCC 12's AVX-512 intrinsics start from deliberately undefined registers and warn about them
// (GCC bug 105593): the warnings are about the header, not about this file.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace calq {
namespace observers {
namespace detail {
namespace {

// The scalar step shared by every kernel's tail: clamp |x| * k to `bins` first, so values
// beyond the range, NaN and Inf become the last bin instead of an out-of-range index.
inline void bin_one(float v, float k, int64_t bins, uint32_t* sub, Extremes& e) {
  e.min = std::min(e.min, v);
  e.max = std::max(e.max, v);
  e.nonfinite = e.nonfinite || !std::isfinite(v);
  const float top = static_cast<float>(bins);
  const float scaled = std::abs(v) * k;
  ++sub[bin_index<float>(scaled < top ? scaled : top, bins - 1)];
}

typedef float vf8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));

// Indices computed 8 at a time (the arithmetic of bin_index), staged in a small buffer, then
// counted into the interleaved copies by lane. Compiled for AVX2 and for the baseline,
// chosen at load time.
__attribute__((target_clones("avx2", "default"))) Extremes bin_portable(const float* x, int64_t n,
                                                                        float k, int64_t bins,
                                                                        uint32_t* sub) {
  static_assert(kCounterCopies == 4, "the lane -> copy map below assumes 4 copies");
  constexpr int kStage = 512;
  alignas(32) int32_t idx[kStage];
  const vi8 zero = {0, 0, 0, 0, 0, 0, 0, 0};
  const vi8 last = zero + static_cast<int32_t>(bins - 1);
  const vf8 top = vf8{} + static_cast<float>(bins);
  const vi8 copy_offset = vi8{0, 1, 2, 3, 0, 1, 2, 3} * static_cast<int32_t>(bins);
  const vi8 exponent_mask = zero + 0x7f800000;
  vf8 lo = vf8{} + std::numeric_limits<float>::infinity();
  vf8 hi = -lo;
  vi8 nonfinite = zero;
  int64_t j = 0;
  for (; j + kStage <= n; j += kStage) {
    for (int t = 0; t < kStage; t += 8) {
      vf8 raw;
      std::memcpy(&raw, x + j + t, sizeof(raw));
      lo = raw < lo ? raw : lo;  // NaN compares false and never enters lo / hi
      hi = raw > hi ? raw : hi;
      vi8 bits;
      std::memcpy(&bits, &raw, sizeof(bits));
      nonfinite |= (bits & exponent_mask) == exponent_mask;
      bits &= 0x7fffffff;  // |x|
      vf8 v;
      std::memcpy(&v, &bits, sizeof(v));
      v *= k;
      v = v < top ? v : top;                    // NaN -> top as well
      vi8 i = __builtin_convertvector(v, vi8);  // truncation = floor for v >= 0
      const vf8 back = __builtin_convertvector(i, vf8);
      i += (back == v) & (i > zero);  // on an edge: the bin below (true is -1)
      i = i < last ? i : last;
      i += copy_offset;
      std::memcpy(idx + t, &i, sizeof(i));
    }
    for (int t = 0; t < kStage; t += 8) {
      ++sub[idx[t]];
      ++sub[idx[t + 1]];
      ++sub[idx[t + 2]];
      ++sub[idx[t + 3]];
      ++sub[idx[t + 4]];
      ++sub[idx[t + 5]];
      ++sub[idx[t + 6]];
      ++sub[idx[t + 7]];
    }
  }
  Extremes e;
  for (int l = 0; l < 8; ++l) {
    e.min = std::min(e.min, lo[l]);
    e.max = std::max(e.max, hi[l]);
    e.nonfinite = e.nonfinite || nonfinite[l] != 0;
  }
  for (; j < n; ++j) {
    bin_one(x[j], k, bins, sub, e);
  }
  return e;
}

// 16 lanes. Lanes of bin 0 (every exact zero after a ReLU, often half of an activation) are
// only counted; the other indices are compressed into the staging buffer and scattered, which
// halves the scatter work, the bound of this loop, on post-ReLU data.
__attribute__((target("avx512f"))) Extremes bin_avx512(const float* x, int64_t n, float k,
                                                       int64_t bins, uint32_t* sub) {
  constexpr int kStage = 512;
  alignas(64) int32_t idx[kStage];
  const __m512 scale = _mm512_set1_ps(k);
  const __m512 top = _mm512_set1_ps(static_cast<float>(bins));
  const __m512i last = _mm512_set1_epi32(static_cast<int32_t>(bins - 1));
  const __m512i zero = _mm512_setzero_si512();
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i exponent_mask = _mm512_set1_epi32(0x7f800000);
  __m512 lo = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __m512 hi = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __mmask16 nonfinite = 0;
  uint64_t bin0 = 0;
  int64_t j = 0;
  for (; j + kStage <= n; j += kStage) {
    int staged = 0;
    for (int t = 0; t < kStage; t += 16) {
      const __m512 raw = _mm512_loadu_ps(x + j + t);
      lo = _mm512_min_ps(lo, raw);  // NaN may enter lo / hi: `nonfinite` flags the call anyway
      hi = _mm512_max_ps(hi, raw);
      const __m512i bits = _mm512_castps_si512(raw);
      nonfinite |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(bits, exponent_mask), exponent_mask);
      __m512 v = _mm512_mul_ps(_mm512_abs_ps(raw), scale);
      v = _mm512_min_ps(v, top);  // NaN -> top (min returns its second operand on NaN)
      __m512i i = _mm512_cvttps_epi32(v);
      const __mmask16 on_edge = _mm512_cmp_ps_mask(_mm512_cvtepi32_ps(i), v, _CMP_EQ_OQ) &
                                _mm512_cmpgt_epi32_mask(i, zero);
      i = _mm512_mask_sub_epi32(i, on_edge, i, one);
      i = _mm512_min_epi32(i, last);
      const __mmask16 above_bin0 = _mm512_cmpgt_epi32_mask(i, zero);
      // Register-form compress, then a plain store (the memory form is slow on some CPUs).
      _mm512_storeu_si512(idx + staged, _mm512_maskz_compress_epi32(above_bin0, i));
      staged += __builtin_popcount(above_bin0);
    }
    bin0 += static_cast<uint64_t>(kStage - staged);
    int t = 0;
    for (; t + 4 <= staged; t += 4) {
      ++sub[idx[t]];
      ++sub[bins + idx[t + 1]];
      ++sub[2 * bins + idx[t + 2]];
      ++sub[3 * bins + idx[t + 3]];
    }
    for (; t < staged; ++t) {
      ++sub[idx[t]];
    }
  }
  sub[0] += static_cast<uint32_t>(bin0);  // bin0 <= n: within the caller's overflow bound
  Extremes e;
  e.min = _mm512_reduce_min_ps(lo);
  e.max = _mm512_reduce_max_ps(hi);
  e.nonfinite = nonfinite != 0;
  for (; j < n; ++j) {
    bin_one(x[j], k, bins, sub, e);
  }
  return e;
}

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

FloatKernel& chosen_kernel() {
  static FloatKernel kernel = cpu_has_avx512() ? FloatKernel::avx512 : FloatKernel::portable;
  return kernel;
}

}  // namespace

void Extremes::add(const Extremes& other) {
  min = std::min(min, other.min);
  max = std::max(max, other.max);
  nonfinite = nonfinite || other.nonfinite;
}

bool Extremes::within(double range) const {
  return !nonfinite && std::max(std::abs(min), std::abs(max)) <= range;
}

Extremes bin_float_values(const float* x, int64_t n, float k, int64_t bins, uint32_t* sub) {
  return chosen_kernel() == FloatKernel::avx512 ? bin_avx512(x, n, k, bins, sub)
                                                : bin_portable(x, n, k, bins, sub);
}

bool float_kernel_available(FloatKernel kernel) {
  return kernel == FloatKernel::portable || cpu_has_avx512();
}

FloatKernel set_float_kernel(FloatKernel kernel) {
  TORCH_CHECK(float_kernel_available(kernel),
              "set_float_kernel: this CPU lacks the instructions of the requested kernel");
  const FloatKernel previous = chosen_kernel();
  chosen_kernel() = kernel;
  return previous;
}

}  // namespace detail
}  // namespace observers
}  // namespace calq

#pragma GCC diagnostic pop
