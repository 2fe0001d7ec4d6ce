#include "analyse/audit.h"

#include "util/files.h"

#include <locale.h>
#include <stdlib.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <sstream>
#include <thread>

#include "stagekit/executor.h"
#include "stagekit/invoke.h"
#include "stagekit/runner.h"
#include "util/process.h"
#include "util/text.h"
#include "util/threads.h"

namespace stagekit::analyse {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------
// Comparing outputs

std::string PrintableExcerpt(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (unsigned char c : bytes) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "\\x%02x", c);
      out += hex;
    }
  }
  return out;
}

std::optional<ByteDifference> CompareBytes(std::string_view a, std::string_view b,
                                           std::size_t before, std::size_t after) {
  if (a == b) return std::nullopt;
  const std::size_t n = std::min(a.size(), b.size());
  std::size_t offset = 0;
  while (offset < n && a[offset] == b[offset]) ++offset;
  ByteDifference d;
  d.offset = offset;
  d.size_a = a.size();
  d.size_b = b.size();
  const std::size_t start = offset > before ? offset - before : 0;
  d.excerpt_start = start;
  auto excerpt = [&](std::string_view s) {
    return start >= s.size() ? std::string() : PrintableExcerpt(s.substr(start, before + after));
  };
  d.excerpt_a = excerpt(a);
  d.excerpt_b = excerpt(b);
  return d;
}

// ---------------------------------------------------------------------------
// Attribution

AuditFinding* StageAudit::Find(std::string_view perturbation) {
  for (AuditFinding& f : findings) {
    if (f.perturbation == perturbation) return &f;
  }
  return nullptr;
}

const AuditFinding* StageAudit::Find(std::string_view perturbation) const {
  return const_cast<StageAudit*>(this)->Find(perturbation);
}

void Attribute(StageAudit& stage) {
  stage.blamed.clear();
  for (AuditFinding& f : stage.findings) f.masked_by.clear();
  if (const AuditFinding* repeat = stage.Find("repeat"); repeat != nullptr && repeat->Changed()) {
    // Unstable under identical conditions: every other difference may be the
    // same instability, so none of them is evidence against its perturbation.
    for (AuditFinding& f : stage.findings) {
      if (f.perturbation != "repeat" && f.Changed()) f.masked_by = "repeat";
    }
    stage.blamed.push_back("repeat");
    return;
  }
  const AuditFinding* layout = stage.Find("memory-layout");
  const bool layout_changed = layout != nullptr && layout->Changed();
  for (AuditFinding& f : stage.findings) {
    if (!f.Changed()) continue;
    // The order and executor runs happen in the auditing process, whose
    // addresses differ from the baseline's whatever we do.
    if (layout_changed && (f.perturbation == "order" || f.perturbation == "executor" ||
                           (f.perturbation == "paths" && !f.shows_paths))) {
      f.masked_by = "memory-layout";
      continue;
    }
    stage.blamed.push_back(f.perturbation);
  }
}

// ---------------------------------------------------------------------------
// The machine

namespace {

constexpr const char* kClockA = "2011-06-15 12:00:00";
constexpr const char* kClockB = "2033-09-21 18:30:00";
constexpr int kBaselineThreads = 4;
constexpr int kOtherThreads[] = {1, 3};

std::string ReadSmallFile(const fs::path& path) {
  auto text = util::ReadFile(path, 1 << 20);
  return text.ok() ? std::move(text).value() : std::string();
}

bool LocaleExists(const std::string& name) {
  locale_t l = ::newlocale(LC_ALL_MASK, name.c_str(), static_cast<locale_t>(nullptr));
  if (l == static_cast<locale_t>(nullptr)) return false;
  ::freelocale(l);
  return true;
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

// Sets aslr_off: whether `setarch ARCH -R` turns address randomisation off,
// checked by reading the personality it gives.
void ProbeAslrOff(AuditEnvironment& env) {
  util::ChildSpec probe;
  probe.argv = {"setarch", env.arch, "-R", "cat", "/proc/self/personality"};
  probe.timeout = std::chrono::seconds(20);
  probe.cancelled = util::Interrupted;
  util::ChildResult r = util::RunChild(probe);
  constexpr unsigned long kAddrNoRandomize = 0x0040000;
  if (!r.spawn_status.ok()) {
    env.aslr_off_problem = "setarch (util-linux) cannot be run: " + r.spawn_status.message();
  } else if (!r.exited || r.exit_code != 0) {
    env.aslr_off_problem =
        "`setarch " + env.arch + " -R` was refused: " + util::Trim(util::Tail(r.err, 300));
  } else if ((std::strtoul(r.out.c_str(), nullptr, 16) & kAddrNoRandomize) == 0) {
    env.aslr_off_problem = "`setarch " + env.arch + " -R` did not turn address randomisation off";
  } else {
    env.aslr_off = true;
    env.aslr_off_how = "setarch " + env.arch + " -R";
  }
}

// Sets aslr_on: whether the kernel randomises addresses (kernel.randomize_va_space).
void ProbeAslrOn(AuditEnvironment& env) {
  const std::string va = util::Trim(ReadSmallFile("/proc/sys/kernel/randomize_va_space"));
  if (va == "0") {
    env.aslr_on_problem =
        "address randomisation is off on this machine (kernel.randomize_va_space=0); turn it on "
        "with `sysctl kernel.randomize_va_space=2`";
  } else {
    env.aslr_on = true;
    if (va == "1") {
      env.aslr_on_problem =
          "heap (brk) addresses are not randomised here (kernel.randomize_va_space=1); only mmap "
          "and stack addresses move";
    }
  }
}

// The first libfaketime that works, checked by asking date(1) for the year
// under it; empty when there is none.
fs::path FindFaketime(const std::string& arch) {
  std::vector<fs::path> candidates;
  if (std::string own = Env("STAGEKIT_LIBFAKETIME"); !own.empty()) candidates.emplace_back(own);
  for (const std::string& dir :
       {"/usr/lib/" + arch + "-linux-gnu/faketime", std::string("/usr/lib/faketime"),
        std::string("/usr/lib64/faketime"), std::string("/usr/local/lib/faketime")}) {
    candidates.push_back(fs::path(dir) / "libfaketime.so.1");
  }
  std::error_code ec;
  for (const fs::path& c : candidates) {
    if (!fs::is_regular_file(c, ec)) continue;
    util::ChildSpec date;
    date.argv = {"date", "-u", "+%Y"};
    date.env_set = {"LD_PRELOAD=" + c.string(), std::string("FAKETIME=@") + kClockA};
    date.timeout = std::chrono::seconds(20);
    date.cancelled = util::Interrupted;
    util::ChildResult d = util::RunChild(date);
    if (d.exited && d.exit_code == 0 && util::Trim(d.out) == std::string(kClockA).substr(0, 4)) {
      return c;
    }
  }
  return fs::path();
}

// Sets the baseline's TZ and a perturbed one far from it.
void ChooseTimeZones(AuditEnvironment& env) {
  std::error_code ec;
  env.tz_baseline = Env("TZ");
  const bool chatham = fs::exists("/usr/share/zoneinfo/Pacific/Chatham", ec);
  // Chatham is UTC+12:45 (+13:45 in summer): a date that is right in UTC is
  // wrong there for most of the day. The POSIX form needs no tzdata.
  env.tz_perturbed = chatham ? "Pacific/Chatham" : "<+1245>-12:45";
  if (env.tz_perturbed == env.tz_baseline) env.tz_perturbed = "America/St_Johns";
}

// Sets the baseline's locale and another installed one (empty when none).
void ChooseLocales(AuditEnvironment& env) {
  env.locale_baseline = Env("LC_ALL");
  if (env.locale_baseline.empty()) env.locale_baseline = Env("LANG");
  if (env.locale_baseline.empty()) env.locale_baseline = "C";
  const bool baseline_c = env.locale_baseline == "C" || env.locale_baseline == "POSIX";
  const std::vector<std::string> others =
      baseline_c ? std::vector<std::string>{"C.UTF-8", "C.utf8", "en_US.UTF-8"}
                 : std::vector<std::string>{"C"};
  for (const std::string& l : others) {
    if (LocaleExists(l)) {
      env.locale_perturbed = l;
      break;
    }
  }
}

}  // namespace

AuditEnvironment DetectAuditEnvironment() {
  AuditEnvironment env;
  struct utsname u {};
  env.arch = ::uname(&u) == 0 ? u.machine : "x86_64";
  ProbeAslrOff(env);
  ProbeAslrOn(env);
  env.faketime = FindFaketime(env.arch);
  ChooseTimeZones(env);
  ChooseLocales(env);
  return env;
}

// Running stages

namespace {

enum class Aslr { kOff, kOn };

// How one child runs: everything but the request.
struct Conditions {
  Aslr aslr = Aslr::kOff;
  std::vector<std::string> env_set;
  std::string cwd;
};

std::string FirstLines(const std::string& text, std::size_t max = 400) {
  std::string s = text.substr(0, text.find("\n  stdout tail:"));
  if (s.size() > max) s = s.substr(0, max) + "...";
  return s;
}

std::string_view LastLine(std::string_view out) {
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.remove_suffix(1);
  std::size_t nl = out.rfind('\n');
  return nl == std::string_view::npos ? out : out.substr(nl + 1);
}

class ChildRunner {
 public:
  ChildRunner(const AuditEnvironment& env, fs::path runner, std::vector<fs::path> libraries)
      : env_(env), runner_(std::move(runner)), libraries_(std::move(libraries)) {}

