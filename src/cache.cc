// The content-addressed stage cache on disk (see stagekit/cache.h).
#include "stagekit/cache.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iostream>
#include <mutex>
#include <random>
#include <set>
#include <tuple>

#include "util/digest.h"
#include "util/fd.h"
#include "util/files.h"
#include "util/text.h"

namespace stagekit {

namespace fs = std::filesystem;
using util::IsTempName;
using util::UniqueFd;
using util::WriteAllFd;
using util::WriteFileAtomically;

namespace {

constexpr std::string_view kSha256Prefix = "sha256:";

bool IsHex64(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool ValidDigest(std::string_view digest) {
  return digest.substr(0, kSha256Prefix.size()) == kSha256Prefix &&
         IsHex64(digest.substr(kSha256Prefix.size()));
}

// "sha256:ab12cd34ef56.." for messages.
std::string ShortDigest(const std::string& digest) {
  if (!ValidDigest(digest)) return digest;
  return digest.substr(0, kSha256Prefix.size() + 12) + "..";
}

std::string Quote(const std::string& s) { return "'" + s + "'"; }

struct Copied {
  std::string digest;  // "sha256:<hex>"
  std::uint64_t size = 0;
};

// Copies everything `in` holds to a new temporary beside `target` (its path in
// `made`), hashing the bytes as they pass. On error the temporary is removed.
Result<Copied> CopyHashing(int in, const fs::path& from, const fs::path& target, mode_t mode,
                           fs::path* made) {
  auto temp = util::CreateTempBeside(target, mode);
  if (!temp.ok()) return temp.status();
  UniqueFd out = std::move(temp->first);
  const fs::path to = std::move(temp->second);
  *made = to;
  util::Sha256Stream hash;
  Copied copied;
  std::vector<char> buf(1 << 16);
  Status status;
  for (;;) {
    ssize_t n = ::read(in, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      status =
          Status(Code::kInputError, "cannot read " + from.string() + ": " + std::strerror(errno));
      break;
    }
    if (n == 0) break;
    hash.Update(std::string_view(buf.data(), static_cast<std::size_t>(n)));
    copied.size += static_cast<std::uint64_t>(n);
    status = WriteAllFd(out.get(), buf.data(), static_cast<std::size_t>(n), to);
    if (!status.ok()) break;
  }
  if (status.ok() && ::close(out.Release()) != 0) {
    status =
        Status(Code::kOutputError, "cannot write " + to.string() + ": " + std::strerror(errno));
  }
  if (!status.ok()) {
    std::error_code ec;
    fs::remove(to, ec);
    return status;
  }
  copied.digest = std::string(kSha256Prefix) + util::HexDigest(hash.Final());
  return copied;
}

// File digests, memoised for the process by (path, device, inode, size,
// mtime): a pipeline that reads one corpus in many stages hashes it once, and
// a file rewritten in place gets a new mtime (and usually a new size).
using FileId = std::tuple<std::string, dev_t, ino_t, off_t, std::int64_t>;

std::mutex g_file_mu;
std::map<FileId, std::string>& FileDigests() {
  static auto* digests = new std::map<FileId, std::string>();  // never destroyed: used by threads
  return *digests;
}

FileId IdOf(const fs::path& path, const struct stat& st) {
  return FileId{path.string(), st.st_dev, st.st_ino, st.st_size,
                static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

// Records that the file `path`, as `st` describes it, holds bytes of `digest`.
void RememberDigest(const fs::path& path, const struct stat& st, const std::string& digest) {
  std::lock_guard<std::mutex> lock(g_file_mu);
  FileDigests()[IdOf(path, st)] = digest;
}

Result<std::string> FileDigest(const fs::path& path, const CancelFlag* cancel = nullptr) {
  // The common case, a file already hashed, costs one stat.
  if (struct stat st{}; ::stat(path.c_str(), &st) == 0) {
    std::lock_guard<std::mutex> lock(g_file_mu);
    auto it = FileDigests().find(IdOf(path, st));
    if (it != FileDigests().end()) return it->second;
  }
  // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  if (!fd) {
    return Status(Code::kInputError, "cannot read " + path.string() + ": " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return Status(Code::kInputError, "cannot stat " + path.string() + ": " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    return Status(Code::kInputError,
                  path.string() +
                      " is not a regular file (a device, FIFO, socket or folder); "
                      "inputs must be regular files");
  }
  ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) & ~O_NONBLOCK);
  // Keyed by what was opened and hashed, not by the stat above.
  const FileId id = IdOf(path, st);
  auto hashed = util::Sha256Fd(fd.get(), path, cancel);
  if (!hashed.ok()) return hashed.status();
  std::string digest = std::string(kSha256Prefix) + util::HexDigest(hashed->first);
  std::lock_guard<std::mutex> lock(g_file_mu);
  FileDigests()[id] = digest;
  return digest;
}

// Lines describing how two JSON values differ, with dotted paths.
void DiffJson(const std::string& path, const Json& a, const Json& b,
              std::vector<std::string>& out) {
  auto show = [](const Json& v) {
    std::string s = CanonicalJson(v);
    if (s.size() > 48) s = s.substr(0, 45) + "...";
    return s;
  };
  if (a.is_object() && b.is_object()) {
    std::set<std::string> keys;
    for (const auto& [k, v] : a.items()) keys.insert(k);
    for (const auto& [k, v] : b.items()) keys.insert(k);
    for (const std::string& k : keys) {
      const std::string sub = path + "." + k;
      const bool in_a = a.contains(k), in_b = b.contains(k);
      if (in_a && !in_b) {
        out.push_back(sub + " removed (was " + show(a[k]) + ")");
      } else if (!in_a && in_b) {
        out.push_back(sub + " added (" + show(b[k]) + ")");
      } else {
        DiffJson(sub, a[k], b[k], out);
      }
    }
    return;
  }
  if (CanonicalJson(a) != CanonicalJson(b)) out.push_back(path + " " + show(a) + " -> " + show(b));
}

std::string PointerName(const std::string& pipeline, const std::string& instance) {
  std::string id = pipeline;
  id.push_back('\0');
  id += instance;
  return util::HexDigest(util::Sha256(id)) + ".json";
}

}  // namespace

// ---------------------------------------------------------------------------
// Key parts

Json CacheKeyParts::Hashed() const {
  return Json{{"format", format}, {"stage", stage}, {"instance", instance}, {"library", library},
              {"inputs", inputs}, {"job", job},     {"kwargs", kwargs}};
}

Json CacheKeyParts::ToJson() const {
  Json j = Hashed();
  j["library_path"] = library_path;
  j["input_sources"] = input_sources;
  return j;
}

Result<CacheKeyParts> CacheKeyParts::FromJson(const Json& json) {
  try {
    CacheKeyParts p;
    p.format = json.at("format").get<int>();
    p.stage = json.at("stage").get<std::string>();
    p.instance = json.at("instance").get<std::string>();
    p.library = json.at("library").get<std::string>();
    p.inputs = json.at("inputs").get<std::map<std::string, std::string>>();
    p.job = json.at("job");
    p.kwargs = json.at("kwargs");
    p.library_path = json.value("library_path", "");
    if (json.contains("input_sources")) {
      p.input_sources = json.at("input_sources").get<std::map<std::string, std::string>>();
    }
    return p;
  } catch (const std::exception& e) {
    return Status(Code::kBadRequest, std::string("malformed cache key parts: ") + e.what());
  }
}

std::string CacheKeyParts::Key() const {
  return util::HexDigest(util::Sha256(CanonicalJson(Hashed())));
}

std::vector<std::string> DescribeKeyChange(const CacheKeyParts& before, const CacheKeyParts& now) {
  std::vector<std::string> out;
  if (before.format != now.format) {
    out.push_back("the cache format changed (" + std::to_string(before.format) + " -> " +
                  std::to_string(now.format) + ")");
  }
  if (before.stage != now.stage) {
    out.push_back("stage changed " + Quote(before.stage) + " -> " + Quote(now.stage));
  }
  if (before.instance != now.instance) {
    out.push_back("instance name changed " + Quote(before.instance) + " -> " + Quote(now.instance));
  }
  if (before.library != now.library) {
    std::string line =
        "stage library changed " + ShortDigest(before.library) + " -> " + ShortDigest(now.library);
    if (!now.library_path.empty()) line += " (" + now.library_path + ")";
    out.push_back(line);
  }
  std::set<std::string> names;
  for (const auto& [k, v] : before.inputs) names.insert(k);
  for (const auto& [k, v] : now.inputs) names.insert(k);
  for (const std::string& name : names) {
    auto b = before.inputs.find(name);
    auto n = now.inputs.find(name);
    auto src = now.input_sources.find(name);
    const std::string where = src != now.input_sources.end() ? " (" + src->second + ")" : "";
    if (b == before.inputs.end()) {
      out.push_back("input " + Quote(name) + " added" + where);
    } else if (n == now.inputs.end()) {
      out.push_back("input " + Quote(name) + " removed");
    } else if (b->second != n->second) {
      out.push_back("input " + Quote(name) + " bytes changed " + ShortDigest(b->second) + " -> " +
                    ShortDigest(n->second) + where);
    }
  }
  DiffJson("job", before.job, now.job, out);
  DiffJson("kwargs", before.kwargs, now.kwargs, out);
  if (out.empty() && before.Key() != now.Key()) out.push_back("the cache key changed");
  return out;
}

std::string StageExplanation::Summary() const {
  if (cached) return "cached (made by " + made_by + " run at " + created + ")";
  // A collect of 100,000 instances has as many reasons: the line names a
  // few and counts the rest (--json lists every one).
  constexpr std::size_t kShown = 5;
  std::string s = "will run because ";
  for (std::size_t i = 0; i < reasons.size() && i < kShown; ++i) {
    if (i > 0) s += "; ";
    s += reasons[i];
  }
  if (reasons.size() > kShown) {
    s += "; and " + std::to_string(reasons.size() - kShown) + " more reasons (--json lists all)";
  }
  return s;
}

Json StageExplanation::ToJson() const {
  Json j{{"name", name},
         {"stage", stage},
         {"cached", cached},
         {"key", key.empty() ? Json(nullptr) : Json(key)},
         {"summary", Summary()},
         {"reasons", reasons},
         {"parts", parts ? parts->ToJson() : Json(nullptr)}};
  if (cached) {
    j["made_by"] = made_by;
    j["created"] = created;
    j["output_digest"] = output_digest;
  }
  return j;
}

// ---------------------------------------------------------------------------
// DiskCache

struct DiskCache::Impl {
  fs::path dir;
  Options options;
  std::mutex mu;
  std::set<std::string> warned;
  std::map<std::string, fs::path> created_dirs;  // fan-out directories known to exist
  std::atomic<std::uint64_t> hits{0}, stores{0};
  // Keys taken by Prepare, with the input files as they were then.
  struct Pending {
    CacheKeyParts parts;
    std::map<std::string, FileId> files;  // input name -> file as hashed
  };
  std::map<std::string, Pending> pending;  // by token
  std::uint64_t next_token = 1;

  void Warn(const std::string& message) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!warned.insert(message).second) return;
    }
    if (options.warn) {
      options.warn("cache: " + message);
    } else {
      std::cerr << "stagekit: warning: cache: " + message + "\n" << std::flush;
    }
  }

