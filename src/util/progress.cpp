#include "calq/util/progress.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <iostream>
#include <sstream>

namespace calq {
namespace util {
namespace {

std::atomic<bool> g_quiet{false};

}  // namespace

void Progress::set_globally_quiet(bool quiet) {
  g_quiet = quiet;
}
bool Progress::globally_quiet() {
  return g_quiet;
}

Progress::Progress(std::string label, int64_t total, std::string units, ProgressOptions options)
    : label_(std::move(label)),
      total_(total),
      units_(std::move(units)),
      options_(options),
      stream_(options.stream() != nullptr ? options.stream() : &std::cerr),
      quiet_(options.quiet() || g_quiet) {
  TORCH_CHECK(options.interval_seconds() >= 0 && options.tty_interval_seconds() >= 0,
              "progress intervals must be >= 0 seconds, got ", options.interval_seconds(), " and ",
              options.tty_interval_seconds());
  TORCH_CHECK(options.bar_width() >= 1, "progress bar_width must be >= 1, got ",
              options.bar_width());
  if (options.tty().has_value()) {
    tty_ = *options.tty();
  } else {
    tty_ = stream_ == &std::cerr && ::isatty(::fileno(stderr)) == 1;
  }
}

Progress::~Progress() {
  try {
    finish();
  } catch (...) {
    // A destructor must not throw; a failed last line is not worth terminating for.
  }
}

void Progress::update(int64_t done) {
  done_ = std::max<int64_t>(done, 0);
  if (quiet_ || finished_) return;
  const double now = timer_.seconds();
  const double interval = tty_ ? options_.tty_interval_seconds() : options_.interval_seconds();
  if (now - last_draw_ >= interval) {
    last_draw_ = now;
    draw(/*final_line=*/false);
  }
}

void Progress::advance(int64_t items) {
  update(done_ + items);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (!quiet_) draw(/*final_line=*/true);
}

std::string Progress::status_line() const {
  const double elapsed = timer_.seconds();
  const double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : -1.0;
  std::ostringstream out;
  out << label_ << ": ";
  if (total_ > 0) {
    const double percent = 100.0 * static_cast<double>(done_) / static_cast<double>(total_);
    char text[32];
    std::snprintf(text, sizeof(text), "%3.0f%%", percent);
    out << text << " " << done_ << "/" << total_ << " " << units_;
  } else {
    out << done_ << " " << units_;
  }
  out << ", " << format_rate(rate) << " " << units_ << "/s, elapsed " << format_duration(elapsed);
  if (total_ > 0) {
    const double left =
        rate > 0 ? static_cast<double>(std::max<int64_t>(total_ - done_, 0)) / rate : -1.0;
    out << ", eta " << format_duration(left);
  }
  return out.str();
}

std::string Progress::bar() const {
  const int64_t width = options_.bar_width();
  const double fraction =
      total_ > 0 ? std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_)) : 0.0;
  const auto filled = static_cast<int64_t>(fraction * static_cast<double>(width));
  return "[" + std::string(static_cast<size_t>(filled), '#') +
         std::string(static_cast<size_t>(width - filled), '-') + "]";
}

void Progress::draw(bool final_line) {
  if (!tty_) {
    *stream_ << status_line() << '\n';
    stream_->flush();
    return;
  }
  std::string line = status_line();
  if (total_ > 0) {
    // "label: rest" -> "label [####----] rest" on a terminal.
    line.replace(0, label_.size() + 1, label_ + " " + bar());
  }
  const size_t width = line.size();
  if (width < last_width_) line.append(last_width_ - width, ' ');  // erase the longer old line
  last_width_ = width;
  *stream_ << '\r' << line;
  if (final_line) *stream_ << '\n';
  stream_->flush();
}

}  // namespace util
}  // namespace calq
