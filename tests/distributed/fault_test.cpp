// Faults: a rank that dies, is stopped or fails makes the others fail within the collective
// timeout with an error naming it (never a hang); rendezvous mistakes (world size, address,
// port, a rank started twice) are clear errors; the launcher reports which rank failed first.
#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "calq/distributed/launch.h"
#include "calq/distributed/process_group.h"

namespace {

using calq::distributed::LaunchOptions;
using calq::distributed::LaunchResult;
using calq::distributed::ProcessGroup;
using calq::distributed::ProcessGroupOptions;
using Clock = std::chrono::steady_clock;

std::string temp_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("calq_fault_test_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// A TCP port nobody listens on right now.
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  socklen_t length = sizeof(address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  close(fd);
  return ntohs(address.sin_port);
}

// The message of the c10::Error `f` throws ("" if it returns).
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const c10::Error& error) {
    return error.what_without_backtrace();
  }
  return "";
}

constexpr double kTimeoutSeconds = 5.0;
// A loaded 2-core machine may deschedule a process for a while; the detection itself is
// designed to end inside the timeout (docs/distributed.md, "Faults").
constexpr double kSchedulingSlackSeconds = 1.0;

struct FaultCase {
  std::string mode;  // kill1, kill0, stop1, fail1
  int64_t victim;
  int64_t survivor;
};

void PrintTo(const FaultCase& c, std::ostream* out) {
  *out << c.mode;
}

class DeadRank : public ::testing::TestWithParam<FaultCase> {};

// Rank `victim` dies (SIGKILL right after starting a 16 MB all-reduce), stops (SIGSTOP: alive
// but silent) or fails (an exception) at iteration 3 of a loop of all-reduces. The survivor
// exits with an error naming the victim within the timeout, measured from the victim's last
// moment; nothing hangs.
TEST_P(DeadRank, SurvivorFailsWithinTheTimeoutNamingIt) {
  const FaultCase c = GetParam();
  const std::string out = temp_dir(c.mode);
  const auto started = Clock::now();
  const LaunchResult result = calq::distributed::launch_local(
      LaunchOptions(
          2, {CALQ_DISTRIBUTED_WORKER, "fault", out, c.mode, std::to_string(kTimeoutSeconds)})
          .threads_per_process(1)
          .timeout(std::chrono::milliseconds(static_cast<int64_t>(kTimeoutSeconds * 1000)))
          // Long enough for the survivor to fail on its own; a stopped rank is killed after it.
          .grace(std::chrono::seconds(c.mode == "stop1" ? 1 : 30)));
  const double total = std::chrono::duration<double>(Clock::now() - started).count();

  const auto& survivor = result.ranks[c.survivor];
  EXPECT_EQ(survivor.exit_code, 1) << survivor.describe();
  const std::string error = read_text(out + "/error.rank" + std::to_string(c.survivor) + ".txt");
  ASSERT_FALSE(error.empty()) << "the survivor wrote no error; " << result.summary();
  std::istringstream lines(error);
  double failed_at = 0.0;
  lines >> failed_at;
  const double died_at = std::stod(read_text(out + "/death.time"));
  const double detection = failed_at - died_at;
  std::cout << "[ " << c.mode << " ] survivor failed " << detection
            << " s after the fault: " << error.substr(error.find('\n') + 1);
  EXPECT_LT(detection, kTimeoutSeconds + kSchedulingSlackSeconds);
  EXPECT_NE(error.find("rank(s) " + std::to_string(c.victim) + " stopped responding"),
            std::string::npos)
      << error;
  EXPECT_NE(error.find("failed on rank " + std::to_string(c.survivor)), std::string::npos) << error;
  EXPECT_LT(total, 30.0);
  // The launcher names the rank that failed first.
  EXPECT_GE(result.first_failed_rank, 0);
  EXPECT_NE(result.summary().find("rank " + std::to_string(result.first_failed_rank)),
            std::string::npos);
  if (c.mode != "stop1") EXPECT_EQ(result.first_failed_rank, c.victim) << result.summary();
  if (c.mode == "kill1" || c.mode == "kill0") {
    EXPECT_EQ(result.ranks[c.victim].signal, SIGKILL);
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, DeadRank,
                         ::testing::Values(FaultCase{"kill1", 1, 0}, FaultCase{"kill0", 0, 1},
                                           FaultCase{"stop1", 1, 0}, FaultCase{"fail1", 1, 0}),
                         [](const auto& info) { return info.param.mode; });

ProcessGroupOptions options(int64_t rank, int64_t world, int port, double timeout = 2.0) {
  return ProcessGroupOptions()
      .rank(rank)
      .world_size(world)
      .master_addr("127.0.0.1")
      .master_port(port)
      .timeout(std::chrono::milliseconds(static_cast<int64_t>(timeout * 1000)));
}

TEST(Rendezvous, PortInUseIsAnError) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_ANY);
  address.sin_port = 0;
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t length = sizeof(address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  const int port = ntohs(address.sin_port);
  const std::string error = error_of([&] { ProcessGroup g(options(0, 2, port)); });
  close(fd);
  EXPECT_NE(error.find("MASTER_PORT " + std::to_string(port) + " is already in use"),
            std::string::npos)
      << error;
}

