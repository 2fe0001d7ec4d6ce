// stagekit audit PIPELINE: run every stage again under perturbations that must
// not change its output and report which did, where (see src/tools/audit.h).
#include <cstdio>
#include <iostream>

#include "analyse/audit.h"
#include "cli.h"
#include "util/outcome.h"

namespace stagekit::cli {
namespace {

namespace fs = std::filesystem;

struct AuditCommand {
  std::string pipeline;
  std::vector<std::string> only;
  std::string executor = "inprocess";
  std::string keep;
  int jobs = 0;
  bool json = false;
  bool quiet = false;
  LibraryOptions libs;
  RayCliOptions ray;
};

Status Audit(const AuditCommand& cmd) {
  // subprocess: a plain subprocess run (ASLR on, the usual environment)
  // against the audit's controlled one.
  if (cmd.executor != "inprocess" && cmd.executor != "subprocess" && cmd.executor != "ray") {
    return Status(Code::kUsage,
                  "--executor '" + cmd.executor + "': choose inprocess, subprocess or ray");
  }
  std::vector<fs::path> libraries;
  Result<Pipeline> pipeline = LoadPipelineWithLibraries(cmd.pipeline, cmd.libs, libraries);
  if (!pipeline.ok()) return pipeline.status();
  auto executor = MakeExecutor(cmd.executor, libraries, cmd.ray);
  if (!executor.ok()) return executor.status();

  std::unique_ptr<RunObserver> progress =
      MakeProgress(pipeline->stages.size(), cmd.quiet, "[baseline] ");
  analyse::AuditOptions options;
  options.only = cmd.only;
  options.libraries = libraries;
  options.runner = Environment::Get().runner;
  options.other_executor = executor->get();
  options.jobs = cmd.jobs > 0 ? cmd.jobs : ExecOptions{}.Jobs(**executor);
  options.keep = cmd.keep;
  options.observer = progress.get();
  if (!cmd.quiet) {
    options.log = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  }
  Result<analyse::AuditReport> report = analyse::RunAudit(*pipeline, options);
  progress.reset();
  if (!report.ok()) return report.status();
  if (cmd.json) {
    std::cout << report->ToJson().dump(2) << std::endl;
  } else {
    std::cout << report->Table() << std::flush;
  }
  if (report->Nondeterministic() > 0) {
    return Status(util::kChecksFailed, "audit: " + report->Summary());
  }
  return OkStatus();
}

}  // namespace

void SetAuditCommand(CLI::App& app, Action& action) {
  auto cmd = std::make_shared<AuditCommand>();
  CLI::App* sub = app.add_subcommand(
      "audit",
      "Run each stage again under perturbations that must not matter (working directory, file "
      "names, environment, TZ and locale, threads, memory layout, clock, scheduling order, "
      "executor) and report which changed which output, and where");
  sub->add_option("PIPELINE", cmd->pipeline, "Pipeline file (YAML)")->required();
  sub->add_option("--stage", cmd->only, "Audit only this pipeline stage; repeatable")
      ->type_name("NAME");
  sub->add_option("--executor", cmd->executor,
                  "Executor of the `executor` perturbation, compared with the subprocess "
                  "baseline: inprocess (default), subprocess or ray")
      ->type_name("NAME");
  sub->add_option("--keep", cmd->keep,
                  "Keep the differing outputs (baseline and perturbed) and audit.json in this new "
                  "directory")
      ->type_name("DIR");
  sub->add_option("-j,--jobs", cmd->jobs, "Runs at once (default: one per CPU)")
      ->check(CLI::Range(1, 4096));
  sub->add_flag("--json", cmd->json, "Print the report as JSON on stdout");
  sub->add_flag("-q,--quiet", cmd->quiet, "No progress output");
  cmd->libs.AddTo(sub);
  cmd->ray.AddTo(sub);
  sub->footer(
      "Exit code 0 when every audited stage is deterministic, 17 when one is not.\n"
      "The clock perturbation needs libfaketime (apt-get install libfaketime).");
  sub->callback([cmd, &action] { action = [cmd] { return Audit(*cmd); }; });
}

}  // namespace stagekit::cli
