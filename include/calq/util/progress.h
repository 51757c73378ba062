#pragma once
// Progress bar for long loops, on stderr by default.
//
//   calq::util::Progress progress("train epoch 1", 60000, "img");
//   for (...) { ...; progress.advance(batch.size()); }
//   progress.finish();
//
// On a terminal it redraws one line in place:
//   train epoch 1 [########------------]  41% 24576/60000 img, 8.19k img/s, elapsed 0:03, eta 0:04
// Otherwise (logs, pipes) it prints plain lines at most every `interval_seconds`, and a last
// one when finished:
//   train epoch 1:  41% 24576/60000 img, 8.19k img/s, elapsed 0:03, eta 0:04

#include <c10/util/Optional.h>
#include <torch/arg.h>

#include <cstdint>
#include <ostream>
#include <string>

#include "calq/util/timer.h"

namespace calq {
namespace util {

/// Display options of a Progress.
struct ProgressOptions {
  /// Print nothing at all. Default false.
  TORCH_ARG(bool, quiet) = false;
  /// Terminal (redraw in place with '\r') or not (plain lines). Default: detected with
  /// isatty(fileno(stderr)) when printing to std::cerr; plain lines for any other stream.
  TORCH_ARG(c10::optional<bool>, tty) = c10::nullopt;
  /// Minimum seconds between two plain lines (non-terminal). Default 5.
  TORCH_ARG(double, interval_seconds) = 5.0;
  /// Minimum seconds between two redraws on a terminal. Default 0.1.
  TORCH_ARG(double, tty_interval_seconds) = 0.1;
  /// Characters of the bar on a terminal. Default 20.
  TORCH_ARG(int64_t, bar_width) = 20;

 public:
  /// Where to print; nullptr (default) = std::cerr. The stream must outlive the Progress.
  ProgressOptions& stream(std::ostream* stream) {
    stream_ = stream;
    return *this;
  }
  std::ostream* stream() const { return stream_; }

 private:
  std::ostream* stream_ = nullptr;
};

/// Reports the progress of a loop over `total` items: bar (terminal only), percent, count,
/// throughput in items/s, elapsed time and estimated time left. `total <= 0` means unknown:
/// then only count, throughput and elapsed time are shown.
class Progress {
 public:
  Progress(std::string label, int64_t total, std::string units = "it",
           ProgressOptions options = {});
  /// Calls finish() if it was not called (never throws).
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  /// Sets the number of items done so far (absolute, not an increment; clamped to >= 0) and
  /// redraws if the interval has passed.
  void update(int64_t done);
  /// Adds `items` to the count done (the tqdm-style increment).
  void advance(int64_t items = 1);
  /// Prints the final state (a last line ending in '\n'); later updates print nothing.
  void finish();

  int64_t done() const { return done_; }
  int64_t total() const { return total_; }
  double elapsed_seconds() const { return timer_.seconds(); }
  /// The status text without bar or '\r', as the plain lines show it.
  std::string status_line() const;

  /// Silences (or re-enables) every Progress created afterwards, e.g. for a --quiet flag.
  static void set_globally_quiet(bool quiet);
  static bool globally_quiet();

 private:
  void draw(bool final_line);
  std::string bar() const;

  std::string label_;
  int64_t total_;
  std::string units_;
  ProgressOptions options_;
  std::ostream* stream_;
  bool tty_;
  bool quiet_;
  bool finished_ = false;
  int64_t done_ = 0;
  Timer timer_;
  double last_draw_ = 0.0;
  size_t last_width_ = 0;
};

}  // namespace util
}  // namespace calq
