// `stagekit audit`: the determinism audit. Runs the pipeline once as a
// baseline (each stage in a fresh subprocess, ASLR off), then runs every
// stage again under perturbations that must not change its output (another
// working directory, other file names, environment, TZ and locale, thread
// count, memory layout, clock, scheduling order, executor) and reports, per
// stage, which perturbation changed which output at what byte offset.
#ifndef STAGEKIT_ANALYSE_AUDIT_H_
#define STAGEKIT_ANALYSE_AUDIT_H_

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "stagekit/executor.h"
#include "stagekit/pipeline.h"
#include "stagekit/stage.h"
#include "stagekit/status.h"

namespace stagekit::analyse {

// The perturbations, in the order they are reported.
inline constexpr const char* kAuditPerturbations[] = {
    "repeat",  "cwd",           "paths", "env",   "tz-locale",
    "threads", "memory-layout", "clock", "order", "executor"};

// Where two byte strings first differ, with a printable excerpt of both sides
// around that offset.
struct ByteDifference {
  std::uint64_t offset = 0;  // first differing byte (the shorter size when one is a prefix)
  std::uint64_t size_a = 0;
  std::uint64_t size_b = 0;
  std::uint64_t excerpt_start = 0;  // offset of the excerpts' first byte
  std::string excerpt_a;            // printable: \n, \t, \\, \xNN escaped
  std::string excerpt_b;
};

// nullopt when `a` and `b` are identical. The excerpts start up to `before`
// bytes before the difference and cover up to `before + after` bytes.
std::optional<ByteDifference> CompareBytes(std::string_view a, std::string_view b,
                                           std::size_t before = 16, std::size_t after = 32);
// `bytes` with every byte that is not printable ASCII escaped (\n, \t, \\, \xNN).
std::string PrintableExcerpt(std::string_view bytes);

// One perturbation's verdict for one stage.
struct AuditFinding {
  std::string perturbation;  // one of kAuditPerturbations
  // same | differs | failed (the stage failed under it) | unavailable | not_run
  std::string result = "not_run";
  std::string variant;  // what was changed, e.g. "threads 4 -> 1"
  std::string against;  // what it was compared with: "baseline" or a control run
  std::optional<ByteDifference> diff;
  std::string error;      // why it failed or is unavailable
  std::string masked_by;  // set by Attribute(): a perturbation that explains it
  std::string kept;       // the perturbed output kept under --keep (relative to it)
  // paths only: an output contains a path, directory or file name of its own
  // run, i.e. the difference is about the names and not a side effect of the
  // longer or shorter request moving the heap.
  bool shows_paths = false;

  bool Changed() const { return result == "differs" || result == "failed"; }
};

struct StageAudit {
  std::string name;                    // pipeline stage name
  std::string stage;                   // registered stage name
  std::string output;                  // relative output file
  std::vector<AuditFinding> findings;  // in kAuditPerturbations order
  std::vector<std::string> blamed;     // filled by Attribute()

  AuditFinding* Find(std::string_view perturbation);
  const AuditFinding* Find(std::string_view perturbation) const;
};

// Decides what each stage is blamed for: every perturbation that changed its
// output, except that a stage whose output changes under `repeat` (identical
// conditions) is unstable and is blamed for that alone, and differences under
// `order` and `executor` of a stage whose output depends on the memory layout
// are put down to the layout (those runs cannot keep the layout), as are
// differences under `paths` whose outputs name no path (other names make the
// request longer or shorter, which moves the heap).
void Attribute(StageAudit& stage);

// How the audit could control the conditions on this machine.
struct AuditEnvironment {
  bool aslr_off = false;  // `setarch ARCH -R` works and turns address randomisation off
  std::string aslr_off_how;
  std::string aslr_off_problem;  // why not, when it does not
  bool aslr_on = false;          // the kernel randomises addresses (kernel.randomize_va_space > 0)
  std::string aslr_on_problem;
  std::string arch;                // uname -m, for setarch
  std::filesystem::path faketime;  // libfaketime.so.1; empty when not installed
  std::string tz_baseline, tz_perturbed;
  std::string locale_baseline, locale_perturbed;  // locale_perturbed empty: no other locale here
};
AuditEnvironment DetectAuditEnvironment();

struct AuditOptions {
  std::vector<std::string> only;                 // pipeline stage names to audit; empty: all
  std::filesystem::path runner;                  // the stagekit binary; empty: the default runner
  std::vector<std::filesystem::path> libraries;  // passed as --stages to every child
  // The executor of the `executor` perturbation (default: in-process).
  StageExecutor* other_executor = nullptr;
  int jobs = 1;                              // runs at once
  std::uint64_t order_seed = 0x5eed5eedULL;  // the `order` run's shuffle seed
  std::filesystem::path keep;                // keep differing outputs here; empty: keep nothing
  std::filesystem::path work_root;  // where the temporary work directory goes; empty: $TMPDIR
  RunObserver* observer = nullptr;  // progress of the baseline run
  // One line per phase (baseline, perturbed runs, whole-pipeline runs).
  std::function<void(const std::string&)> log;
};

struct AuditReport {
  std::string pipeline;
  std::filesystem::path file;
  AuditEnvironment env;
  std::string other_executor;
  std::vector<StageAudit> stages;  // the audited ones, pipeline order
  double wall_s = 0;
  std::filesystem::path kept;  // the --keep directory when something was kept

  std::size_t Nondeterministic() const;
  // "3 of 14 stages changed their output: clock_bad (clock), ..." or "all 14
  // stages produced identical outputs under every perturbation".
  std::string Summary() const;
  Json ToJson() const;
  // The human table, one row per stage and one line per difference.
  std::string Table() const;
};

// Runs the audit. Fails (with the run's own code) when the baseline run
// fails; perturbed runs that fail are findings, not errors. Writes nothing
// outside a temporary directory (removed at the end) and options.keep.
Result<AuditReport> RunAudit(const Pipeline& pipeline, const AuditOptions& options);

}  // namespace stagekit::analyse

#endif  // STAGEKIT_ANALYSE_AUDIT_H_
