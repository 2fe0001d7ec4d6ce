// stagekit run PIPELINE: run every stage of a pipeline on one executor.
#include <cstdio>
#include <iostream>

#include "cli.h"

namespace stagekit::cli {
namespace {

struct RunCommand {
  std::string pipeline;
  std::string executor = "inprocess";
  LibraryOptions libs;
  ExecOptions exec;
  RayCliOptions ray;
};

Status Run(const RunCommand& cmd) {
  std::vector<std::filesystem::path> libraries;
  Result<Pipeline> pipeline = LoadPipelineWithLibraries(cmd.pipeline, cmd.libs, libraries);
  if (!pipeline.ok()) return pipeline.status();
  if (Status s = ApplyCommandLine(*pipeline, cmd.exec); !s.ok()) return s;
  auto executor = MakeExecutor(cmd.executor, libraries, cmd.ray);
  if (!executor.ok()) return executor.status();

  std::filesystem::path out_dir = cmd.exec.out.empty()
                                      ? std::filesystem::path("stagekit-out") / pipeline->name
                                      : std::filesystem::path(cmd.exec.out);
  const int jobs = cmd.exec.Jobs(**executor);
  std::unique_ptr<RunObserver> progress =
      MakeProgress(pipeline->stages.size(), cmd.exec.quiet || cmd.exec.json, "");
  RunOptions options;
  options.jobs = jobs;
  options.observer = progress.get();
  RunResult result = RunPipeline(*pipeline, out_dir, **executor, options);
  progress.reset();

  Json summary = RunSummary(*pipeline, result, (*executor)->name(), jobs, out_dir);
  AddExecutorDetails(**executor, summary);
  if (result.status.code() != Code::kOutputError || !result.failed_stage.empty()) {
    // Best effort: the record of the run sits beside its outputs.
    (void)WriteFileAtomically(out_dir / ".stagekit-run.json", summary.dump(2) + "\n");
  }
  if (cmd.exec.json) std::cout << summary.dump(2) << std::endl;

  std::size_t ok = 0, failed = 0, not_run = 0;
  for (const StageOutcome& o : result.stages) {
    ok += o.state == StageState::kSucceeded;
    failed += o.state == StageState::kFailed;
    not_run += o.state == StageState::kNotRun;
  }
  if (result.status.ok()) {
    if (!cmd.exec.quiet && !cmd.exec.json) {
      std::fprintf(stderr,
                   "stagekit: %zu stage%s succeeded in %.2fs (%s, %d jobs); outputs in %s\n", ok,
                   ok == 1 ? "" : "s", result.wall_s, std::string((*executor)->name()).c_str(),
                   jobs, out_dir.string().c_str());
    }
    return OkStatus();
  }
  if (!cmd.exec.json) {
    std::fprintf(stderr, "stagekit: %zu succeeded, %zu failed, %zu not run (%s)\n", ok, failed,
                 not_run, std::string((*executor)->name()).c_str());
  }
  return result.status;
}

}  // namespace

void SetRunCommand(CLI::App& app, Action& action) {
  auto cmd = std::make_shared<RunCommand>();
  CLI::App* sub = app.add_subcommand("run", "Run a pipeline on one executor");
  sub->add_option("PIPELINE", cmd->pipeline, "Pipeline file (YAML)")->required();
  sub->add_option("-e,--executor", cmd->executor,
                  "inprocess | subprocess | ray (default: inprocess)")
      ->check(CLI::IsMember({"inprocess", "subprocess", "ray"}));
  cmd->exec.AddTo(sub, false);
  cmd->libs.AddTo(sub);
  cmd->ray.AddTo(sub);
  sub->callback([cmd, &action] { action = [cmd] { return Run(*cmd); }; });
}

}  // namespace stagekit::cli
