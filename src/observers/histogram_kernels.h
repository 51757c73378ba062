#pragma once
// The binning rule and the float32 binning kernels behind accumulate_abs_histogram
// (histogram.h): the hot loop of the percentile, kl and mix observers. Internal to the
// observers layer.

#include <cstdint>
#include <limits>

namespace calq {
namespace observers {
namespace detail {

/// Extremes of the values a kernel call has read, and whether any was NaN or +-Inf.
struct Extremes {
  float min = std::numeric_limits<float>::infinity();
  float max = -std::numeric_limits<float>::infinity();
  bool nonfinite = false;

  void add(const Extremes& other);
  /// Whether every value read was finite with |x| <= range.
  bool within(double range) const;
};

/// Counts go to this many interleaved copies of the histogram (copy c at sub + c * bins), so
/// runs of equal bins (e.g. the zeros after a ReLU) do not serialize on one memory counter; the
/// caller sums the copies. Used by every binning loop (float32 kernels and the float64 path).
constexpr int kCounterCopies = 4;

/// The bin of v = |x| * bins / range >= 0: ceil(v) - 1 floored at 0, capped at last.
/// Right-closed bins: v = 3 (exactly on an edge) belongs to bin 2, v in (0, 1] to bin 0, and 0
/// to bin 0. The one rule every binning loop uses.
template <typename acc_t>
inline int64_t bin_index(acc_t v, int64_t last) {
  int64_t i = static_cast<int64_t>(v);
  i -= static_cast<int64_t>((i > 0) & (static_cast<acc_t>(i) == v));
  return i < last ? i : last;
}

/// Adds the bin of every |x[j]| (j < n) to `sub` (kCounterCopies * bins 32-bit counters;
/// the caller keeps every counter below 2^32 - n) and returns the extremes of x. Bin =
/// ceil(|x| * k) - 1 floored at 0, capped at bins - 1, computed in float32 (exact when k is a
/// power of two). Values with |x| * k > bins, NaN and Inf land in the last bin (the caller
/// discards such a call; the Extremes tell). bins: a power of two, 2 <= bins <= 2^24.
Extremes bin_float_values(const float* x, int64_t n, float k, int64_t bins, uint32_t* sub);

/// The implementations bin_float_values chooses from, by the CPU's features.
enum class FloatKernel {
  portable,  ///< 8 lanes (AVX2 when the CPU has it, else the baseline instruction set)
  avx512,    ///< 16 lanes; bin-0 lanes (zeros after a ReLU) are counted, not scattered
};
bool float_kernel_available(FloatKernel kernel);
/// Forces the implementation (for tests comparing them); returns the previous choice.
/// Not thread-safe: call it while no histogram is being accumulated.
FloatKernel set_float_kernel(FloatKernel kernel);

}  // namespace detail
}  // namespace observers
}  // namespace calq
