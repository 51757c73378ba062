#pragma once
// Local launcher: starts N copies of a program as the ranks of one job on this machine, as
// torchrun --nproc-per-node does, waits for them and reports which rank failed and how
// (docs/distributed.md, "Launch").

#include <torch/arg.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace calq {
namespace distributed {

/// Environment variables (name, value).
using Environment = std::vector<std::pair<std::string, std::string>>;

struct LaunchOptions {
  LaunchOptions(int64_t nproc, std::vector<std::string> command)
      : nproc_(nproc), command_(std::move(command)) {}

  /// Number of ranks to start, >= 1.
  TORCH_ARG(int64_t, nproc);
  /// The program (a path; "/proc/self/exe" is this program) and its arguments, the same for
  /// every rank. Each rank gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR
  /// (127.0.0.1), MASTER_PORT (a free port, where the launcher itself hosts the rendezvous
  /// store), CALQ_AGENT_STORE=1, CALQ_LAUNCHED=1 and CALQ_DIST_TIMEOUT in its environment.
  TORCH_ARG(std::vector<std::string>, command);
  /// Threads per rank, passed as OMP_NUM_THREADS (unless the environment sets it). 0: the
  /// machine's cores divided among the ranks, at least 1. Default 0.
  TORCH_ARG(int64_t, threads_per_process) = 0;
  /// The ranks' collective timeout (CALQ_DIST_TIMEOUT). Default 60 s.
  TORCH_ARG(std::chrono::milliseconds, timeout) = std::chrono::seconds(60);
  /// Once a rank failed, the others have this long to finish or fail on their own (printing
  /// which rank they lost) before they get SIGTERM, then SIGKILL 2 s later. Default 5 s.
  TORCH_ARG(std::chrono::milliseconds, grace) = std::chrono::seconds(5);
  /// More environment variables for every rank (name, value); they override the launcher's.
  TORCH_ARG(Environment, env) = {};
};

/// How one rank ended.
struct RankExit {
  int64_t rank = -1;
  int pid = -1;
  int exit_code = -1;                ///< exit status when it exited, else -1
  int signal = 0;                    ///< the signal that killed it, else 0
  bool stopped_by_launcher = false;  ///< killed by the launcher after another rank failed
  bool ok() const { return exit_code == 0; }
  /// e.g. "rank 1 (pid 4711) was killed by signal 9 (Killed)".
  std::string describe() const;
};

struct LaunchResult {
  std::vector<RankExit> ranks;     ///< in rank order
  int64_t first_failed_rank = -1;  ///< the rank that failed first, -1 when all succeeded
  /// 0 when every rank exited with 0; else the first failed rank's exit code (128 + signal
  /// when a signal killed it).
  int exit_code() const;
  /// One line per failed rank, the first failure first; empty when all succeeded.
  std::string summary() const;
};

/// Starts options.nproc() ranks, waits for all of them, and returns how each ended. When one
/// fails (a non-zero exit or a signal) the others get the grace period, then are stopped.
/// SIGINT / SIGTERM sent to the launcher are passed on to the ranks. Throws (naming the
/// program) if a rank cannot be started; the ranks already started are then stopped.
LaunchResult launch_local(const LaunchOptions& options);

}  // namespace distributed
}  // namespace calq
