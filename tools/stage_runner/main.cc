// stagekit-stage: the lean stage runner the subprocess executor starts. It
// serves the stage protocol (src/stage_server.h) and links nothing but
// libstagekit and the stage libraries it is told to load: no HTTP, zip,
// regex or command-line framework, so a child starts in about the time of a
// plain process spawn. Same arguments as `stagekit stage`.
#include <cstdio>
#include <cstring>
#include <string>

#include "stagekit/executor.h"
#include "stagekit/runner.h"

namespace {

int Usage(const char* why) {
  std::fprintf(stderr, "stagekit-stage: error: %s\nusage: stagekit-stage %s\n", why,
               stagekit::kStageServerUsage);
  return static_cast<int>(stagekit::Code::kUsage);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "stage") != 0) {
    if (argc >= 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
      std::printf(
          "stagekit-stage: the subprocess executor's stage runner\nusage: stagekit-stage %s\n"
          "Reads a StageRequest (JSON) on stdin, replies with RunStats JSON (or {\"error\"}) "
          "on stdout;\n--serve reads one request per line until the end of stdin.\n",
          stagekit::kStageServerUsage);
      return 0;
    }
    return Usage("the first argument must be `stage`");
  }
  stagekit::StageServerOptions options;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--serve") {
      options.serve = true;
    } else if (arg == "--exit-with-parent") {
      options.exit_with_parent = true;
    } else if (arg == "--cold") {
      options.warm = false;
    } else if (arg == "--stages" && i + 1 < argc) {
      std::error_code ec;
      options.libraries.push_back(std::filesystem::absolute(argv[++i], ec));
    } else if (arg.rfind("--stages=", 0) == 0) {
      std::error_code ec;
      options.libraries.push_back(std::filesystem::absolute(arg.substr(9), ec));
    } else if (!arg.empty() && arg[0] != '-' && options.name.empty()) {
      options.name = arg;
    } else {
      return Usage(("unexpected argument '" + arg + "'").c_str());
    }
  }
  // Nothing in the runner checks the flag (its parent stops it), but a first
  // signal must not kill it half-way through writing its reply.
  static stagekit::CancelFlag interrupted;
  stagekit::InstallInterruptHandlers(interrupted);
  stagekit::Status status;
  try {
    status = stagekit::RunStageServer(options);
  } catch (const std::exception& e) {
    status = stagekit::Status(stagekit::Code::kInternal, e.what());
  }
  if (!status.ok()) {
    std::fprintf(stderr, "stagekit-stage: error: %s\n", status.message().c_str());
    return static_cast<int>(status.code());
  }
  return 0;
}
