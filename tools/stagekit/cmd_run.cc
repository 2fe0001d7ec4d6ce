// stagekit run PIPELINE: run every stage of a pipeline on one executor.
#include <chrono>
#include <cstdio>
#include <iostream>

#include "cli.h"
#include "tools/s3.h"

namespace stagekit::cli {
namespace {

struct RunCommand {
  std::string pipeline;
  std::string executor = "inprocess";
  LibraryOptions libs;
  ExecOptions exec;
  RayCliOptions ray;
  std::string artifacts;
  bool no_artifacts = false;
  std::string endpoint_url;
};

Status Run(const RunCommand& cmd) {
  std::vector<std::filesystem::path> libraries;
  Result<Pipeline> pipeline = LoadPipelineWithLibraries(cmd.pipeline, cmd.libs, libraries);
  if (!pipeline.ok()) return pipeline.status();
  if (Status s = ApplyCommandLine(*pipeline, cmd.exec); !s.ok()) return s;
  const std::string artifacts = cmd.no_artifacts        ? ""
                                : cmd.artifacts.empty() ? pipeline->artifacts
                                                        : cmd.artifacts;
  if (!artifacts.empty()) {
    if (Status s = tools::CheckS3Uri(artifacts); !s.ok()) return s;
  }
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
  if (!artifacts.empty()) summary["artifacts"] = {{"uri", artifacts}};
  if (result.status.code() != Code::kOutputError || !result.failed_stage.empty()) {
    // Best effort: the record of the run sits beside its outputs.
    (void)WriteFileAtomically(out_dir / ".stagekit-run.json", summary.dump(2) + "\n");
  }
  // Artifacts leave only from a complete run: the outputs (and the record of
  // the run) are on this machine, where the driver wrote them.
  Status sync;
  if (result.status.ok() && !artifacts.empty()) {
    const auto start = std::chrono::steady_clock::now();
    sync = tools::S3Upload(out_dir, artifacts, tools::S3OptionsFromEnvironment(cmd.endpoint_url));
    summary["artifacts"]["synced"] = sync.ok();
    summary["artifacts"]["seconds"] =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!sync.ok()) summary["artifacts"]["error"] = sync.message();
  } else if (!artifacts.empty()) {
    summary["artifacts"]["synced"] = false;
  }
  if (cmd.exec.json) std::cout << summary.dump(2) << std::endl;
  if (!sync.ok()) {
    return Status(sync.code(), "the run succeeded and its outputs are in " + out_dir.string() +
                                   ", but " + sync.message());
  }

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
      if (!artifacts.empty()) std::fprintf(stderr, "stagekit: synced to %s\n", artifacts.c_str());
    }
    return OkStatus();
  }
  if (!cmd.exec.json) {
    std::fprintf(stderr, "stagekit: %zu succeeded, %zu failed, %zu not run (%s)%s\n", ok, failed,
                 not_run, std::string((*executor)->name()).c_str(),
                 artifacts.empty() ? "" : "; artifacts not synced");
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
  sub->add_option("--artifacts", cmd->artifacts,
                  "After a successful run, sync the output directory to this S3 location with "
                  "`aws s3 sync` (default: the pipeline's `artifacts:`)")
      ->type_name("s3://BUCKET/PREFIX");
  sub->add_flag("--no-artifacts", cmd->no_artifacts, "Do not sync the outputs anywhere");
  sub->add_option("--endpoint-url", cmd->endpoint_url,
                  "S3-compatible endpoint for the sync (default: $AWS_ENDPOINT_URL)");
  sub->callback([cmd, &action] { action = [cmd] { return Run(*cmd); }; });
}

}  // namespace stagekit::cli
