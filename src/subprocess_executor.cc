#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>

#include "stagekit/executor.h"
#include "stagekit/runner.h"
#include "util/fd.h"
#include "util/files.h"
#include "util/process.h"
#include "util/text.h"
#include "warm.h"

namespace stagekit {
namespace {

namespace fs = std::filesystem;

// The last non-empty line of the child's stdout.
std::string_view LastLine(std::string_view out) {
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.remove_suffix(1);
  std::size_t nl = out.rfind('\n');
  return nl == std::string_view::npos ? out : out.substr(nl + 1);
}

std::string Tails(const util::ChildResult& c, std::size_t max) {
  return "\n  stdout tail:\n" + util::Tail(c.out, max) + "\n  stderr tail:\n" +
         util::Tail(c.err, max);
}

using Clock = std::chrono::steady_clock;

// A persistent child: `RUNNER stage --serve`. Its stdin and stdout are one
// end of a socket pair (so a write to a dead child fails with EPIPE instead
// of raising SIGPIPE here), its stderr an unlinked temp file that is emptied
// before each request, so a failure can show what that request printed.
struct Child {
  pid_t pid = -1;
  util::UniqueFd sock;
  util::UniqueFd err;
  std::string pending;  // bytes read past the last reply line (none, normally)
  int served = 0;       // requests answered
};

// A temp file nobody else can open, for a child's stderr.
util::UniqueFd StderrFile() {
  const char* tmp = std::getenv("TMPDIR");
  std::string dir = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) {
    std::string tmpl = dir + "/.stagekit-child-XXXXXX";
    fd = ::mkostemp(tmpl.data(), O_APPEND | O_CLOEXEC);
    if (fd >= 0) ::unlink(tmpl.c_str());
  }
  return util::UniqueFd(fd);
}

std::string ReadTail(int fd, std::size_t max) {
  off_t size = ::lseek(fd, 0, SEEK_END);
  if (size <= 0) return "";
  off_t from = size > static_cast<off_t>(max) ? size - static_cast<off_t>(max) : 0;
  std::string out(static_cast<std::size_t>(size - from), '\0');
  ssize_t n = ::pread(fd, out.data(), out.size(), from);
  out.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return out;
}

// waitpid() with a deadline; false when the child is still running.
bool Reap(pid_t pid, std::chrono::milliseconds timeout, int* status) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    pid_t r = ::waitpid(pid, status, WNOHANG);
    if (r == pid) return true;
    if (r < 0 && errno != EINTR) return true;  // not ours any more
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// SIGTERM to the child's process group, SIGKILL after `grace`; reaps it.
int Stop(pid_t pid, std::chrono::milliseconds grace) {
  int status = 0;
  ::kill(-pid, SIGTERM);
  if (!Reap(pid, grace, &status)) {
    ::kill(-pid, SIGKILL);
    Reap(pid, std::chrono::seconds(30), &status);
  }
  ::kill(-pid, SIGKILL);  // anything it left in its group
  return status;
}

}  // namespace

class SubprocessExecutor::Children {
 public:
  explicit Children(const Options& options) : options_(options) {}
  ~Children() {
    std::vector<std::unique_ptr<Child>> idle;
    {
      std::lock_guard<std::mutex> lock(mu_);
      idle.swap(idle_);
    }
    // End of input first: a child exits by itself between requests.
    for (auto& c : idle) ::shutdown(c->sock.get(), SHUT_RDWR);
    for (auto& c : idle) {
      int status = 0;
      if (!Reap(c->pid, std::chrono::seconds(2), &status)) Stop(c->pid, options_.kill_grace);
    }
  }

