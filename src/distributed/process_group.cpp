#include "calq/distributed/process_group.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace calq {
namespace distributed {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Keys of calq's own rendezvous and heartbeat (Gloo's keys live under "gloo/").
std::string rank_key(int64_t rank) {
  return "calq/rank/" + std::to_string(rank);
}
std::string starts_key(int64_t rank) {
  return "calq/starts/" + std::to_string(rank);
}
std::string heartbeat_key(int64_t rank) {
  return "calq/heartbeat/" + std::to_string(rank);
}

std::vector<uint8_t> to_bytes(const std::string& s) {
  return std::vector<uint8_t>(s.begin(), s.end());
}
std::string from_bytes(const std::vector<uint8_t>& b) {
  return std::string(b.begin(), b.end());
}

// The message of an exception without c10's backtrace.
std::string message_of(const std::exception& error) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&error)) {
    return c10_error->what_without_backtrace();
  }
  return error.what();
}

std::string seconds_text(milliseconds t) {
  std::ostringstream out;
  out << static_cast<double>(t.count()) / 1000.0 << " s";
  return out.str();
}

// The first address `host` resolves to (throws naming the host if it does not resolve).
sockaddr_storage resolve(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int status = getaddrinfo(host.c_str(), nullptr, &hints, &found);
  TORCH_CHECK(status == 0 && found != nullptr, "MASTER_ADDR '", host,
              "' does not resolve to an address (", gai_strerror(status),
              "); give rank 0's host name or IP address");
  sockaddr_storage address{};
  std::memcpy(&address, found->ai_addr, found->ai_addrlen);
  freeaddrinfo(found);
  return address;
}

bool is_loopback(const sockaddr_storage& address) {
  if (address.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(&address);
    return (ntohl(v4->sin_addr.s_addr) >> 24) == 127;
  }
  if (address.ss_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&address);
    return IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr);
  }
  return false;
}

// Whether some process listens on `port` of this machine (a bind fails with EADDRINUSE).
bool port_in_use(int64_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_ANY);
  address.sin_port = htons(static_cast<uint16_t>(port));
  const bool in_use =
      bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 && errno == EADDRINUSE;
  close(fd);
  return in_use;
}

std::string host_name() {
  char name[256] = {0};
  if (gethostname(name, sizeof(name) - 1) != 0) return "?";
  return name;
}

int64_t parse_integer(const char* variable, const std::string& text) {
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  TORCH_CHECK(used == text.size() && !text.empty(), "environment variable ", variable, "='", text,
              "' is not an integer");
  return value;
}

const char* getenv_or_null(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] != '\0' ? value : nullptr;
}

std::string required_env(const char* name) {
  const char* value = getenv_or_null(name);
  TORCH_CHECK(value != nullptr, "RANK is set, so this process joins a distributed job, but ", name,
              " is not set; a launcher must set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT "
              "(torchrun does; or start calq with --nproc N)");
  return value;
}

void validate(const ProcessGroupOptions& o) {
  TORCH_CHECK(o.world_size() >= 1, "distributed: world size must be >= 1, got ", o.world_size());
  TORCH_CHECK(o.rank() >= 0 && o.rank() < o.world_size(), "distributed: rank ", o.rank(),
              " is out of range for world size ", o.world_size(), "; ranks are 0 .. ",
              o.world_size() - 1);
  TORCH_CHECK(o.timeout() >= std::chrono::seconds(1),
              "distributed: the timeout must be >= 1 s, got ", seconds_text(o.timeout()));
}

// What the heartbeat of one rank said: beats so far and collectives started.
struct Beat {
  bool present = false;
  int64_t beats = -1;
  int64_t collectives = -1;
};

}  // namespace

bool launched_by_environment() {
  return getenv_or_null("RANK") != nullptr;
}