  Result<RunStats> Run(const StageRequest& request, const StageOptions& options,
                       const Conditions& cond) const {
    util::ChildSpec spec;
    // Without -R, setarch sets a personality without ADDR_NO_RANDOMIZE: the
    // addresses are random even when the audit itself runs under setarch -R.
    if (env_.aslr_off) {
      spec.argv = {"setarch", env_.arch};
      if (cond.aslr == Aslr::kOff) spec.argv.push_back("-R");
    }
    spec.argv.push_back(runner_.string());
    spec.argv.push_back("stage");
    spec.argv.push_back(request.stage);
    for (const fs::path& lib : libraries_) {
      spec.argv.push_back("--stages");
      spec.argv.push_back(lib.string());
    }
    StageRequest req = request;
    req.executor = "subprocess";
    spec.stdin_data = CanonicalJson(req.ToJson()) + "\n";
    spec.timeout = options.timeout;
    spec.env_set = cond.env_set;
    spec.cwd = cond.cwd;
    spec.cancelled = util::Interrupted;
    util::ChildResult c = util::RunChild(spec);
    const std::string label = req.Label();
    if (!c.spawn_status.ok()) {
      return Status(Code::kInternal, "cannot run " + label + ": " + c.spawn_status.message());
    }
    const bool success = c.exited && c.exit_code == 0;
    if (!success) RemoveTempOutputs(req.output, c.pid);
    if (c.timed_out) return Status(Code::kTimeout, label + " timed out");
    if (c.interrupted) return Status(Code::kInterrupted, label + " was stopped by an interrupt");
    Json reply = Json::parse(LastLine(c.out), nullptr, /*allow_exceptions=*/false);
    if (!reply.is_discarded() && reply.is_object()) {
      Result<RunStats> stats = RunStatsOrErrorFromJson(reply);
      if (stats.ok() == success) return stats;
    }
    std::string how = c.term_signal != 0 ? "was killed by " + util::SignalName(c.term_signal)
                                         : "exited with code " + std::to_string(c.exit_code);
    return Status(Code::kStageFailed, label + " " + how + " without reporting a result; stderr: " +
                                          util::Trim(util::Tail(c.err, 300)));
  }

 private:
  const AuditEnvironment& env_;
  fs::path runner_;
  std::vector<fs::path> libraries_;
};

// The baseline: every stage in a fresh subprocess under fixed conditions,
// recording the request each stage got.
class BaselineExecutor final : public StageExecutor {
 public:
  BaselineExecutor(const ChildRunner& runner, Conditions cond)
      : runner_(runner), cond_(std::move(cond)) {}
  std::string_view name() const override { return "subprocess"; }
  Result<RunStats> Run(const StageRequest& request, const StageOptions& options) override {
    StageRequest req = request;
    req.threads = kBaselineThreads;
    {
      std::lock_guard<std::mutex> lock(mu_);
      requests_[req.instance] = req;
    }
    return runner_.Run(req, options, cond_);
  }
  std::map<std::string, StageRequest> requests() const {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }

 private:
  const ChildRunner& runner_;
  Conditions cond_;
  mutable std::mutex mu_;
  std::map<std::string, StageRequest> requests_;
};

// Gives every stage the baseline's thread count, so that the whole-pipeline
// runs differ from the baseline only in what they are meant to.
class FixedThreadsExecutor final : public StageExecutor {
 public:
  FixedThreadsExecutor(StageExecutor& inner, int threads) : inner_(inner), threads_(threads) {}
  std::string_view name() const override { return inner_.name(); }
  Result<RunStats> Run(const StageRequest& request, const StageOptions& options) override {
    StageRequest req = request;
    req.threads = threads_;
    return inner_.Run(req, options);
  }

