// A content-addressed cache of stage outputs, shared by every executor.
//
// A stage's cache key is the SHA-256 of the canonical JSON of its key parts:
// a format version, the registered stage name, the pipeline instance name
// (ctx.seed() derives from it), a digest of the stage library that registers
// the stage, the digest of every input's bytes by input name, the canonical
// job spec and the canonical keyword arguments. The executor, the output path,
// threads, resources and timeouts are not part of it: outputs are
// byte-identical across executors, so an output made in-process is a valid hit
// for a Ray run and the other way round.
//
// On disk (any POSIX file system, NFS included: every file is written to a
// unique temporary name and renamed into place, no locks are taken):
//
//   DIR/blobs/ab/<sha256>       output bytes, named by their digest
//   DIR/entries/cd/<key>.json   key parts, output digest and size, the
//                               RunStats of the run that made it, pipeline, time
//   DIR/last/<hash>.json        per (pipeline name, stage instance): the last
//                               key stored or restored, with its parts (explain)
//
// A store writes the blob first and the entry last; a reader that finds an
// entry whose blob is missing or whose bytes do not hash to the recorded digest
// treats it as a miss, removes it and warns: a corrupt cache costs a re-run,
// never a wrong output.
#ifndef STAGEKIT_CACHE_H_
#define STAGEKIT_CACHE_H_

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "stagekit/export.h"
#include "stagekit/pipeline.h"
#include "stagekit/stage.h"
#include "stagekit/status.h"

namespace stagekit {

// Everything a cache key is made of, plus where each part came from (not
// hashed) so that a change can be explained.
struct STAGEKIT_API CacheKeyParts {
  static constexpr int kFormat = 1;
  int format = kFormat;
  std::string stage;     // registered stage name
  std::string instance;  // pipeline stage name
  std::string library;   // "sha256:<hex>" of the shared object that registers the stage
  std::map<std::string, std::string> inputs;  // input name -> "sha256:<hex>" of its bytes
  Json job = Json::object();                  // JobSpec::ToJson()
  Json kwargs = Json::object();

  // Not hashed: the library's path, and per input its file path or
  // "output of 'STAGE'".
  std::string library_path;
  std::map<std::string, std::string> input_sources;

  // {"format", "stage", "instance", "library", "inputs", "job", "kwargs"}:
  // what the key hashes.
  Json Hashed() const;
  // Hashed() plus "library_path" and "input_sources".
  Json ToJson() const;
  static Result<CacheKeyParts> FromJson(const Json& json);
  // Hex SHA-256 of CanonicalJson(Hashed()).
  std::string Key() const;
};

// What changed from `before` to `now`, one readable line per changed part
// ("kwargs.min_length 2 -> 3", "input 'text' bytes changed sha256:ab12.. ->
// sha256:cd34.. (corpus/a.txt)", "stage library changed ..."); empty when the
// keys are equal.
STAGEKIT_API std::vector<std::string> DescribeKeyChange(const CacheKeyParts& before,
                                                        const CacheKeyParts& now);

// Why a stage of a pipeline would or would not run under `run --resume`.
struct STAGEKIT_API StageExplanation {
  std::string name;   // pipeline stage name
  std::string stage;  // registered stage name
  bool cached = false;
  std::string key;  // empty when it cannot be known (an upstream stage will run)
  // When cached: who made the entry and when (ISO 8601, UTC).
  std::string made_by;
  std::string created;
  std::string output_digest;
  // When not cached: why, one line per changed key part.
  std::vector<std::string> reasons;
  std::optional<CacheKeyParts> parts;

  // "cached (made by inprocess run at ...)" or "will run because ...".
  std::string Summary() const;
  Json ToJson() const;
};

// Totals of a cache directory.
struct STAGEKIT_API CacheUsage {
  std::uint64_t entries = 0;
  std::uint64_t blobs = 0;
  std::uint64_t bytes = 0;  // blobs, entries and pointers together
};

struct STAGEKIT_API PruneOptions {
  // Remove entries created longer ago than this.
  std::optional<std::chrono::seconds> older_than;
  // Then remove the oldest entries until the cache holds at most this many bytes.
  std::optional<std::uint64_t> max_bytes;
};

struct STAGEKIT_API PruneReport {
  std::uint64_t entries_removed = 0;
  std::uint64_t blobs_removed = 0;
  std::uint64_t bytes_freed = 0;
  CacheUsage left;
};

class STAGEKIT_API DiskCache final : public StageCache {
 public:
  struct Options {
    // Pipeline name, recorded in entries and naming the per-stage pointers.
    std::string pipeline;
    // Where stage names are looked up to find the library that registers them.
    const Registry* registry = nullptr;  // nullptr: Registry::Global()
    // Receives warnings (one line, no trailing newline); default: stderr with a
    // "stagekit: warning: " prefix.
    std::function<void(const std::string&)> warn;
    // Stops hashing an input file between blocks (Ctrl-C): the stage then
    // has no key, and the scheduler launches nothing more.
    const CancelFlag* cancel = nullptr;
  };

  // Creates the directory layout under `dir` when missing; kOutputError when
  // it cannot.
  static Result<std::unique_ptr<DiskCache>> Open(const std::filesystem::path& dir, Options options);
  // $XDG_CACHE_HOME/stagekit, else ~/.cache/stagekit (the command line puts
  // --cache-dir, then $STAGEKIT_CACHE_DIR, before it).
  static std::filesystem::path DefaultDir();

  const std::filesystem::path& dir() const { return dir_; }

  std::string Prepare(const PipelineStage& stage, const StageRequest& request,
                      const std::map<std::string, std::string>& upstream) override;
  std::string PrepareByReference(const PipelineStage& stage, const StageRequest& request,
                                 const std::map<std::string, std::string>& upstream,
                                 const std::set<std::string>& by_reference) override;
  std::optional<RunStats> Lookup(const PipelineStage& stage, const StageRequest& request,
                                 const std::string& token) override;
  // Stores nothing when an input file changed (inode, size or mtime) between
  // Prepare and now: the output may come from other bytes than the key says.
  void Store(const PipelineStage& stage, const StageRequest& request, const std::string& token,
             const RunStats* stats) override;

  // The key parts of one stage; kInputError when an input file cannot be
  // read, kUnknownStage when the stage is not registered, kInternal when an
  // input that another stage produces has no digest in `upstream`.
  Result<CacheKeyParts> KeyParts(const PipelineStage& stage, const JobSpec& job,
                                 const std::map<std::string, std::string>& upstream);

  // For each stage of `pipeline` in order (or only `only` when not empty),
  // whether `run --resume` would restore it or why it would run. Runs
  // nothing and changes nothing in the cache but removing entries it finds
  // corrupt.
  std::vector<StageExplanation> Explain(const Pipeline& pipeline, const std::string& only = "");

  Result<CacheUsage> Usage() const;
  // Oldest first; then removes blobs that no entry refers to and stale
  // temporary files.
  Result<PruneReport> Prune(const PruneOptions& options);

  // Counters of this process.
  std::uint64_t hits() const;
  std::uint64_t stores() const;

 private:
  DiskCache(std::filesystem::path dir, Options options);
  struct Impl;
  std::filesystem::path dir_;
  std::shared_ptr<Impl> impl_;
};

}  // namespace stagekit

#endif  // STAGEKIT_CACHE_H_
