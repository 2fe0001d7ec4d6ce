#include "process.h"

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

#include "fd.h"
#include "stagekit/executor.h"

extern char** environ;

namespace stagekit::internal {
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

ChildResult RunChild(const ChildSpec& spec) {
  ChildResult result;
  int in_pair[2], out_pipe[2], err_pipe[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in_pair) != 0) {
    result.spawn_status =
        Status(Code::kInternal, std::string("socketpair: ") + std::strerror(errno));
    return result;
  }
  UniqueFd in_parent(in_pair[0]), in_child(in_pair[1]);
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    result.spawn_status = Status(Code::kInternal, std::string("pipe: ") + std::strerror(errno));
    return result;
  }
  UniqueFd out_parent(out_pipe[0]), out_child(out_pipe[1]);
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    result.spawn_status = Status(Code::kInternal, std::string("pipe: ") + std::strerror(errno));
    return result;
  }
  UniqueFd err_parent(err_pipe[0]), err_child(err_pipe[1]);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in_child.get(), 0);
  posix_spawn_file_actions_adddup2(&actions, out_child.get(), 1);
  posix_spawn_file_actions_adddup2(&actions, err_child.get(), 2);
  if (!spec.cwd.empty()) posix_spawn_file_actions_addchdir_np(&actions, spec.cwd.c_str());
  // The environment, when the spec changes it.
  std::vector<std::string> env_strings;
  std::vector<char*> env;
  if (!spec.env_set.empty() || !spec.env_unset.empty()) {
    auto replaced = [&](std::string_view entry) {
      std::string_view name = entry.substr(0, entry.find('='));
      for (const std::string& u : spec.env_unset)
        if (name == u) return true;
      for (const std::string& e : spec.env_set)
        if (name == std::string_view(e).substr(0, e.find('='))) return true;
      return false;
    };
    for (char** e = environ; *e != nullptr; ++e)
      if (!replaced(*e)) env_strings.emplace_back(*e);
    env_strings.insert(env_strings.end(), spec.env_set.begin(), spec.env_set.end());
    for (std::string& e : env_strings) env.push_back(e.data());
    env.push_back(nullptr);
  }
  pid_t pid = -1;
  int rc = SpawnProcess(spec.argv, &actions, POSIX_SPAWN_SETPGROUP, &pid,
                        env.empty() ? environ : env.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    result.spawn_status =
        Status(Code::kInternal, "cannot start '" + (spec.argv.empty() ? "" : spec.argv[0]) +
                                    "': " + std::strerror(rc));
    return result;
  }
  result.pid = pid;
  in_child.Reset();
  out_child.Reset();
  err_child.Reset();
  for (int fd : {in_parent.get(), out_parent.get(), err_parent.get()}) {
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  }
  UniqueFd pidfd(OpenPidFd(pid));

  std::size_t written = 0;
  if (spec.stdin_data.empty()) in_parent.Reset();
  const Clock::time_point start = Clock::now();
  std::optional<Clock::time_point> deadline;
  if (spec.timeout) deadline = start + *spec.timeout;
  std::optional<Clock::time_point> term_sent, drain_until;
  bool kill_sent = false, reaped = false;
  int wstatus = 0;

  struct rusage usage {};
  for (;;) {
    if (!reaped) {
      pid_t r = ::wait4(pid, &wstatus, WNOHANG, &usage);
      if (r == pid) {
        reaped = true;
        pidfd.Reset();
        in_parent.Reset();
      }
    }
    if (reaped && !out_parent && !err_parent) break;
    Clock::time_point now = Clock::now();
    if (reaped) {
      // The child is gone; something it started may still hold the pipes.
      if (!drain_until) drain_until = now + std::chrono::milliseconds(200);
      if (now >= *drain_until) {
        ::kill(-pid, SIGKILL);
        break;
      }
    } else {
      if (!term_sent && ((deadline && now >= *deadline) || Interrupted())) {
        result.timed_out = deadline && now >= *deadline;
        result.interrupted = !result.timed_out;
        ::kill(-pid, SIGTERM);
        term_sent = now;
      }
      if (term_sent && !kill_sent && now >= *term_sent + spec.kill_grace) {
        ::kill(-pid, SIGKILL);
        kill_sent = true;
      }
    }

    pollfd fds[4];
    int nfds = 0;
    int in_idx = -1, out_idx = -1, err_idx = -1;
    if (in_parent) {
      in_idx = nfds;
      fds[nfds++] = {in_parent.get(), POLLOUT, 0};
    }
    if (out_parent) {
      out_idx = nfds;
      fds[nfds++] = {out_parent.get(), POLLIN, 0};
    }
    if (err_parent) {
      err_idx = nfds;
      fds[nfds++] = {err_parent.get(), POLLIN, 0};
    }
    if (pidfd) fds[nfds++] = {pidfd.get(), POLLIN, 0};
    // Without a pidfd, exit is only noticed by polling waitpid.
    int wait_ms = (pidfd || reaped) ? 100 : (out_parent || err_parent ? 20 : 1);
    if (deadline && !term_sent) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - now).count();
      wait_ms = static_cast<int>(std::max<long long>(0, std::min<long long>(wait_ms, left + 1)));
    }
    int n = ::poll(fds, static_cast<nfds_t>(nfds), wait_ms);
    if (n < 0 && errno != EINTR) break;
    if (n <= 0) continue;
    if (in_idx >= 0 && fds[in_idx].revents != 0) {
      ssize_t w = ::send(in_parent.get(), spec.stdin_data.data() + written,
                         spec.stdin_data.size() - written, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w > 0) written += static_cast<std::size_t>(w);
      if ((w < 0 && errno != EAGAIN && errno != EINTR) || written == spec.stdin_data.size()) {
        ::shutdown(in_parent.get(), SHUT_WR);
        in_parent.Reset();
      }
    }
    if (out_idx >= 0 && fds[out_idx].revents != 0 &&
        !Drain(out_parent.get(), result.out, spec.stdout_keep)) {
      out_parent.Reset();
    }
    if (err_idx >= 0 && fds[err_idx].revents != 0 &&
        !Drain(err_parent.get(), result.err, spec.stderr_keep)) {
      err_parent.Reset();
    }
  }
  if (!reaped) {
    while (::wait4(pid, &wstatus, 0, &usage) < 0 && errno == EINTR) {
    }
  }
  result.max_rss_kb = usage.ru_maxrss;
  if (WIFEXITED(wstatus)) {
    result.exited = true;
    result.exit_code = WEXITSTATUS(wstatus);
  } else if (WIFSIGNALED(wstatus)) {
    result.term_signal = WTERMSIG(wstatus);
  }
  if (result.out.size() > spec.stdout_keep)
    result.out.erase(0, result.out.size() - spec.stdout_keep);
  if (result.err.size() > spec.stderr_keep)
    result.err.erase(0, result.err.size() - spec.stderr_keep);
  return result;
}

}  // namespace stagekit::internal