 private:
  StageExecutor& inner_;
  int threads_;
};

// The perturbations, in the order of kAuditPerturbations (and of every
// StageAudit's findings).
enum class Perturbation : std::size_t {
  kRepeat,
  kCwd,
  kPaths,
  kEnv,
  kTzLocale,
  kThreads,
  kMemoryLayout,
  kClock,
  kOrder,
  kExecutor,
};
constexpr Perturbation kAllPerturbations[] = {Perturbation::kRepeat,       Perturbation::kCwd,
                                              Perturbation::kPaths,        Perturbation::kEnv,
                                              Perturbation::kTzLocale,     Perturbation::kThreads,
                                              Perturbation::kMemoryLayout, Perturbation::kClock,
                                              Perturbation::kOrder,        Perturbation::kExecutor};
static_assert(std::size(kAllPerturbations) == std::size(kAuditPerturbations),
              "one Perturbation per name in kAuditPerturbations");

// The perturbation's name in findings and reports.
const char* NameOf(Perturbation p) { return kAuditPerturbations[static_cast<std::size_t>(p)]; }

// The stage's finding for a perturbation (every StageAudit of RunAudit has one).
AuditFinding& FindingOf(StageAudit& a, Perturbation p) { return *a.Find(NameOf(p)); }
// One perturbed run of one stage.
struct Job {
  std::size_t stage = 0;  // index into the audited stages
  Perturbation perturbation = Perturbation::kRepeat;
  std::string label;  // for --keep file names: "threads-1"
  StageRequest request;
  Conditions cond;
  std::string setup_error;  // the audit could not prepare the run
  Status status;
  fs::path output;
};

// The work directory: removed at the end, whatever happens.
class WorkDir {
 public:
  WorkDir() = default;
  WorkDir(const WorkDir&) = delete;
  WorkDir& operator=(const WorkDir&) = delete;
  ~WorkDir() {
    if (!path_.empty()) {
      std::error_code ec;
      fs::remove_all(path_, ec);
    }
  }
  Status Create(const fs::path& root_in) {
    std::error_code ec;
    fs::path root = root_in.empty() ? fs::temp_directory_path(ec) : root_in;
    if (ec) root = "/tmp";
    std::string templ = (fs::absolute(root, ec) / "stagekit-audit-XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) {
      return Status(Code::kOutputError, "cannot create a work directory under '" + root.string() +
                                            "': " + std::strerror(errno) +
                                            "; set TMPDIR to a writable directory");
    }
    path_ = templ;
    return OkStatus();
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Chooses a directory name of a fixed width, so that every run's paths are as
// long as the baseline's and the requests allocate the same sizes.
std::string RunDirName(char prefix, std::size_t id, int width) {
  std::string digits = std::to_string(id);
  return std::string(1, prefix) +
         std::string(static_cast<std::size_t>(width) - digits.size(), '0') + digits;
}

// Whether `bytes` contains a path, directory or file name of the request's
// inputs or output.
bool MentionsPaths(const std::string& bytes, const StageRequest& req) {
  std::vector<fs::path> paths;
  for (const auto& [name, path] : req.inputs) paths.push_back(path);
  paths.push_back(req.output);
  for (const fs::path& p : paths) {
    for (const std::string& s : {p.string(), p.parent_path().string(), p.filename().string()}) {
      if (s.size() > 1 && bytes.find(s) != std::string::npos) return true;
    }
  }
  return false;
}

// Compares a finished run's output with a reference file.
void Judge(AuditFinding& f, const fs::path& reference, const Status& run_status,
           const fs::path& run_output) {
  if (run_status.code() == Code::kInfeasible) {
    // Says nothing about determinism: the executor cannot place the stage
    // (e.g. it asks for more CPUs than this Ray cluster has).
    f.result = "not_run";
    f.error = "could not run on this executor: " + FirstLines(run_status.message());
    return;
  }
  if (!run_status.ok()) {
    f.result = "failed";
    f.error = FirstLines(run_status.message());
    return;
  }
  Result<std::string> a = util::ReadFile(reference);
  Result<std::string> b = util::ReadFile(run_output);
  if (!a.ok() || !b.ok()) {
    f.result = "failed";
    f.error = !a.ok() ? a.status().message() : b.status().message();
    return;
  }
  f.diff = CompareBytes(*a, *b);
  f.result = f.diff ? "differs" : "same";
}

}  // namespace

// ---------------------------------------------------------------------------
// The audit

namespace {

// What the steps of one audit share: its inputs, the machine, and where in
// the work directory the runs go.
struct Audit {
  const Pipeline& pipeline;
  const AuditOptions& options;
  const AuditEnvironment& env;
  const std::vector<std::size_t>& audited;  // indices into pipeline.stages, in order
  const fs::path& work;                     // the work directory
  const ChildRunner& child;
  int width;        // of run directory names
  fs::path outs;    // every run's output directory is under it
  Conditions base;  // the baseline's conditions