ProcessGroupOptions options_from_environment() {
  TORCH_CHECK(launched_by_environment(),
              "distributed: RANK is not set; this process was not started by a launcher");
  ProcessGroupOptions o;
  o.rank(parse_integer("RANK", required_env("RANK")));
  o.world_size(parse_integer("WORLD_SIZE", required_env("WORLD_SIZE")));
  o.master_addr(required_env("MASTER_ADDR"));
  const int64_t port = parse_integer("MASTER_PORT", required_env("MASTER_PORT"));
  TORCH_CHECK(port >= 1 && port <= 65535, "environment variable MASTER_PORT=", port,
              " is not a TCP port; it must lie in [1, 65535]");
  o.master_port(port);
  if (const char* agent = getenv_or_null("CALQ_AGENT_STORE")) {
    o.host_store(std::string(agent) != "1");
  }
  if (const char* interface = getenv_or_null("GLOO_SOCKET_IFNAME")) o.interface(interface);
  if (const char* timeout = getenv_or_null("CALQ_DIST_TIMEOUT")) {
    char* end = nullptr;
    const double seconds = std::strtod(timeout, &end);
    TORCH_CHECK(end != timeout && *end == '\0' && seconds >= 1.0,
                "environment variable CALQ_DIST_TIMEOUT='", timeout,
                "' must be a number of seconds >= 1");
    o.timeout(milliseconds(static_cast<int64_t>(seconds * 1000.0)));
  }
  validate(o);
  return o;
}

std::pair<int64_t, int64_t> shard(int64_t rows, int64_t rank, int64_t world_size) {
  TORCH_CHECK(world_size >= 1 && rank >= 0 && rank < world_size && rows >= 0,
              "shard: invalid rows ", rows, ", rank ", rank, ", world size ", world_size);
  return {rank * rows / world_size, (rank + 1) * rows / world_size};
}

ProcessGroup::ProcessGroup(ProcessGroupOptions options) : options_(std::move(options)) {
  validate(options_);
  const int64_t port = options_.master_port();
  TORCH_CHECK(port >= 1 && port <= 65535, "distributed: MASTER_PORT ", port,
              " is not a TCP port; it must lie in [1, 65535]");
  TORCH_CHECK(!options_.master_addr().empty(), "distributed: MASTER_ADDR is empty");
  resolve(options_.master_addr());
  store_description_ = options_.master_addr() + ":" + std::to_string(port);

  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<uint16_t>(port);
  store_options.isServer = options_.rank() == 0 && options_.host_store();
  store_options.numWorkers = c10::nullopt;
  store_options.waitWorkers = false;
  store_options.timeout = options_.timeout();
  try {
    store_ = c10::make_intrusive<c10d::TCPStore>(options_.master_addr(), store_options);
  } catch (const std::exception& error) {
    TORCH_CHECK(!(store_options.isServer && port_in_use(port)), "distributed: rank 0 cannot host ",
                "the rendezvous store: MASTER_PORT ", port,
                " is already in use on this machine (another job, or a process of an earlier "
                "one); choose a free port");
    TORCH_CHECK(
        false, "distributed: rank ", options_.rank(), " cannot reach the rendezvous store at ",
        store_description_, " within ", seconds_text(options_.timeout()),
        (store_options.isServer ? "" : " (rank 0 or the launcher hosts it: is it running?)"),
        "; check MASTER_ADDR and MASTER_PORT and that the port is open. Cause: ",
        message_of(error));
  }
  // The heartbeat gets its own connection: a store call blocks its client while it runs.
  c10d::TCPStoreOptions client_options = store_options;
  client_options.isServer = false;
  try {
    heartbeat_store_ = c10::make_intrusive<c10d::TCPStore>(options_.master_addr(), client_options);
  } catch (const std::exception& error) {
    TORCH_CHECK(false, "distributed: rank ", options_.rank(), " lost the rendezvous store at ",
                store_description_, " right after joining it: ", message_of(error));
  }
  rendezvous();
}

ProcessGroup::ProcessGroup(c10::intrusive_ptr<c10d::Store> store, ProcessGroupOptions options)
    : options_(std::move(options)), store_(std::move(store)) {
  validate(options_);
  TORCH_CHECK(store_, "distributed: the store is null");
  store_description_ = "the given store";
  heartbeat_store_ = store_;
  rendezvous();
}

