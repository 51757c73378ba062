#include "calq/distributed/launch.h"

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <sstream>
#include <thread>

extern char** environ;

namespace calq {
namespace distributed {
namespace {

using Clock = std::chrono::steady_clock;

volatile sig_atomic_t forwarded_signal = 0;

void remember_signal(int signal) {
  forwarded_signal = signal;
}

// Installs remember_signal for SIGINT and SIGTERM for the lifetime of the object.
class SignalForwarding {
 public:
  SignalForwarding() {
    forwarded_signal = 0;
    struct sigaction action {};
    action.sa_handler = remember_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &old_int_);
    sigaction(SIGTERM, &action, &old_term_);
  }
  ~SignalForwarding() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }

 private:
  struct sigaction old_int_ {};
  struct sigaction old_term_ {};
};

// The environment of one rank: this process's, with the launcher's variables set.
std::vector<std::string> rank_environment(const std::map<std::string, std::string>& overrides) {
  std::map<std::string, std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry(*e);
    const auto eq = entry.find('=');
    if (eq != std::string::npos) env[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  for (const auto& item : overrides) env[item.first] = item.second;
  std::vector<std::string> result;
  for (const auto& item : env) result.push_back(item.first + "=" + item.second);
  return result;
}

std::vector<char*> pointers(std::vector<std::string>& strings) {
  std::vector<char*> result;
  for (auto& s : strings) result.push_back(&s[0]);
  result.push_back(nullptr);
  return result;
}

}  // namespace

std::string RankExit::describe() const {
  std::ostringstream out;
  out << "rank " << rank << " (pid " << pid << ") ";
  if (signal != 0) {
    out << "was killed by signal " << signal << " (" << strsignal(signal) << ")";
  } else {
    out << "exited with code " << exit_code;
  }
  if (stopped_by_launcher) out << ", stopped by the launcher after another rank failed";
  return out.str();
}

int LaunchResult::exit_code() const {
  if (first_failed_rank < 0) return 0;
  const RankExit& r = ranks[static_cast<size_t>(first_failed_rank)];
  return r.signal != 0 ? 128 + r.signal : r.exit_code;
}

std::string LaunchResult::summary() const {
  if (first_failed_rank < 0) return "";
  std::string out = ranks[static_cast<size_t>(first_failed_rank)].describe() + " first";
  for (const auto& r : ranks) {
    if (r.rank == first_failed_rank || r.ok()) continue;
    out += "\n" + r.describe();
  }
  return out;
}

LaunchResult launch_local(const LaunchOptions& options) {
  const int64_t n = options.nproc();
  TORCH_CHECK(n >= 1, "launch: nproc must be >= 1, got ", n);
  TORCH_CHECK(!options.command().empty(), "launch: the command is empty; give the program to run");
  TORCH_CHECK(options.timeout() >= std::chrono::seconds(1), "launch: the timeout must be >= 1 s");
  int64_t threads = options.threads_per_process();
  if (threads <= 0) {
    threads = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()) / n);
  }

  // The launcher hosts the rendezvous store on a port the system picks, so no two jobs race
  // for a port, and the store outlives any rank (the survivors can still name the dead one).
  c10d::TCPStoreOptions store_options;
  store_options.port = 0;
  store_options.isServer = true;
  store_options.waitWorkers = false;
  store_options.timeout = options.timeout();
  c10d::TCPStore store("127.0.0.1", store_options);
  const int port = store.getPort();
  TORCH_INTERNAL_ASSERT(port > 0, "the launcher's store has no port");

  std::vector<std::string> argv_strings = options.command();
  std::vector<char*> argv = pointers(argv_strings);

  LaunchResult result;
  result.ranks.resize(static_cast<size_t>(n));
  std::vector<bool> running(static_cast<size_t>(n), false);
  auto stop_all = [&](int signal) {
    for (int64_t r = 0; r < n; ++r) {
      if (running[r]) kill(result.ranks[r].pid, signal);
    }
  };

  SignalForwarding forwarding;
  for (int64_t r = 0; r < n; ++r) {
    std::map<std::string, std::string> vars = {
        {"RANK", std::to_string(r)},
        {"WORLD_SIZE", std::to_string(n)},
        {"LOCAL_RANK", std::to_string(r)},
        {"LOCAL_WORLD_SIZE", std::to_string(n)},
        {"MASTER_ADDR", "127.0.0.1"},
        {"MASTER_PORT", std::to_string(port)},
        {"CALQ_AGENT_STORE", "1"},
        {"CALQ_LAUNCHED", "1"},
        {"CALQ_DIST_TIMEOUT", std::to_string(options.timeout().count() / 1000.0)}};
    if (std::getenv("OMP_NUM_THREADS") == nullptr)
      vars["OMP_NUM_THREADS"] = std::to_string(threads);
    for (const auto& item : options.env()) vars[item.first] = item.second;
    std::vector<std::string> env_strings = rank_environment(vars);
    std::vector<char*> envp = pointers(env_strings);
    pid_t pid = -1;
    const int status = posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), envp.data());
    if (status != 0) {
      stop_all(SIGKILL);
      for (int64_t s = 0; s < r; ++s) waitpid(result.ranks[s].pid, nullptr, 0);
      TORCH_CHECK(false, "launch: cannot start rank ", r, " ('", argv_strings[0],
                  "'): ", std::strerror(status));
    }
    result.ranks[r].rank = r;
    result.ranks[r].pid = pid;
    running[r] = true;
  }

  // Wait for every rank; after the first failure, the grace period, then SIGTERM, then SIGKILL.
  Clock::time_point failed_at{};
  bool terminated = false, killed = false;
  int64_t alive = n;
  while (alive > 0) {
    if (forwarded_signal != 0) {
      stop_all(forwarded_signal);
      forwarded_signal = 0;
    }
    bool reaped = false;
    for (int64_t r = 0; r < n; ++r) {
      if (!running[r]) continue;
      int status = 0;
      const pid_t done = waitpid(result.ranks[r].pid, &status, WNOHANG);
      if (done == 0 || (done < 0 && errno == EINTR)) continue;
      running[r] = false;
      --alive;
      reaped = true;
      RankExit& exit = result.ranks[r];
      if (done > 0 && WIFEXITED(status)) exit.exit_code = WEXITSTATUS(status);
      if (done > 0 && WIFSIGNALED(status)) exit.signal = WTERMSIG(status);
      exit.stopped_by_launcher = terminated && result.first_failed_rank >= 0;
      if (!exit.ok() && result.first_failed_rank < 0) {
        result.first_failed_rank = r;
        failed_at = Clock::now();
      }
    }
    if (alive == 0) break;
    if (result.first_failed_rank >= 0) {
      const auto since = Clock::now() - failed_at;
      if (!terminated && since >= options.grace()) {
        stop_all(SIGTERM);
        terminated = true;
      } else if (terminated && !killed && since >= options.grace() + std::chrono::seconds(2)) {
        stop_all(SIGKILL);
        killed = true;
      }
    }
    if (!reaped) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return result;
}

}  // namespace distributed
}  // namespace calq