  // Passes one line of progress to options.log.
  void Log(const std::string& line) const {
    if (options.log) options.log(line);
  }
  // The k-th audited stage.
  const PipelineStage& Stage(std::size_t k) const { return pipeline.stages[audited[k]]; }
  // A run's output directory.
  fs::path RunDir(char prefix, std::size_t id) const {
    return outs / RunDirName(prefix, id, width);
  }
  // Where the baseline (and then each whole-pipeline run) writes its outputs.
  fs::path BaselineDir() const { return RunDir('b', 0); }
  // Stage i's output in a run's output directory.
  fs::path OutputOf(const fs::path& dir, std::size_t i) const {
    return dir / pipeline.stages[i].output;
  }
};

// The indices of the stages to audit (those of --stage, or all), in pipeline order.
Result<std::vector<std::size_t>> SelectStages(const Pipeline& pipeline,
                                              const std::vector<std::string>& only) {
  for (const std::string& name : only) {
    if (pipeline.Find(name) == nullptr) {
      std::string names;
      for (const PipelineStage& st : pipeline.stages)
        names += (names.empty() ? "" : ", ") + st.name;
      return Status(Code::kUsage, "--stage '" + name + "' is not a stage of pipeline '" +
                                      pipeline.name + "'; its stages are: " + names);
    }
  }
  std::vector<std::size_t> audited;
  for (std::size_t i = 0; i < pipeline.stages.size(); ++i) {
    const std::string& n = pipeline.stages[i].name;
    if (only.empty() || std::find(only.begin(), only.end(), n) != only.end()) {
      audited.push_back(i);
    }
  }
  return audited;
}

// Refuses a --keep directory that exists and is not empty.
Status CheckKeepDirectory(const fs::path& keep) {
  std::error_code ec;
  if (!keep.empty() && fs::exists(keep, ec) &&
      (!fs::is_directory(keep, ec) || !fs::is_empty(keep, ec))) {
    return Status(Code::kUsage, "--keep '" + keep.string() +
                                    "' exists and is not an empty directory; name a new one");
  }
  return OkStatus();
}

// The width of run directory names: enough digits for every run of the audit.
int RunDirWidth(std::size_t audited_stages) {
  const std::size_t runs_per_stage = 11;
  return static_cast<int>(std::to_string(audited_stages * runs_per_stage + 1).size());
}

// The baseline's conditions (ASLR off, fixed threads, its own working
// directory, which this creates).
Conditions BaselineConditions(const fs::path& work) {
  Conditions base;
  base.aslr = Aslr::kOff;
  base.env_set = {"OMP_NUM_THREADS=" + std::to_string(kBaselineThreads)};
  base.cwd = (work / "c" / "base").string();
  std::error_code ec;
  fs::create_directories(base.cwd, ec);
  return base;
}

// The baseline run and the request each stage got in it.
struct Baseline {
  RunResult run;
  std::map<std::string, StageRequest> requests;  // by stage instance
};

// Step 1: runs the whole pipeline, each stage in a fresh subprocess under the
// baseline's conditions; fails when the pipeline fails.
Result<Baseline> RunBaseline(const Audit& audit) {
  audit.Log(
      "audit: baseline run of " + std::to_string(audit.pipeline.stages.size()) +
      " stages (subprocess, " +
      (audit.env.aslr_off ? "ASLR off with " + audit.env.aslr_off_how : std::string("ASLR on")) +
      ")");
  BaselineExecutor executor(audit.child, audit.base);
  RunOptions run_options;
  run_options.cancel = &util::ProcessCancel();
  run_options.jobs = std::max(1, audit.options.jobs);
  run_options.observer = audit.options.observer;
  Baseline baseline;
  baseline.run = RunPipeline(audit.pipeline, audit.BaselineDir(), executor, run_options);
  const RunResult& r = baseline.run;
  if (!r.status.ok()) {
    return Status(r.status.code(),
                  "the audit's baseline run failed" +
                      (r.failed_stage.empty() ? "" : " at stage '" + r.failed_stage + "'") + ": " +
                      r.status.message() +
                      "; fix the pipeline so that `stagekit run` succeeds first");
  }
  baseline.requests = executor.requests();
  return baseline;
}

// One StageAudit per audited stage, each finding not run yet and to be
// compared with the baseline.
std::vector<StageAudit> NewStageAudits(const Audit& audit) {
  std::vector<StageAudit> stages;
  for (std::size_t i : audit.audited) {
    const PipelineStage& st = audit.pipeline.stages[i];
    StageAudit a;
    a.name = st.name;
    a.stage = st.stage;
    a.output = st.output;
    for (const char* p : kAuditPerturbations) {
      AuditFinding f;
      f.perturbation = p;
      f.against = "baseline";
      a.findings.push_back(f);
    }
    stages.push_back(std::move(a));
  }
  return stages;
}

// Adds the per-stage runs of one audited stage to `jobs`.
struct JobMaker {
  const Audit& audit;
  std::vector<Job>& jobs;
  std::size_t& next_id;         // numbers the runs' output directories
  std::size_t k;                // the audited stage
  const StageRequest& request;  // its baseline request

  // Adds a run with the baseline's request and conditions and an output
  // directory of its own, for the caller to perturb.
  Job& Add(Perturbation perturbation, const std::string& label) const {
    Job job;
    job.stage = k;
    job.perturbation = perturbation;
    job.label = label;
    job.request = request;
    job.cond = audit.base;
    const fs::path dir = audit.RunDir('r', next_id++);
    job.request.output = dir / audit.Stage(k).output;
    std::error_code ec;
    fs::create_directories(job.request.output.parent_path(), ec);
    job.output = job.request.output;
    jobs.push_back(std::move(job));
    return jobs.back();
  }
};

// paths: the inputs under other names (hard links, or copies) and the output
// renamed, in other directories.
void AddPathsRun(const JobMaker& make) {
  Job& job = make.Add(Perturbation::kPaths, "paths");
  const fs::path dir = make.audit.work / "p" / std::to_string(make.next_id);
  std::error_code ec;
  fs::create_directories(dir / "moved-inputs", ec);
  fs::create_directories(dir / "moved-output", ec);
  std::size_t n = 0;
  for (auto& [name, path] : job.request.inputs) {
    const fs::path copy = dir / "moved-inputs" / ("renamed-" + std::to_string(n++) + ".data");
    // Another name for the same bytes; a copy where a link cannot be made.
    fs::create_hard_link(path, copy, ec);
    if (ec) fs::copy_file(path, copy, fs::copy_options::overwrite_existing, ec);
    if (ec) {
      job.setup_error =
          "cannot copy input '" + name + "' to " + copy.string() + ": " + ec.message();
    }
    path = copy;
  }
  job.request.output = dir / "moved-output" / "renamed-output.result";
  job.output = job.request.output;
}

// env: another HOME, USER, LOGNAME and TMPDIR, and unrelated variables.
void AddEnvRun(const JobMaker& make) {
  Job& job = make.Add(Perturbation::kEnv, "env");
  const fs::path home = make.audit.work / "e" / "home-of-someone-else";
  const fs::path tmp = make.audit.work / "e" / "another-tmp";
  std::error_code ec;
  fs::create_directories(home, ec);
  fs::create_directories(tmp, ec);
  for (const std::string& e : {"HOME=" + home.string(), std::string("USER=stagekit-audit"),
                               std::string("LOGNAME=stagekit-audit"), "TMPDIR=" + tmp.string(),
                               std::string("STAGEKIT_AUDIT_UNRELATED=an unrelated variable"),
                               std::string("EDITOR=ed"), std::string("PAGER=more")}) {
    job.cond.env_set.push_back(e);
  }
}

// tz-locale: another TZ and, when one is installed, another locale.
void AddTzLocaleRun(const JobMaker& make) {
  const AuditEnvironment& env = make.audit.env;
  Job& job = make.Add(Perturbation::kTzLocale, "tz-locale");
  job.cond.env_set.push_back("TZ=" + env.tz_perturbed);
  if (!env.locale_perturbed.empty()) {
    job.cond.env_set.push_back("LC_ALL=" + env.locale_perturbed);
    job.cond.env_set.push_back("LANG=" + env.locale_perturbed);
  }
}

// clock: two runs under libfaketime, at kClockA and at kClockB.
void AddClockRuns(const JobMaker& make) {
  const std::string clock_env = make.audit.env.faketime.string();
  for (const char* when : {kClockA, kClockB}) {
    Job& job =
        make.Add(Perturbation::kClock, std::string("clock-") + std::string(when).substr(0, 4));
    std::string preload = Env("LD_PRELOAD");
    job.cond.env_set.push_back("LD_PRELOAD=" + clock_env + (preload.empty() ? "" : ":" + preload));
    job.cond.env_set.push_back(std::string("FAKETIME=@") + when);
    job.cond.env_set.push_back("FAKETIME_DONT_FAKE_MONOTONIC=1");
    // A sanitizer-built runner would otherwise refuse a preloaded library.
    const std::string asan = Env("ASAN_OPTIONS");
    job.cond.env_set.push_back("ASAN_OPTIONS=" + asan + (asan.empty() ? "" : ":") +
                               "verify_asan_link_order=0");
  }
}

// Step 2a: plans every audited stage's runs alone under each per-stage
// perturbation this machine allows, on the baseline's inputs.
std::vector<Job> PlanPerStageRuns(const Audit& audit,
                                  const std::map<std::string, StageRequest>& requests) {
  std::vector<Job> jobs;
  std::size_t next_id = 1;
  const fs::path elsewhere = audit.work / "elsewhere" / "another" / "cwd";
  std::error_code ec;
  for (std::size_t k = 0; k < audit.audited.size(); ++k) {
    const JobMaker make{audit, jobs, next_id, k, requests.at(audit.Stage(k).name)};
    make.Add(Perturbation::kRepeat, "repeat");
    make.Add(Perturbation::kCwd, "cwd").cond.cwd = elsewhere.string();
    fs::create_directories(elsewhere, ec);
    AddPathsRun(make);
    AddEnvRun(make);
    AddTzLocaleRun(make);
    for (int t : kOtherThreads) {
      Job& job = make.Add(Perturbation::kThreads, "threads-" + std::to_string(t));
      job.request.threads = t;
      job.cond.env_set = {"OMP_NUM_THREADS=" + std::to_string(t)};
    }
    if (audit.env.aslr_on) {
      for (int r = 1; r <= 2; ++r) {
        make.Add(Perturbation::kMemoryLayout, "memory-layout-" + std::to_string(r)).cond.aslr =
            Aslr::kOn;
      }
    }
    if (!audit.env.faketime.empty()) AddClockRuns(make);
  }
  return jobs;
}

// Step 2b: runs the planned jobs, options.jobs at once, until all are done or
// the audit is interrupted; each job's status records how it went.
void RunPerStageRuns(const Audit& audit, std::vector<Job>& jobs) {
  audit.Log("audit: " + std::to_string(jobs.size()) + " perturbed runs of " +
            std::to_string(audit.audited.size()) + " stages");
  std::mutex mu;
  std::size_t next = 0;
  auto worker = [&] {
    for (;;) {
      std::size_t j;
      {
        std::lock_guard<std::mutex> lock(mu);
        if (next >= jobs.size() || util::Interrupted()) return;
        j = next++;
      }
      Job& job = jobs[j];
      if (!job.setup_error.empty()) continue;
      const PipelineStage& st = audit.Stage(job.stage);
      Result<RunStats> stats = audit.child.Run(job.request, st.options, job.cond);
      job.status = stats.status();
    }
  };
  const std::size_t n = std::max<std::size_t>(
      1, std::min<std::size_t>(static_cast<std::size_t>(std::max(audit.options.jobs, 1)),
                               jobs.size()));
  util::RunOnThreads(n, [&](std::size_t) { worker(); });
}

// The per-stage runs of each audited stage and perturbation, in planned order.
class RunsByPerturbation {
 public:
  explicit RunsByPerturbation(const std::vector<Job>& jobs) {
    for (const Job& job : jobs) by_[{job.stage, job.perturbation}].push_back(&job);
  }
  // Empty for a perturbation without per-stage runs.
  const std::vector<const Job*>& Of(std::size_t k, Perturbation p) const {
    static const std::vector<const Job*> kNone;
    auto it = by_.find({k, p});
    return it == by_.end() ? kNone : it->second;
  }

