// stagekit: write a pipeline stage once, run it in-process, in a subprocess or on Ray.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "cli.h"
#include "stagekit/executor.h"
#include "stagekit/runner.h"
#include "stagekit/version.h"

namespace {

constexpr const char* kExitCodes = R"(Exit codes:
  0 success              1 a stage failed           2 usage error
  3 invalid pipeline     4 unknown stage            5 input missing or unreadable
  6 malformed request    7 output not writable      8 stage timed out
  9 stage library error  10 parity mismatch         11 resources infeasible on Ray
  12 Ray or cluster unreachable                     13 package over its size cap
  14 credential refused  15 submitted job failed    16 budget ran out
  17 doctor found errors, or audit a nondeterministic stage
  70 internal error      130 interrupted (SIGINT, SIGTERM or SIGHUP))";

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"stagekit " STAGEKIT_VERSION
               ": write a pipeline stage once; run it in-process, in a subprocess or on Ray,\n"
               "with byte-identical outputs."};
  app.set_version_flag("--version", STAGEKIT_VERSION);
  app.require_subcommand(1);
  app.footer(kExitCodes);
  stagekit::cli::Action action;
  stagekit::cli::SetRunCommand(app, action);
  stagekit::cli::SetParityCommand(app, action);
  stagekit::cli::SetListCommand(app, action);
  stagekit::cli::SetShipCommand(app, action);
  stagekit::cli::SetSubmitCommand(app, action);
  stagekit::cli::SetJobsCommand(app, action);
  stagekit::cli::SetFetchCommand(app, action);
  stagekit::cli::SetCostCommand(app, action);
  stagekit::cli::SetDoctorCommand(app, action);
  stagekit::cli::SetAuditCommand(app, action);
  stagekit::cli::SetStageCommand(app, action);
  stagekit::cli::SetRayReaperCommand(app, action);
  stagekit::cli::SetClusterCommand(app, action);
  stagekit::cli::SetWatchdogCommand(app, action);
  stagekit::cli::SetCacheCommand(app, action);
  stagekit::cli::SetReportCommand(app, action);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : static_cast<int>(stagekit::Code::kUsage);
  }
  stagekit::InstallInterruptHandlers();
  stagekit::Status status;
  try {
    status = action();
  } catch (const std::exception& e) {
    status = stagekit::Status(stagekit::Code::kInternal, e.what());
  }
  if (!status.ok()) {
    std::cerr << "stagekit: error: " << status.message() << "\n";
    return static_cast<int>(status.code());
  }
  return 0;
}
