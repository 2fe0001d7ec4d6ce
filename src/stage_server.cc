#include "stagekit/runner.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <thread>

#include "stagekit/executor.h"
#include "stagekit/invoke.h"
#include "stagekit/stage.h"
#include "util/json_fields.h"

namespace stagekit {

const char* const kStageServerUsage =
    "stage (NAME | --serve) [--exit-with-parent] [--cold] [--stages LIBRARY]...";

namespace {

std::atomic<CancelFlag*> g_signal_flag{nullptr};

void OnSignal(int /*sig*/) {
  CancelFlag* flag = g_signal_flag.load();
  if (flag == nullptr) return;
  if (flag->exits_at_once()) {
    static const char kMessage[] = "stagekit: interrupted\n";
    [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, kMessage, sizeof kMessage - 1);
    ::_exit(static_cast<int>(Code::kInterrupted));
  }
  flag->Cancel();
}

}  // namespace

void InstallInterruptHandlers(CancelFlag& flag) {
  g_signal_flag.store(&flag);
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  // A second Ctrl-C gets the default action: stop at once.
  sa.sa_flags = SA_RESETHAND;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  // A closed terminal or a lost SSH session: stop as for SIGTERM (children
  // stopped, run summary and cost record written), not die half-way.
  sigaction(SIGHUP, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

namespace {

Status LoadLibraries(const std::vector<std::filesystem::path>& paths) {
  for (const std::filesystem::path& p : paths) {
    if (Status s = LoadStageLibrary(p); !s.ok()) return s;
  }
  return OkStatus();
}

// --exit-with-parent: the executor that started this child is gone (killed
// with SIGKILL, say) when our parent changes; then this child and whatever it
// started stop at once, instead of running on for nobody. (Its output could
// not be published anyway: the executor publishes, not the child.)
void ExitWithParent() {
  const pid_t parent = ::getppid();
  std::thread([parent] {
    for (;;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      if (::getppid() != parent) {
        // Our process group, when it is ours alone (the executor makes it so).
        if (::getpgrp() == ::getpid()) ::kill(0, SIGKILL);
        ::_exit(137);
      }
    }
  }).detach();
}

bool WriteLine(int fd, const std::string& line) {
  std::string text = line + "\n";
  std::size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

// stagekit stage --serve: the persistent child of the subprocess executor.
// One request per line on stdin, one reply line (RunStats or {"error": ...})
// per request on the real stdout; warm stage instances stay set up between
// requests. Exits 0 on end of stdin (the executor closed, or its process
// died). The stage's own prints go to stderr, and it reads /dev/null as
// stdin, so neither can corrupt the protocol.
Status ServeStages(const StageServerOptions& cmd) {
  int in = ::dup(STDIN_FILENO);
  int protocol = ::dup(STDOUT_FILENO);
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (in < 0 || protocol < 0 || devnull < 0 || ::dup2(devnull, STDIN_FILENO) < 0 ||
      ::dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
    return Status(Code::kInternal, "cannot set up the protocol stream");
  }
  ::close(devnull);
  ::fcntl(in, F_SETFD, FD_CLOEXEC);
  ::fcntl(protocol, F_SETFD, FD_CLOEXEC);
  const Status loaded = LoadLibraries(cmd.libraries);

  std::string buf;
  char chunk[65536];
  for (;;) {
    std::size_t nl = buf.find('\n');
    if (nl == std::string::npos) {
      if (buf.size() > util::JsonLimits().max_bytes) {
        // A line longer than any request may be: say so, and stop (the
        // stream can no longer be trusted to be in step).
        WriteLine(protocol,
                  CanonicalJson(ErrorToJson(
                      Status(Code::kBadRequest, "request is more than " +
                                                    std::to_string(util::JsonLimits().max_bytes) +
                                                    " bytes without a line end"))));
        break;
      }
      ssize_t n = ::read(in, chunk, sizeof(chunk));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // EOF: the executor is gone
      buf.append(chunk, static_cast<std::size_t>(n));
      continue;
    }
    std::string line = buf.substr(0, nl);
    buf.erase(0, nl + 1);
    std::string reply;
    if (!loaded.ok()) {
      reply = CanonicalJson(ErrorToJson(loaded));
    } else {
      auto request = StageRequest::Parse(line);
      if (!request.ok()) {
        reply = CanonicalJson(ErrorToJson(request.status()));
      } else {
        if (request->executor.empty()) request->executor = "subprocess";
        Result<RunStats> stats = InvokeWarm(*request, Registry::Global(), cmd.warm);
        std::fflush(stdout);
        std::cout.flush();
        reply = stats.ok() ? stats->Canonical() : CanonicalJson(ErrorToJson(stats.status()));
      }
    }
    if (!WriteLine(protocol, reply)) break;
  }
  return OkStatus();
}

}  // namespace

Status RunStageServer(const StageServerOptions& cmd) {
  if (cmd.exit_with_parent) ExitWithParent();
  if (cmd.serve) return ServeStages(cmd);
  if (cmd.name.empty()) {
    return Status(Code::kUsage, "give the stage NAME, or --serve for a persistent runner");
  }
  int protocol = ::dup(STDOUT_FILENO);
  if (protocol < 0 || ::dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
    return Status(Code::kInternal, "cannot set up the protocol stream");
  }
  auto reply = [protocol](const std::string& line) {
    WriteLine(protocol, line);
    ::close(protocol);
  };
  auto fail = [&](const Status& s) {
    reply(CanonicalJson(ErrorToJson(s)));
    return s;
  };

  if (Status s = LoadLibraries(cmd.libraries); !s.ok()) return fail(s);

  // At most one byte past the limit is read: enough to refuse more.
  const util::JsonLimits limits;
  std::string input;
  char chunk[65536];
  while (input.size() <= limits.max_bytes) {
    ssize_t n = ::read(STDIN_FILENO, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    input.append(chunk, static_cast<std::size_t>(n));
  }
  auto parsed = util::ParseJsonWithin(input, "request", Code::kBadRequest, limits);
  if (!parsed.ok()) return fail(parsed.status());
  const Json& json = *parsed;
  auto request = StageRequest::FromJson(json);
  if (!request.ok()) return fail(request.status());
  if (request->stage != cmd.name) {
    return fail(Status(Code::kBadRequest, "the request names stage '" + request->stage +
                                              "' but the command line says '" + cmd.name + "'"));
  }
  if (!json.contains("executor")) request->executor = "subprocess";
  Result<RunStats> stats = InvokeWarm(*request, Registry::Global(), cmd.warm);
  std::fflush(stdout);
  std::cout.flush();
  if (!stats.ok()) return fail(stats.status());
  reply(stats->Canonical());
  return OkStatus();
}

}  // namespace stagekit