  const Registry& registry() const {
    return options.registry != nullptr ? *options.registry : Registry::Global();
  }

  fs::path BlobPath(const std::string& digest) const {
    const std::string hex = digest.substr(kSha256Prefix.size());
    return dir / "blobs" / hex.substr(0, 2) / hex;
  }
  fs::path EntryPath(const std::string& key) const {
    return dir / "entries" / key.substr(0, 2) / (key + ".json");
  }
  fs::path PointerPath(const std::string& instance) const {
    return dir / "last" / PointerName(options.pipeline, instance);
  }

  Status EnsureDir(const fs::path& d) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (created_dirs.count(d.string()) != 0) return OkStatus();
    }
    std::error_code ec;
    fs::create_directories(d, ec);
    if (ec && !fs::is_directory(d)) {
      return Status(Code::kOutputError, "cannot create " + d.string() + ": " + ec.message());
    }
    std::lock_guard<std::mutex> lock(mu);
    created_dirs.emplace(d.string(), d);
    return OkStatus();
  }

  Result<CacheKeyParts> Compute(const std::string& stage, const std::string& instance,
                                const std::map<std::string, InputRef>& inputs, const JobSpec& job,
                                const Json& kwargs,
                                const std::map<std::string, std::string>& upstream) {
    CacheKeyParts p;
    p.stage = stage;
    p.instance = instance.empty() ? stage : instance;
    const Registry::Entry* entry = registry().Find(stage);
    if (entry == nullptr) {
      return Status(Code::kUnknownStage,
                    "stage " + Quote(stage) + " is not registered; load its library");
    }
    fs::path lib = entry->library.empty() ? fs::path("/proc/self/exe") : fs::path(entry->library);
    auto lib_digest = FileDigest(lib);
    if (!lib_digest.ok()) {
      return Status(Code::kLibraryError, "cannot hash the library of stage " + Quote(stage) + ": " +
                                             lib_digest.status().message());
    }
    p.library = *lib_digest;
    std::error_code ec;
    p.library_path = entry->library.empty() ? fs::read_symlink(lib, ec).string() : lib.string();
    for (const auto& [name, ref] : inputs) {
      if (!ref.from_stage.empty()) {
        auto it = upstream.find(name);
        if (it == upstream.end() || !ValidDigest(it->second)) {
          return Status(Code::kInternal, "the digest of input " + Quote(name) + " (output of " +
                                             Quote(ref.from_stage) + ") is not known");
        }
        p.inputs[name] = it->second;
        p.input_sources[name] = "output of " + Quote(ref.from_stage);
      } else {
        auto digest = FileDigest(ref.file, options.cancel);
        if (!digest.ok()) return digest.status();
        p.inputs[name] = *digest;
        p.input_sources[name] = ref.file.string();
      }
    }
    p.job = job.ToJson();
    p.kwargs = kwargs;
    return p;
  }

  struct Entry {
    std::string key;
    CacheKeyParts parts;
    std::string digest;
    std::uint64_t size = 0;
    RunStats stats;
    std::string created;
  };

  // nullopt on a miss; an unreadable or inconsistent entry is removed with a
  // warning.
  std::optional<Entry> ReadEntry(const std::string& key, const std::string& instance) {
    const fs::path path = EntryPath(key);
    auto text = util::ReadFileIfExists(path);
    if (!text.ok()) {
      Warn(text.status().message() + "; treating stage " + Quote(instance) + " as not cached");
      return std::nullopt;
    }
    if (!text->has_value()) return std::nullopt;
    std::string problem;
    Entry e;
    try {
      Json j = Json::parse(**text);
      auto parts = CacheKeyParts::FromJson(j.at("parts"));
      auto stats = RunStats::FromJson(j.at("stats"));
      e.key = key;
      e.digest = j.at("output").at("digest").get<std::string>();
      e.size = j.at("output").at("size").get<std::uint64_t>();
      e.created = j.value("created", "");
      if (!parts.ok()) {
        problem = parts.status().message();
      } else if (!stats.ok()) {
        problem = stats.status().message();
      } else if (parts->Key() != key) {
        problem = "its key parts do not hash to its name";
      } else if (!ValidDigest(e.digest)) {
        problem = "its output digest is malformed";
      } else if (stats->output_digest != e.digest || stats->bytes_out != e.size) {
        problem = "its run's output digest or size (" + stats->output_digest + ", " +
                  std::to_string(stats->bytes_out) + " bytes) disagrees with its output's (" +
                  e.digest + ", " + std::to_string(e.size) + " bytes)";
      } else if (stats->stage != parts->stage) {
        problem = "its run is of stage '" + stats->stage + "', its key of '" + parts->stage + "'";
      } else {
        e.parts = std::move(parts).value();
        e.stats = std::move(stats).value();
      }
    } catch (const std::exception& ex) {
      problem = ex.what();
    }
    if (!problem.empty()) {
      std::error_code ec;
      fs::remove(path, ec);
      Warn("removed the unreadable entry " + path.string() + " (" + problem + "); stage " +
           Quote(instance) + " will run");
      return std::nullopt;
    }
    return e;
  }

  void RemoveEntry(const std::string& key) {
    std::error_code ec;
    fs::remove(EntryPath(key), ec);
  }

  struct Pointer {
    std::string key;
    CacheKeyParts parts;
  };
  std::optional<Pointer> ReadPointer(const std::string& instance) {
    auto text = util::ReadFileIfExists(PointerPath(instance));
    if (!text.ok() || !text->has_value()) return std::nullopt;
    try {
      Json j = Json::parse(**text);
      auto parts = CacheKeyParts::FromJson(j.at("parts"));
      if (!parts.ok()) return std::nullopt;
      return Pointer{j.at("key").get<std::string>(), std::move(parts).value()};
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }
  void WritePointer(const std::string& key, const CacheKeyParts& parts) {
    auto current = ReadPointer(parts.instance);
    if (current && current->key == key) return;
    if (Status s = EnsureDir(dir / "last"); !s.ok()) return Warn(s.message());
    Json j{{"pipeline", options.pipeline},
           {"instance", parts.instance},
           {"key", key},
           {"parts", parts.ToJson()},
           {"updated", util::IsoTime(std::chrono::system_clock::now())}};
    if (Status s = WriteFileAtomically(PointerPath(parts.instance), j.dump(1) + "\n"); !s.ok()) {
      Warn(s.message());
    }
  }

  // Whether `path` already holds exactly these bytes.
  static bool HoldsDigest(const fs::path& path, const std::string& digest, std::uint64_t size) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return false;
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) ||
        static_cast<std::uint64_t>(st.st_size) != size) {
      return false;
    }
    auto hashed = util::Sha256Fd(fd.get(), path);
    if (!hashed.ok() || std::string(kSha256Prefix) + util::HexDigest(hashed->first) != digest) {
      return false;
    }
    RememberDigest(path, st, digest);
    return true;
  }

  // Puts the entry's output at `output`, verifying its digest; false (and the
  // bad entry removed) when that is not possible.
  bool Restore(const Entry& e, const fs::path& output, const std::string& instance) {
    if (HoldsDigest(output, e.digest, e.size)) return true;
    const fs::path blob = BlobPath(e.digest);
    UniqueFd in(::open(blob.c_str(), O_RDONLY | O_CLOEXEC));
    if (!in) {
      const int err = errno;
      if (err == ENOENT) {
        RemoveEntry(e.key);
        Warn("the output of stage " + Quote(instance) + " (" + ShortDigest(e.digest) +
             ") is missing from the cache; removed its entry, the stage will run");
      } else {
        Warn("cannot read " + blob.string() + ": " + std::strerror(err) + "; stage " +
             Quote(instance) + " will run");
      }
      return false;
    }
    fs::path tmp;
    auto copied = CopyHashing(in.get(), blob, output, 0644, &tmp);
    if (!copied.ok()) {
      Warn("cannot restore stage " + Quote(instance) + ": " + copied.status().message() +
           "; the stage will run");
      return false;
    }
    std::error_code ec;
    if (copied->digest != e.digest || copied->size != e.size) {
      fs::remove(tmp, ec);
      fs::remove(blob, ec);
      RemoveEntry(e.key);
      Warn("the cached output of stage " + Quote(instance) + " is corrupt (" +
           ShortDigest(copied->digest) + ", " + std::to_string(copied->size) + " bytes; expected " +
           ShortDigest(e.digest) + ", " + std::to_string(e.size) +
           " bytes); removed it, the stage will run");
      return false;
    }
    // The restored file keeps the temporary's inode and mtime: a stage that
    // reads it next is keyed on these bytes without hashing them again.
    struct stat st {};
    const bool known = ::stat(tmp.c_str(), &st) == 0;
    if (Status s = util::PublishFile(tmp, output, "cannot restore stage " + Quote(instance));
        !s.ok()) {
      fs::remove(tmp, ec);
      Warn(s.message() + "; the stage will run");
      return false;
    }
    if (known) RememberDigest(output, st, e.digest);
    return true;
  }

  // The size of the blob, which holds the bytes of `output` after this.
  Result<std::uint64_t> StoreBlob(const fs::path& output, const std::string& digest,
                                  std::uint64_t size) {
    const fs::path blob = BlobPath(digest);
    std::error_code ec;
    // The bytes stored are always the bytes read here, checked against the
    // digest the run reported: another run writing the same output folder
    // may have replaced the file since the stage wrote it.
    UniqueFd in(::open(output.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    struct stat st {};
    if (!in || ::fstat(in.get(), &st) != 0) {
      return Status(Code::kInputError,
                    "cannot read " + output.string() + ": " + std::strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) {
      return Status(Code::kInputError, output.string() + " is not a regular file");
    }
    auto changed = [&](const std::string& now) {
      return Status(Code::kStageFailed, output.string() + " changed after the stage wrote it (" +
                                            ShortDigest(digest) + ", now " + ShortDigest(now) +
                                            "; is another run writing the same output folder?)");
    };
    // Content-addressed: same name, same bytes (a restore verifies them). One
    // of the wrong size is replaced.
    if (fs::file_size(blob, ec) == size && !ec) {
      auto hashed = util::Sha256Fd(in.get(), output);
      if (!hashed.ok()) return hashed.status();
      const std::string now = std::string(kSha256Prefix) + util::HexDigest(hashed->first);
      if (now != digest) return changed(now);
      RememberDigest(output, st, digest);
      return size;
    }
    if (Status s = EnsureDir(blob.parent_path()); !s.ok()) return s;
    fs::path tmp;
    auto copied = CopyHashing(in.get(), output, blob, 0444, &tmp);
    if (!copied.ok()) return copied.status();
    if (copied->digest != digest) {
      fs::remove(tmp, ec);
      return changed(copied->digest);
    }
    RememberDigest(output, st, digest);
    // Another writer may have renamed the same bytes into place meanwhile:
    // either copy is as good as the other.
    fs::rename(tmp, blob, ec);
    if (ec) {
      fs::remove(tmp, ec);
      return Status(Code::kOutputError, "cannot write " + blob.string() + ": " + ec.message());
    }
    return copied->size;
  }
};

DiskCache::DiskCache(fs::path dir, Options options)
    : dir_(std::move(dir)), impl_(std::make_shared<Impl>()) {
  impl_->dir = dir_;
  impl_->options = std::move(options);
}

Result<std::unique_ptr<DiskCache>> DiskCache::Open(const fs::path& dir, Options options) {
  std::error_code ec;
  fs::path abs = fs::absolute(dir, ec).lexically_normal();
  if (ec) abs = dir;
  for (const char* sub : {"blobs", "entries", "last"}) {
    fs::create_directories(abs / sub, ec);
    if (ec && !fs::is_directory(abs / sub)) {
      return Status(Code::kOutputError, "cannot create the cache directory " +
                                            (abs / sub).string() + ": " + ec.message() +
                                            "; choose another with --cache-dir or "
                                            "$STAGEKIT_CACHE_DIR, or pass --no-cache");
    }
  }
  return std::unique_ptr<DiskCache>(new DiskCache(abs, std::move(options)));
}

fs::path DiskCache::DefaultDir() { return util::UserCacheDir(); }

Result<CacheKeyParts> DiskCache::KeyParts(const PipelineStage& stage, const JobSpec& job,
                                          const std::map<std::string, std::string>& upstream) {
  return impl_->Compute(stage.stage, stage.name, stage.inputs, job, stage.kwargs, upstream);
}

std::string DiskCache::Prepare(const PipelineStage& stage, const StageRequest& request,
                               const std::map<std::string, std::string>& upstream) {
  return PrepareByReference(stage, request, upstream, {});
}

std::string DiskCache::PrepareByReference(const PipelineStage& stage, const StageRequest& request,
                                          const std::map<std::string, std::string>& upstream,
                                          const std::set<std::string>& by_reference) {
  Impl::Pending pending;
  // The files as they are before they are hashed: if one changes later, the
  // output is not stored under this key.
  for (const auto& [name, ref] : stage.inputs) {
    if (!ref.from_stage.empty()) continue;
    struct stat st {};
    if (::stat(ref.file.c_str(), &st) != 0) return "";  // the stage runs and reports it
    pending.files.emplace(name, IdOf(ref.file, st));
  }
  // An input that cannot be hashed: no key; the stage runs and reports it.
  auto parts = impl_->Compute(request.stage, stage.name, stage.inputs, request.job, request.kwargs,
                              upstream);
  if (!parts.ok()) return "";
  // An input another stage produced is keyed on the bytes at its path now,
  // the bytes this stage will read, not on the digest its producer reported:
  // another run writing the same output folder may have replaced the file
  // since. Its producer's store remembered the file, so this costs a stat.
  for (const auto& [name, ref] : stage.inputs) {
    if (ref.from_stage.empty()) continue;
    // Read from the executor's store, not from its file: its digest is it.
    if (by_reference.count(name) != 0) {
      if (upstream.count(name) == 0) return "";
      continue;
    }
    auto path = request.inputs.find(name);
    if (path == request.inputs.end()) return "";
    struct stat st {};
    if (::stat(path->second.c_str(), &st) != 0) return "";  // the stage runs and reports it
    auto actual = FileDigest(path->second, impl_->options.cancel);
    if (!actual.ok()) return "";
    std::string& keyed = parts->inputs[name];
    if (*actual != keyed) {
      impl_->Warn("input " + Quote(name) + " of stage " + Quote(stage.name) + " (" +
                  path->second.string() + ") is not the output " + Quote(ref.from_stage) +
                  " made in this run (" + ShortDigest(keyed) + ", the file holds " +
                  ShortDigest(*actual) +
                  "): another process wrote it meanwhile; give concurrent runs their own --out");
      keyed = *actual;
    }
    pending.files.emplace(name, IdOf(path->second, st));
  }
  pending.parts = std::move(parts).value();
  std::lock_guard<std::mutex> lock(impl_->mu);
  std::string token = std::to_string(impl_->next_token++);
  impl_->pending.emplace(token, std::move(pending));
  return token;
}

std::optional<RunStats> DiskCache::Lookup(const PipelineStage& stage, const StageRequest& request,
                                          const std::string& token) {
  CacheKeyParts parts;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    auto it = impl_->pending.find(token);
    if (it == impl_->pending.end()) return std::nullopt;
    parts = it->second.parts;
  }
  const std::string key = parts.Key();
  auto entry = impl_->ReadEntry(key, stage.name);
  if (!entry) return std::nullopt;
  if (!impl_->Restore(*entry, request.output, stage.name)) return std::nullopt;
  impl_->WritePointer(key, parts);
  ++impl_->hits;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->pending.erase(token);  // restored: nothing runs, nothing is stored
  }
  return entry->stats;
}

