// stagekit: write a pipeline stage once, run it in-process, in a subprocess or on Ray.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "cli.h"
#include "stagekit/executor.h"
#include "stagekit/runner.h"
#include "stagekit/version.h"
#include "util/outcome.h"
#include "util/process.h"

int main(int argc, char** argv) {
  CLI::App app{"stagekit " STAGEKIT_VERSION
               ": write a pipeline stage once; run it in-process, in a subprocess or on Ray,\n"
               "with byte-identical outputs."};
  app.set_version_flag("--version", STAGEKIT_VERSION);
  app.require_subcommand(1);
  app.footer(stagekit::util::ExitCodesHelp());
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
  stagekit::InstallInterruptHandlers(stagekit::util::ProcessCancel());
  stagekit::Status status;
  try {
    status = action();
  } catch (const std::exception& e) {
    status = stagekit::Status(stagekit::Code::kInternal, e.what());
  }
  if (!status.ok()) {
    std::cerr << "stagekit: error: " << status.message() << "\n";
    return stagekit::util::ExitCode(status);
  }
  return 0;
}