  Result<std::unique_ptr<Child>> Acquire() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!idle_.empty()) {
        std::unique_ptr<Child> c = std::move(idle_.back());
        idle_.pop_back();
        return c;
      }
    }
    return Start();
  }
  void Release(std::unique_ptr<Child> c) {
    ++c->served;
    std::lock_guard<std::mutex> lock(mu_);
    idle_.push_back(std::move(c));
  }
  void Discard() {
    std::lock_guard<std::mutex> lock(mu_);
    --alive_;
  }
  std::size_t started() const {
    std::lock_guard<std::mutex> lock(mu_);
    return started_;
  }
  std::size_t alive() const {
    std::lock_guard<std::mutex> lock(mu_);
    return alive_;
  }

 private:
  Result<std::unique_ptr<Child>> Start() {
    auto c = std::make_unique<Child>();
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
      return Status(Code::kInternal, std::string("socketpair: ") + std::strerror(errno));
    }
    c->sock.Reset(pair[0]);
    util::UniqueFd theirs(pair[1]);
    c->err = StderrFile();
    if (!c->err) {
      return Status(Code::kInternal,
                    std::string("cannot create a temp file for a child's stderr: ") +
                        std::strerror(errno) + "; check TMPDIR");
    }
    // No --exit-with-parent: an idle child exits on end of input when this
    // process dies, and one busy then cannot publish (this process does).
    // (Its watcher thread would also keep the socket open for a moment after
    // a SIGKILL, so that a request could go to a child already dying.)
    std::vector<std::string> args = {options_.runner.string(), "stage", "--serve"};
    if (!options_.warm) args.push_back("--cold");
    for (const fs::path& lib : options_.libraries) {
      args.push_back("--stages");
      args.push_back(lib.string());
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, theirs.get(), 0);
    posix_spawn_file_actions_adddup2(&actions, theirs.get(), 1);
    posix_spawn_file_actions_adddup2(&actions, c->err.get(), 2);
    // Its own process group: a stop reaches its children too.
    int rc = util::SpawnProcess(args, &actions, POSIX_SPAWN_SETPGROUP, &c->pid);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      return Status(Code::kInternal, "cannot start '" + args[0] + "': " + std::strerror(rc));
    }
    std::lock_guard<std::mutex> lock(mu_);
    ++started_;
    ++alive_;
    return c;
  }

  const Options& options_;
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Child>> idle_;
  std::size_t started_ = 0;
  std::size_t alive_ = 0;
};

SubprocessExecutor::SubprocessExecutor(Options options) : options_(std::move(options)) {
  if (options_.runner.empty()) options_.runner = stagekit::DefaultRunner();
  children_ = std::make_unique<Children>(options_);
}

SubprocessExecutor::~SubprocessExecutor() = default;

std::size_t SubprocessExecutor::children_started() const { return children_->started(); }
std::size_t SubprocessExecutor::children_alive() const { return children_->alive(); }

Result<RunStats> SubprocessExecutor::Run(const StageRequest& request, const StageOptions& options) {
  StageRequest req = request;
  req.executor = std::string(name());
  if (req.instance.empty()) req.instance = req.stage;
  // The child writes into a folder of this process's; only this process
  // publishes, and only a success.
  if (Status s = util::CheckReplaceable(request.output, "output of " + req.Label()); !s.ok()) {
    return s;
  }
  fs::path out_dir = request.output.parent_path();
  if (out_dir.empty()) out_dir = ".";
  auto staging = util::MakePrivateDir(out_dir);
  if (!staging.ok()) {
    return Status(Code::kOutputError, req.Label() + ": " + staging.status().message() +
                                          "; check that the output folder is writable");
  }
  req.output = *staging / request.output.filename();
  bool persistent = false;
  switch (options_.persistent) {
    case Options::Persistent::kNone:
      break;
    case Options::Persistent::kWarmStages:
      persistent = options_.warm && internal::IsWarmStage(Registry::Global(), req.stage);
      break;
    case Options::Persistent::kAll:
      persistent = true;
      break;
  }
  Result<RunStats> stats = persistent ? RunOnce(req, options) : RunFresh(req, options);
  if (stats.ok()) {
    if (Status s = util::PublishFile(req.output, request.output, "output of " + req.Label());
        !s.ok()) {
      stats = s;
    }
  }
  std::error_code ec;
  fs::remove_all(*staging, ec);
  return stats;
}

