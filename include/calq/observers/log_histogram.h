#pragma once
// A histogram of |x| on a log-linear grid with fixed bin edges, the kl observer's state
// (docs/observers.md, "KL"). Its edges do not depend on the data, so it merges exactly and
// keeps a relative resolution of 2^-10 at every magnitude: far below an outlier the bulk of the
// data is still resolved, and the linear histogram of any power-of-two range [0, S) with up to
// 2048 bins can be read off it exactly (linear_counts).
//
// Grid. A float32 value v >= 0 with bit pattern u has key(v) = u >> 13: its exponent and the top
// kMantissaBits = 10 bits of its mantissa. Bin `key` holds [value(key), value(key + 1)), where
// value(k) is the float with bit pattern k << 13: 1024 equal bins per octave [2^e, 2^(e+1)),
// left-closed, monotone in v. float64 data is binned by its float32 value.
//
// Window. Only the kOctaves = 24 octaves ending with the octave of max|x| are kept, bin by bin;
// smaller values (and exact zeros) are only counted ("below"). When max|x| grows into a higher
// octave the window slides up and the lowest bins join "below": counts are never split, so
// batch order and process boundaries do not change a single count.

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace calq {
namespace observers {

struct LogHistogram {
  static constexpr int kMantissaBits = 10;
  static constexpr int64_t kBinsPerOctave = int64_t{1} << kMantissaBits;
  static constexpr int64_t kOctaves = 24;
  static constexpr int64_t kBins = kOctaves * kBinsPerOctave;
  /// Bit shift from a float32 pattern to its key.
  static constexpr int kShift = 23 - kMantissaBits;

  /// float64 {kBins}: counts of the window's bins (exact integers below 2^53).
  at::Tensor counts;
  /// Key of the window's first bin; -1 while empty.
  int64_t first_key = -1;
  /// Values below the window (exact zeros included).
  double below = 0.0;
  /// max|x| seen (exact).
  double max_abs = 0.0;

  bool empty() const { return first_key < 0; }
  double total() const;
  /// Lower edge of bin `key` (value(key) above).
  static double edge(int64_t key);
  /// key(v) for v >= 0 finite.
  static int64_t key_of(float v);
  /// The window's first key for a maximum |x| of max_abs: the first bin of the octave
  /// kOctaves - 1 below max_abs's octave (0 at the bottom of the float range).
  static int64_t first_key_for(double max_abs);
};

/// An empty histogram (no window yet).
LogHistogram make_log_histogram();

/// Adds |x| of every element of x (float32 or float64, finite; max|x| <= h.max_abs after the
/// caller raised it, see raise_max) to h. Runs in parallel with per-thread counts; the result
/// does not depend on the thread count.
void accumulate_log_histogram(LogHistogram& h, const at::Tensor& x);
/// Scalar twin of accumulate_log_histogram, for tests.
void accumulate_log_histogram_ref(LogHistogram& h, const at::Tensor& x);

/// Raises h's maximum to max_abs (finite, >= 0), sliding the window up when max_abs is in a
/// higher octave (bins that leave the window join `below`). Never lowers it.
void raise_max(LogHistogram& h, double max_abs);

/// a + b (exact): both windows slid to the higher maximum, then counts added.
LogHistogram merge_log_histograms(const LogHistogram& a, const LogHistogram& b);

/// The (1 - tail) quantile of |x| as the upper edge of the bin where the cumulative count
/// (from 0 upward) first reaches (1 - tail) * total; tail in [0, 1). Empty is an error.
double log_histogram_quantile(const LogHistogram& h, double tail);

/// The histogram of the same values over [0, range) with `bins` left-closed linear bins
/// (bin b holds [b w, (b+1) w), w = range / bins), plus the count of values >= range in
/// *beyond. range: a power of two; bins: a power of two in [2, 2^(kMantissaBits + 1)], so that
/// every log bin below `range` lies inside one linear bin and the result is exact, except that
/// values below the window (`below`) are all placed in bin 0 (exact unless max|x| exceeds
/// range by more than 2^(kOctaves - 1 - log2(bins)), i.e. 2^12 at 2048 bins). float64 {bins}.
at::Tensor linear_counts(const LogHistogram& h, double range, int64_t bins, double* beyond);

}  // namespace observers
}  // namespace calq
