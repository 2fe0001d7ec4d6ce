// The subprocess runner's side of the stage protocol, shared by the lean
// runner (`stagekit-stage`, what the subprocess executor starts) and the
// CLI's `stagekit stage`. A request is a StageRequest as JSON; the reply is
// RunStats JSON or {"error": {"code", "message"}}, alone on the real stdout
// (whatever the stage prints goes to stderr, so a reply cannot be
// corrupted).
#ifndef STAGEKIT_SRC_STAGE_SERVER_H_
#define STAGEKIT_SRC_STAGE_SERVER_H_

#include <filesystem>
#include <string>
#include <vector>

#include "stagekit/status.h"

namespace stagekit::internal {

struct StageServerOptions {
  std::string name;                              // the one stage to run (not with serve)
  std::vector<std::filesystem::path> libraries;  // stage libraries to load first
  bool serve = false;                            // one request per line on stdin until its end
  bool exit_with_parent = false;  // stop (with the process group) when the parent is gone
};

// Runs what `options` says. With `serve`: replies one line per request and
// returns OK at the end of stdin. Otherwise: reads one request from all of
// stdin, checks it names `name`, replies once, and returns the stage's
// status (its code is the process's exit code).
Status RunStageServer(const StageServerOptions& options);

// A first SIGINT, SIGTERM or SIGHUP calls RequestInterrupt() (running stages
// are stopped, records written), a second one stops at once; SIGPIPE is
// ignored. For the command line and the runner alike.
void InstallInterruptHandlers();

// The usage line of the runner's command line.
extern const char* const kStageServerUsage;

}  // namespace stagekit::internal

#endif  // STAGEKIT_SRC_STAGE_SERVER_H_
