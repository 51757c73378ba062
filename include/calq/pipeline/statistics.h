#pragma once
// Paired comparison of two classifiers on the same images: is a difference in top-1 real or
// noise? (one standard error of top-1 on 10,000 images is about 0.27 pt).

#include <cstdint>
#include <string>
#include <vector>

namespace calq {
namespace pipeline {

/// Top-1 of B minus top-1 of A on the same images, with its uncertainty.
///
/// Counts: b_only = images B gets right and A wrong, a_only the reverse. The difference is
/// (b_only - a_only) / n. Its 95 % confidence interval is the normal (Wald) interval of a
/// paired difference of proportions, diff +- 1.96 sqrt(b_only + a_only - (b_only - a_only)^2
/// / n) / n; p_value is McNemar's exact two-sided test (binomial, p = 1/2, over the
/// b_only + a_only discordant images; 1 when there are none). All in percentage points
/// except p_value.
struct PairedComparison {
  int64_t n = 0;
  int64_t a_only = 0;
  int64_t b_only = 0;
  double diff_pt = 0.0;
  double ci_low_pt = 0.0;
  double ci_high_pt = 0.0;
  double p_value = 1.0;

  /// "better" / "worse" when the interval excludes 0, else "same (within noise)".
  std::string verdict() const;
  /// e.g. "+0.21 pt [-0.05, +0.47], McNemar p = 0.12".
  std::string str() const;
};

/// a, b: per-image correctness of two models on the same images in the same order (same
/// size, non-empty); throws otherwise.
PairedComparison compare_paired(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b);

/// McNemar's exact two-sided p-value for `smaller` successes of `discordant` trials at p = 1/2
/// (min(1, 2 * P[X <= smaller])); smaller <= discordant.
double mcnemar_exact_p(int64_t smaller, int64_t discordant);

}  // namespace pipeline
}  // namespace calq