void ProcessGroup::rendezvous() {
  const int64_t rank = options_.rank();
  const int64_t world = options_.world_size();
  // A few heartbeats of the time budget are kept for naming the failed rank.
  heartbeat_interval_ = std::clamp(options_.timeout() / 20, milliseconds(50), milliseconds(1000));
  const milliseconds collective_timeout = options_.timeout() - 3 * heartbeat_interval_;

  try {
    const int64_t starts = store_->add(starts_key(rank), 1);
    TORCH_CHECK(starts == 1, "distributed: RANK ", rank,
                " was started twice (two processes claim it); give every process its own RANK "
                "in [0, ",
                world - 1, "]");
    std::ostringstream me;
    me << world << " " << host_name() << " " << getpid();
    store_->set(rank_key(rank), to_bytes(me.str()));

    // Wait for every rank, checking that they agree on the world size as they arrive.
    std::vector<std::string> joined(static_cast<size_t>(world));
    const auto deadline = Clock::now() + options_.timeout();
    for (;;) {
      int64_t missing = 0;
      for (int64_t r = 0; r < world; ++r) {
        if (!joined[r].empty()) continue;
        if (!store_->check({rank_key(r)})) {
          ++missing;
          continue;
        }
        joined[r] = from_bytes(store_->get(rank_key(r)));
        std::istringstream in(joined[r]);
        int64_t their_world = -1;
        std::string host, pid;
        in >> their_world >> host >> pid;
        if (their_world != world) {
          // The rank that hosts the store takes it down when it throws: first give the other
          // rank a moment to read this rank's entry, so that both name the mismatch (instead
          // of the other one only seeing the store vanish).
          std::this_thread::sleep_for(std::max(heartbeat_interval_, milliseconds(1000)));
          TORCH_CHECK(false, "distributed: rank ", r, " (", host, ", pid ", pid,
                      ") was started with WORLD_SIZE=", their_world, " and rank ", rank,
                      " with WORLD_SIZE=", world, "; every rank needs the same WORLD_SIZE");
        }
      }
      if (missing == 0) break;
      if (Clock::now() > deadline) {
        std::string absent, present;
        for (int64_t r = 0; r < world; ++r) {
          std::string& list = joined[r].empty() ? absent : present;
          list += (list.empty() ? "" : ", ") + std::to_string(r);
        }
        TORCH_CHECK(false, "distributed: rank ", rank, " waited ", seconds_text(options_.timeout()),
                    " at the rendezvous ", store_description_, " for WORLD_SIZE=", world,
                    " ranks, but rank(s) ", absent, " never joined (joined: ", present,
                    "); start them, or fix WORLD_SIZE");
      }
      std::this_thread::sleep_for(milliseconds(20));
    }
  } catch (const c10::Error&) {
    throw;
  } catch (const std::exception& error) {
    TORCH_CHECK(false, "distributed: rank ", rank, " lost the rendezvous store at ",
                store_description_, ": ", message_of(error));
  }

  auto gloo_options = c10d::ProcessGroupGloo::Options::create(collective_timeout);
  try {
    if (!options_.interface().empty()) {
      gloo_options->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForInterface(options_.interface()));
    } else if (!options_.master_addr().empty() && is_loopback(resolve(options_.master_addr()))) {
      gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
  } catch (const std::exception& error) {
    TORCH_CHECK(false, "distributed: rank ", rank, " cannot open a network device for Gloo",
                options_.interface().empty() ? "" : " on interface '" + options_.interface() + "'",
                " (set GLOO_SOCKET_IFNAME to a working interface): ", message_of(error));
  }
  try {
    auto gloo_store = c10::make_intrusive<c10d::PrefixStore>("gloo", store_);
    backend_ = c10::make_intrusive<c10d::ProcessGroupGloo>(gloo_store, static_cast<int>(rank),
                                                           static_cast<int>(world), gloo_options);
  } catch (const std::exception& error) {
    TORCH_CHECK(false, "distributed: rank ", rank, " could not connect to every other rank (",
                world, " ranks) within ", seconds_text(collective_timeout), ": ",
                message_of(error));
  }
  start_heartbeat();
}