void DiskCache::Store(const PipelineStage& stage, const StageRequest& request,
                      const std::string& token, const RunStats* stats_in) {
  Impl::Pending pending;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    auto it = impl_->pending.find(token);
    if (it == impl_->pending.end()) return;
    pending = std::move(it->second);
    impl_->pending.erase(it);
  }
  if (stats_in == nullptr) return;  // the stage failed
  const RunStats& stats = *stats_in;
  for (const auto& [name, id] : pending.files) {
    const fs::path& file = std::get<0>(id);
    struct stat st {};
    if (::stat(file.c_str(), &st) != 0 || IdOf(file, st) != id) {
      impl_->Warn("stage " + Quote(stage.name) + " not cached: its input " + Quote(name) + " (" +
                  file.string() + ") changed while it ran; run it again to cache it");
      return;
    }
  }
  CacheKeyParts* parts = &pending.parts;
  if (!ValidDigest(stats.output_digest)) {
    impl_->Warn("stage " + Quote(stage.name) + " not cached: its output digest '" +
                stats.output_digest + "' is not a sha256 digest");
    return;
  }
  // Blob first, entry last: an entry is never visible before its bytes.
  auto size = impl_->StoreBlob(request.output, stats.output_digest, stats.bytes_out);
  if (!size.ok()) {
    impl_->Warn("stage " + Quote(stage.name) + " not cached: " + size.status().message());
    return;
  }
  const std::string key = parts->Key();
  const std::time_t now = std::time(nullptr);
  Json entry{{"format", CacheKeyParts::kFormat},
             {"key", key},
             {"parts", parts->ToJson()},
             {"output", {{"digest", stats.output_digest}, {"size", *size}}},
             {"stats", stats.ToJson()},
             {"pipeline", impl_->options.pipeline},
             {"created", util::IsoTime(std::chrono::system_clock::from_time_t(now))},
             {"created_unix", static_cast<std::int64_t>(now)}};
  const fs::path path = impl_->EntryPath(key);
  Status s = impl_->EnsureDir(path.parent_path());
  if (s.ok()) s = WriteFileAtomically(path, entry.dump(1) + "\n");
  if (!s.ok()) {
    impl_->Warn("stage " + Quote(stage.name) + " not cached: " + s.message());
    return;
  }
  impl_->WritePointer(key, *parts);
  ++impl_->stores;
}

