#include "util/process.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/fd.h"

extern char** environ;

namespace stagekit::util {
namespace {

using Clock = std::chrono::steady_clock;

void AppendKeepingTail(std::string& buf, const char* data, std::size_t n, std::size_t keep) {
  buf.append(data, n);
  if (buf.size() > 2 * keep) buf.erase(0, buf.size() - keep);
}

// Reads what is available; false on EOF or error.
bool Drain(int fd, std::string& buf, std::size_t keep) {
  char chunk[16384];
  for (;;) {
    ssize_t n = ::read(fd, chunk, sizeof(chunk));
    if (n > 0) {
      AppendKeepingTail(buf, chunk, static_cast<std::size_t>(n), keep);
      if (static_cast<std::size_t>(n) < sizeof(chunk)) return true;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    return false;
  }
}

int OpenPidFd(pid_t pid) {
#ifdef SYS_pidfd_open
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  return fd;
#else
  (void)pid;
  return -1;
#endif
}

}  // namespace

int SpawnProcess(const std::vector<std::string>& args, const posix_spawn_file_actions_t* actions,
                 short group, pid_t* pid, char** env) {
  if (args.empty()) return EINVAL;
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t empty, defaults;
  sigemptyset(&empty);
  sigemptyset(&defaults);
  for (int sig : {SIGINT, SIGTERM, SIGPIPE, SIGHUP, SIGQUIT, SIGCHLD}) sigaddset(&defaults, sig);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  if (group == POSIX_SPAWN_SETPGROUP) posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(
      &attr, static_cast<short>(group | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF));
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  if (env == nullptr) env = environ;
  int rc = args[0].find('/') != std::string::npos
               ? posix_spawn(pid, argv[0], actions, &attr, argv.data(), env)
               : posix_spawnp(pid, argv[0], actions, &attr, argv.data(), env);
  posix_spawnattr_destroy(&attr);
  return rc;
}

Result<Spawned> Spawn(const SpawnSpec& spec) {
  int in_pipe[2] = {-1, -1};
  if (spec.stdin_pipe && ::pipe2(in_pipe, O_CLOEXEC) != 0) {
    return Status(Code::kInternal, std::string("pipe: ") + std::strerror(errno));
  }
  UniqueFd in_read(in_pipe[0]), in_write(in_pipe[1]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (spec.stdin_pipe) {
    posix_spawn_file_actions_adddup2(&actions, in_read.get(), 0);
  } else {
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  }
  if (!spec.log_path.empty()) {
    posix_spawn_file_actions_addopen(&actions, 1, spec.log_path.c_str(),
                                     O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
  }
  pid_t pid = -1;
  int rc = SpawnProcess(spec.argv, &actions, spec.new_session ? POSIX_SPAWN_SETSID : 0, &pid);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    return Status(Code::kInternal, "cannot start '" + (spec.argv.empty() ? "" : spec.argv[0]) +
                                       "': " + std::strerror(rc));
  }
  Spawned out;
  out.pid = pid;
  out.stdin_fd = spec.stdin_pipe ? in_write.Release() : -1;
  return out;
}

int WaitFor(pid_t pid, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  UniqueFd pidfd(OpenPidFd(pid));
  for (;;) {
    int status = 0;
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (r < 0 && errno != EINTR) return -1;
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return -1;
    if (pidfd) {
      pollfd p{pidfd.get(), POLLIN, 0};
      ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
    } else {
      ::usleep(10000);
    }
  }
}

std::vector<int> FreePorts(std::size_t n) {
  std::vector<UniqueFd> held;
  std::vector<int> ports;
  while (ports.size() < n) {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (!fd || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      break;
    }
    ports.push_back(ntohs(addr.sin_port));
    held.push_back(std::move(fd));
  }
  return ports;
}

std::string SignalName(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev != nullptr ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

std::string Tail(std::string_view text, std::size_t max) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  if (text.empty()) return "    (empty)";
  bool cut = text.size() > max;
  if (cut) {
    text = text.substr(text.size() - max);
    std::size_t nl = text.find('\n');
    if (nl != std::string_view::npos && nl + 1 < text.size()) text = text.substr(nl + 1);
  }
  std::string out = cut ? "    ...\n    " : "    ";
  for (char c : text) {
    out.push_back(c);
    if (c == '\n') out += "    ";
  }
  return out;
}

namespace {

// The parent's and the child's ends of the child's stdin (a socket pair, so a
// write to a dead child fails with EPIPE instead of raising SIGPIPE), stdout
// and stderr.
struct ChildPipes {
  UniqueFd in_parent, in_child, out_parent, out_child, err_parent, err_child;
};

Status MakeChildPipes(ChildPipes& p) {
  int in_pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in_pair) != 0) {
    return Status(Code::kInternal, std::string("socketpair: ") + std::strerror(errno));
  }
  p.in_parent.Reset(in_pair[0]);
  p.in_child.Reset(in_pair[1]);
  for (auto [parent, child] :
       {std::pair{&p.out_parent, &p.out_child}, {&p.err_parent, &p.err_child}}) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
      return Status(Code::kInternal, std::string("pipe: ") + std::strerror(errno));
    }
    parent->Reset(fds[0]);
    child->Reset(fds[1]);
  }
  return OkStatus();
}

