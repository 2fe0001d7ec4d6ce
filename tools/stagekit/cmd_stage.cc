// stagekit stage NAME: the subprocess runner. Reads a StageRequest (JSON) on
// stdin, runs it through the invocation entry point and prints RunStats JSON
// (or {"error": ...}) as the only line of its real stdout. Whatever the stage
// itself prints goes to stderr, so the protocol line cannot be corrupted.
#include <unistd.h>

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
};

Status RunStage(const StageCommand& cmd) {
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
  sub->add_option("NAME", cmd->name, "Registered stage name")->required();
  cmd->libs.AddTo(sub);
  sub->footer(
      "Request: {\"stage\": NAME, \"inputs\": {name: path}, \"output\": path, \"job\": {\"name\", "
      "\"seed\", \"params\"}, \"kwargs\": {...}}\nOn failure the last line is "
      "{\"error\": {\"code\", \"message\"}} and the exit code says what went wrong.");
  sub->callback([cmd, &action] { action = [cmd] { return RunStage(*cmd); }; });
}

}  // namespace stagekit::cli