std::vector<StageExplanation> DiskCache::Explain(const Pipeline& pipeline,
                                                 const std::string& only) {
  std::vector<StageExplanation> out;
  std::map<std::string, std::string> known;  // stage -> output digest of its cached entry
  // Dynamic foreach stages expanded from their producer's cached item list:
  // template name -> its instances.
  std::map<std::string, std::vector<std::string>> made;
  bool done = false;
  auto explain = [&](const PipelineStage& st) {
    StageExplanation ex;
    ex.name = st.name;
    ex.stage = st.stage;
    const auto pointer = impl_->ReadPointer(st.name);
    std::map<std::string, std::string> upstream;
    std::vector<std::string> pending;  // upstream stages that will run
    for (const auto& [name, ref] : st.inputs) {
      if (ref.from_stage.empty()) continue;
      auto it = known.find(ref.from_stage);
      if (it != known.end()) {
        upstream[name] = it->second;
        continue;
      }
      if (std::find(pending.begin(), pending.end(), ref.from_stage) == pending.end()) {
        pending.push_back(ref.from_stage);
      }
      // For comparing the other parts, assume the last value.
      if (pointer && pointer->parts.inputs.count(name) != 0) {
        upstream[name] = pointer->parts.inputs.at(name);
      } else {
        upstream[name] = std::string(kSha256Prefix) + std::string(64, '0');
      }
    }
    auto parts = impl_->Compute(st.stage, st.name, st.inputs, pipeline.job, st.kwargs, upstream);
    if (!parts.ok()) {
      ex.reasons.push_back(parts.status().message());
    } else if (pending.empty()) {
      ex.key = parts->Key();
      auto entry = impl_->ReadEntry(ex.key, st.name);
      std::error_code ec;
      if (entry && fs::file_size(impl_->BlobPath(entry->digest), ec) == entry->size && !ec) {
        ex.cached = true;
        ex.made_by = entry->stats.executor;
        ex.created = entry->created;
        ex.output_digest = entry->digest;
        known[st.name] = entry->digest;
      } else if (!pointer) {
        ex.reasons.push_back("never run before");
      } else if (pointer->key == ex.key) {
        ex.reasons.push_back("its cache entry is gone (pruned, or removed as corrupt)");
      } else {
        ex.reasons = DescribeKeyChange(pointer->parts, *parts);
      }
    } else {
      for (const std::string& up : pending) {
        ex.reasons.push_back("upstream " + Quote(up) +
                             " will run first, so its output is not known yet");
      }
      if (!pointer) {
        ex.reasons.push_back("never run before");
      } else {
        for (std::string& line : DescribeKeyChange(pointer->parts, *parts)) {
          ex.reasons.push_back(std::move(line));
        }
      }
    }
    if (parts.ok()) {
      // Digests assumed above for comparing are not facts: do not show them.
      for (const auto& [name, ref] : st.inputs) {
        if (!ref.from_stage.empty() && known.count(ref.from_stage) == 0) {
          parts->inputs[name] = "unknown until " + Quote(ref.from_stage) + " runs";
        }
      }
      ex.parts = std::move(parts).value();
    }
    if (only.empty() || only == st.name) out.push_back(std::move(ex));
    done = !only.empty() && only == st.name;
  };
  for (const PipelineStage& declared : pipeline.stages) {
    // Its collects from expanded stages made into inputs, as a run does.
    PipelineStage copy;
    const bool collects = std::any_of(declared.inputs.begin(), declared.inputs.end(),
                                      [](const auto& in) { return !in.second.collect.empty(); });
    if (collects) {
      copy = declared;
      for (const auto& [name, instances] : made) PointCollects(copy, name, instances);
    }
    const PipelineStage& st = collects ? copy : declared;
    if (st.foreach_from.empty()) {
      explain(st);
    } else if (auto items = known.find(st.foreach_from); items != known.end()) {
      // Its producer's output is in the cache: the instances a run would make.
      auto instances = ExpandDynamicStage(st, impl_->BlobPath(items->second));
      if (!instances.ok()) {
        StageExplanation ex;
        ex.name = st.name;
        ex.stage = st.stage;
        ex.reasons.push_back(instances.status().message());
        if (only.empty() || only == st.name) out.push_back(std::move(ex));
        continue;
      }
      std::vector<std::string>& names = made[st.name];
      for (const PipelineStage& instance : *instances) {
        names.push_back(instance.name);
        explain(instance);
        if (done) break;
      }
    } else {
      StageExplanation ex;
      ex.name = st.name;
      ex.stage = st.stage;
      ex.reasons.push_back("its instances are made from the items of " + Quote(st.foreach_from) +
                           ", which will run first, so they are not known yet");
      if (only.empty() || only == st.name) out.push_back(std::move(ex));
    }
    if (done) break;
  }
  return out;
}