// This process's environment minus spec.env_unset, plus spec.env_set; empty
// when the spec changes nothing (the child then gets `environ` itself).
std::vector<std::string> ChildEnvironment(const ChildSpec& spec) {
  std::vector<std::string> out;
  if (spec.env_set.empty() && spec.env_unset.empty()) return out;
  auto replaced = [&](std::string_view entry) {
    std::string_view name = entry.substr(0, entry.find('='));
    for (const std::string& u : spec.env_unset)
      if (name == u) return true;
    for (const std::string& e : spec.env_set)
      if (name == std::string_view(e).substr(0, e.find('='))) return true;
    return false;
  };
  for (char** e = environ; *e != nullptr; ++e)
    if (!replaced(*e)) out.emplace_back(*e);
  out.insert(out.end(), spec.env_set.begin(), spec.env_set.end());
  return out;
}

// Spawns the child in a process group of its own on the child ends of
// `pipes`; returns its pid, or the reason it could not start.
Result<pid_t> StartChild(const ChildSpec& spec, ChildPipes& pipes) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipes.in_child.get(), 0);
  posix_spawn_file_actions_adddup2(&actions, pipes.out_child.get(), 1);
  posix_spawn_file_actions_adddup2(&actions, pipes.err_child.get(), 2);
  if (!spec.cwd.empty()) posix_spawn_file_actions_addchdir_np(&actions, spec.cwd.c_str());
  std::vector<std::string> env_strings = ChildEnvironment(spec);
  std::vector<char*> env;
  for (std::string& e : env_strings) env.push_back(e.data());
  env.push_back(nullptr);
  pid_t pid = -1;
  int rc = SpawnProcess(spec.argv, &actions, POSIX_SPAWN_SETPGROUP, &pid,
                        env_strings.empty() ? environ : env.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    return Status(Code::kInternal, "cannot start '" + (spec.argv.empty() ? "" : spec.argv[0]) +
                                       "': " + std::strerror(rc));
  }
  pipes.in_child.Reset();
  pipes.out_child.Reset();
  pipes.err_child.Reset();
  for (int fd : {pipes.in_parent.get(), pipes.out_parent.get(), pipes.err_parent.get()}) {
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  }
  return pid;
}

// One running child: feeds its stdin, keeps the tails of its output, and
// stops its process group on the deadline or when cancelled (SIGTERM, then
// SIGKILL after the grace period), until it is reaped and its pipes closed.
class ChildWatch {
 public:
  ChildWatch(const ChildSpec& spec, pid_t pid, ChildPipes& pipes, ChildResult& result)
      : spec_(spec), pid_(pid), p_(pipes), result_(result), pidfd_(OpenPidFd(pid)) {
    if (spec.stdin_data.empty()) p_.in_parent.Reset();
    if (spec.timeout) deadline_ = Clock::now() + *spec.timeout;
  }

  // Runs until the child is gone; then fills in how it ended.
  void Run() {
    while (Step()) {
    }
    if (!reaped_) {
      while (::wait4(pid_, &wstatus_, 0, &usage_) < 0 && errno == EINTR) {
      }
    }
    result_.max_rss_kb = usage_.ru_maxrss;
    if (WIFEXITED(wstatus_)) {
      result_.exited = true;
      result_.exit_code = WEXITSTATUS(wstatus_);
    } else if (WIFSIGNALED(wstatus_)) {
      result_.term_signal = WTERMSIG(wstatus_);
    }
  }

 private:
  // One round: reap, enforce the stop policy, wait for the pipes, move bytes.
  // False when done.
  bool Step() {
    if (!reaped_ && ::wait4(pid_, &wstatus_, WNOHANG, &usage_) == pid_) {
      reaped_ = true;
      pidfd_.Reset();
      p_.in_parent.Reset();
    }
    if (reaped_ && !p_.out_parent && !p_.err_parent) return false;
    const Clock::time_point now = Clock::now();
    if (reaped_) {
      // The child is gone; something it started may still hold the pipes.
      if (!drain_until_) drain_until_ = now + std::chrono::milliseconds(200);
      if (now >= *drain_until_) {
        ::kill(-pid_, SIGKILL);
        return false;
      }
    } else {
      Stop(now);
    }
    return Poll(now);
  }

