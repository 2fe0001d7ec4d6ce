// stagekit cache explain|info|prune: look into and trim the stage cache.
#include <algorithm>
#include <cstdio>
#include <iostream>

#include "cli.h"
#include "stagekit/cache.h"
#include "util/process.h"
#include "util/text.h"

namespace stagekit::cli {
namespace {

namespace fs = std::filesystem;

struct CacheCommand {
  std::string dir;
  bool json = false;
  // explain
  std::string pipeline;
  std::string stage;
  LibraryOptions libs;
  // prune
  std::string older_than;
  std::string max_size;
};

fs::path CacheDir(const CacheCommand& cmd) { return cli::CacheDir(cmd.dir); }

// Refuses to create a cache just to look into it.
Status RequireCacheDir(const fs::path& dir) {
  std::error_code ec;
  if (fs::is_directory(dir / "entries", ec)) return OkStatus();
  return Status(Code::kInputError, "no stage cache at " + dir.string() +
                                       "; runs fill it (give --cache-dir or $STAGEKIT_CACHE_DIR "
                                       "if it lives elsewhere)");
}

Status Explain(const CacheCommand& cmd) {
  std::vector<fs::path> libraries;
  Result<Pipeline> pipeline = LoadPipelineWithLibraries(cmd.pipeline, cmd.libs, libraries);
  if (!pipeline.ok()) return pipeline.status();
  if (!cmd.stage.empty() && pipeline->Find(cmd.stage) == nullptr) {
    std::string names;
    for (const PipelineStage& st : pipeline->stages) names += (names.empty() ? "" : ", ") + st.name;
    return Status(Code::kUsage, "pipeline '" + pipeline->name + "' has no stage '" + cmd.stage +
                                    "'; its stages are: " + names);
  }
  const fs::path dir = CacheDir(cmd);
  DiskCache::Options options;
  options.pipeline = pipeline->name;
  options.cancel = &util::ProcessCancel();
  auto cache = DiskCache::Open(dir, options);
  if (!cache.ok()) return cache.status();
  const std::vector<StageExplanation> stages = (*cache)->Explain(*pipeline, cmd.stage);
  if (util::Interrupted()) return Status(Code::kInterrupted, "interrupted while hashing inputs");
  const auto cached = static_cast<std::size_t>(std::count_if(
      stages.begin(), stages.end(), [](const StageExplanation& e) { return e.cached; }));
  if (cmd.json) {
    Json list = Json::array();
    for (const StageExplanation& e : stages) list.push_back(e.ToJson());
    Json doc{{"pipeline", pipeline->name},
             {"file", pipeline->file.string()},
             {"cache_dir", (*cache)->dir().string()},
             {"cached", cached},
             {"will_run", stages.size() - cached},
             {"stages", list}};
    std::cout << doc.dump(2) << std::endl;
    return OkStatus();
  }
  std::size_t width = 0;
  for (const StageExplanation& e : stages) width = std::max(width, e.name.size());
  for (const StageExplanation& e : stages) {
    std::printf("%-*s  %s\n", static_cast<int>(width), e.name.c_str(), e.Summary().c_str());
  }
  if (cmd.stage.empty()) {
    std::printf("%zu of %zu stage%s cached; `stagekit run --resume` runs %zu (cache: %s)\n", cached,
                stages.size(), stages.size() == 1 ? "" : "s", stages.size() - cached,
                (*cache)->dir().c_str());
  }
  return OkStatus();
}

Status Info(const CacheCommand& cmd) {
  const fs::path dir = CacheDir(cmd);
  std::error_code ec;
  CacheUsage usage;
  if (RequireCacheDir(dir).ok()) {
    auto cache = DiskCache::Open(dir, {});
    if (!cache.ok()) return cache.status();
    auto u = (*cache)->Usage();
    if (!u.ok()) return u.status();
    usage = *u;
  }
  const std::string abs = fs::absolute(dir, ec).lexically_normal().string();
  if (cmd.json) {
    std::cout << Json{{"dir", abs},
                      {"entries", usage.entries},
                      {"blobs", usage.blobs},
                      {"bytes", usage.bytes}}
                     .dump(2)
              << std::endl;
    return OkStatus();
  }
  std::printf("cache:   %s\nentries: %llu\nblobs:   %llu\nsize:    %s\n", abs.c_str(),
              static_cast<unsigned long long>(usage.entries),
              static_cast<unsigned long long>(usage.blobs), util::HumanBytes(usage.bytes).c_str());
  return OkStatus();
}

// "30m", "12h", "7d", "2w" or anything ParseDuration takes.
Result<std::chrono::seconds> ParseAge(const std::string& text) {
  if (!text.empty() && (text.back() == 'd' || text.back() == 'w')) {
    try {
      std::size_t used = 0;
      const double n = std::stod(text.substr(0, text.size() - 1), &used);
      if (used == text.size() - 1 && n >= 0) {
        return std::chrono::seconds(
            static_cast<std::int64_t>(n * (text.back() == 'd' ? 86400 : 7 * 86400)));
      }
    } catch (const std::exception&) {
    }
    return Status(Code::kUsage, "--older-than: cannot read '" + text +
                                    "' as a duration; write e.g. 12h, 7d or 2w");
  }
  auto d = ParseDuration(text);
  if (!d.ok()) return Status(Code::kUsage, "--older-than: " + d.status().message());
  return std::chrono::duration_cast<std::chrono::seconds>(*d);
}

Status Prune(const CacheCommand& cmd) {
  PruneOptions options;
  if (!cmd.older_than.empty()) {
    auto age = ParseAge(cmd.older_than);
    if (!age.ok()) return age.status();
    options.older_than = *age;
  }
  if (!cmd.max_size.empty()) {
    auto bytes = ParseBytes(cmd.max_size);
    if (!bytes.ok()) return Status(Code::kUsage, "--max-size: " + bytes.status().message());
    options.max_bytes = *bytes;
  }
  const fs::path dir = CacheDir(cmd);
  if (Status s = RequireCacheDir(dir); !s.ok()) return s;
  auto cache = DiskCache::Open(dir, {});
  if (!cache.ok()) return cache.status();
  auto report = (*cache)->Prune(options);
  if (!report.ok()) return report.status();
  if (cmd.json) {
    std::cout << Json{{"dir", (*cache)->dir().string()},
                      {"entries_removed", report->entries_removed},
                      {"blobs_removed", report->blobs_removed},
                      {"bytes_freed", report->bytes_freed},
                      {"entries", report->left.entries},
                      {"blobs", report->left.blobs},
                      {"bytes", report->left.bytes}}
                     .dump(2)
              << std::endl;
    return OkStatus();
  }
  std::printf("removed %llu entr%s and %llu blob%s, freed %s; %llu entr%s, %s left in %s\n",
              static_cast<unsigned long long>(report->entries_removed),
              report->entries_removed == 1 ? "y" : "ies",
              static_cast<unsigned long long>(report->blobs_removed),
              report->blobs_removed == 1 ? "" : "s", util::HumanBytes(report->bytes_freed).c_str(),
              static_cast<unsigned long long>(report->left.entries),
              report->left.entries == 1 ? "y" : "ies", util::HumanBytes(report->left.bytes).c_str(),
              (*cache)->dir().c_str());
  return OkStatus();
}

void AddCommon(CLI::App* sub, CacheCommand& cmd) {
  sub->add_option("--cache-dir", cmd.dir,
                  "Cache directory (default: $STAGEKIT_CACHE_DIR, else $XDG_CACHE_HOME/stagekit, "
                  "else ~/.cache/stagekit)")
      ->type_name("DIR");
  sub->add_flag("--json", cmd.json, "Print JSON");
}

}  // namespace

void SetCacheCommand(CLI::App& app, Action& action) {
  auto cmd = std::make_shared<CacheCommand>();
  CLI::App* cache = app.add_subcommand(
      "cache",
      "Inspect and trim the stage cache that `run` fills and `run --resume` restores from");
  cache->require_subcommand(1);
  cache->footer(
      "A stage's cache key covers its registered name, its name in the pipeline, a digest of the "
      "stage library, the digests of its input bytes, the job spec and its kwargs; not the "
      "executor, so an output made by one executor is a hit for every other.");

  CLI::App* explain = cache->add_subcommand(
      "explain",
      "Say for each stage of a pipeline whether `run --resume` restores it from the cache or why "
      "it will run: which part of its key changed since it was last stored");
  explain->add_option("PIPELINE", cmd->pipeline, "Pipeline file (YAML)")->required();
  explain->add_option("STAGE", cmd->stage, "Only this stage (default: every stage)");
  cmd->libs.AddTo(explain);
  AddCommon(explain, *cmd);
  explain->callback([cmd, &action] { action = [cmd] { return Explain(*cmd); }; });

  CLI::App* info = cache->add_subcommand("info", "Where the cache is, its entries and its size");
  AddCommon(info, *cmd);
  info->callback([cmd, &action] { action = [cmd] { return Info(*cmd); }; });

  CLI::App* prune = cache->add_subcommand(
      "prune",
      "Remove entries, oldest first, then every stored output no entry refers to (with no option: "
      "only those outputs and temporary files left by interrupted writers)");
  prune
      ->add_option("--older-than", cmd->older_than,
                   "Remove entries made longer ago than this, e.g. 12h, 7d, 2w")
      ->type_name("DURATION");
  prune
      ->add_option("--max-size", cmd->max_size,
                   "Then remove the oldest entries until the cache holds at most this much, e.g. "
                   "500MiB, 10GiB")
      ->type_name("BYTES");
  AddCommon(prune, *cmd);
  prune->callback([cmd, &action] { action = [cmd] { return Prune(*cmd); }; });
}

}  // namespace stagekit::cli