 private:
  std::map<std::pair<std::size_t, Perturbation>, std::vector<const Job*>> by_;
};

// Describes what a per-stage perturbation changed; false, with the finding
// unavailable, when this machine cannot apply it.
bool DescribePerStageRun(AuditFinding& f, Perturbation p, const AuditEnvironment& env) {
  switch (p) {
    case Perturbation::kRepeat:
      f.variant = "the same run again";
      break;
    case Perturbation::kCwd:
      f.variant = "working directory moved";
      break;
    case Perturbation::kPaths:
      f.variant = "inputs and output renamed and moved";
      break;
    case Perturbation::kEnv:
      f.variant = "HOME, USER, LOGNAME, TMPDIR changed, unrelated variables added";
      break;
    case Perturbation::kTzLocale:
      f.variant = "TZ " + (env.tz_baseline.empty() ? std::string("unset") : env.tz_baseline) +
                  " -> " + env.tz_perturbed;
      f.variant += env.locale_perturbed.empty()
                       ? ", locale unchanged (no other locale installed)"
                       : ", LC_ALL/LANG " + env.locale_baseline + " -> " + env.locale_perturbed;
      break;
    case Perturbation::kThreads:
      f.variant = "threads " + std::to_string(kBaselineThreads) + " -> 1 and 3 (ctx.threads(), " +
                  "OMP_NUM_THREADS)";
      break;
    case Perturbation::kMemoryLayout:
      f.variant = "ASLR on (baseline: " + std::string(env.aslr_off ? "off" : "on") + "), twice";
      if (!env.aslr_on) {
        f.result = "unavailable";
        f.error = env.aslr_on_problem;
        return false;
      }
      break;
    case Perturbation::kClock:
      f.variant = std::string("clock at ") + kClockA + " vs " + kClockB + " (libfaketime)";
      f.against = std::string("the same stage with the clock at ") + kClockA;
      if (env.faketime.empty()) {
        f.result = "unavailable";
        f.error =
            "libfaketime is not installed: apt-get install libfaketime (or set "
            "STAGEKIT_LIBFAKETIME to libfaketime.so.1)";
        return false;
      }
      break;
    case Perturbation::kOrder:
    case Perturbation::kExecutor:
      break;
  }
  return true;
}

// Judges one per-stage finding from its runs: the first run whose output
// differs from the baseline's `reference` (clock: the second run against the first).
void JudgePerStageFinding(AuditFinding& f, Perturbation p, const std::vector<const Job*>& runs,
                          const fs::path& reference, const StageRequest& baseline_request) {
  for (const Job* job : runs) {
    if (!job->setup_error.empty()) {
      f.result = "unavailable";
      f.error = job->setup_error;
      return;
    }
  }
  if (p == Perturbation::kClock) {
    Judge(f, runs[0]->output, runs[0]->status.ok() ? runs[1]->status : runs[0]->status,
          runs[1]->output);
    if (f.Changed()) f.kept = runs[1]->label;
    return;
  }
  if (p == Perturbation::kPaths && runs[0]->status.ok()) {
    Result<std::string> before = util::ReadFile(reference);
    Result<std::string> after = util::ReadFile(runs[0]->output);
    f.shows_paths = (before.ok() && MentionsPaths(*before, baseline_request)) ||
                    (after.ok() && MentionsPaths(*after, runs[0]->request));
  }
  for (const Job* job : runs) {
    Judge(f, reference, job->status, job->output);
    if (f.Changed()) {
      f.kept = job->label;
      if (runs.size() > 1) f.variant += "; differs with " + job->label;
      break;
    }
  }
}

// Step 2c: the verdicts of the per-stage runs, for every audited stage.
void JudgePerStageRuns(const Audit& audit, const Baseline& baseline, const RunsByPerturbation& by,
                       std::vector<StageAudit>& stages) {
  for (std::size_t k = 0; k < audit.audited.size(); ++k) {
    StageAudit& a = stages[k];
    const fs::path reference = baseline.run.stages[audit.audited[k]].output;
    for (Perturbation p : kAllPerturbations) {
      if (p == Perturbation::kOrder || p == Perturbation::kExecutor) continue;
      AuditFinding& f = FindingOf(a, p);
      if (!DescribePerStageRun(f, p, audit.env)) continue;
      const std::vector<const Job*>& runs = by.Of(k, p);
      if (runs.empty()) continue;
      JudgePerStageFinding(f, p, runs, reference, baseline.requests.at(a.name));
    }
  }
}

// Where the whole-pipeline runs left their outputs.
struct WholeRuns {
  fs::path base_ref;     // the baseline's outputs, moved aside
  fs::path exec_dir;     // the executor run
  fs::path order_dir;    // the order run
  fs::path control_out;  // the run the order run is compared with
};

// One whole-pipeline run in this process with the baseline's output paths
// and thread count; its outputs then move to `keep_as`.
RunResult RunWhole(const Audit& audit, StageExecutor& executor, int jobs, std::uint64_t seed,
                   const fs::path& keep_as) {
  FixedThreadsExecutor fixed(executor, kBaselineThreads);
  RunOptions o;
  o.cancel = &util::ProcessCancel();
  o.jobs = jobs;
  o.order_seed = seed;
  RunResult r = RunPipeline(audit.pipeline, audit.BaselineDir(), fixed, o);
  std::error_code ec;
  fs::rename(audit.BaselineDir(), keep_as, ec);
  return r;
}

// Judges perturbation p of every audited stage from a whole-pipeline run `r`
// (outputs in `dir`) against `reference_dir`, made by `reference_run` (null: the baseline).
void JudgeWhole(const Audit& audit, Perturbation p, const RunResult& r, const fs::path& dir,
                const fs::path& reference_dir, const RunResult* reference_run,
                std::vector<StageAudit>& stages) {
  for (std::size_t k = 0; k < audit.audited.size(); ++k) {
    const std::size_t i = audit.audited[k];
    AuditFinding& f = FindingOf(stages[k], p);
    const StageOutcome& o = r.stages[i];
    if (reference_run != nullptr && reference_run->stages[i].state != StageState::kSucceeded) {
      f.result = "not_run";
      f.error = "the control run did not produce this stage's output";
      continue;
    }
    if (o.state == StageState::kNotRun || o.state == StageState::kPending) {
      f.result = "not_run";
      f.error = "not run: stage '" + r.failed_stage + "' failed first";
      continue;
    }
    Judge(f, audit.OutputOf(reference_dir, i),
          o.state == StageState::kSucceeded ? OkStatus() : o.status, audit.OutputOf(dir, i));
    if (f.Changed()) f.kept = NameOf(p);
  }
}

// Step 3b: executor: the whole pipeline under the other executor, against the
// baseline. Returns the run, the order run's control when it is in-process.
RunResult CheckExecutor(const Audit& audit, StageExecutor& other, AuditReport& report,
                        WholeRuns& dirs) {
  dirs.exec_dir = audit.RunDir('x', 0);
  RunResult exec_run = RunWhole(audit, other, 1, 0, dirs.exec_dir);
  JudgeWhole(audit, Perturbation::kExecutor, exec_run, dirs.exec_dir, dirs.base_ref, nullptr,
             report.stages);
  for (StageAudit& a : report.stages) {
    AuditFinding& f = FindingOf(a, Perturbation::kExecutor);
    f.variant = report.other_executor + " instead of subprocess (whole pipeline, -j 1)";
  }
  return exec_run;
}

// Step 3c: order: the whole pipeline in process with the ready stages
// shuffled, against an in-process run in pipeline order, so that only the
// order (and the sharing of one process) differs.
void CheckOrder(const Audit& audit, StageExecutor& inprocess, const RunResult& exec_run,
                AuditReport& report, WholeRuns& dirs) {
  const fs::path control_dir = audit.RunDir('y', 0);
  const RunResult* control = &exec_run;
  dirs.control_out = dirs.exec_dir;
  RunResult control_run;
  if (report.other_executor != "inprocess") {
    control_run = RunWhole(audit, inprocess, 1, 0, control_dir);
    control = &control_run;
    dirs.control_out = control_dir;
  }
  dirs.order_dir = audit.RunDir('z', 0);
  const int order_jobs = std::max(2, audit.options.jobs);
  RunResult order_run =
      RunWhole(audit, inprocess, order_jobs, audit.options.order_seed, dirs.order_dir);
  JudgeWhole(audit, Perturbation::kOrder, order_run, dirs.order_dir, dirs.control_out, control,
             report.stages);
  for (StageAudit& a : report.stages) {
    AuditFinding& f = FindingOf(a, Perturbation::kOrder);
    f.variant = "ready stages shuffled (seed " + std::to_string(audit.options.order_seed) +
                "), -j " + std::to_string(order_jobs) + ", after another run in the same process";
    f.against = "an in-process run in pipeline order, -j 1";
  }
}

// Step 3: the whole-pipeline runs (executor, order) in this process, in the
// baseline's working directory and with its output paths (the baseline moves
// aside to a name of the same length).
Result<WholeRuns> RunWholePipelineChecks(const Audit& audit, AuditReport& report) {
  WholeRuns dirs;
  std::error_code ec;
  dirs.base_ref = audit.RunDir('B', 0);
  fs::rename(audit.BaselineDir(), dirs.base_ref, ec);
  if (ec) return Status(Code::kInternal, "audit: cannot move the baseline aside: " + ec.message());
  // Process-wide: in-process stages see the baseline's working directory.
  const fs::path old_cwd = fs::current_path(ec);
  fs::current_path(audit.base.cwd, ec);
  InProcessExecutor inprocess;
  StageExecutor& other =
      audit.options.other_executor != nullptr ? *audit.options.other_executor : inprocess;
  report.other_executor = std::string(other.name());
  audit.Log("audit: whole-pipeline runs (executor: " + report.other_executor +
            "; order: in-process, -j " + std::to_string(std::max(2, audit.options.jobs)) +
            ", shuffled)");
  const RunResult exec_run = CheckExecutor(audit, other, report, dirs);
  CheckOrder(audit, inprocess, exec_run, report, dirs);
  fs::current_path(old_cwd, ec);
  return dirs;
}

// Copies files into the --keep directory until one copy fails.
struct KeptCopier {
  std::error_code& ec;  // why the failed copy failed
  bool ok = true;

