#include <dlfcn.h>

#include <algorithm>
#include <filesystem>

#include "stagekit/stage.h"

namespace stagekit {
namespace {

std::string LibraryOf(StageFn fn) {
  Dl_info info{};
  if (fn != nullptr && dladdr(reinterpret_cast<void*>(fn), &info) != 0 &&
      info.dli_fname != nullptr) {
    return info.dli_fname;
  }
  return "";
}

std::string Site(const Registry::Entry& e) {
  std::string site = e.file + ":" + std::to_string(e.line);
  if (!e.library.empty()) site += " in " + e.library;
  return site;
}

std::size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

}  // namespace

void Registry::Add(std::string_view name, StageFn fn, const char* file, int line) noexcept {
  AddWarm(name, fn, nullptr, file, line);
}

void Registry::AddWarm(std::string_view name, StageFn fn, const WarmStageOps* warm,
                       const char* file, int line) noexcept {
  try {
    Entry entry{std::string(name), fn, file != nullptr ? file : "", line, LibraryOf(fn), warm};
    std::lock_guard<std::mutex> lock(mu_);
    if (entry.name.empty()) {
      problems_.push_back("a stage registered at " + Site(entry) + " has an empty name");
      return;
    }
    auto [it, inserted] = entries_.emplace(entry.name, entry);
    if (!inserted) {
      problems_.push_back("stage '" + entry.name + "' is registered twice: at " + Site(it->second) +
                          " and at " + Site(entry) +
                          "; rename one of them (the first one stays in effect)");
    }
  } catch (...) {
    // Registration runs during static initialisation: never throw from here.
    // Only allocation can fail above, and then there is nothing useful to do.
  }
}

const Registry::Entry* Registry::Find(std::string_view name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

std::vector<Registry::Entry> Registry::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Entry> out;
  out.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) out.push_back(entry);
  return out;
}

std::vector<std::string> Registry::Problems() const {
  std::lock_guard<std::mutex> lock(mu_);
  return problems_;
}

std::vector<std::string> Registry::Suggest(std::string_view name, std::size_t max) const {
  std::vector<std::pair<std::size_t, std::string>> scored;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [candidate, entry] : entries_) {
      std::size_t d = EditDistance(name, candidate);
      bool contains = !name.empty() && (candidate.find(name) != std::string::npos ||
                                        name.find(candidate) != std::string::npos);
      if (d <= std::max<std::size_t>(2, name.size() / 3) || contains) {
        scored.emplace_back(d, candidate);
      }
    }
  }
  std::sort(scored.begin(), scored.end());
  std::vector<std::string> out;
  for (std::size_t i = 0; i < scored.size() && i < max; ++i) out.push_back(scored[i].second);
  return out;
}

namespace internal {
Json WarmSetupOf(const Json& kwargs) {
  if (kwargs.is_object()) {
    auto it = kwargs.find("setup");
    if (it != kwargs.end()) return *it;
  }
  return Json::object();
}
}  // namespace internal

Registry& Registry::Global() {
  static Registry* registry = new Registry();  // never destroyed: used by static initialisers
  return *registry;
}

Status LoadStageLibrary(const std::filesystem::path& path, Registry& registry) {
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(path, ec);
  if (ec || !std::filesystem::is_regular_file(abs, ec)) {
    return Status(Code::kLibraryError,
                  "stage library '" + path.string() + "' does not exist; build it or fix the path");
  }
  std::size_t before = registry.Problems().size();
  // RTLD_NOW: report missing symbols now, not in the middle of a run.
  void* handle = dlopen(abs.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* err = dlerror();
    return Status(Code::kLibraryError, "cannot load stage library '" + path.string() +
                                           "': " + (err != nullptr ? err : "unknown error"));
  }
  std::vector<std::string> problems = registry.Problems();
  if (problems.size() > before) {
    return Status(Code::kLibraryError,
                  "stage library '" + path.string() + "': " + problems[before]);
  }
  return OkStatus();
}

}  // namespace stagekit
