// stagekit list [PIPELINE]: the registered stages of the loaded libraries.
#include <cstdio>
#include <iostream>

#include "cli.h"

namespace stagekit::cli {
namespace {

namespace fs = std::filesystem;

struct ListCommand {
  std::string pipeline;
  LibraryOptions libs;
  bool json = false;
};

Status List(const ListCommand& cmd) {
  std::vector<fs::path> libraries;
  if (!cmd.pipeline.empty()) {
    auto p = LoadPipelineWithLibraries(cmd.pipeline, cmd.libs, libraries);
    if (!p.ok()) return p.status();
  } else if (!cmd.libs.stages.empty()) {
    for (const std::string& s : cmd.libs.stages) libraries.emplace_back(s);
    if (Status s = LoadLibraries(libraries); !s.ok()) return s;
  } else {
    // Nothing named: every stage library on the search path.
    std::error_code ec;
    for (const fs::path& dir : cmd.libs.SearchDirs({})) {
      for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        if (it->path().extension() == ".so") libraries.push_back(it->path());
      }
    }
    if (Status s = LoadLibraries(libraries); !s.ok()) return s;
  }
  std::vector<Registry::Entry> entries = Registry::Global().List();
  if (cmd.json) {
    Json out = Json::array();
    for (const auto& e : entries) {
      out.push_back({{"name", e.name}, {"library", e.library}, {"file", e.file}, {"line", e.line}});
    }
    std::cout << out.dump(2) << std::endl;
    return OkStatus();
  }
  if (entries.empty()) {
    std::cerr << "stagekit: no stages registered; load a library with --stages LIB or name a "
                 "pipeline\n";
    return OkStatus();
  }
  std::size_t width = 5;
  for (const auto& e : entries) width = std::max(width, e.name.size());
  std::printf("%-*s  %s\n", static_cast<int>(width), "STAGE", "LIBRARY / SOURCE");
  for (const auto& e : entries) {
    std::printf("%-*s  %s (%s:%d)\n", static_cast<int>(width), e.name.c_str(),
                fs::path(e.library).filename().c_str(), e.file.c_str(), e.line);
  }
  return OkStatus();
}

}  // namespace

void SetListCommand(CLI::App& app, Action& action) {
  auto cmd = std::make_shared<ListCommand>();
  CLI::App* sub = app.add_subcommand("list", "List the registered stages of the loaded libraries");
  sub->add_option("PIPELINE", cmd->pipeline, "Load the libraries this pipeline names");
  cmd->libs.AddTo(sub);
  sub->add_flag("--json", cmd->json, "Print JSON");
  sub->callback([cmd, &action] { action = [cmd] { return List(*cmd); }; });
}

}  // namespace stagekit::cli
