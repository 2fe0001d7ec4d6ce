// The stage API: what a user writes.
//
//   #include <stagekit/stage.h>
//
//   void CountBytes(stagekit::StageContext& ctx) {
//     std::string text = ctx.ReadInput("text");
//     ctx.WriteOutput(std::to_string(text.size()) + "\n");
//   }
//   STAGEKIT_STAGE("demo.count_bytes", CountBytes);
//
// A stage reads its named inputs, writes exactly one output file (the path
// ctx.output(), a temporary file that stagekit renames into place only when
// the stage returns normally), and returns. Its output must depend only on its
// code, its input bytes, the job spec, its keyword arguments and ctx.seed():
// that is what makes the in-process, subprocess and Ray executors produce
// byte-identical files. To fail, throw any std::exception; its what() reaches
// the user. Running a stage yields RunStats (see below), filled in by stagekit;
// a stage can add its own numbers with ctx.SetMetric().
#ifndef STAGEKIT_STAGE_H_
#define STAGEKIT_STAGE_H_

#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "stagekit/export.h"
#include "stagekit/status.h"

namespace stagekit {

using Json = nlohmann::json;

// Serialises JSON canonically: object keys sorted, no whitespace, integers as
// integers and floating point numbers in shortest round-trip form. The same
// value always gives the same bytes.
STAGEKIT_API std::string CanonicalJson(const Json& value);

// What a whole pipeline run is about. Part of every stage's request.
struct STAGEKIT_API JobSpec {
  std::string name;
  std::uint64_t seed = 0;        // base of every stage's seed
  Json params = Json::object();  // free-form, shared by all stages

  Json ToJson() const;
  static Result<JobSpec> FromJson(const Json& json);
  std::string Canonical() const { return CanonicalJson(ToJson()); }
};

// What one run of one stage did. Reported beside the output, never inside it.
struct STAGEKIT_API RunStats {
  std::string stage;              // registered stage name
  std::string executor;           // inprocess | subprocess | ray
  int attempt = 1;                // 1 for the first try
  std::string host;               // where it ran
  std::string node;               // which node: the host, or "host:port" of a Ray raylet
  double wall_s = 0;              // wall time of the stage function
  std::uint64_t bytes_in = 0;     // sum of input sizes
  std::uint64_t bytes_out = 0;    // output size
  std::string output_digest;      // "sha256:<64 hex>"
  Json metrics = Json::object();  // whatever the stage reported via SetMetric
  // Where the executor uploaded the output from the node that made it
  // (StageOptions::artifact): {"uri", "node", "seconds"}, or {"uri",
  // "error"} when that upload failed; null when there was none.
  Json artifact = nullptr;

  Json ToJson() const;
  static Result<RunStats> FromJson(const Json& json);
  std::string Canonical() const { return CanonicalJson(ToJson()); }
};

// The deterministic seed of a stage: the first 8 bytes (big-endian) of
// SHA-256(canonical job spec, NUL, stage instance name).
STAGEKIT_API std::uint64_t DeriveSeed(const JobSpec& job, std::string_view instance_name);

class STAGEKIT_API StageContext {
 public:
  StageContext(std::string stage, std::string instance,
               const std::map<std::string, std::filesystem::path>* inputs,
               std::filesystem::path output, const JobSpec* job, const Json* kwargs,
               int threads = 1);

  // Registered stage name ("wordcount.map").
  const std::string& stage() const { return stage_; }
  // The pipeline's name for this use of the stage ("map_03"); equals stage()
  // when the stage is run on its own.
  const std::string& instance() const { return instance_; }
  const std::map<std::string, std::filesystem::path>& inputs() const { return *inputs_; }
  // The path of a named input; throws std::out_of_range naming the input when
  // the request has no input of that name.
  const std::filesystem::path& input(std::string_view name) const;
  // The inputs a collect gave under `name` (`parts: {from: "map[*]"}` arrives
  // as parts[KEY] for each instance map[KEY]), in key order (keys compared
  // as byte strings, as inputs() orders them), as (key, path) pairs; a
  // single input called `name` comes back as one pair with an empty key.
  // Empty when there is neither.
  std::vector<std::pair<std::string, std::filesystem::path>> input_list(
      std::string_view name) const;
  // Where to write the output (a temporary file beside the final target).
  const std::filesystem::path& output() const { return output_; }
  const JobSpec& job() const { return *job_; }
  const Json& kwargs() const { return *kwargs_; }
  // DeriveSeed(job(), instance()), computed on first use.
  std::uint64_t seed() const;
  // How many threads the stage may use: its CPU allocation (at least 1). Size
  // thread pools with it (Ray sets OMP_NUM_THREADS the same way), but never
  // let the output depend on it: split work into a fixed number of chunks and
  // combine them in a fixed order.
  int threads() const { return threads_; }

