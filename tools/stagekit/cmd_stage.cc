// stagekit stage NAME: the subprocess runner's protocol from the full command
// line (src/stage_server.h). The subprocess executor starts the lean runner,
// stagekit-stage, which serves the same protocol without the CLI's
// libraries; this subcommand stays for scripts and for STAGEKIT_RUNNER.
#include <filesystem>

#include "cli.h"
#include "stagekit/runner.h"

namespace stagekit::cli {
namespace {

struct StageCommand {
  std::string name;
  LibraryOptions libs;
  bool serve = false;
  bool exit_with_parent = false;
  bool cold = false;
};

Status RunStage(const StageCommand& cmd) {
  stagekit::StageServerOptions options;
  options.name = cmd.name;
  options.serve = cmd.serve;
  options.exit_with_parent = cmd.exit_with_parent;
  options.warm = !cmd.cold;
  std::error_code ec;
  for (const std::string& s : cmd.libs.stages)
    options.libraries.push_back(std::filesystem::absolute(s, ec));
  return stagekit::RunStageServer(options);
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
  sub->add_flag("--cold", cmd->cold,
                "Warm stages set up and tear down on every request (the subprocess executor "
                "passes it under STAGEKIT_WARM=0)");
  cmd->libs.AddTo(sub);
  sub->footer(
      "Request: {\"stage\": NAME, \"inputs\": {name: path}, \"output\": path, \"job\": {\"name\", "
      "\"seed\", \"params\"}, \"kwargs\": {...}}\nOn failure the last line is "
      "{\"error\": {\"code\", \"message\"}} and the exit code says what went wrong.");
  sub->callback([cmd, &action] { action = [cmd] { return RunStage(*cmd); }; });
}

}  // namespace stagekit::cli
