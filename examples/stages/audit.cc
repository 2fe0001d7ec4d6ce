// Stages for the determinism audit (`stagekit audit examples/audit/pipeline.yaml`):
// each *_bad stage has one classic bug that makes its output depend on
// something it must not, and a *_good twin that does the same job right.
//
//   audit.clock_bad        stamps the date it ran (reads the clock)
//   audit.clock_good       stamps the date given in kwargs `as_of`
//   audit.pointer_bad      lists distinct words by iterating an unordered_set
//                          of pointers (order follows the heap addresses)
//   audit.pointer_good     the same words, sorted
//   audit.threads_bad      sums floating point values in ctx.threads() chunks
//                          (the rounding follows the thread count)
//   audit.threads_good     fixed 16 chunks on ctx.threads() threads, combined
//                          in chunk order
//   audit.path_bad         writes the absolute path of its input into a header
//   audit.path_good        writes the input's name from the request instead
//   audit.env_bad          writes $USER into its output
//   audit.env_good         writes the job name instead
//   audit.localtime_bad    formats epoch timestamps in the local time zone
//   audit.localtime_good   formats them in UTC
//   audit.counter_bad      numbers its output with a process-global counter
//                          (differs when stages share a process)
//   audit.counter_good     numbers it from ctx.seed()
//   audit.summary          concatenates its inputs in input-name order
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "stagekit/stage.h"

namespace {

std::vector<double> ReadValues(const stagekit::StageContext& ctx) {
  std::istringstream in(ctx.ReadInput("values"));
  std::vector<double> values;
  for (double v; in >> v;) values.push_back(v);
  return values;
}

std::string Format(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), fmt, v);
  return buf;
}

std::vector<std::string> Words(const std::string& text) {
  std::vector<std::string> words;
  std::string w;
  for (char c : text + " ") {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
      w.push_back(static_cast<char>(c | 0x20));
    } else if (!w.empty()) {
      words.push_back(w);
      w.clear();
    }
  }
  return words;
}

// --- reads the clock ---------------------------------------------------------

void ClockBad(stagekit::StageContext& ctx) {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  char date[32];
  std::strftime(date, sizeof(date), "%Y-%m-%d", &tm);
  ctx.WriteOutput(std::string("report date: ") + date +
                  "\nvalues: " + std::to_string(ReadValues(ctx).size()) + "\n");
}

void ClockGood(stagekit::StageContext& ctx) {
  const std::string as_of = ctx.kwargs().value("as_of", std::string("1970-01-01"));
  ctx.WriteOutput("report date: " + as_of + "\nvalues: " + std::to_string(ReadValues(ctx).size()) +
                  "\n");
}

// --- iterates an unordered container keyed by pointers ------------------------

struct Word {
  std::string text;
  int first_line = 0;
};

// Mixes all the bits of a pointer, as the hash of most fast hash tables does
// (this is MurmurHash3's finaliser).
struct PointerHash {
  std::size_t operator()(const Word* w) const {
    auto x = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(w));
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return static_cast<std::size_t>(x);
  }
};

void PointerBad(stagekit::StageContext& ctx) {
  // The words live in one arena, as parsers and graph builders keep their
  // nodes; pointers into it are the keys.
  constexpr std::size_t kArenaWords = 16384;
  std::vector<Word> arena;
  arena.reserve(kArenaWords);
  std::unordered_set<const Word*, PointerHash> distinct;
  std::vector<std::string> seen;
  for (const std::string& w : Words(ctx.ReadInput("text"))) {
    if (std::find(seen.begin(), seen.end(), w) != seen.end()) continue;
    if (arena.size() == kArenaWords) throw std::length_error("more than 16384 distinct words");
    seen.push_back(w);
    arena.push_back(Word{w, static_cast<int>(seen.size())});
    distinct.insert(&arena.back());
  }
  std::string out;
  // The bug: the iteration order follows the hash of each pointer, i.e. where
  // the arena happened to be mapped.
  for (const Word* w : distinct) out += w->text + "\n";
  ctx.WriteOutput(out);
}

void PointerGood(stagekit::StageContext& ctx) {
  std::vector<std::string> words = Words(ctx.ReadInput("text"));
  std::sort(words.begin(), words.end());
  words.erase(std::unique(words.begin(), words.end()), words.end());
  std::string out;
  for (const std::string& w : words) out += w + "\n";
  ctx.WriteOutput(out);
}

// --- thread-count-dependent floating point reduction ---------------------------