  // Copies `from` to `to` (creating its directory) unless an earlier copy failed.
  void Copy(const fs::path& from, const fs::path& to) {
    if (!ok) return;
    fs::create_directories(to.parent_path(), ec);
    fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
    ok = !ec;
  }
};

// Copies stage k's baseline output and its differing outputs (with the
// order run's control and the first clock run) under tmp/<stage>, and records
// in each finding's `kept` where its output went.
void KeepStageOutputs(const Audit& audit, std::size_t k, StageAudit& a, const fs::path& tmp,
                      const WholeRuns& dirs, const RunsByPerturbation& by, KeptCopier& copier) {
  const std::size_t i = audit.audited[k];
  const fs::path dir = tmp / a.name;
  const std::string ext = fs::path(a.output).extension().string();
  copier.Copy(audit.OutputOf(dirs.base_ref, i), dir / ("baseline" + ext));
  for (Perturbation p : kAllPerturbations) {
    AuditFinding& f = FindingOf(a, p);
    if (!f.Changed() || f.result != "differs") continue;
    fs::path from;
    if (p == Perturbation::kExecutor) from = audit.OutputOf(dirs.exec_dir, i);
    if (p == Perturbation::kOrder) {
      from = audit.OutputOf(dirs.order_dir, i);
      copier.Copy(audit.OutputOf(dirs.control_out, i), dir / ("order-control" + ext));
    }
    if (p == Perturbation::kClock) {
      const std::vector<const Job*>& runs = by.Of(k, Perturbation::kClock);
      copier.Copy(runs[0]->output, dir / (runs[0]->label + ext));
    }
    for (const Job* job : by.Of(k, p)) {
      if (job->label == f.kept) from = job->output;
    }
    if (from.empty()) continue;
    f.kept = a.name + "/" + f.kept + ext;
    copier.Copy(from, tmp / f.kept);
  }
}

// Step 4 (--keep): writes the differing outputs and audit.json to a private
// sibling of the --keep directory and renames it into place.
Status KeepDifferingOutputs(const Audit& audit, const WholeRuns& dirs, const RunsByPerturbation& by,
                            AuditReport& report) {
  std::error_code ec;
  fs::path keep = fs::absolute(audit.options.keep, ec);
  fs::create_directories(keep.parent_path(), ec);
  auto made = util::MakePrivateDir(keep.parent_path());
  if (!made.ok()) return made.status();
  const fs::path tmp = *made;
  KeptCopier copier{ec};
  for (std::size_t k = 0; k < audit.audited.size(); ++k) {
    StageAudit& a = report.stages[k];
    if (std::none_of(a.findings.begin(), a.findings.end(),
                     [](const AuditFinding& f) { return f.Changed(); })) {
      continue;
    }
    KeepStageOutputs(audit, k, a, tmp, dirs, by, copier);
  }
  report.kept = keep;
  Json j = report.ToJson();
  std::ofstream(tmp / "audit.json") << j.dump(2) << "\n";
  if (!copier.ok) {
    fs::remove_all(tmp, ec);
    return Status(Code::kOutputError,
                  "cannot write the kept outputs under '" + tmp.string() + "': " + ec.message());
  }
  fs::permissions(tmp, fs::perms(0755), ec);  // made private, kept as any folder
  fs::remove(keep, ec);                       // an empty directory, if any
  fs::rename(tmp, keep, ec);
  if (ec) {
    fs::remove_all(tmp, ec);
    return Status(Code::kOutputError,
                  "cannot move the kept outputs to '" + keep.string() + "': " + ec.message());
  }
  return OkStatus();
}

}  // namespace

Result<AuditReport> RunAudit(const Pipeline& declared, const AuditOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  AuditReport report;
  report.pipeline = declared.name;
  report.file = declared.file;
  // A dynamic foreach's instances (what --stage may name) are known once
  // the baseline has run; the audit then goes on with the pipeline as it
  // ran, its items fixed.
  const bool dynamic = declared.dynamic();
  std::vector<std::size_t> every(declared.stages.size());
  std::iota(every.begin(), every.end(), std::size_t{0});
  Result<std::vector<std::size_t>> audited =
      dynamic ? Result<std::vector<std::size_t>>(every) : SelectStages(declared, options.only);
  if (!audited.ok()) return audited.status();
  if (Status s = CheckKeepDirectory(options.keep); !s.ok()) return s;

  report.env = DetectAuditEnvironment();
  WorkDir work;
  if (Status s = work.Create(options.work_root); !s.ok()) return s;
  const fs::path runner = options.runner.empty() ? stagekit::DefaultRunner() : options.runner;
  const ChildRunner child(report.env, runner, options.libraries);
  // (Run folders are named with as many digits as the runs need; with a
  // dynamic foreach, as many as its largest expansion could need.)
  const int width =
      RunDirWidth(dynamic ? declared.stages.size() + kMaxForeachItems : audited->size());
  const Audit first{declared, options,           report.env,
                    *audited, work.path(),       child,
                    width,    work.path() / "o", BaselineConditions(work.path())};

  // 1. The baseline.
  Result<Baseline> baseline = RunBaseline(first);
  if (!baseline.ok()) return baseline.status();
  const Pipeline& pipeline = baseline->run.Ran(declared);
  if (dynamic) {
    audited = SelectStages(pipeline, options.only);
    if (!audited.ok()) return audited.status();
  }
  const Audit audit{pipeline, options, report.env,        *audited,  work.path(),
                    child,    width,   work.path() / "o", first.base};
  report.stages = NewStageAudits(audit);

  // 2. Every stage again, alone, under each perturbation, on the baseline's inputs.
  std::vector<Job> jobs = PlanPerStageRuns(audit, baseline->requests);
  RunPerStageRuns(audit, jobs);
  if (util::Interrupted()) return Status(Code::kInterrupted, "the audit was interrupted");
  const RunsByPerturbation by(jobs);
  JudgePerStageRuns(audit, *baseline, by, report.stages);

  // 3. Whole-pipeline runs in this process: executor and order.
  Result<WholeRuns> whole = RunWholePipelineChecks(audit, report);
  if (!whole.ok()) return whole.status();
  if (util::Interrupted()) return Status(Code::kInterrupted, "the audit was interrupted");

  for (StageAudit& a : report.stages) Attribute(a);

  // 4. --keep: the differing outputs, written to a sibling and renamed into place.
  if (!options.keep.empty() && report.Nondeterministic() > 0) {
    if (Status s = KeepDifferingOutputs(audit, *whole, by, report); !s.ok()) return s;
  }
  report.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

// ---------------------------------------------------------------------------
// Reporting

std::size_t AuditReport::Nondeterministic() const {
  return static_cast<std::size_t>(std::count_if(
      stages.begin(), stages.end(), [](const StageAudit& s) { return !s.blamed.empty(); }));
}

std::string AuditReport::Summary() const {
  const std::size_t bad = Nondeterministic();
  if (bad == 0) {
    return "all " + std::to_string(stages.size()) +
           " audited stages produced identical outputs under every perturbation";
  }
  std::string s = std::to_string(bad) + " of " + std::to_string(stages.size()) +
                  " audited stages changed their output under a perturbation that must not "
                  "matter: ";
  bool first = true;
  for (const StageAudit& a : stages) {
    if (a.blamed.empty()) continue;
    s += (first ? "" : ", ") + a.name + " (";
    for (std::size_t i = 0; i < a.blamed.size(); ++i) s += (i ? ", " : "") + a.blamed[i];
    s += ")";
    first = false;
  }
  return s;
}

namespace {

Json FindingJson(const AuditFinding& f) {
  Json j{{"result", f.result}, {"variant", f.variant}, {"against", f.against}};
  if (f.diff) {
    j["offset"] = f.diff->offset;
    j["size_baseline"] = f.diff->size_a;
    j["size_perturbed"] = f.diff->size_b;
    j["excerpt_start"] = f.diff->excerpt_start;
    j["excerpt_baseline"] = f.diff->excerpt_a;
    j["excerpt_perturbed"] = f.diff->excerpt_b;
  }
  if (!f.error.empty()) j["error"] = f.error;
  j["masked_by"] = f.masked_by.empty() ? Json(nullptr) : Json(f.masked_by);
  if (!f.kept.empty()) j["kept"] = f.kept;
  return j;
}

}  // namespace

Json AuditReport::ToJson() const {
  Json perturbations = Json::array();
  auto available = [&](const std::string& p) -> std::pair<bool, std::string> {
    if (p == "memory-layout" && !env.aslr_on) return {false, env.aslr_on_problem};
    if (p == "clock" && env.faketime.empty()) {
      return {false, "libfaketime is not installed: apt-get install libfaketime"};
    }
    if (p == "memory-layout" && !env.aslr_on_problem.empty()) return {true, env.aslr_on_problem};
    if (p == "clock") return {true, "libfaketime at " + env.faketime.string()};
    if (p == "tz-locale" && env.locale_perturbed.empty()) {
      return {true, "TZ only: no locale other than " + env.locale_baseline + " is installed"};
    }
    return {true, ""};
  };
  for (const char* p : kAuditPerturbations) {
    auto [ok, note] = available(p);
    Json entry{{"name", p}, {"available", ok}};
    if (!note.empty()) entry["note"] = note;
    perturbations.push_back(entry);
  }
  Json rows = Json::array();
  for (const StageAudit& a : stages) {
    Json findings = Json::object();
    for (const AuditFinding& f : a.findings) findings[f.perturbation] = FindingJson(f);
    rows.push_back({{"name", a.name},
                    {"stage", a.stage},
                    {"output", a.output},
                    {"deterministic", a.blamed.empty()},
                    {"blamed", a.blamed},
                    {"findings", findings}});
  }
  Json baseline{{"executor", "subprocess"},
                {"aslr_off", env.aslr_off},
                {"threads", kBaselineThreads},
                {"tz", env.tz_baseline.empty() ? Json(nullptr) : Json(env.tz_baseline)},
                {"locale", env.locale_baseline}};
  if (env.aslr_off) {
    baseline["aslr_off_how"] = env.aslr_off_how;
  } else {
    baseline["aslr_off_problem"] = env.aslr_off_problem;
  }
  return Json{{"pipeline", pipeline},
              {"file", file.string()},
              {"status", Nondeterministic() == 0 ? "deterministic" : "nondeterministic"},
              {"summary", Summary()},
              {"baseline", baseline},
              {"other_executor", other_executor},
              {"perturbations", perturbations},
              {"stages", rows},
              {"kept", kept.empty() ? Json(nullptr) : Json(kept.string())},
              {"wall_s", wall_s}};
}

std::string AuditReport::Table() const {
  std::ostringstream out;
  out << "Audit of pipeline '" << pipeline << "': baseline in fresh subprocesses, "
      << kBaselineThreads << " threads, "
      << (env.aslr_off ? "ASLR off (" + env.aslr_off_how + ")"
                       : "ASLR ON: it could not be turned off, " + env.aslr_off_problem +
                             "; address-dependent stages also show up under repeat")
      << "\n";
  std::vector<std::string> unavailable;
  if (!env.aslr_on) unavailable.push_back("memory-layout: " + env.aslr_on_problem);
  if (env.faketime.empty()) {
    unavailable.push_back(
        "clock: libfaketime is not installed (apt-get install libfaketime, or set "
        "STAGEKIT_LIBFAKETIME)");
  }
  for (const std::string& u : unavailable) out << "Not checked: " << u << "\n";
  out << "\n";
  std::size_t width = 5;
  for (const StageAudit& a : stages) width = std::max(width, a.name.size());
  char line[1024];
  std::snprintf(line, sizeof(line), "%-*s  %-9s  %s\n", static_cast<int>(width), "STAGE", "RESULT",
                "CHANGED BY");
  out << line;
  for (const StageAudit& a : stages) {
    std::string by;
    for (const std::string& b : a.blamed) by += (by.empty() ? "" : ", ") + b;
    std::string masked, masked_by;
    for (const AuditFinding& f : a.findings) {
      if (f.masked_by.empty()) continue;
      masked += (masked.empty() ? "" : ", ") + f.perturbation;
      masked_by = f.masked_by;
    }
    if (!masked.empty()) by += " (also " + masked + ": put down to " + masked_by + ")";
    std::snprintf(line, sizeof(line), "%-*s  %-9s  %s", static_cast<int>(width), a.name.c_str(),
                  a.blamed.empty() ? "ok" : "DIFFERS", by.c_str());
    out << util::Trim(line) << "\n";
  }
  bool header = false;
  for (const StageAudit& a : stages) {
    for (const AuditFinding& f : a.findings) {
      if (!f.Changed() || !f.masked_by.empty()) continue;
      if (!header) {
        out << "\nDifferences:\n";
        header = true;
      }
      out << "  " << a.name << " [" << f.perturbation << "] " << f.variant << "\n";
      if (f.result == "failed") {
        out << "      the stage failed: " << f.error << "\n";
        continue;
      }
      const ByteDifference& d = *f.diff;
      out << "      output '" << a.output << "' differs at byte " << d.offset << " (sizes "
          << d.size_a << " and " << d.size_b << "; compared with " << f.against << ")\n";
      const bool clock = f.perturbation == "clock";
      const char* reference = clock                     ? "clock A:   "
                              : f.against == "baseline" ? "baseline:  "
                                                        : "control:   ";
      out << "      " << reference << "\"" << d.excerpt_a << "\"\n";
      out << "      " << (clock ? "clock B:   " : "perturbed: ") << "\"" << d.excerpt_b << "\"\n";
    }
  }
  if (!kept.empty()) out << "\nDiffering outputs kept in " << kept.string() << "\n";
  out << "\n" << Summary() << "\n";
  return out.str();
}

}  // namespace stagekit::analyse