ProcessGroup::~ProcessGroup() {
  {
    std::lock_guard<std::mutex> lock(heartbeat_mutex_);
    stop_heartbeat_ = true;
  }
  heartbeat_cv_.notify_all();
  if (heartbeat_.joinable()) heartbeat_.join();
}

void ProcessGroup::start_heartbeat() {
  heartbeat_ = std::thread([this] { heartbeat_loop(); });
}

void ProcessGroup::heartbeat_loop() {
  int64_t beats = 0;
  std::unique_lock<std::mutex> lock(heartbeat_mutex_);
  while (!stop_heartbeat_) {
    lock.unlock();
    try {
      std::ostringstream value;
      value << ++beats << " " << collectives_.load();
      heartbeat_store_->set(heartbeat_key(options_.rank()), to_bytes(value.str()));
    } catch (const std::exception&) {
      // The store is gone (its host died or the job ends); collectives report that.
    }
    lock.lock();
    heartbeat_cv_.wait_for(lock, heartbeat_interval_, [this] { return stop_heartbeat_; });
  }
}

std::string ProcessGroup::diagnose(int64_t sequence) {
  const int64_t world = size();
  auto read = [&]() {
    std::vector<Beat> beats(static_cast<size_t>(world));
    for (int64_t r = 0; r < world; ++r) {
      if (r == rank() || !store_->check({heartbeat_key(r)})) continue;
      std::istringstream in(from_bytes(store_->get(heartbeat_key(r))));
      Beat& b = beats[r];
      b.present = static_cast<bool>(in >> b.beats >> b.collectives);
    }
    return beats;
  };
  std::vector<Beat> before, after;
  try {
    before = read();
    std::this_thread::sleep_for(heartbeat_interval_ * 5 / 2);
    after = read();
  } catch (const std::exception& error) {
    return "the rendezvous store at " + store_description_ +
           " is unreachable, so the process hosting it (rank 0, or the launcher) died or the "
           "network failed (" +
           message_of(error) + ")";
  }
  std::string dead, behind;
  for (int64_t r = 0; r < world; ++r) {
    if (r == rank()) continue;
    const Beat& a = before[r];
    const Beat& b = after[r];
    if (!b.present || b.beats == a.beats) {
      dead += (dead.empty() ? "" : ", ") + std::to_string(r);
    } else if (b.collectives < sequence) {
      behind += (behind.empty() ? "" : ", ") + std::to_string(r) + " (it started " +
                std::to_string(b.collectives) + ")";
    }
  }
  const std::string silence = seconds_text(heartbeat_interval_ * 5 / 2);
  if (!dead.empty()) {
    return "rank(s) " + dead + " stopped responding (no heartbeat for " + silence +
           "): the process died, was killed or is stopped";
  }
  if (!behind.empty()) {
    return "rank(s) " + behind + " are alive but never started collective #" +
           std::to_string(sequence) + ": they are stuck, or slower than the timeout of " +
           seconds_text(options_.timeout()) +
           " allows (raise it with --dist-timeout or CALQ_DIST_TIMEOUT)";
  }
  return "every other rank still sends heartbeats and reached this collective";
}

void ProcessGroup::fail(const std::string& what, int64_t sequence, const std::string& cause) {
  const std::string diagnosis = diagnose(sequence);
  TORCH_CHECK(false, "distributed: ", what, " failed on rank ", rank(), " of ", size(),
              " (collective #", sequence, "): ", diagnosis, ". Cause: ", cause);
}

void ProcessGroup::wait_work(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what,
                             int64_t sequence) {
  const auto start = Clock::now();
  try {
    work->wait();
  } catch (const std::exception& error) {
    fail(what, sequence, message_of(error));
  }
  wait_nanoseconds_ +=
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
}

