// consumer_driver WORK_DIR STAGE_LIBRARY
//
// Uses the installed stagekit library API from an ordinary executable: runs a
// stage registered in this executable through Invoke(), InProcessExecutor and
// RunPipeline(), then loads STAGE_LIBRARY (libconsumer_stages.so) with
// LoadStageLibrary() and runs one of its stages in-process and through
// SubprocessExecutor (default runner). Prints one line per check and exits
// non-zero if any failed.
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include <stagekit/c_api.h>
#include <stagekit/executor.h>
#include <stagekit/invoke.h>
#include <stagekit/pipeline.h>
#include <stagekit/stage.h>
#include <stagekit/version.h>

namespace fs = std::filesystem;

namespace {

// Upper-cases input `in`; registered in this executable, not in a library.
void Upper(stagekit::StageContext& ctx) {
  std::string text = ctx.ReadInput("in");
  for (char& c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  ctx.SetMetric("bytes", text.size());
  ctx.WriteOutput(text);
}

}  // namespace

STAGEKIT_STAGE("driver.upper", Upper);

namespace {

int failures = 0;

void Check(bool ok, const std::string& what, const std::string& detail = "") {
  std::printf("driver: %s %s%s%s\n", ok ? "ok  " : "FAIL", what.c_str(), detail.empty() ? "" : ": ",
              detail.c_str());
  std::fflush(stdout);
  if (!ok) ++failures;
}

std::string Slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void Spit(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << text;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s WORK_DIR STAGE_LIBRARY\n", argv[0]);
    return 2;
  }
  const fs::path work = fs::absolute(argv[1]);
  const fs::path library = fs::absolute(argv[2]);
  fs::create_directories(work);

  Check(std::strcmp(stagekit_version(), STAGEKIT_VERSION) == 0,
        "library version matches the installed header",
        std::string(stagekit_version()) + " vs " + STAGEKIT_VERSION);
  Check(stagekit::Registry::Global().Find("driver.upper") != nullptr,
        "STAGEKIT_STAGE registered driver.upper in the executable");

  const fs::path input = work / "in.txt";
  Spit(input, "hello, stagekit\nfrom the consumer driver\n");
  const std::string expected = "HELLO, STAGEKIT\nFROM THE CONSUMER DRIVER\n";

  stagekit::StageRequest req;
  req.stage = "driver.upper";
  req.inputs["in"] = input;
  req.job.name = "consumer-driver";
  req.job.seed = 3;

  // 1. Invoke() directly.
  req.output = work / "invoke.out";
  auto stats = stagekit::Invoke(req);
  Check(stats.ok(), "Invoke(driver.upper)", stats.ok() ? "" : stats.status().ToString());
  if (stats.ok()) {
    Check(Slurp(req.output) == expected, "Invoke output content");
    Check(stats->bytes_out == expected.size() &&
              stats->metrics.value("bytes", std::size_t{0}) == expected.size(),
          "Invoke RunStats (bytes_out, metrics)", stats->Canonical());
    // The run.sh script checks this digest with sha256sum.
    std::printf("driver: digest %s %s\n", stats->output_digest.c_str(), req.output.c_str());
  }

  // 2. The same request through InProcessExecutor.
  stagekit::InProcessExecutor inprocess;
  req.output = work / "executor.out";
  auto stats2 = inprocess.Run(req, stagekit::StageOptions{});
  Check(stats2.ok(), "InProcessExecutor::Run(driver.upper)",
        stats2.ok() ? "" : stats2.status().ToString());
  if (stats2.ok()) {
    Check(Slurp(req.output) == expected, "InProcessExecutor output content");
    Check(stats.ok() && stats2->output_digest == stats->output_digest,
          "InProcessExecutor digest equals Invoke digest");
  }

  // 3. An unknown stage is an expected failure with its code, not a crash.
  stagekit::StageRequest bad = req;
  bad.stage = "driver.uper";
  auto bad_stats = inprocess.Run(bad, stagekit::StageOptions{});
  Check(!bad_stats.ok() && bad_stats.status().code() == stagekit::Code::kUnknownStage &&
            bad_stats.status().message().find("driver.upper") != std::string::npos,
        "unknown stage reports kUnknownStage with a suggestion",
        bad_stats.ok() ? "succeeded" : bad_stats.status().ToString());

  // 4. A pipeline built from YAML in memory, run with RunPipeline().
  const std::string yaml =
      "name: driver\n"
      "job: {name: consumer-driver, seed: 3}\n"
      "stages:\n"
      "  - {name: up, stage: driver.upper, inputs: {in: in.txt}, output: up.txt}\n"
      "  - {name: up_again, stage: driver.upper, inputs: {in: {from: up}}, output: up2.txt}\n";
  auto pipeline = stagekit::ParsePipeline(yaml, work / "driver.yaml");
  Check(pipeline.ok(), "ParsePipeline", pipeline.ok() ? "" : pipeline.status().ToString());
  if (pipeline.ok()) {
    stagekit::RunOptions options;
    options.jobs = 2;
    stagekit::RunResult run =
        stagekit::RunPipeline(*pipeline, work / "pipeline-out", inprocess, options);
    Check(run.status.ok(), "RunPipeline (2 stages, in-process)", run.status.ToString());
    Check(Slurp(work / "pipeline-out" / "up2.txt") == expected, "RunPipeline output content");
  }

  // 5. The stage library built with stagekit_add_stage_library(), loaded by the API.
  stagekit::Status loaded = stagekit::LoadStageLibrary(library);
  Check(loaded.ok(), "LoadStageLibrary(" + library.filename().string() + ")", loaded.ToString());
  const auto* entry = stagekit::Registry::Global().Find("consumer.reverse_lines");
  Check(entry != nullptr && fs::path(entry->library).filename() == library.filename(),
        "consumer.reverse_lines is registered from the library",
        entry == nullptr ? "missing" : entry->library);
  if (loaded.ok()) {
    stagekit::StageRequest rev = req;
    rev.stage = "consumer.reverse_lines";
    rev.output = work / "reversed.out";
    auto rs = inprocess.Run(rev, stagekit::StageOptions{});
    Check(rs.ok(), "InProcessExecutor::Run(consumer.reverse_lines)",
          rs.ok() ? "" : rs.status().ToString());
    Check(Slurp(rev.output) == "from the consumer driver\nhello, stagekit\n",
          "consumer.reverse_lines output content");
  }

  // 6. The same library stage through SubprocessExecutor with its default
  // runner: the stagekit binary installed beside libstagekit (run.sh checks
  // the path printed here).
  if (loaded.ok()) {
    stagekit::SubprocessExecutor::Options sub_options;
    sub_options.libraries = {library};
    stagekit::SubprocessExecutor subprocess(sub_options);
    std::printf("driver: runner %s\n", subprocess.runner().c_str());
    stagekit::StageRequest rev = req;
    rev.stage = "consumer.reverse_lines";
    rev.output = work / "reversed-subprocess.out";
    auto rs = subprocess.Run(rev, stagekit::StageOptions{});
    Check(rs.ok() && rs->executor == "subprocess",
          "SubprocessExecutor::Run(consumer.reverse_lines) with the default runner",
          rs.ok() ? rs->executor : rs.status().ToString());
    Check(Slurp(rev.output) == Slurp(work / "reversed.out"),
          "subprocess output is byte-identical to the in-process one");
  }

  std::printf("driver: %s (%d failure%s)\n", failures == 0 ? "all checks passed" : "FAILED",
              failures, failures == 1 ? "" : "s");
  return failures == 0 ? 0 : 1;
}