Result<RunStats> SubprocessExecutor::RunFresh(const StageRequest& req,
                                              const StageOptions& options) {
  util::ChildSpec spec;
  spec.argv = {options_.runner.string(), "stage", req.stage, "--exit-with-parent"};
  if (!options_.warm) spec.argv.push_back("--cold");
  for (const fs::path& lib : options_.libraries) {
    spec.argv.push_back("--stages");
    spec.argv.push_back(lib.string());
  }
  spec.stdin_data = CanonicalJson(req.ToJson());
  spec.stdin_data.push_back('\n');
  spec.timeout = options.timeout;
  spec.kill_grace = options_.kill_grace;
  spec.stderr_keep = std::max<std::size_t>(options_.tail_bytes * 4, 4096);

  spec.cancelled = [cancel = options_.cancel] { return Cancelled(cancel); };
  util::ChildResult c = util::RunChild(spec);
  if (!c.spawn_status.ok()) {
    return Status(Code::kInternal,
                  "cannot run " + req.Label() + " in a subprocess: " + c.spawn_status.message() +
                      " (set STAGEKIT_RUNNER to stagekit-stage or the stagekit binary)");
  }
  bool success = c.exited && c.exit_code == 0;

  if (c.timed_out) {
    return Status(Code::kTimeout,
                  req.Label() + " timed out after " + util::FormatMs(*options.timeout) +
                      " and was stopped (SIGTERM, then SIGKILL after " +
                      util::FormatMs(options_.kill_grace) +
                      "); raise its timeout or make it faster" + Tails(c, options_.tail_bytes));
  }
  if (c.interrupted) {
    return Status(Code::kInterrupted, req.Label() + " was stopped by an interrupt");
  }

  // The child reports RunStats or a structured error as its last stdout line.
  Json reply = Json::parse(LastLine(c.out), nullptr, /*allow_exceptions=*/false);
  if (!reply.is_discarded() && reply.is_object()) {
    Result<RunStats> stats = RunStatsOrErrorFromJson(reply);
    if (stats.ok() && success) return stats;
    if (!stats.ok() && !success) {
      std::string message = stats.status().message();
      if (stats.status().code() == Code::kStageFailed) message += Tails(c, options_.tail_bytes);
      return Status(stats.status().code(), message);
    }
  }
  std::string how = c.term_signal != 0 ? "was killed by " + util::SignalName(c.term_signal)
                                       : "exited with code " + std::to_string(c.exit_code);
  return Status(Code::kStageFailed, req.Label() + " (subprocess pid " + std::to_string(c.pid) +
                                        ") " + how + " without reporting a result" +
                                        Tails(c, options_.tail_bytes));
}