namespace {

struct EntryFile {
  fs::path path;
  std::string digest;        // empty when unreadable
  std::int64_t created = 0;  // unix seconds
  std::uint64_t size = 0;
};

template <typename Fn>
void ForEachFile(const fs::path& root, Fn fn) {
  std::error_code ec;
  for (fs::recursive_directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code fec;
    if (it->is_regular_file(fec)) fn(it->path());
  }
}

}  // namespace

Result<CacheUsage> DiskCache::Usage() const {
  CacheUsage u;
  for (const char* sub : {"blobs", "entries", "last"}) {
    const std::string which = sub;
    ForEachFile(dir_ / sub, [&](const fs::path& p) {
      std::error_code fec;
      const std::uint64_t size = fs::file_size(p, fec);
      if (!fec) u.bytes += size;
      if (IsTempName(p.filename().string())) return;
      if (which == "blobs") ++u.blobs;
      if (which == "entries") ++u.entries;
    });
  }
  return u;
}

namespace {

// What a cache folder holds, as Prune sees it.
struct CacheListing {
  std::vector<EntryFile> entries;                  // oldest first
  std::map<std::string, std::uint64_t> blob_size;  // hex -> bytes
  std::uint64_t pointer_bytes = 0;
  std::vector<fs::path> temps;  // temporaries of writers, in any of the folders
};

CacheListing ListCache(const fs::path& dir) {
  CacheListing l;
  auto& temps = l.temps;
  auto& entries = l.entries;
  ForEachFile(dir / "entries", [&](const fs::path& p) {
    if (IsTempName(p.filename().string())) return temps.push_back(p);
    EntryFile e;
    e.path = p;
    std::error_code ec;
    e.size = fs::file_size(p, ec);
    auto text = util::ReadFileIfExists(p);
    try {
      if (text.ok() && text->has_value()) {
        Json j = Json::parse(**text);
        e.digest = j.at("output").at("digest").get<std::string>();
        e.created = j.at("created_unix").get<std::int64_t>();
        if (!ValidDigest(e.digest)) e.digest.clear();
      }
    } catch (const std::exception&) {
      e.digest.clear();
      e.created = 0;  // unreadable: the oldest of all
    }
    entries.push_back(std::move(e));
  });
  ForEachFile(dir / "blobs", [&](const fs::path& p) {
    const std::string name = p.filename().string();
    if (IsTempName(name)) return temps.push_back(p);
    std::error_code ec;
    l.blob_size[name] = fs::file_size(p, ec);
  });
  ForEachFile(dir / "last", [&](const fs::path& p) {
    if (IsTempName(p.filename().string())) return temps.push_back(p);
    std::error_code ec;
    l.pointer_bytes += fs::file_size(p, ec);
  });
  std::stable_sort(entries.begin(), entries.end(),
                   [](const EntryFile& a, const EntryFile& b) { return a.created < b.created; });
  return l;
}

// Temporary files of writers that died: this host's, as soon as their
// process is gone; other hosts' after an hour, far longer than any copy.
void RemoveDeadWritersTemps(const std::vector<fs::path>& temps, PruneReport& report) {
  for (const fs::path& t : temps) {
    struct stat st {};
    if (::lstat(t.c_str(), &st) != 0) continue;
    const auto mtime = std::chrono::system_clock::time_point(
        std::chrono::duration_cast<std::chrono::system_clock::duration>(
            std::chrono::seconds(st.st_mtim.tv_sec) +
            std::chrono::nanoseconds(st.st_mtim.tv_nsec)));
    std::error_code ec;
    if (util::IsStaleTemp(t.filename().string(), mtime, std::chrono::hours(1))) {
      const std::uint64_t size = fs::file_size(t, ec);
      if (fs::remove(t, ec)) report.bytes_freed += size;
    }
  }
}

}  // namespace

