#include "tools/audit.h"

#include "files.h"

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
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include "paths.h"
#include "process.h"
#include "stagekit/invoke.h"

namespace stagekit::tools {

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
  std::ifstream in(path, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
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

}  // namespace

AuditEnvironment DetectAuditEnvironment() {
  AuditEnvironment env;
  struct utsname u {};
  env.arch = ::uname(&u) == 0 ? u.machine : "x86_64";

  // ASLR off through setarch -R, checked by reading the personality it gives.
  internal::ChildSpec probe;
  probe.argv = {"setarch", env.arch, "-R", "cat", "/proc/self/personality"};
  probe.timeout = std::chrono::seconds(20);
  internal::ChildResult r = internal::RunChild(probe);
  constexpr unsigned long kAddrNoRandomize = 0x0040000;
  if (!r.spawn_status.ok()) {
    env.aslr_off_problem = "setarch (util-linux) cannot be run: " + r.spawn_status.message();
  } else if (!r.exited || r.exit_code != 0) {
    env.aslr_off_problem =
        "`setarch " + env.arch + " -R` was refused: " + Trim(internal::Tail(r.err, 300));
  } else if ((std::strtoul(r.out.c_str(), nullptr, 16) & kAddrNoRandomize) == 0) {
    env.aslr_off_problem = "`setarch " + env.arch + " -R` did not turn address randomisation off";
  } else {
    env.aslr_off = true;
    env.aslr_off_how = "setarch " + env.arch + " -R";
  }

  const std::string va = Trim(ReadSmallFile("/proc/sys/kernel/randomize_va_space"));
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

  // libfaketime, checked by asking date(1) for the year under it.
  std::vector<fs::path> candidates;
  if (std::string own = Env("STAGEKIT_LIBFAKETIME"); !own.empty()) candidates.emplace_back(own);
  for (const std::string& dir :
       {"/usr/lib/" + env.arch + "-linux-gnu/faketime", std::string("/usr/lib/faketime"),
        std::string("/usr/lib64/faketime"), std::string("/usr/local/lib/faketime")}) {
    candidates.push_back(fs::path(dir) / "libfaketime.so.1");
  }
  std::error_code ec;
  for (const fs::path& c : candidates) {
    if (!fs::is_regular_file(c, ec)) continue;
    internal::ChildSpec date;
    date.argv = {"date", "-u", "+%Y"};
    date.env_set = {"LD_PRELOAD=" + c.string(), std::string("FAKETIME=@") + kClockA};
    date.timeout = std::chrono::seconds(20);
    internal::ChildResult d = internal::RunChild(date);
    if (d.exited && d.exit_code == 0 && Trim(d.out) == std::string(kClockA).substr(0, 4)) {
      env.faketime = c;
      break;
    }
  }

  env.tz_baseline = Env("TZ");
  const bool chatham = fs::exists("/usr/share/zoneinfo/Pacific/Chatham", ec);
  // Chatham is UTC+12:45 (+13:45 in summer): a date that is right in UTC is
  // wrong there for most of the day. The POSIX form needs no tzdata.
  env.tz_perturbed = chatham ? "Pacific/Chatham" : "<+1245>-12:45";
  if (env.tz_perturbed == env.tz_baseline) env.tz_perturbed = "America/St_Johns";

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
  return env;
}

// ---------------------------------------------------------------------------
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
    internal::ChildSpec spec;
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
    internal::ChildResult c = internal::RunChild(spec);
    const std::string label = "stage '" + req.instance + "' (" + req.stage + ")";
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
    std::string how = c.term_signal != 0 ? "was killed by " + internal::SignalName(c.term_signal)
                                         : "exited with code " + std::to_string(c.exit_code);
    return Status(Code::kStageFailed, label + " " + how + " without reporting a result; stderr: " +
                                          Trim(internal::Tail(c.err, 300)));
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

// One perturbed run of one stage.
struct Job {
  std::size_t stage = 0;  // index into the audited stages
  std::string perturbation;
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

Result<std::string> ReadAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status(Code::kInputError, "cannot read '" + path.string() + "'");
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
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
  Result<std::string> a = ReadAll(reference);
  Result<std::string> b = ReadAll(run_output);
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

Result<AuditReport> RunAudit(const Pipeline& pipeline, const AuditOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  auto log = [&](const std::string& line) {
    if (options.log) options.log(line);
  };
  AuditReport report;
  report.pipeline = pipeline.name;
  report.file = pipeline.file;

  // Which stages.
  std::vector<std::size_t> audited;
  for (const std::string& name : options.only) {
    if (pipeline.Find(name) == nullptr) {
      std::string names;
      for (const PipelineStage& st : pipeline.stages)
        names += (names.empty() ? "" : ", ") + st.name;
      return Status(Code::kUsage, "--stage '" + name + "' is not a stage of pipeline '" +
                                      pipeline.name + "'; its stages are: " + names);
    }
  }
  for (std::size_t i = 0; i < pipeline.stages.size(); ++i) {
    const std::string& n = pipeline.stages[i].name;
    if (options.only.empty() ||
        std::find(options.only.begin(), options.only.end(), n) != options.only.end()) {
      audited.push_back(i);
    }
  }
  std::error_code ec;
  if (!options.keep.empty() && fs::exists(options.keep, ec) &&
      (!fs::is_directory(options.keep, ec) || !fs::is_empty(options.keep, ec))) {
    return Status(Code::kUsage, "--keep '" + options.keep.string() +
                                    "' exists and is not an empty directory; name a new one");
  }

  report.env = DetectAuditEnvironment();
  const AuditEnvironment& env = report.env;
  WorkDir work;
  if (Status s = work.Create(options.work_root); !s.ok()) return s;
  const fs::path& w = work.path();
  const fs::path runner = options.runner.empty() ? internal::DefaultRunner() : options.runner;
  ChildRunner child(env, runner, options.libraries);

  const std::size_t runs_per_stage = 11;
  const int width = static_cast<int>(std::to_string(audited.size() * runs_per_stage + 1).size());
  const fs::path outs = w / "o";
  const fs::path base_out = outs / RunDirName('b', 0, width);
  Conditions base;
  base.aslr = Aslr::kOff;
  base.env_set = {"OMP_NUM_THREADS=" + std::to_string(kBaselineThreads)};
  base.cwd = (w / "c" / "base").string();
  fs::create_directories(base.cwd, ec);

  // 1. The baseline.
  log("audit: baseline run of " + std::to_string(pipeline.stages.size()) + " stages (subprocess, " +
      (env.aslr_off ? "ASLR off with " + env.aslr_off_how : std::string("ASLR on")) + ")");
  BaselineExecutor baseline(child, base);
  RunOptions run_options;
  run_options.jobs = std::max(1, options.jobs);
  run_options.observer = options.observer;
  RunResult base_run = RunPipeline(pipeline, base_out, baseline, run_options);
  if (!base_run.status.ok()) {
    return Status(
        base_run.status.code(),
        "the audit's baseline run failed" +
            (base_run.failed_stage.empty() ? "" : " at stage '" + base_run.failed_stage + "'") +
            ": " + base_run.status.message() +
            "; fix the pipeline so that `stagekit run` succeeds first");
  }
  const std::map<std::string, StageRequest> requests = baseline.requests();

  for (std::size_t i : audited) {
    const PipelineStage& st = pipeline.stages[i];
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
    report.stages.push_back(std::move(a));
  }

  // 2. Every stage again, alone, under each perturbation, on the baseline's inputs.
  std::vector<Job> jobs;
  std::size_t next_id = 1;
  const std::string clock_env = env.faketime.empty() ? std::string() : env.faketime.string();
  for (std::size_t k = 0; k < audited.size(); ++k) {
    const PipelineStage& st = pipeline.stages[audited[k]];
    const StageRequest& req = requests.at(st.name);
    auto add = [&](const std::string& perturbation, const std::string& label) -> Job& {
      Job job;
      job.stage = k;
      job.perturbation = perturbation;
      job.label = label;
      job.request = req;
      job.cond = base;
      const fs::path dir = outs / RunDirName('r', next_id++, width);
      job.request.output = dir / st.output;
      fs::create_directories(job.request.output.parent_path(), ec);
      job.output = job.request.output;
      jobs.push_back(std::move(job));
      return jobs.back();
    };
    add("repeat", "repeat");
    add("cwd", "cwd").cond.cwd = (w / "elsewhere" / "another" / "cwd").string();
    fs::create_directories(w / "elsewhere" / "another" / "cwd", ec);
    {
      Job& job = add("paths", "paths");
      const fs::path dir = w / "p" / std::to_string(next_id);
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
    {
      Job& job = add("env", "env");
      const fs::path home = w / "e" / "home-of-someone-else";
      const fs::path tmp = w / "e" / "another-tmp";
      fs::create_directories(home, ec);
      fs::create_directories(tmp, ec);
      for (const std::string& e : {"HOME=" + home.string(), std::string("USER=stagekit-audit"),
                                   std::string("LOGNAME=stagekit-audit"), "TMPDIR=" + tmp.string(),
                                   std::string("STAGEKIT_AUDIT_UNRELATED=an unrelated variable"),
                                   std::string("EDITOR=ed"), std::string("PAGER=more")}) {
        job.cond.env_set.push_back(e);
      }
    }
    {
      Job& job = add("tz-locale", "tz-locale");
      job.cond.env_set.push_back("TZ=" + env.tz_perturbed);
      if (!env.locale_perturbed.empty()) {
        job.cond.env_set.push_back("LC_ALL=" + env.locale_perturbed);
        job.cond.env_set.push_back("LANG=" + env.locale_perturbed);
      }
    }
    for (int t : kOtherThreads) {
      Job& job = add("threads", "threads-" + std::to_string(t));
      job.request.threads = t;
      job.cond.env_set = {"OMP_NUM_THREADS=" + std::to_string(t)};
    }
    if (env.aslr_on) {
      for (int r = 1; r <= 2; ++r)
        add("memory-layout", "memory-layout-" + std::to_string(r)).cond.aslr = Aslr::kOn;
    }
    if (!env.faketime.empty()) {
      for (const char* when : {kClockA, kClockB}) {
        Job& job = add("clock", std::string("clock-") + std::string(when).substr(0, 4));
        std::string preload = Env("LD_PRELOAD");
        job.cond.env_set.push_back("LD_PRELOAD=" + clock_env +
                                   (preload.empty() ? "" : ":" + preload));
        job.cond.env_set.push_back(std::string("FAKETIME=@") + when);
        job.cond.env_set.push_back("FAKETIME_DONT_FAKE_MONOTONIC=1");
        // A sanitizer-built runner would otherwise refuse a preloaded library.
        const std::string asan = Env("ASAN_OPTIONS");
        job.cond.env_set.push_back("ASAN_OPTIONS=" + asan + (asan.empty() ? "" : ":") +
                                   "verify_asan_link_order=0");
      }
    }
  }

  log("audit: " + std::to_string(jobs.size()) + " perturbed runs of " +
      std::to_string(audited.size()) + " stages");
  {
    std::mutex mu;
    std::size_t next = 0;
    auto worker = [&] {
      for (;;) {
        std::size_t j;
        {
          std::lock_guard<std::mutex> lock(mu);
          if (next >= jobs.size() || Interrupted()) return;
          j = next++;
        }
        Job& job = jobs[j];
        if (!job.setup_error.empty()) continue;
        const PipelineStage& st = pipeline.stages[audited[job.stage]];
        Result<RunStats> stats = child.Run(job.request, st.options, job.cond);
        job.status = stats.status();
      }
    };
    const std::size_t n = std::max<std::size_t>(
        1, std::min<std::size_t>(static_cast<std::size_t>(std::max(options.jobs, 1)), jobs.size()));
    std::vector<std::thread> pool;
    for (std::size_t t = 1; t < n; ++t) pool.emplace_back(worker);
    worker();
    for (std::thread& t : pool) t.join();
  }
  if (Interrupted()) return Status(Code::kInterrupted, "the audit was interrupted");

  // Verdicts of the per-stage runs.
  std::map<std::pair<std::size_t, std::string>, std::vector<const Job*>> by;
  for (const Job& job : jobs) by[{job.stage, job.perturbation}].push_back(&job);
  for (std::size_t k = 0; k < audited.size(); ++k) {
    StageAudit& a = report.stages[k];
    const fs::path reference = base_run.stages[audited[k]].output;
    for (AuditFinding& f : a.findings) {
      const std::string& p = f.perturbation;
      if (p == "order" || p == "executor") continue;
      if (p == "repeat") f.variant = "the same run again";
      if (p == "cwd") f.variant = "working directory moved";
      if (p == "paths") f.variant = "inputs and output renamed and moved";
      if (p == "env") f.variant = "HOME, USER, LOGNAME, TMPDIR changed, unrelated variables added";
      if (p == "tz-locale") {
        f.variant = "TZ " + (env.tz_baseline.empty() ? std::string("unset") : env.tz_baseline) +
                    " -> " + env.tz_perturbed;
        f.variant += env.locale_perturbed.empty()
                         ? ", locale unchanged (no other locale installed)"
                         : ", LC_ALL/LANG " + env.locale_baseline + " -> " + env.locale_perturbed;
      }
      if (p == "threads") {
        f.variant = "threads " + std::to_string(kBaselineThreads) + " -> 1 and 3 (ctx.threads(), " +
                    "OMP_NUM_THREADS)";
      }
      if (p == "memory-layout") {
        f.variant = "ASLR on (baseline: " + std::string(env.aslr_off ? "off" : "on") + "), twice";
        if (!env.aslr_on) {
          f.result = "unavailable";
          f.error = env.aslr_on_problem;
          continue;
        }
      }
      if (p == "clock") {
        f.variant = std::string("clock at ") + kClockA + " vs " + kClockB + " (libfaketime)";
        f.against = std::string("the same stage with the clock at ") + kClockA;
        if (env.faketime.empty()) {
          f.result = "unavailable";
          f.error =
              "libfaketime is not installed: apt-get install libfaketime (or set "
              "STAGEKIT_LIBFAKETIME to libfaketime.so.1)";
          continue;
        }
      }
      auto it = by.find({k, p});
      if (it == by.end()) continue;
      const std::vector<const Job*>& runs = it->second;
      for (const Job* job : runs) {
        if (!job->setup_error.empty()) {
          f.result = "unavailable";
          f.error = job->setup_error;
          break;
        }
      }
      if (f.result == "unavailable") continue;
      if (p == "clock") {
        Judge(f, runs[0]->output, runs[0]->status.ok() ? runs[1]->status : runs[0]->status,
              runs[1]->output);
        if (f.Changed()) f.kept = runs[1]->label;
        continue;
      }
      if (p == "paths" && runs[0]->status.ok()) {
        Result<std::string> before = ReadAll(reference);
        Result<std::string> after = ReadAll(runs[0]->output);
        f.shows_paths = (before.ok() && MentionsPaths(*before, requests.at(a.name))) ||
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
  }

  // 3. Whole-pipeline runs in this process, with the baseline's output paths
  // (the baseline moves aside to a name of the same length).
  const fs::path base_ref = outs / RunDirName('B', 0, width);
  fs::rename(base_out, base_ref, ec);
  if (ec) return Status(Code::kInternal, "audit: cannot move the baseline aside: " + ec.message());
  auto ref_of = [&](const fs::path& dir, std::size_t i) { return dir / pipeline.stages[i].output; };
  const fs::path old_cwd = fs::current_path(ec);
  fs::current_path(base.cwd, ec);
  InProcessExecutor inprocess;
  StageExecutor& other = options.other_executor != nullptr ? *options.other_executor : inprocess;
  report.other_executor = std::string(other.name());

  auto whole_run = [&](StageExecutor& ex, int jobs_n, std::uint64_t seed, const fs::path& keep_as) {
    FixedThreadsExecutor fixed(ex, kBaselineThreads);
    RunOptions o;
    o.jobs = jobs_n;
    o.order_seed = seed;
    RunResult r = RunPipeline(pipeline, base_out, fixed, o);
    fs::rename(base_out, keep_as, ec);
    return r;
  };
  auto judge_whole = [&](const std::string& p, const RunResult& r, const fs::path& dir,
                         const fs::path& reference_dir, const RunResult* reference_run) {
    for (std::size_t k = 0; k < audited.size(); ++k) {
      const std::size_t i = audited[k];
      AuditFinding& f = *report.stages[k].Find(p);
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
      Judge(f, ref_of(reference_dir, i), o.state == StageState::kSucceeded ? OkStatus() : o.status,
            ref_of(dir, i));
      if (f.Changed()) f.kept = p;
    }
  };

  log("audit: whole-pipeline runs (executor: " + report.other_executor +
      "; order: in-process, -j " + std::to_string(std::max(2, options.jobs)) + ", shuffled)");
  const fs::path exec_dir = outs / RunDirName('x', 0, width);
  RunResult exec_run = whole_run(other, 1, 0, exec_dir);
  judge_whole("executor", exec_run, exec_dir, base_ref, nullptr);
  for (StageAudit& a : report.stages) {
    AuditFinding& f = *a.Find("executor");
    f.variant = report.other_executor + " instead of subprocess (whole pipeline, -j 1)";
  }
  // The order run is compared with an in-process run in pipeline order, so
  // that only the order (and the sharing of one process) differs.
  const fs::path control_dir = outs / RunDirName('y', 0, width);
  const RunResult* control = &exec_run;
  fs::path control_out = exec_dir;
  RunResult control_run;
  if (report.other_executor != "inprocess") {
    control_run = whole_run(inprocess, 1, 0, control_dir);
    control = &control_run;
    control_out = control_dir;
  }
  const fs::path order_dir = outs / RunDirName('z', 0, width);
  const int order_jobs = std::max(2, options.jobs);
  RunResult order_run = whole_run(inprocess, order_jobs, options.order_seed, order_dir);
  judge_whole("order", order_run, order_dir, control_out, control);
  for (StageAudit& a : report.stages) {
    AuditFinding& f = *a.Find("order");
    f.variant = "ready stages shuffled (seed " + std::to_string(options.order_seed) + "), -j " +
                std::to_string(order_jobs) + ", after another run in the same process";
    f.against = "an in-process run in pipeline order, -j 1";
  }
  fs::current_path(old_cwd, ec);
  if (Interrupted()) return Status(Code::kInterrupted, "the audit was interrupted");

  for (StageAudit& a : report.stages) Attribute(a);

  // 4. --keep: the differing outputs, written to a sibling and renamed into place.
  if (!options.keep.empty() && report.Nondeterministic() > 0) {
    fs::path keep = fs::absolute(options.keep, ec);
    fs::create_directories(keep.parent_path(), ec);
    auto made = internal::MakePrivateDir(keep.parent_path());
    if (!made.ok()) return made.status();
    const fs::path tmp = *made;
    auto copy = [&](const fs::path& from, const fs::path& to) {
      fs::create_directories(to.parent_path(), ec);
      fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
      return !ec;
    };
    bool ok = true;
    for (std::size_t k = 0; k < audited.size(); ++k) {
      StageAudit& a = report.stages[k];
      if (std::none_of(a.findings.begin(), a.findings.end(),
                       [](const AuditFinding& f) { return f.Changed(); })) {
        continue;
      }
      const fs::path dir = tmp / a.name;
      const std::string ext = fs::path(a.output).extension().string();
      ok = ok && copy(ref_of(base_ref, audited[k]), dir / ("baseline" + ext));
      for (AuditFinding& f : a.findings) {
        if (!f.Changed() || f.result != "differs") continue;
        fs::path from;
        if (f.perturbation == "executor") from = ref_of(exec_dir, audited[k]);
        if (f.perturbation == "order") {
          from = ref_of(order_dir, audited[k]);
          ok = ok && copy(ref_of(control_out, audited[k]), dir / ("order-control" + ext));
        }
        if (f.perturbation == "clock") {
          const auto& runs = by[{k, "clock"}];
          ok = ok && copy(runs[0]->output, dir / (runs[0]->label + ext));
        }
        for (const Job* job : by[{k, f.perturbation}]) {
          if (job->label == f.kept) from = job->output;
        }
        if (from.empty()) continue;
        f.kept = a.name + "/" + f.kept + ext;
        ok = ok && copy(from, tmp / f.kept);
      }
    }
    report.kept = keep;
    Json j = report.ToJson();
    std::ofstream(tmp / "audit.json") << j.dump(2) << "\n";
    if (!ok) {
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
    out << Trim(line) << "\n";
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

}  // namespace stagekit::tools
