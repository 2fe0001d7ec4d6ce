// stagekit ray-reaper --session SID --temp-dir DIR (internal): started by the
// ray executor beside the private Ray head it launches. It waits until its
// stdin closes (the executor finished, or its process died however it died),
// then stops every process of the head's session and removes the temp dir.
// Its own session keeps Ctrl-C in the terminal from reaching it.
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "cli.h"
#include "stagekit/ray.h"

namespace stagekit::cli {
namespace {

struct ReaperCommand {
  long session = 0;
  std::string temp_dir;
};

Status Reap(const ReaperCommand& cmd) {
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGTERM, SIG_IGN);
  ::signal(SIGHUP, SIG_IGN);
  char buf[256];
  for (;;) {
    ssize_t n = ::read(STDIN_FILENO, buf, sizeof(buf));
    if (n == 0 || (n < 0 && errno != EINTR)) break;
  }
  StopProcessSession(static_cast<pid_t>(cmd.session), std::chrono::seconds(2));
  const char* keep = std::getenv("STAGEKIT_RAY_KEEP_TEMP");
  if (!cmd.temp_dir.empty() && (keep == nullptr || std::string(keep) != "1")) {
    std::error_code ec;
    std::filesystem::remove_all(cmd.temp_dir, ec);
  }
  return OkStatus();
}

}  // namespace

void SetRayReaperCommand(CLI::App& app, Action& action) {
  auto cmd = std::make_shared<ReaperCommand>();
  CLI::App* sub = app.add_subcommand("ray-reaper", "Internal: stops a private Ray head");
  sub->group("");  // hidden from --help
  sub->add_option("--session", cmd->session, "Session id of the private Ray head")->required();
  sub->add_option("--temp-dir", cmd->temp_dir, "Its temp dir, removed afterwards");
  sub->callback([cmd, &action] { action = [cmd] { return Reap(*cmd); }; });
}

}  // namespace stagekit::cli
