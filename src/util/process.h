// Running a child process with captured output, a deadline and an escalating
// stop policy (SIGTERM, then SIGKILL). Internal to stagekit.
#ifndef STAGEKIT_UTIL_PROCESS_H_
#define STAGEKIT_UTIL_PROCESS_H_

#include <spawn.h>
#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "stagekit/executor.h"
#include "stagekit/status.h"

namespace stagekit::util {

struct ChildSpec {
  std::vector<std::string> argv;  // argv[0] is a path, or a name looked up in PATH
  std::string stdin_data;
  std::optional<std::chrono::milliseconds> timeout;
  std::chrono::milliseconds kill_grace{2000};
  std::size_t stdout_keep = 1 << 20;  // last bytes of stdout kept
  std::size_t stderr_keep = 1 << 14;  // last bytes of stderr kept
  // The child's environment: this process's, minus `env_unset` (names), plus
  // `env_set` ("NAME=VALUE", replacing). Its working directory: `cwd`, or
  // this process's when empty.
  std::vector<std::string> env_set;
  std::vector<std::string> env_unset;
  std::string cwd;
  // Stops the child as a timeout does once this returns true (checked at
  // least every second); callers pass util::Interrupted, or their CancelFlag, to stop on Ctrl-C.
  std::function<bool()> cancelled;
};

struct ChildResult {
  Status spawn_status;  // not OK when the child could not be started
  pid_t pid = -1;
  bool exited = false;  // normal exit: exit_code is valid
  int exit_code = -1;
  int term_signal = 0;  // set when killed by a signal
  bool timed_out = false;
  bool interrupted = false;  // stopped because `cancelled` said so
  std::string out;           // tail of stdout
  std::string err;           // tail of stderr
  long max_rss_kb = 0;       // peak resident memory of the child
};

// Spawns the child in its own process group (so a stop reaches its children
// too), feeds stdin, collects stdout/stderr and waits. Never throws for
// process errors.
ChildResult RunChild(const ChildSpec& spec);

// A program's own cancellation flag: the command line installs its signal
// handlers for it (InstallInterruptHandlers). The tool modules (deploy,
// operate, analyse) and the command line check it; the library reads no
// global flag and gets it passed (RunOptions::cancel, the executors'
// options). One per program image: libstagekit's private copy of this
// module is never set.
CancelFlag& ProcessCancel();
// ProcessCancel().cancelled(): a first Ctrl-C, SIGTERM or SIGHUP came.
bool Interrupted();

// A child that runs on while the caller goes on: for cluster daemons and
// their reaper. stdin is a pipe whose write end is `stdin_fd` (or /dev/null),
// stdout and stderr go to `log_path` (or are inherited when empty).
struct SpawnSpec {
  std::vector<std::string> argv;
  bool new_session = false;  // setsid(): no terminal signals; StopProcessSession() reaches all
  bool stdin_pipe = false;
  std::string log_path;
};
struct Spawned {
  pid_t pid = -1;
  int stdin_fd = -1;  // owned by the caller
};
Result<Spawned> Spawn(const SpawnSpec& spec);

// posix_spawn(p) of `args` (argv[0] a path, or a name looked up in PATH) with
// `actions`, `env` (nullptr: this process's), and the signals a parent may
// have changed put back to their defaults and unblocked. `group` is
// POSIX_SPAWN_SETSID, POSIX_SPAWN_SETPGROUP (a new process group) or 0.
// Returns 0 or an errno.
int SpawnProcess(const std::vector<std::string>& args, const posix_spawn_file_actions_t* actions,
                 short group, pid_t* pid, char** env = nullptr);
// waitpid() with a deadline; the exit code, 128+signal, or -1 on timeout.
int WaitFor(pid_t pid, std::chrono::milliseconds timeout);

// `n` distinct free TCP ports on loopback, chosen while all are held open so
// that the kernel cannot hand the same one out twice.
std::vector<int> FreePorts(std::size_t n);

// "SIGKILL" for 9.
std::string SignalName(int sig);

// Last `max` bytes of `text` (on a line boundary where possible), indented
// for an error message. Empty input gives "(empty)".
std::string Tail(std::string_view text, std::size_t max);

}  // namespace stagekit::util

#endif  // STAGEKIT_UTIL_PROCESS_H_
