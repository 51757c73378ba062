#pragma once
// Wall-clock stopwatch (steady clock) and duration formatting.

#include <chrono>
#include <string>

namespace calq {
namespace util {

/// Measures elapsed wall time from construction or the last reset(), on a monotonic clock.
///
///   calq::util::Timer timer;  ...;  double s = timer.seconds();
class Timer {
 public:
  Timer() : start_(Clock::now()) {}
  /// Restarts the measurement from now.
  void reset() { start_ = Clock::now(); }
  /// Seconds since construction or the last reset().
  double seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }
  /// Milliseconds since construction or the last reset().
  double milliseconds() const { return seconds() * 1e3; }

 private:
  using Clock = std::chrono::steady_clock;
  Clock::time_point start_;
};

/// "m:ss" below an hour, "h:mm:ss" above, rounded down to whole seconds: 5.7 -> "0:05",
/// 3725 -> "1:02:05". Negative, NaN or infinite input -> "?".
std::string format_duration(double seconds);

/// A rate for humans: below 10 one decimal ("4.2"), below 10000 an integer ("950"), above
/// that 3 significant digits with a metric suffix: 12345 -> "12.3k", 2.5e6 -> "2.50M".
/// Negative, NaN or infinite input -> "?".
std::string format_rate(double per_second);

}  // namespace util
}  // namespace calq
