// For programs that run stages: the stage protocol's server side (what the
// lean runner `stagekit-stage` and `stagekit stage` are), interrupt handling,
// and where an installation's pieces are. A team that links its stages into
// its own runner binary uses this header.
//
// The protocol: a request is a StageRequest as JSON; the reply is RunStats
// JSON or {"error": {"code", "message"}}, alone on the real stdout (whatever
// the stage prints goes to stderr, so a reply cannot be corrupted).
#ifndef STAGEKIT_RUNNER_H_
#define STAGEKIT_RUNNER_H_

#include <filesystem>
#include <string>
#include <vector>

#include "stagekit/export.h"
#include "stagekit/status.h"

namespace stagekit {

class CancelFlag;  // stagekit/executor.h

struct StageServerOptions {
  std::string name;                              // the one stage to run (not with serve)
  std::vector<std::filesystem::path> libraries;  // stage libraries to load first
  bool serve = false;                            // one request per line on stdin until its end
  bool exit_with_parent = false;  // stop (with the process group) when the parent is gone
  bool warm = true;  // false (--cold): warm stages set up and tear down on every request
};

// Runs what `options` says. With `serve`: replies one line per request and
// returns OK at the end of stdin. Otherwise: reads one request from all of
// stdin, checks it names `name`, replies once, and returns the stage's
// status (its code is the process's exit code).
STAGEKIT_API Status RunStageServer(const StageServerOptions& options);

// The usage line of a runner's command line.
STAGEKIT_API extern const char* const kStageServerUsage;

// A first SIGINT, SIGTERM or SIGHUP sets `flag` (which the program passes to
// what should stop: running stages are stopped, records written), a second
// one stops at once; SIGPIPE is ignored. For the command line and runners
// alike. The flag must outlive the process's use of the handlers; the last
// call wins (a signal handler can only reach a flag through a global).
STAGEKIT_API void InstallInterruptHandlers(CancelFlag& flag);

// The directory holding libstagekit.so, and the file it was loaded from (by
// its soname, libstagekit.so.N, when the loader found it through a binary).
STAGEKIT_API std::filesystem::path LibraryDir();
STAGEKIT_API std::filesystem::path LibraryPath();
// The full stagekit command line for child processes that need it (the Ray
// head's reaper, the binary a package ships): the current executable when it
// is stagekit, the one installed beside this library, else `stagekit` from
// PATH.
STAGEKIT_API std::filesystem::path DefaultCli();
// The stage runner the subprocess executor starts by default: the lean
// `stagekit-stage` beside the current executable or installed beside this
// library; else DefaultCli() (whose `stage` subcommand speaks the same
// protocol, at the start-up cost of the whole command line). The command line
// lets $STAGEKIT_RUNNER override it (SubprocessExecutor::Options::runner).
STAGEKIT_API std::filesystem::path DefaultRunner();

}  // namespace stagekit

#endif  // STAGEKIT_RUNNER_H_
