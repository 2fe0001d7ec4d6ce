// Warm workers: a stage whose setup is expensive and done once per worker.
//   warm.embed    a warm stage. Its setup builds a 8 MiB "model" (a table of
//                 2^20 64-bit words mixed for setup.rounds passes, from
//                 setup.seed), about 0.3 s with the example's settings; each
//                 invocation then "embeds" its instance (ctx.seed()) with a
//                 few thousand table lookups and writes 8 hex words. The
//                 output depends only on the setup object and the seed, so a
//                 warm instance and a cold one write the same bytes.
//   warm.collect  a plain stage: concatenates its inputs in name order.
//   warm.probe    a warm stage for tests: counts nothing in its output, and
//                 can fail on purpose. setup: {fail: "msg"} makes the setup
//                 throw; kwargs: {sleep_ms: N} sleeps in Run, {crash: true}
//                 aborts the worker, {throw: "msg"} fails the invocation,
//                 {pid_dir: DIR} writes DIR/<instance>-<pid>.pid first.
//                 Writes "probe <instance> <seed>\n".
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "stagekit/stage.h"

namespace {

std::uint64_t SplitMix(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

class Embedder {
 public:
  explicit Embedder(const stagekit::WarmContext& w) : table_(std::size_t{1} << 20) {
    const std::uint64_t rounds = w.setup().value("rounds", std::uint64_t{24});
    std::uint64_t state = w.setup().value("seed", std::uint64_t{1});
    for (std::uint64_t& v : table_) v = SplitMix(state);
    const std::size_t mask = table_.size() - 1;
    for (std::uint64_t r = 0; r < rounds; ++r) {
      std::uint64_t prev = table_[mask];
      for (std::size_t i = 0; i < table_.size(); ++i) {
        prev = table_[i] ^= (table_[prev & mask] >> 7) + prev * 0x2545f4914f6cdd1dull;
      }
    }
  }

  void Run(stagekit::StageContext& ctx) {
    const std::uint64_t lookups = ctx.kwargs().value("lookups", std::uint64_t{4096});
    const std::size_t mask = table_.size() - 1;
    std::uint64_t state = ctx.seed();
    std::uint64_t acc[8] = {};
    for (std::uint64_t i = 0; i < lookups; ++i) {
      std::uint64_t r = SplitMix(state);
      acc[i % 8] ^= table_[r & mask] + i;
    }
    std::string out;
    char line[32];
    for (std::uint64_t a : acc) {
      std::snprintf(line, sizeof(line), "%016" PRIx64 "\n", a);
      out += line;
    }
    ctx.WriteOutput(out);
  }

 private:
  std::vector<std::uint64_t> table_;
};

void Collect(stagekit::StageContext& ctx) {
  std::string out;
  for (const auto& [name, path] : ctx.inputs()) out += name + "\n" + ctx.ReadInput(name);
  ctx.WriteOutput(out);
}

class Probe {
 public:
  explicit Probe(const stagekit::WarmContext& w) {
    if (w.setup().contains("fail")) {
      throw std::runtime_error(w.setup()["fail"].get<std::string>());
    }
    const int setup_ms = w.setup().value("setup_ms", 0);
    if (setup_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(setup_ms));
  }

  void Run(stagekit::StageContext& ctx) {
    const stagekit::Json& kw = ctx.kwargs();
    if (kw.value("crash", false)) {
      ctx.WriteOutput("partial");  // must not survive the crash
      std::fprintf(stderr, "probe %s about to die\n", ctx.instance().c_str());
      std::abort();
    }
    if (kw.contains("throw")) throw std::runtime_error(kw["throw"].get<std::string>());
    if (kw.contains("pid_dir")) {  // lets a test find and kill the worker
      std::FILE* f = std::fopen((kw["pid_dir"].get<std::string>() + "/" + ctx.instance() + "-" +
                                 std::to_string(::getpid()) + ".pid")
                                    .c_str(),
                                "w");
      if (f != nullptr) {
        std::fprintf(f, "%ld\n", static_cast<long>(::getpid()));
        std::fclose(f);
      }
    }
    const int sleep_ms = kw.value("sleep_ms", 0);
    if (sleep_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
    ctx.WriteOutput("probe " + ctx.instance() + " " + std::to_string(ctx.seed()) + "\n");
  }
};

}  // namespace

STAGEKIT_WARM_STAGE("warm.embed", Embedder);
STAGEKIT_STAGE("warm.collect", Collect);
STAGEKIT_WARM_STAGE("warm.probe", Probe);
