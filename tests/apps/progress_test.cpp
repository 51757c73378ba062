// Progress output (plain lines and terminal redraws) and the duration / rate formatting.

#include <gtest/gtest.h>

#include <regex>
#include <sstream>
#include <string>
#include <thread>

#include "calq/util/progress.h"
#include "calq/util/timer.h"

using calq::util::Progress;
using calq::util::ProgressOptions;

namespace {

int count_lines(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

TEST(Progress, PlainLinesAreThrottled) {
  std::ostringstream out;
  {
    Progress progress("train epoch 1", 60000, "img",
                      ProgressOptions().stream(&out).tty(false).interval_seconds(1000));
    for (int i = 1; i <= 10; ++i) progress.update(i * 6000);
    EXPECT_EQ(out.str(), "");  // within the interval: nothing yet
    progress.finish();
    progress.update(1);  // after finish: silent
  }
  const std::string text = out.str();
  EXPECT_EQ(count_lines(text), 1) << text;
  EXPECT_TRUE(
      std::regex_match(text, std::regex("train epoch 1: 100% 60000/60000 img, [0-9.]+[kMG]? img/s, "
                                        "elapsed 0:00, eta 0:00\n")))
      << text;
  EXPECT_EQ(text.find('\r'), std::string::npos);
}

TEST(Progress, PlainLineEveryUpdateWithZeroInterval) {
  std::ostringstream out;
  Progress progress("calibrate", 4, "batch",
                    ProgressOptions().stream(&out).tty(false).interval_seconds(0));
  progress.advance();
  progress.advance(2);
  EXPECT_EQ(count_lines(out.str()), 2);
  EXPECT_NE(out.str().find("calibrate:  25% 1/4 batch, "), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("calibrate:  75% 3/4 batch, "), std::string::npos) << out.str();
  EXPECT_EQ(progress.done(), 3);
  progress.finish();
  EXPECT_EQ(count_lines(out.str()), 3);
}

TEST(Progress, TerminalRedrawsInPlace) {
  std::ostringstream out;
  {
    Progress progress(
        "eval", 10, "img",
        ProgressOptions().stream(&out).tty(true).tty_interval_seconds(0).bar_width(10));
    progress.update(5);
    const std::string first = out.str();
    EXPECT_EQ(first.rfind("\reval [#####-----]  50% 5/10 img, ", 0), 0u) << first;
    EXPECT_EQ(first.find('\n'), std::string::npos);
    progress.update(10);
  }  // the destructor finishes the line
  const std::string text = out.str();
  EXPECT_EQ(std::count(text.begin(), text.end(), '\r'), 3);
  EXPECT_NE(text.find("\reval [##########] 100% 10/10 img"), std::string::npos) << text;
  EXPECT_EQ(text.back(), '\n');
  EXPECT_EQ(count_lines(text), 1);
}

TEST(Progress, UnknownTotal) {
  std::ostringstream out;
  Progress progress("scan", 0, "file", ProgressOptions().stream(&out).tty(false));
  progress.update(7);
  progress.finish();
  EXPECT_TRUE(std::regex_match(out.str(), std::regex("scan: 7 file, \\S+ file/s, elapsed 0:00\n")))
      << out.str();
}

TEST(Progress, Quiet) {
  std::ostringstream out;
  {
    Progress progress("a", 3, "it", ProgressOptions().stream(&out).quiet(true).interval_seconds(0));
    progress.update(3);
  }
  Progress::set_globally_quiet(true);
  {
    Progress progress("b", 3, "it", ProgressOptions().stream(&out).interval_seconds(0));
    progress.update(3);
  }
  Progress::set_globally_quiet(false);
  EXPECT_EQ(out.str(), "");
  EXPECT_FALSE(Progress::globally_quiet());
}

TEST(Progress, RejectsBadOptions) {
  EXPECT_THROW(Progress("x", 1, "it", ProgressOptions().interval_seconds(-1)), c10::Error);
  EXPECT_THROW(Progress("x", 1, "it", ProgressOptions().bar_width(0)), c10::Error);
}

TEST(Timer, FormatDuration) {
  EXPECT_EQ(calq::util::format_duration(0), "0:00");
  EXPECT_EQ(calq::util::format_duration(5.7), "0:05");
  EXPECT_EQ(calq::util::format_duration(61), "1:01");
  EXPECT_EQ(calq::util::format_duration(3599.9), "59:59");
  EXPECT_EQ(calq::util::format_duration(3725), "1:02:05");
  EXPECT_EQ(calq::util::format_duration(-1), "?");
  EXPECT_EQ(calq::util::format_duration(NAN), "?");
}

TEST(Timer, FormatRate) {
  EXPECT_EQ(calq::util::format_rate(4.25), "4.2");
  EXPECT_EQ(calq::util::format_rate(950), "950");
  EXPECT_EQ(calq::util::format_rate(9999), "9999");
  EXPECT_EQ(calq::util::format_rate(12345), "12.3k");
  EXPECT_EQ(calq::util::format_rate(123456), "123k");
  EXPECT_EQ(calq::util::format_rate(2.5e6), "2.50M");
  EXPECT_EQ(calq::util::format_rate(3e9), "3.00G");
  EXPECT_EQ(calq::util::format_rate(INFINITY), "?");
}

TEST(Timer, MeasuresElapsedTime) {
  calq::util::Timer timer;
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_GE(timer.milliseconds(), 200.0);
  timer.reset();
  EXPECT_LT(timer.seconds(), 0.2);  // the 200 ms before the reset are gone
}

}  // namespace