  // Convenience: whole input file as bytes; throws std::runtime_error on I/O errors.
  std::string ReadInput(std::string_view name) const;
  // Convenience: writes the whole output; throws std::runtime_error on I/O errors.
  void WriteOutput(std::string_view bytes) const;
  // Adds a number (or any JSON value) to RunStats.metrics.
  void SetMetric(const std::string& key, Json value) { metrics_[key] = std::move(value); }
  const Json& metrics() const { return metrics_; }

 private:
  std::string stage_;
  std::string instance_;
  const std::map<std::string, std::filesystem::path>* inputs_;
  std::filesystem::path output_;
  const JobSpec* job_;
  const Json* kwargs_;
  int threads_;
  mutable std::optional<std::uint64_t> seed_;
  Json metrics_ = Json::object();
};

using StageFn = void (*)(StageContext&);

// What a warm stage's setup may depend on: things that stay the same for
// every use of the stage in a pipeline. Instances are keyed by (stage name,
// canonical job spec, canonical setup object), so two uses of a stage that
// differ here get separate instances.
class STAGEKIT_API WarmContext {
 public:
  WarmContext(std::string stage, const JobSpec* job, Json setup)
      : stage_(std::move(stage)), job_(job), setup_(std::move(setup)) {}
  // Registered stage name.
  const std::string& stage() const { return stage_; }
  const JobSpec& job() const { return *job_; }
  // The stage's `setup` keyword argument (kwargs["setup"]), {} when absent.
  const Json& setup() const { return setup_; }

 private:
  std::string stage_;
  const JobSpec* job_;
  Json setup_;
};

// The type-erased operations of a warm stage (see STAGEKIT_WARM_STAGE).
struct STAGEKIT_API WarmStageOps {
  void* (*create)(const WarmContext&);  // the expensive setup; may throw
  void (*run)(void* instance, StageContext&);
  void (*destroy)(void* instance) noexcept;
  bool thread_safe = false;  // Run() may be called from several threads at once
};

// Maps stage names to functions. Registration never throws: a duplicate name
// is recorded with both sites and reported by Problems() (and by library
// loading), the first registration stays in effect.
class STAGEKIT_API Registry {
 public:
  struct Entry {
    std::string name;
    StageFn fn = nullptr;
    std::string file;  // source file of the registration
    int line = 0;
    std::string library;  // shared object that holds fn ("" for the main program)
    // Set for STAGEKIT_WARM_STAGE stages; fn then runs the stage cold (setup,
    // one run, teardown), which is what an invocation does with warm workers off.
    const WarmStageOps* warm = nullptr;
  };

  void Add(std::string_view name, StageFn fn, const char* file, int line) noexcept;
  void AddWarm(std::string_view name, StageFn cold, const WarmStageOps* warm, const char* file,
               int line) noexcept;
  // nullptr when absent.
  const Entry* Find(std::string_view name) const;
  // Sorted by name.
  std::vector<Entry> List() const;
  // One message per duplicate registration seen so far.
  std::vector<std::string> Problems() const;
  // Registered names close to `name` (edit distance), best first.
  std::vector<std::string> Suggest(std::string_view name, std::size_t max = 3) const;

  // The process-wide registry that STAGEKIT_STAGE fills.
  static Registry& Global();

