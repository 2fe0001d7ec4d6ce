// stagekit parity PIPELINE: run the pipeline under several executors and prove
// that every output is byte-identical.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>

#include <fcntl.h>

#include "cli.h"
#include "stagekit/ray.h"
#include "util/digest.h"
#include "util/fd.h"
#include "util/outcome.h"
#include "util/process.h"

namespace stagekit::cli {
namespace {

namespace fs = std::filesystem;

struct ParityCommand {
  std::string pipeline;
  std::string executors;  // default: inprocess,subprocess and ray when Ray is installed
  bool executors_given = false;
  LibraryOptions libs;
  ExecOptions exec;
  RayCliOptions ray;
  ReportCli report;
};

// Offset of the first byte where the two files differ (the shorter size when
// one is a prefix of the other); -1 when identical or unreadable.
long long FirstDifference(const fs::path& a, const fs::path& b) {
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  if (!fa || !fb) return -1;
  std::vector<char> ba(1 << 16), bb(1 << 16);
  long long offset = 0;
  for (;;) {
    fa.read(ba.data(), static_cast<std::streamsize>(ba.size()));
    fb.read(bb.data(), static_cast<std::streamsize>(bb.size()));
    std::streamsize na = fa.gcount(), nb = fb.gcount();
    std::streamsize n = std::min(na, nb);
    for (std::streamsize i = 0; i < n; ++i) {
      if (ba[i] != bb[i]) return offset + i;
    }
    if (na != nb) return offset + n;
    if (na == 0) return -1;
    offset += n;
  }
}

// "sha256:<hex>" of the file as it is on disk now, or "unreadable: why".
std::string DigestOnDisk(const fs::path& path) {
  util::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) return "unreadable: " + std::string(std::strerror(errno));
  auto hashed = util::Sha256Fd(fd.get(), path);
  if (!hashed.ok()) return "unreadable: " + hashed.status().message();
  return "sha256:" + util::HexDigest(hashed->first);
}

// The executors to compare, from --executors or those installed; kUsage unless two or more, each
// once.
Result<std::vector<std::string>> ExecutorNames(const ParityCommand& cmd) {
  std::vector<std::string> names;
  std::string list = cmd.executors;
  if (cmd.executors_given && list.empty()) {
    return Status(Code::kUsage,
                  "--executors is empty; name at least two, e.g. inprocess,subprocess (leave the "
                  "option out for all that are installed)");
  }
  if (list.empty())
    list = RayAvailable(nullptr, Environment::Get().ray_bin_dir, Environment::Get().path)
               ? "inprocess,subprocess,ray"
               : "inprocess,subprocess";
  std::stringstream ss(list);
  for (std::string name; std::getline(ss, name, ',');) {
    if (name.empty()) continue;
    if (std::find(names.begin(), names.end(), name) != names.end()) {
      return Status(Code::kUsage, "--executors names '" + name + "' twice");
    }
    names.push_back(name);
  }
  if (names.size() < 2) {
    return Status(Code::kUsage,
                  "--executors needs at least two executors, e.g. inprocess,subprocess");
  }
  return names;
}

// One executor per name, in the same order.
Result<std::vector<std::unique_ptr<StageExecutor>>> MakeExecutors(
    const std::vector<std::string>& names, const std::vector<fs::path>& libraries,
    const RayCliOptions& ray) {
  std::vector<std::unique_ptr<StageExecutor>> executors;
  for (const std::string& name : names) {
    auto ex = MakeExecutor(name, libraries, ray);
    if (!ex.ok()) return ex.status();
    executors.push_back(std::move(ex).value());
  }
  return executors;
}

// Runs the pipeline under each executor in turn; stops at the first run that fails, reporting it.
Status RunUnderEach(const ParityCommand& cmd, const Pipeline& pipeline,
                    const std::vector<std::string>& names,
                    const std::vector<std::unique_ptr<StageExecutor>>& executors,
                    const fs::path& base, int jobs, std::vector<RunResult>& runs,
                    analyse::ParityDocument& doc) {
  for (std::size_t e = 0; e < executors.size(); ++e) {
    std::unique_ptr<RunObserver> progress = MakeProgress(
        pipeline.stages.size(), cmd.exec.quiet || cmd.exec.json, "[" + names[e] + "] ");
    RunOptions options;
    options.cancel = &util::ProcessCancel();
    options.jobs = jobs;
    options.observer = progress.get();
    runs.push_back(RunPipeline(pipeline, base / names[e], *executors[e], options));
    progress.reset();
    analyse::RunRecord& summary = doc.runs[names[e]];
    summary = RunSummary(pipeline, runs.back(), names[e], jobs, base / names[e]);
    AddExecutorDetails(*executors[e], summary);
    if (!runs.back().status.ok()) {
      doc.status = "failed";
      doc.executors = names;
      if (Status r = cmd.report.Write(doc, cmd.exec.quiet || cmd.exec.json); !r.ok()) {
        std::cerr << "stagekit: warning: " << r.message() << "\n";
      }
      if (cmd.exec.json) {
        Json failed = doc.ToJson();
        failed.erase("executors");  // --json has always printed the status and the runs
        std::cout << failed.dump(2) << std::endl;
      }
      return Status(runs.back().status.code(),
                    "parity: the " + names[e] + " run failed: " + runs.back().status.message());
    }
  }
  return OkStatus();
}

// What comparing the outputs found: one row per stage, and the mismatches.
struct Comparison {
  std::vector<analyse::ParityRow> rows;
  std::size_t mismatches = 0;
  std::string first_mismatch;
};

// One stage's output under every executor: its digests as on disk, and the verdict.
struct StageDigests {
  analyse::ParityRow row;  // digests, first_difference, changed_after_run
  std::string verdict = "identical";
  std::vector<std::string> on_disk;
};

// Hashes stage i's output of each run as on disk now and flags one changed since its stage wrote
// it.
void CheckOnDisk(std::size_t i, const PipelineStage& st, const std::vector<std::string>& names,
                 const std::vector<RunResult>& runs, StageDigests& d, Comparison& c) {
  // The files are compared as they are on disk, not as the runs reported
  // them: a file replaced after its stage wrote it (by the run record, by
  // another process) is caught here.
  for (std::size_t e = 0; e < names.size(); ++e) {
    d.on_disk.push_back(DigestOnDisk(runs[e].stages[i].output));
    const std::string& reported = runs[e].stages[i].stats->output_digest;
    if (d.on_disk.back() != reported && d.verdict == "identical") {
      d.verdict = "CHANGED";
      ++c.mismatches;
      if (c.first_mismatch.empty()) {
        c.first_mismatch = "stage '" + st.name + "' output '" + st.output + "' of the " + names[e] +
                           " run was changed after the stage wrote it (" + reported +
                           ", the file " + runs[e].stages[i].output.string() + " now holds " +
                           d.on_disk.back() + ")";
      }
      d.row.changed_after_run = names[e];
    }
  }
}

// Records stage i's digests and compares each run's output with the first executor's.
void CheckAcross(std::size_t i, const PipelineStage& st, const std::vector<std::string>& names,
                 const std::vector<RunResult>& runs, StageDigests& d, Comparison& c) {
  for (std::size_t e = 0; e < names.size(); ++e) {
    const std::string& digest = d.on_disk[e];
    d.row.digests[names[e]] = digest;
    if (e > 0 && digest != d.on_disk[0] && d.verdict == "identical") {
      long long offset = FirstDifference(runs[0].stages[i].output, runs[e].stages[i].output);
      d.verdict = "DIFFERS";
      ++c.mismatches;
      if (c.first_mismatch.empty()) {
        c.first_mismatch = "stage '" + st.name + "' output '" + st.output + "' differs between " +
                           names[0] + " and " + names[e] + " at byte " + std::to_string(offset) +
                           " (sizes " + std::to_string(runs[0].stages[i].stats->bytes_out) +
                           " and " + std::to_string(runs[e].stages[i].stats->bytes_out) +
                           "; files " + runs[0].stages[i].output.string() + " and " +
                           runs[e].stages[i].output.string() + ")";
      }
      d.row.first_difference = offset;
    }
  }
}

// Compares every stage's output against the first executor's, printing a table unless --json.
Comparison CompareOutputs(const ParityCommand& cmd, const Pipeline& pipeline,
                          const std::vector<std::string>& names,
                          const std::vector<RunResult>& runs) {
  Comparison c;
  std::size_t width = 5, out_width = 6;
  for (const PipelineStage& st : pipeline.stages) {
    width = std::max(width, st.name.size());
    out_width = std::max(out_width, st.output.size());
  }
  if (!cmd.exec.json) {
    std::printf("%-*s  %-*s", static_cast<int>(width), "STAGE", static_cast<int>(out_width),
                "OUTPUT");
    for (const std::string& n : names) std::printf("  %-12s", n.c_str());
    std::printf("  RESULT\n");
  }
  for (std::size_t i = 0; i < pipeline.stages.size(); ++i) {
    const PipelineStage& st = pipeline.stages[i];
    StageDigests d;
    CheckOnDisk(i, st, names, runs, d, c);
    CheckAcross(i, st, names, runs, d, c);
    d.row.stage = st.name;
    d.row.output = st.output;
    d.row.result = d.verdict;
    c.rows.push_back(d.row);
    if (!cmd.exec.json) {
      std::printf("%-*s  %-*s", static_cast<int>(width), st.name.c_str(),
                  static_cast<int>(out_width), st.output.c_str());
      for (std::size_t e = 0; e < names.size(); ++e) {
        // "sha256:" + the first 12 hex digits.
        std::printf("  %-12s", d.on_disk[e].substr(7, 12).c_str());
      }
      std::printf("  %s\n", d.verdict.c_str());
    }
  }
  return c;
}

// Prints the verdict and writes the report; kParityMismatch when any output differs.
Status ReportParity(const ParityCommand& cmd, const std::vector<std::string>& names,
                    const Comparison& c, analyse::ParityDocument& doc) {
  std::string joined;
  for (const std::string& n : names) joined += (joined.empty() ? "" : ", ") + n;
  doc.status = c.mismatches == 0 ? "identical" : "mismatch";
  doc.executors = names;
  doc.outputs = c.rows;
  if (cmd.exec.json) {
    std::cout << doc.ToJson().dump(2) << std::endl;
  } else {
    std::printf("%zu outputs, %zu identical across %s\n", c.rows.size(),
                c.rows.size() - c.mismatches, joined.c_str());
  }
  if (Status s = cmd.report.Write(doc, cmd.exec.quiet || cmd.exec.json); !s.ok()) return s;
  if (c.mismatches > 0) {
    return Status(util::kParityMismatch, "parity mismatch in " + std::to_string(c.mismatches) +
                                             " output(s); first: " + c.first_mismatch);
  }
  return OkStatus();
}

Status Parity(const ParityCommand& cmd) {
  const Result<std::vector<std::string>> names = ExecutorNames(cmd);
  if (!names.ok()) return names.status();
  std::vector<fs::path> libraries;
  Result<Pipeline> pipeline = LoadPipelineWithLibraries(cmd.pipeline, cmd.libs, libraries);
  if (!pipeline.ok()) return pipeline.status();
  if (Status s = ApplyCommandLine(*pipeline, cmd.exec); !s.ok()) return s;
  Result<std::vector<std::unique_ptr<StageExecutor>>> executors =
      MakeExecutors(*names, libraries, cmd.ray);
  if (!executors.ok()) return executors.status();

  fs::path base = cmd.exec.out.empty() ? fs::path("stagekit-out") / pipeline->name / "parity"
                                       : fs::path(cmd.exec.out);
  const int jobs = cmd.exec.Jobs(*executors->back());
  std::vector<RunResult> runs;
  analyse::ParityDocument doc;
  if (Status s = RunUnderEach(cmd, *pipeline, *names, *executors, base, jobs, runs, doc); !s.ok()) {
    return s;
  }
  // A dynamic foreach made its instances from each run's own item list: the
  // runs compare only if they made the same ones.
  const Pipeline& ran = runs[0].Ran(*pipeline);
  for (std::size_t e = 1; e < runs.size(); ++e) {
    const Pipeline& other = runs[e].Ran(*pipeline);
    for (std::size_t i = 0; i < std::max(ran.stages.size(), other.stages.size()); ++i) {
      const std::string a = i < ran.stages.size() ? ran.stages[i].name : "(none)";
      const std::string b = i < other.stages.size() ? other.stages[i].name : "(none)";
      if (a == b) continue;
      return Status(util::kParityMismatch,
                    "parity mismatch: the " + (*names)[0] + " and " + (*names)[e] +
                        " runs made different stages from a dynamic foreach's items (stage " +
                        std::to_string(i + 1) + " is '" + a + "' in one, '" + b +
                        "' in the other); compare their item lists under " + base.string());
    }
  }
  const Comparison comparison = CompareOutputs(cmd, ran, *names, runs);
  return ReportParity(cmd, *names, comparison, doc);
}

}  // namespace

void SetParityCommand(CLI::App& app, Action& action) {
  auto cmd = std::make_shared<ParityCommand>();
  CLI::App* sub = app.add_subcommand(
      "parity",
      "Run a pipeline under several executors and check that every output is byte-identical");
  sub->add_option("PIPELINE", cmd->pipeline, "Pipeline file (YAML)")->required();
  CLI::Option* executors = sub->add_option(
      "--executors", cmd->executors,
      "Comma-separated executors to compare (default: inprocess,subprocess, and ray when "
      "Ray is installed)");
  cmd->exec.AddTo(sub, true);
  cmd->libs.AddTo(sub);
  cmd->ray.AddTo(sub);
  cmd->report.AddTo(sub);
  sub->callback([cmd, executors, &action] {
    cmd->executors_given = executors->count() > 0;
    action = [cmd] { return Parity(*cmd); };
  });
}

}  // namespace stagekit::cli