void ProcessGroup::run(const std::string& what,
                       const std::function<c10::intrusive_ptr<c10d::Work>()>& start) {
  const int64_t sequence = ++collectives_;
  c10::intrusive_ptr<c10d::Work> work;
  try {
    work = start();
  } catch (const std::exception& error) {
    fail(what, sequence, message_of(error));
  }
  wait_work(work, what, sequence);
}

void ProcessGroup::all_reduce(std::vector<at::Tensor>& tensors, c10d::ReduceOp op) {
  run("all-reduce", [&] {
    c10d::AllreduceOptions o;
    o.reduceOp = op;
    return backend_->allreduce(tensors, o);
  });
}

void ProcessGroup::broadcast(std::vector<at::Tensor>& tensors, int64_t root) {
  run("broadcast", [&] {
    c10d::BroadcastOptions o;
    o.rootRank = root;
    return backend_->broadcast(tensors, o);
  });
}

std::vector<at::Tensor> ProcessGroup::all_gather(const at::Tensor& tensor) {
  std::vector<at::Tensor> inputs{tensor.contiguous()};
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int64_t r = 0; r < size(); ++r) outputs[0].push_back(at::empty_like(inputs[0]));
  run("all-gather", [&] { return backend_->allgather(outputs, inputs); });
  return outputs[0];
}

std::vector<std::string> ProcessGroup::all_gather_bytes(const std::string& bytes) {
  const auto lengths = all_gather(at::full({1}, static_cast<int64_t>(bytes.size()), at::kLong));
  int64_t longest = 0;
  for (const auto& l : lengths) longest = std::max(longest, l.item<int64_t>());
  std::vector<std::string> result(static_cast<size_t>(size()));
  if (longest == 0) return result;
  at::Tensor mine = at::zeros({longest}, at::kByte);
  std::memcpy(mine.data_ptr<uint8_t>(), bytes.data(), bytes.size());
  const auto gathered = all_gather(mine);
  for (int64_t r = 0; r < size(); ++r) {
    const auto* data = reinterpret_cast<const char*>(gathered[r].data_ptr<uint8_t>());
    result[r].assign(data, data + lengths[r].item<int64_t>());
  }
  return result;
}

std::string ProcessGroup::broadcast_bytes(const std::string& bytes, int64_t root) {
  std::vector<at::Tensor> length{
      at::full({1}, rank() == root ? static_cast<int64_t>(bytes.size()) : 0, at::kLong)};
  broadcast(length, root);
  const int64_t n = length[0].item<int64_t>();
  if (n == 0) return std::string();
  std::vector<at::Tensor> data{at::empty({n}, at::kByte)};
  if (rank() == root) std::memcpy(data[0].data_ptr<uint8_t>(), bytes.data(), bytes.size());
  broadcast(data, root);
  const auto* p = reinterpret_cast<const char*>(data[0].data_ptr<uint8_t>());
  return std::string(p, p + n);
}

void ProcessGroup::barrier() {
  run("barrier", [&] { return backend_->barrier(); });
}

ProcessGroup::Pending ProcessGroup::all_reduce_async(std::vector<at::Tensor> tensors,
                                                     std::string what) {
  Pending pending;
  pending.group_ = this;
  pending.what_ = std::move(what);
  pending.sequence_ = ++collectives_;
  try {
    pending.work_ = backend_->allreduce(tensors);
  } catch (const std::exception& error) {
    fail(pending.what_, pending.sequence_, message_of(error));
  }
  return pending;
}

void ProcessGroup::Pending::wait() {
  if (!work_.defined()) return;
  auto work = std::move(work_);
  work_.reset();
  group_->wait_work(work, what_, sequence_);
}

ProcessGroup::Pending::~Pending() {
  if (!work_.defined()) return;
  try {
    work_->wait();
  } catch (const std::exception&) {
    // Already failing elsewhere (an exception unwinds past this pending collective).
  }
}

}  // namespace distributed
}  // namespace calq