  // SIGTERM to the group on the deadline or cancellation, SIGKILL after the grace.
  void Stop(Clock::time_point now) {
    if (!term_sent_ &&
        ((deadline_ && now >= *deadline_) || (spec_.cancelled && spec_.cancelled()))) {
      result_.timed_out = deadline_ && now >= *deadline_;
      result_.interrupted = !result_.timed_out;
      ::kill(-pid_, SIGTERM);
      term_sent_ = now;
    }
    if (term_sent_ && !kill_sent_ && now >= *term_sent_ + spec_.kill_grace) {
      ::kill(-pid_, SIGKILL);
      kill_sent_ = true;
    }
  }

  // Waits for the pipes (or the pidfd, or the deadline) and moves what is ready.
  bool Poll(Clock::time_point now) {
    pollfd fds[4];
    int nfds = 0;
    int in_idx = -1, out_idx = -1, err_idx = -1;
    if (p_.in_parent) {
      in_idx = nfds;
      fds[nfds++] = {p_.in_parent.get(), POLLOUT, 0};
    }
    if (p_.out_parent) {
      out_idx = nfds;
      fds[nfds++] = {p_.out_parent.get(), POLLIN, 0};
    }
    if (p_.err_parent) {
      err_idx = nfds;
      fds[nfds++] = {p_.err_parent.get(), POLLIN, 0};
    }
    if (pidfd_) fds[nfds++] = {pidfd_.get(), POLLIN, 0};
    // Without a pidfd, exit is only noticed by polling waitpid.
    int wait_ms = (pidfd_ || reaped_) ? 100 : (p_.out_parent || p_.err_parent ? 20 : 1);
    if (deadline_ && !term_sent_) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*deadline_ - now).count();
      wait_ms = static_cast<int>(std::max<long long>(0, std::min<long long>(wait_ms, left + 1)));
    }
    int n = ::poll(fds, static_cast<nfds_t>(nfds), wait_ms);
    if (n < 0 && errno != EINTR) return false;
    if (n <= 0) return true;
    if (in_idx >= 0 && fds[in_idx].revents != 0) Feed();
    if (out_idx >= 0 && fds[out_idx].revents != 0 &&
        !Drain(p_.out_parent.get(), result_.out, spec_.stdout_keep)) {
      p_.out_parent.Reset();
    }
    if (err_idx >= 0 && fds[err_idx].revents != 0 &&
        !Drain(p_.err_parent.get(), result_.err, spec_.stderr_keep)) {
      p_.err_parent.Reset();
    }
    return true;
  }

  // Writes what the child's stdin takes; closes it once all is written.
  void Feed() {
    ssize_t w = ::send(p_.in_parent.get(), spec_.stdin_data.data() + written_,
                       spec_.stdin_data.size() - written_, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) written_ += static_cast<std::size_t>(w);
    if ((w < 0 && errno != EAGAIN && errno != EINTR) || written_ == spec_.stdin_data.size()) {
      ::shutdown(p_.in_parent.get(), SHUT_WR);
      p_.in_parent.Reset();
    }
  }

  const ChildSpec& spec_;
  const pid_t pid_;
  ChildPipes& p_;
  ChildResult& result_;
  UniqueFd pidfd_;
  std::size_t written_ = 0;
  std::optional<Clock::time_point> deadline_, term_sent_, drain_until_;
  bool kill_sent_ = false, reaped_ = false;
  int wstatus_ = 0;
  struct rusage usage_ {};
};

}  // namespace

CancelFlag& ProcessCancel() {
  static CancelFlag flag;
  return flag;
}

bool Interrupted() { return ProcessCancel().cancelled(); }

ChildResult RunChild(const ChildSpec& spec) {
  ChildResult result;
  ChildPipes pipes;
  if (Status s = MakeChildPipes(pipes); !s.ok()) {
    result.spawn_status = s;
    return result;
  }
  auto pid = StartChild(spec, pipes);
  if (!pid.ok()) {
    result.spawn_status = pid.status();
    return result;
  }
  result.pid = *pid;
  ChildWatch(spec, *pid, pipes, result).Run();
  if (result.out.size() > spec.stdout_keep)
    result.out.erase(0, result.out.size() - spec.stdout_keep);
  if (result.err.size() > spec.stderr_keep)
    result.err.erase(0, result.err.size() - spec.stderr_keep);
  return result;
}

}  // namespace stagekit::util