double ChunkedSum(const std::vector<double>& values, std::size_t chunks, int threads) {
  std::vector<double> partial(chunks, 0.0);
  std::atomic<std::size_t> next{0};
  auto work = [&] {
    for (std::size_t c; (c = next++) < chunks;) {
      const std::size_t begin = values.size() * c / chunks;
      const std::size_t end = values.size() * (c + 1) / chunks;
      double s = 0;
      for (std::size_t i = begin; i < end; ++i) s += values[i];
      partial[c] = s;
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  double total = 0;
  for (double p : partial) total += p;  // a fixed combine order
  return total;
}

void ThreadsBad(stagekit::StageContext& ctx) {
  // The bug: one chunk per thread, so the rounding of the sum follows the
  // thread count.
  const int threads = ctx.threads();
  const double sum = ChunkedSum(ReadValues(ctx), static_cast<std::size_t>(threads), threads);
  ctx.WriteOutput("sum " + Format("%.17g", sum) + "\n");
}

void ThreadsGood(stagekit::StageContext& ctx) {
  // A fixed number of chunks whatever the thread count, combined in order.
  constexpr std::size_t kChunks = 16;
  const double sum = ChunkedSum(ReadValues(ctx), kChunks, std::min<int>(ctx.threads(), kChunks));
  ctx.WriteOutput("sum " + Format("%.17g", sum) + "\n");
}

// --- embeds an absolute path ------------------------------------------------

void PathBad(stagekit::StageContext& ctx) {
  const std::vector<double> values = ReadValues(ctx);
  ctx.WriteOutput("# source: " + ctx.input("values").string() + "\n" + "count " +
                  std::to_string(values.size()) + "\n");
}

void PathGood(stagekit::StageContext& ctx) {
  const std::vector<double> values = ReadValues(ctx);
  ctx.WriteOutput("# source: input 'values' of " + ctx.instance() + "\n" + "count " +
                  std::to_string(values.size()) + "\n");
}

// --- reads an environment variable --------------------------------------------

void EnvBad(stagekit::StageContext& ctx) {
  const char* user = std::getenv("USER");
  ctx.WriteOutput(std::string("# prepared by ") + (user != nullptr ? user : "unknown") +
                  "\nvalues " + std::to_string(ReadValues(ctx).size()) + "\n");
}

void EnvGood(stagekit::StageContext& ctx) {
  ctx.WriteOutput("# prepared for job " + ctx.job().name + "\nvalues " +
                  std::to_string(ReadValues(ctx).size()) + "\n");
}

// --- formats time in the local time zone -----------------------------------------

std::string FormatEvents(const stagekit::StageContext& ctx, bool local) {
  std::istringstream in(ctx.ReadInput("events"));
  std::string out;
  for (long long t; in >> t;) {
    const std::time_t when = static_cast<std::time_t>(t);
    std::tm tm{};
    if (local) {
      ::localtime_r(&when, &tm);
    } else {
      ::gmtime_r(&when, &tm);
    }
    char buf[64];
    std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M", &tm);
    out += std::to_string(t) + "\t" + buf + "\n";
  }
  return out;
}

void LocaltimeBad(stagekit::StageContext& ctx) { ctx.WriteOutput(FormatEvents(ctx, true)); }
void LocaltimeGood(stagekit::StageContext& ctx) { ctx.WriteOutput(FormatEvents(ctx, false)); }

// --- process-global state -------------------------------------------------------

std::atomic<int> g_reports{0};

void CounterBad(stagekit::StageContext& ctx) {
  // The bug: a counter that lives as long as the process, so the number
  // depends on how many stages ran in it before.
  const int n = ++g_reports;
  ctx.WriteOutput("report #" + std::to_string(n) + "\nvalues " +
                  std::to_string(ReadValues(ctx).size()) + "\n");
}

void CounterGood(stagekit::StageContext& ctx) {
  char id[32];
  std::snprintf(id, sizeof(id), "%016" PRIx64, ctx.seed());
  ctx.WriteOutput(std::string("report ") + id + "\nvalues " +
                  std::to_string(ReadValues(ctx).size()) + "\n");
}

// --- downstream -------------------------------------------------------------------

void Summary(stagekit::StageContext& ctx) {
  std::string out;
  for (const auto& [name, path] : ctx.inputs()) out += "== " + name + "\n" + ctx.ReadInput(name);
  ctx.WriteOutput(out);
}

}  // namespace

STAGEKIT_STAGE("audit.clock_bad", ClockBad);
STAGEKIT_STAGE("audit.clock_good", ClockGood);
STAGEKIT_STAGE("audit.pointer_bad", PointerBad);
STAGEKIT_STAGE("audit.pointer_good", PointerGood);
STAGEKIT_STAGE("audit.threads_bad", ThreadsBad);
STAGEKIT_STAGE("audit.threads_good", ThreadsGood);
STAGEKIT_STAGE("audit.path_bad", PathBad);
STAGEKIT_STAGE("audit.path_good", PathGood);
STAGEKIT_STAGE("audit.env_bad", EnvBad);
STAGEKIT_STAGE("audit.env_good", EnvGood);
STAGEKIT_STAGE("audit.localtime_bad", LocaltimeBad);
STAGEKIT_STAGE("audit.localtime_good", LocaltimeGood);
STAGEKIT_STAGE("audit.counter_bad", CounterBad);
STAGEKIT_STAGE("audit.counter_good", CounterGood);
STAGEKIT_STAGE("audit.summary", Summary);