 private:
  mutable std::mutex mu_;
  std::map<std::string, Entry, std::less<>> entries_;
  std::vector<std::string> problems_;
};

// dlopen()s a stage library so that its STAGEKIT_STAGE registrations land in
// `registry` (only the global registry is reachable from a library's static
// initialisers, so pass Registry::Global() unless testing). Fails with
// kLibraryError when the file cannot be loaded or when it registers a name that
// is already registered.
STAGEKIT_API Status LoadStageLibrary(const std::filesystem::path& path,
                                     Registry& registry = Registry::Global());

namespace internal {
struct STAGEKIT_API Registrar {
  Registrar(const char* name, StageFn fn, const char* file, int line) noexcept {
    Registry::Global().Add(name, fn, file, line);
  }
};
struct STAGEKIT_API WarmRegistrar {
  WarmRegistrar(const char* name, StageFn cold, const WarmStageOps* warm, const char* file,
                int line) noexcept {
    Registry::Global().AddWarm(name, cold, warm, file, line);
  }
};

STAGEKIT_API Json WarmSetupOf(const Json& kwargs);

template <typename T>
struct WarmOps {
  static void* Create(const WarmContext& w) { return new T(w); }
  static void Run(void* instance, StageContext& ctx) { static_cast<T*>(instance)->Run(ctx); }
  static void Destroy(void* instance) noexcept { delete static_cast<T*>(instance); }
  static void Cold(StageContext& ctx) {
    WarmContext w(ctx.stage(), &ctx.job(), WarmSetupOf(ctx.kwargs()));
    T instance(w);
    instance.Run(ctx);
  }
  static const WarmStageOps* Get(bool thread_safe) {
    static const WarmStageOps ops{&Create, &Run, &Destroy, false};
    static const WarmStageOps safe_ops{&Create, &Run, &Destroy, true};
    return thread_safe ? &safe_ops : &ops;
  }
};
}  // namespace internal

}  // namespace stagekit

#define STAGEKIT_INTERNAL_CONCAT2(a, b) a##b
#define STAGEKIT_INTERNAL_CONCAT(a, b) STAGEKIT_INTERNAL_CONCAT2(a, b)

// Registers `fn` (void fn(stagekit::StageContext&)) under the string `name`,
// the stable identifier used on the command line, in pipeline files and on the
// wire. Use at namespace scope in a .cc file.
#define STAGEKIT_STAGE(name, fn)                                         \
  static const ::stagekit::internal::Registrar STAGEKIT_INTERNAL_CONCAT( \
      stagekit_registrar_, __COUNTER__)(name, &(fn), __FILE__, __LINE__)

// Registers a warm stage: a class whose constructor does an expensive setup
// (load a model, open a connection pool) once per worker, and whose Run()
// does one invocation, reusing it:
//
//   class Embedder {
//    public:
//     explicit Embedder(const stagekit::WarmContext& w);  // setup; may throw
//     void Run(stagekit::StageContext& ctx);              // per invocation
//   };
//   STAGEKIT_WARM_STAGE("demo.embed", Embedder);
//
// The setup may read only what WarmContext offers (the job spec and the
// stage's `setup` keyword argument); instances are keyed by those. A worker
// keeps its instances for its whole life: the in-process executor a pool per
// process with at most one caller per instance (so never more setups than
// stages run at once), the subprocess executor persistent children
// (`stagekit stage --serve`), the Ray executor one actor per stage per
// concurrent use. Run() must leave no state behind that changes a later
// output: outputs stay byte-identical to a cold run (STAGEKIT_WARM=0: a setup
// per invocation). A setup that throws fails that invocation; the next one
// tries again. Each run reports RunStats.metrics["warm"] = {"setups": how many
// setups of this key this worker did, "reused": whether this run found the
// instance ready, "worker": "pid:N", "setup_s": seconds of this run's setup}.
#define STAGEKIT_WARM_STAGE(name, cls)                                                            \
  static const ::stagekit::internal::WarmRegistrar STAGEKIT_INTERNAL_CONCAT(                      \
      stagekit_registrar_, __COUNTER__)(name, &::stagekit::internal::WarmOps<cls>::Cold,          \
                                        ::stagekit::internal::WarmOps<cls>::Get(false), __FILE__, \
                                        __LINE__)
// The same for a class whose Run() may be called by several threads at once:
// the in-process executor then shares one instance per process.
#define STAGEKIT_WARM_STAGE_THREAD_SAFE(name, cls)                                               \
  static const ::stagekit::internal::WarmRegistrar STAGEKIT_INTERNAL_CONCAT(                     \
      stagekit_registrar_, __COUNTER__)(name, &::stagekit::internal::WarmOps<cls>::Cold,         \
                                        ::stagekit::internal::WarmOps<cls>::Get(true), __FILE__, \
                                        __LINE__)

#endif  // STAGEKIT_STAGE_H_