namespace {

// Writes all of `line` to the child; false when it is gone.
bool SendLine(const Child& child, const std::string& line) {
  for (std::size_t done = 0; done < line.size();) {
    ssize_t n = ::send(child.sock.get(), line.data() + done, line.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

}  // namespace

// One request's exchange with a persistent child: it is long because every
// way out decides the child's fate (reused, or discarded and stopped) while
// holding it; the steps are sending, waiting for the reply line under the
// timeout and interrupts, and reading the reply.
Result<RunStats> SubprocessExecutor::RunOnce(const StageRequest& req, const StageOptions& options) {
  std::string line = CanonicalJson(req.ToJson());
  line.push_back('\n');
  std::unique_ptr<Child> child;
  bool sent = false;
  for (;;) {
    auto acquired = children_->Acquire();
    if (!acquired.ok()) {
      return Status(Code::kInternal,
                    "cannot run " + req.Label() +
                        " in a persistent subprocess: " + acquired.status().message() +
                        " (set STAGEKIT_RUNNER to stagekit-stage or the stagekit binary)");
    }
    child = std::move(acquired).value();
    ::ftruncate(child->err.get(), 0);
    sent = SendLine(*child, line);
    if (sent || child->served == 0) break;
    // An idle child that died between requests never saw this one: replace it.
    int status = 0;
    if (!Reap(child->pid, std::chrono::seconds(5), &status)) Stop(child->pid, options_.kill_grace);
    children_->Discard();
  }
  const pid_t pid = child->pid;
  const std::size_t keep = std::max<std::size_t>(options_.tail_bytes * 4, 4096);
  auto stderr_tail = [&] {
    return "\n  stderr tail:\n" + util::Tail(ReadTail(child->err.get(), keep), options_.tail_bytes);
  };
  // The end of a child: reap it, never reuse it (Run() removes what it wrote).
  auto lost = [&](Status status) {
    children_->Discard();
    return status;
  };

  const auto start = Clock::now();
  std::string& buf = child->pending;
  std::size_t nl = std::string::npos;
  bool eof = !sent;
  while (!eof && (nl = buf.find('\n')) == std::string::npos) {
    if (Cancelled(options_.cancel)) {
      Stop(pid, options_.kill_grace);
      return lost(Status(Code::kInterrupted, req.Label() + " was stopped by an interrupt"));
    }
    int wait_ms = 100;
    if (options.timeout) {
      auto left = *options.timeout -
                  std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
      if (left.count() <= 0) {
        Stop(pid, options_.kill_grace);
        return lost(Status(Code::kTimeout,
                           req.Label() + " timed out after " + util::FormatMs(*options.timeout) +
                               " and was stopped (SIGTERM, then SIGKILL after " +
                               util::FormatMs(options_.kill_grace) +
                               "); its persistent subprocess (pid " + std::to_string(pid) +
                               ") was replaced; raise its timeout or make it faster" +
                               stderr_tail()));
      }
      wait_ms = static_cast<int>(std::min<long long>(wait_ms, left.count()));
    }
    pollfd p{child->sock.get(), POLLIN, 0};
    if (::poll(&p, 1, wait_ms) <= 0) continue;
    char chunk[65536];
    ssize_t n = ::recv(child->sock.get(), chunk, sizeof(chunk), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      eof = true;
      break;
    }
    buf.append(chunk, static_cast<std::size_t>(n));
  }
  if (eof) {
    // It died mid-request (or before): say how, with what it printed.
    int status = 0;
    if (!Reap(pid, std::chrono::seconds(5), &status)) status = Stop(pid, options_.kill_grace);
    ::kill(-pid, SIGKILL);
    std::string how = WIFSIGNALED(status)
                          ? "was killed by " + util::SignalName(WTERMSIG(status))
                          : "exited with code " + std::to_string(WEXITSTATUS(status));
    return lost(Status(Code::kStageFailed, req.Label() + " (persistent subprocess pid " +
                                               std::to_string(pid) + ") " + how +
                                               " without reporting a result" + stderr_tail()));
  }
  std::string reply_text = buf.substr(0, nl);
  buf.erase(0, nl + 1);
  Json reply = Json::parse(reply_text, nullptr, /*allow_exceptions=*/false);
  if (reply.is_discarded() || !reply.is_object()) {
    Stop(pid, options_.kill_grace);
    return lost(Status(Code::kInternal, req.Label() + ": persistent subprocess pid " +
                                            std::to_string(pid) + " broke the protocol (\"" +
                                            reply_text.substr(0, 200) + "\")"));
  }
  Result<RunStats> stats = RunStatsOrErrorFromJson(reply);
  if (!stats.ok() && stats.status().code() == Code::kStageFailed) {
    std::string message = stats.status().message() + stderr_tail();
    children_->Release(std::move(child));
    return Status(Code::kStageFailed, message);
  }
  children_->Release(std::move(child));
  return stats;
}

}  // namespace stagekit
