#pragma once
// A process group of a calq job: rendezvous on a c10d TCPStore, collectives on c10d's
// ProcessGroupGloo, and a failure detector that names the rank that died or hung
// (docs/distributed.md, "Launch" and "Faults").

#include <c10/util/intrusive_ptr.h>
#include <torch/arg.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace calq {
namespace distributed {

/// Where and how a process joins a job. Usually read from the environment
/// (options_from_environment), as torchrun or `calq --nproc` set it.
struct ProcessGroupOptions {
  /// This process's rank, in [0, world_size). Default 0.
  TORCH_ARG(int64_t, rank) = 0;
  /// Number of processes in the job, >= 1. Default 1.
  TORCH_ARG(int64_t, world_size) = 1;
  /// Host of the rendezvous store (rank 0's machine, or the launcher's). Default 127.0.0.1.
  TORCH_ARG(std::string, master_addr) = "127.0.0.1";
  /// Port of the rendezvous store, in [1, 65535]. Default 29500 (torchrun's).
  TORCH_ARG(int64_t, master_port) = 29500;
  /// Whether rank 0 hosts the store (false: a launcher already hosts it at master_addr:port, as
  /// `calq --nproc` does). Ignored on other ranks. Default true.
  TORCH_ARG(bool, host_store) = true;
  /// Time budget of the rendezvous and of every collective: a rank that died or hangs makes
  /// the others throw, naming it, within this time (a few heartbeats of it are kept for the
  /// diagnosis, so the collective itself times out a little earlier). >= 1 s. Default 60 s.
  TORCH_ARG(std::chrono::milliseconds, timeout) = std::chrono::seconds(60);
  /// Network interface for the collectives (GLOO_SOCKET_IFNAME), e.g. "eth0"; empty: the
  /// loopback interface when master_addr is a loopback address, else the address this
  /// machine's hostname resolves to. Default empty.
  TORCH_ARG(std::string, interface) = "";
};

/// Whether this process was started by a launcher (the environment has RANK).
bool launched_by_environment();

/// The options a launcher set: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (all required once
/// RANK is set; torchrun's names), optional GLOO_SOCKET_IFNAME, and CALQ_AGENT_STORE=1 when the
/// launcher hosts the store. Throws naming the missing or malformed variable. `timeout` is
/// taken from CALQ_DIST_TIMEOUT (seconds) when set, else the default.
ProcessGroupOptions options_from_environment();

/// One process's membership in a job. Construction is the rendezvous: it returns once every
/// rank joined, else throws within the timeout naming what went wrong (an address that does
/// not resolve or cannot be reached, a port in use, ranks that never joined, a rank started
/// twice, ranks that disagree on the world size). The collectives below must be called by
/// every rank in the same order (as c10d requires); they block, and on a failure throw a
/// c10::Error that names the rank(s) that died, were stopped, or did not reach the
/// collective, found by a heartbeat every rank writes to the store. Not copyable; share it with
/// std::shared_ptr. The collectives may be called from one thread at a time (autograd's
/// backward counts as the caller's thread).
class ProcessGroup {
 public:
  /// Rendezvous on a c10d::TCPStore at master_addr:master_port (hosted by rank 0 unless
  /// host_store is false) and a ProcessGroupGloo on top of it.
  explicit ProcessGroup(ProcessGroupOptions options);
  /// Rendezvous on a store the caller made (a c10d::FileStore on a shared folder, a TCPStore,
  /// ...), shared by every rank of the job and fresh for it. master_addr, master_port and
  /// host_store are not used. The heartbeat shares this store, so it must be thread-safe
  /// (c10d's stores are).
  ProcessGroup(c10::intrusive_ptr<c10d::Store> store, ProcessGroupOptions options);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int64_t rank() const { return options_.rank(); }
  int64_t size() const { return options_.world_size(); }
  const ProcessGroupOptions& options() const { return options_; }
  /// The c10d process group, for collectives calq does not wrap (errors then are c10d's own).
  c10d::ProcessGroup& backend() { return *backend_; }

  /// In-place all-reduce of every tensor (dense, contiguous, CPU) with `op`.
  void all_reduce(std::vector<at::Tensor>& tensors, c10d::ReduceOp op = c10d::ReduceOp::SUM);
  /// In-place broadcast of every tensor from rank `root`.
  void broadcast(std::vector<at::Tensor>& tensors, int64_t root = 0);
  /// Every rank's `tensor` (same shape and dtype on every rank), in rank order.
  std::vector<at::Tensor> all_gather(const at::Tensor& tensor);
  /// Every rank's bytes, in rank order; lengths may differ between ranks (and be 0).
  std::vector<std::string> all_gather_bytes(const std::string& bytes);
  /// Rank `root`'s bytes on every rank (`bytes` is read on root only).
  std::string broadcast_bytes(const std::string& bytes, int64_t root = 0);
  void barrier();

  /// An all-reduce in flight (all_reduce_async). wait() blocks until it finished and throws as
  /// the blocking collectives do; a Pending that is never waited for is waited for (errors
  /// ignored) when destroyed.
  class Pending {
   public:
    Pending() = default;
    Pending(Pending&&) = default;
    Pending& operator=(Pending&&) = default;
    ~Pending();
    void wait();
    bool valid() const { return work_.defined(); }

   private:
    friend class ProcessGroup;
    ProcessGroup* group_ = nullptr;
    c10::intrusive_ptr<c10d::Work> work_;
    std::string what_;
    int64_t sequence_ = 0;
  };
  /// Starts an in-place SUM all-reduce of `tensors`; `what` names it in errors.
  Pending all_reduce_async(std::vector<at::Tensor> tensors, std::string what);

  /// Number of collectives this rank has started (what the heartbeat reports).
  int64_t collectives_started() const { return collectives_.load(); }
  /// Seconds this rank spent blocked in waits for collectives (moving data, and waiting for
  /// slower ranks), since construction.
  double wait_seconds() const { return wait_nanoseconds_.load() * 1e-9; }

 private:
  void rendezvous();
  void start_heartbeat();
  void heartbeat_loop();
  /// Runs `start` (which issues a collective) and waits for its work; on any failure throws a
  /// c10::Error naming `what` and the ranks the heartbeat finds dead or behind.
  void run(const std::string& what, const std::function<c10::intrusive_ptr<c10d::Work>()>& start);
  void wait_work(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what,
                 int64_t sequence);
  [[noreturn]] void fail(const std::string& what, int64_t sequence, const std::string& cause);
  std::string diagnose(int64_t sequence);

  ProcessGroupOptions options_;
  std::string store_description_;
  c10::intrusive_ptr<c10d::Store> store_;            // rendezvous and heartbeat
  c10::intrusive_ptr<c10d::Store> heartbeat_store_;  // a second client (TCPStore) or store_
  c10::intrusive_ptr<c10d::ProcessGroup> backend_;
  std::chrono::milliseconds heartbeat_interval_{1000};
  std::atomic<int64_t> collectives_{0};
  std::atomic<int64_t> wait_nanoseconds_{0};
  std::thread heartbeat_;
  std::mutex heartbeat_mutex_;
  std::condition_variable heartbeat_cv_;
  bool stop_heartbeat_ = false;
};

/// The rows [begin, end) of a batch of `rows` rows that rank `rank` of `world_size` works on:
/// the rank-th contiguous part, [rank * rows / world_size, (rank + 1) * rows / world_size).
/// Every row goes to exactly one rank; parts differ in length by at most one.
std::pair<int64_t, int64_t> shard(int64_t rows, int64_t rank, int64_t world_size);

}  // namespace distributed
}  // namespace calq