Result<PruneReport> DiskCache::Prune(const PruneOptions& options) {
  PruneReport report;
  const auto now = std::chrono::system_clock::now();
  const std::int64_t now_s =
      std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  CacheListing listing = ListCache(dir_);
  std::vector<EntryFile>& entries = listing.entries;
  std::map<std::string, std::uint64_t>& blob_size = listing.blob_size;
  std::map<std::string, int> refs;  // blob hex -> entries that keep it
  for (const EntryFile& e : entries) {
    if (!e.digest.empty()) ++refs[e.digest.substr(kSha256Prefix.size())];
  }
  std::uint64_t total = listing.pointer_bytes;
  for (const EntryFile& e : entries) total += e.size;
  for (const auto& [hex, size] : blob_size) total += size;
  std::uint64_t blob_bytes_unreferenced = 0;
  for (const auto& [hex, size] : blob_size) {
    if (refs.count(hex) == 0) blob_bytes_unreferenced += size;
  }
  // Blobs no entry refers to go anyway, so they do not count against max_bytes.
  std::uint64_t kept = total - blob_bytes_unreferenced;

  auto remove_entry = [&](EntryFile& e) {
    std::error_code ec;
    fs::remove(e.path, ec);
    ++report.entries_removed;
    report.bytes_freed += e.size;
    kept -= e.size;
    if (!e.digest.empty()) {
      const std::string hex = e.digest.substr(kSha256Prefix.size());
      if (--refs[hex] == 0) {
        refs.erase(hex);
        auto it = blob_size.find(hex);
        if (it != blob_size.end()) kept -= it->second;
      }
    }
    e.path.clear();
  };
  for (EntryFile& e : entries) {
    const bool too_old = options.older_than && now_s - e.created > options.older_than->count();
    const bool unreadable = e.digest.empty();
    const bool over = options.max_bytes && kept > *options.max_bytes;
    if (too_old || unreadable || over) remove_entry(e);
  }
  for (const auto& [hex, size] : blob_size) {
    if (refs.count(hex) != 0) continue;
    std::error_code ec;
    if (fs::remove(dir_ / "blobs" / hex.substr(0, 2) / hex, ec)) {
      ++report.blobs_removed;
      report.bytes_freed += size;
    }
  }
  RemoveDeadWritersTemps(listing.temps, report);
  auto left = Usage();
  if (!left.ok()) return left.status();
  report.left = *left;
  return report;
}

std::uint64_t DiskCache::hits() const { return impl_->hits; }
std::uint64_t DiskCache::stores() const { return impl_->stores; }

}  // namespace stagekit