TEST(Rendezvous, UnresolvableAddressIsAnError) {
  const std::string error = error_of(
      [&] { ProcessGroup g(options(1, 2, free_port()).master_addr("no-such-host.invalid")); });
  EXPECT_NE(error.find("MASTER_ADDR 'no-such-host.invalid' does not resolve"), std::string::npos)
      << error;
}

TEST(Rendezvous, UnreachableStoreIsAnErrorWithinTheTimeout) {
  const int port = free_port();
  const auto started = Clock::now();
  const std::string error = error_of([&] { ProcessGroup g(options(1, 2, port)); });
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  EXPECT_NE(
      error.find("rank 1 cannot reach the rendezvous store at 127.0.0.1:" + std::to_string(port)),
      std::string::npos)
      << error;
  EXPECT_LT(seconds, 2.0 + kSchedulingSlackSeconds + 2.0);
}

TEST(Rendezvous, MissingRankIsNamed) {
  const std::string error = error_of([&] { ProcessGroup g(options(0, 3, free_port())); });
  EXPECT_NE(error.find("WORLD_SIZE=3 ranks, but rank(s) 1, 2 never joined (joined: 0)"),
            std::string::npos)
      << error;
}

TEST(Rendezvous, DifferentWorldSizesAreAnError) {
  const int port = free_port();
  auto rank0 = std::async(std::launch::async,
                          [&] { return error_of([&] { ProcessGroup g(options(0, 2, port)); }); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const std::string error1 = error_of([&] { ProcessGroup g(options(1, 3, port)); });
  const std::string error0 = rank0.get();
  EXPECT_NE(error1.find("with WORLD_SIZE=2 and rank 1 with WORLD_SIZE=3"), std::string::npos)
      << error1;
  EXPECT_NE(error0.find("with WORLD_SIZE=3 and rank 0 with WORLD_SIZE=2"), std::string::npos)
      << error0;
}

TEST(Rendezvous, RankStartedTwiceIsAnError) {
  c10d::TCPStoreOptions store_options;
  store_options.port = 0;
  store_options.isServer = true;
  store_options.waitWorkers = false;
  c10d::TCPStore store("127.0.0.1", store_options);
  auto joining = [&] {
    return error_of([&] { ProcessGroup g(options(1, 2, store.getPort()).host_store(false)); });
  };
  auto first = std::async(std::launch::async, joining);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const std::string second = joining();
  first.get();  // waits for rank 0, which never comes
  EXPECT_NE(second.find("RANK 1 was started twice"), std::string::npos) << second;
}

TEST(Rendezvous, InvalidOptionsAreErrors) {
  EXPECT_NE(error_of([] { ProcessGroup g(options(2, 2, 29500)); }).find("rank 2 is out of range"),
            std::string::npos);
  EXPECT_NE(error_of([] { ProcessGroup g(options(0, 0, 29500)); }).find("world size must be >= 1"),
            std::string::npos);
  EXPECT_NE(error_of([] { ProcessGroup g(options(0, 2, 70000)); }).find("[1, 65535]"),
            std::string::npos);
}

// Sets environment variables for the scope and restores them.
class Environment {
 public:
  void set(const std::string& name, const char* value) {
    const char* old = std::getenv(name.c_str());
    saved_.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
    if (value) {
      setenv(name.c_str(), value, 1);
    } else {
      unsetenv(name.c_str());
    }
  }
  ~Environment() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      if (it->second) {
        setenv(it->first.c_str(), it->second->c_str(), 1);
      } else {
        unsetenv(it->first.c_str());
      }
    }
  }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

TEST(Rendezvous, EnvironmentErrorsNameTheVariable) {
  Environment env;
  env.set("RANK", "0");
  env.set("WORLD_SIZE", nullptr);
  env.set("MASTER_ADDR", "127.0.0.1");
  env.set("MASTER_PORT", "29500");
  EXPECT_NE(
      error_of([] { calq::distributed::options_from_environment(); }).find("WORLD_SIZE is not set"),
      std::string::npos);
  env.set("WORLD_SIZE", "two");
  EXPECT_NE(error_of([] {
              calq::distributed::options_from_environment();
            }).find("WORLD_SIZE='two' is not an integer"),
            std::string::npos);
  env.set("WORLD_SIZE", "2");
  env.set("MASTER_PORT", "99999");
  EXPECT_NE(error_of([] {
              calq::distributed::options_from_environment();
            }).find("MASTER_PORT=99999 is not a TCP port"),
            std::string::npos);
  env.set("MASTER_PORT", "29500");
  env.set("RANK", "5");
  EXPECT_NE(error_of([] {
              calq::distributed::options_from_environment();
            }).find("rank 5 is out of range for world size 2"),
            std::string::npos);
  env.set("RANK", "1");
  env.set("CALQ_DIST_TIMEOUT", "7.5");
  const auto o = calq::distributed::options_from_environment();
  EXPECT_EQ(o.rank(), 1);
  EXPECT_EQ(o.world_size(), 2);
  EXPECT_EQ(o.master_port(), 29500);
  EXPECT_EQ(o.timeout().count(), 7500);
}

}  // namespace
