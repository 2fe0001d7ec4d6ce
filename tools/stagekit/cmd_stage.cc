// stagekit stage NAME: the subprocess runner. Reads a StageRequest (JSON) on
// stdin, runs it through the invocation entry point and prints RunStats JSON
// (or {"error": ...}) as the only line of its real stdout. Whatever the stage
// itself prints goes to stderr, so the protocol line cannot be corrupted.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <cerrno>
#include <cstdio>
#include <iostream>
#include <iterator>

#include "cli.h"
#include "stagekit/invoke.h"

namespace stagekit::cli {
namespace {

struct StageCommand {
  std::string name;
  LibraryOptions libs;
  bool serve = false;
  bool exit_with_parent = false;
};

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
Status ServeStages(const StageCommand& cmd) {
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
  std::error_code ec;
  std::vector<std::filesystem::path> paths;
  for (const std::string& s : cmd.libs.stages) paths.push_back(std::filesystem::absolute(s, ec));
  const Status loaded = LoadLibraries(paths);

  std::string buf;
  char chunk[65536];
  for (;;) {
    std::size_t nl = buf.find('\n');
    if (nl == std::string::npos) {
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
        Result<RunStats> stats = Invoke(*request);
        std::fflush(stdout);
        std::cout.flush();
        reply = stats.ok() ? stats->Canonical() : CanonicalJson(ErrorToJson(stats.status()));
      }
    }
    if (!WriteLine(protocol, reply)) break;
  }
  return OkStatus();
}

Status RunStage(const StageCommand& cmd) {
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
    std::string text = line + "\n";
    std::size_t done = 0;
    while (done < text.size()) {
      ssize_t n = ::write(protocol, text.data() + done, text.size() - done);
      if (n <= 0) break;
      done += static_cast<std::size_t>(n);
    }
    ::close(protocol);
  };
  auto fail = [&](const Status& s) {
    reply(CanonicalJson(ErrorToJson(s)));
    return s;
  };

  std::error_code ec;
  std::vector<std::filesystem::path> paths;
  for (const std::string& s : cmd.libs.stages) paths.push_back(std::filesystem::absolute(s, ec));
  if (Status s = LoadLibraries(paths); !s.ok()) return fail(s);

  std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  Json json = Json::parse(input, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    auto parsed = StageRequest::Parse(input);  // for the position of the syntax error
    return fail(parsed.ok() ? Status(Code::kBadRequest, "request is not valid JSON")
                            : parsed.status());
  }
  auto request = StageRequest::FromJson(json);
  if (!request.ok()) return fail(request.status());
  if (request->stage != cmd.name) {
    return fail(Status(Code::kBadRequest, "the request names stage '" + request->stage +
                                              "' but the command line says '" + cmd.name + "'"));
  }
  if (!json.contains("executor")) request->executor = "subprocess";
  Result<RunStats> stats = Invoke(*request);
  std::fflush(stdout);
  std::cout.flush();
  if (!stats.ok()) return fail(stats.status());
  reply(stats->Canonical());
  return OkStatus();
}

}  // namespace

void SetStageCommand(CLI::App& app, Action& action) {
  auto cmd = std::make_shared<StageCommand>();
  CLI::App* sub = app.add_subcommand(
      "stage", "Run one stage: request JSON on stdin, RunStats JSON as the last line of stdout");
  sub->add_option("NAME", cmd->name, "Registered stage name (not with --serve)");
  sub->add_flag("--serve", cmd->serve,
                "Serve requests one per line on stdin, one reply line each, until end of "
                "input; warm stages stay set up between requests (the subprocess executor's "
                "persistent child)");
  sub->add_flag("--exit-with-parent", cmd->exit_with_parent,
                "Stop (with this process group) when the parent process is gone; the "
                "subprocess executor passes it so that no stage runs on after a killed run");
  cmd->libs.AddTo(sub);
  sub->footer(
      "Request: {\"stage\": NAME, \"inputs\": {name: path}, \"output\": path, \"job\": {\"name\", "
      "\"seed\", \"params\"}, \"kwargs\": {...}}\nOn failure the last line is "
      "{\"error\": {\"code\", \"message\"}} and the exit code says what went wrong.");
  sub->callback([cmd, &action] { action = [cmd] { return RunStage(*cmd); }; });
}

}  // namespace stagekit::cli
