#include "deploy/package.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>

#include "util/digest.h"
#include "util/fd.h"
#include "util/files.h"
#include "util/outcome.h"
#include "util/text.h"
#include "util/threads.h"

namespace fs = std::filesystem;

namespace stagekit::deploy {
namespace {

std::string Join(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return name.empty() ? dir : dir + "/" + name;
}

std::string ModeString(const TreeEntry& e) { return e.directory || e.executable ? "0755" : "0644"; }

// A set of patterns anchored at a directory of the walk ("" is its root).
struct Anchored {
  std::shared_ptr<const PatternSet> set;
  std::string anchor;
};

class Walker {
 public:
  Walker(const WalkOptions& options, std::string dest, std::string rule, fs::path link_root,
         std::vector<Excluded>& excluded,
         std::function<Status(const std::string&, const fs::path&, const struct stat&)> add)
      : options_(options),
        dest_(std::move(dest)),
        rule_(std::move(rule)),
        link_root_(std::move(link_root)),
        excluded_(excluded),
        add_(std::move(add)) {
    for (const auto& set : options.excludes) sets_.push_back({set, ""});
  }

  Status Walk(const fs::path& path, const std::string& rel) {
    struct stat lst {};
    if (::lstat(path.c_str(), &lst) != 0) {
      return Status(Code::kInputError,
                    "cannot read " + path.string() + ": " + std::strerror(errno));
    }
    struct stat st = lst;
    bool dangling = false;
    if (S_ISLNK(lst.st_mode) && ::stat(path.c_str(), &st) != 0) dangling = true;
    const bool is_dir = !dangling && S_ISDIR(st.st_mode);

    size_t pushed = 0;
    if (is_dir) {
      for (const char* name : {".gitignore", ".rayignore"}) {
        if (std::string_view(name) == ".gitignore" && !options_.gitignore) continue;
        fs::path file = path / name;
        struct stat fst {};
        if (::stat(file.c_str(), &fst) != 0 || !S_ISREG(fst.st_mode)) continue;
        auto set = PatternSet::FromFile(file, Join(rel, name));
        if (!set.ok()) return set.status();
        sets_.push_back({*set, rel});
        ++pushed;
      }
    }
    Status status = Visit(path, rel, lst, st, dangling, is_dir);
    sets_.resize(sets_.size() - pushed);
    return status;
  }

 private:
  // Whether an ignore pattern excludes `rel` (recorded in excluded_ if so).
  Status Exclude(const std::string& rel, bool& excluded) {
    excluded = false;
    for (const Anchored& a : sets_) {
      std::string_view relative;
      if (rel == a.anchor) {
        relative = ".";
      } else {
        relative = a.anchor.empty() ? std::string_view(rel)
                                    : std::string_view(rel).substr(a.anchor.size() + 1);
      }
      const std::string* pattern = nullptr;
      try {
        pattern = a.set->Match(relative);
      } catch (const std::runtime_error& e) {
        return Status(Code::kUsage, a.set->origin() + ": a pattern is too complex to match '" +
                                        std::string(relative) + "' (" + e.what() +
                                        "); simplify it (fewer '*' in one line)");
      }
      if (pattern != nullptr) {
        excluded_.push_back({Join(dest_, rel), *pattern, a.set->origin()});
        excluded = true;
        return OkStatus();
      }
    }
    return OkStatus();
  }

  Status Visit(const fs::path& path, const std::string& rel, const struct stat& lst,
               const struct stat& st, bool dangling, bool is_dir) {
    bool excluded = false;
    if (Status s = Exclude(rel, excluded); !s.ok() || excluded) return s;
    const std::string shown = rel.empty() ? path.string() : rel;
    if (S_ISLNK(lst.st_mode)) {
      std::error_code ec;
      fs::path target = fs::weakly_canonical(path, ec);
      if (dangling || ec) {
        return Status(Code::kInputError,
                      "symlink " + shown +
                          " points to nothing; remove it or exclude it (--exclude '" + shown +
                          "')");
      }
      if (!util::IsWithin(target, link_root_)) {
        return Status(Code::kInputError, "symlink " + shown +
                                             " points outside the shipped tree (to " +
                                             target.string() +
                                             "); copy the file in, ship it with --include, or "
                                             "exclude the link (--exclude '" +
                                             shown + "')");
      }
      if (is_dir && std::find(stack_.begin(), stack_.end(), std::make_pair(st.st_dev, st.st_ino)) !=
                        stack_.end()) {
        return Status(Code::kInputError, "symlink " + shown + " loops back to " + target.string() +
                                             "; exclude it (--exclude '" + shown + "')");
      }
    }
    if (!is_dir && !S_ISREG(st.st_mode)) {
      return Status(Code::kInputError, shown +
                                           " is not a regular file (a FIFO, socket or device); "
                                           "exclude it (--exclude '" +
                                           shown + "')");
    }
    if (Status s = add_(rel, path, st); !s.ok()) return s;
    if (!is_dir) return OkStatus();

    stack_.emplace_back(st.st_dev, st.st_ino);
    std::vector<std::string> names;
    {
      DIR* dir = ::opendir(path.c_str());
      if (dir == nullptr) {
        stack_.pop_back();
        return Status(Code::kInputError,
                      "cannot list " + path.string() + ": " + std::strerror(errno));
      }
      while (const dirent* d = ::readdir(dir)) {
        if (std::strcmp(d->d_name, ".") != 0 && std::strcmp(d->d_name, "..") != 0) {
          names.emplace_back(d->d_name);
        }
      }
      ::closedir(dir);
    }
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
      if (Status s = Walk(path / name, Join(rel, name)); !s.ok()) {
        stack_.pop_back();
        return s;
      }
    }
    stack_.pop_back();
    return OkStatus();
  }

  const WalkOptions& options_;
  std::string dest_;
  std::string rule_;
  fs::path link_root_;
  std::vector<Excluded>& excluded_;
  std::function<Status(const std::string&, const fs::path&, const struct stat&)> add_;
  std::vector<Anchored> sets_;
  std::vector<std::pair<dev_t, ino_t>> stack_;  // the folders being walked, for loops
};

}  // namespace

Status Tree::AddDirectoryEntry(const std::string& dest, const fs::path& source,
                               const std::string& rule) {
  // Every ancestor first, so the tree never has a file without its folder.
  for (size_t pos = dest.find('/'); pos != std::string::npos; pos = dest.find('/', pos + 1)) {
    std::string parent = dest.substr(0, pos);
    auto [it, inserted] = entries_.try_emplace(parent);
    if (inserted) {
      it->second.directory = true;
      it->second.rule = rule;
    } else if (!it->second.directory) {
      return Status(Code::kUsage, "'" + parent + "' is both a file (" + it->second.source.string() +
                                      ") and a folder in the package; rename one");
    }
  }
  if (dest.empty()) return OkStatus();
  auto [it, inserted] = entries_.try_emplace(dest);
  if (inserted) {
    it->second.directory = true;
    it->second.source = source;
    it->second.rule = rule;
  } else if (!it->second.directory) {
    return Status(Code::kUsage, "'" + dest + "' is both a file (" + it->second.source.string() +
                                    ") and a folder in the package; rename one");
  }
  return OkStatus();
}

Status Tree::CheckPlace(const std::string& dest, const std::string& what, const std::string& rule) {
  if (dest.empty() || dest.front() == '/' || dest == "." || dest.find("//") != std::string::npos ||
      dest.back() == '/' || ("/" + dest + "/").find("/../") != std::string::npos ||
      ("/" + dest + "/").find("/./") != std::string::npos) {
    return Status(Code::kUsage, "bad place in the package for " + what + ": '" + dest + "'");
  }
  size_t slash = dest.rfind('/');
  if (slash != std::string::npos) return AddDirectoryEntry(dest.substr(0, slash), {}, rule);
  return OkStatus();
}

Status Tree::AddFile(const fs::path& source, const std::string& dest, std::string rule) {
  struct stat st {};
  if (::stat(source.c_str(), &st) != 0) {
    return Status(Code::kInputError,
                  "cannot ship " + source.string() + ": " + std::strerror(errno));
  }
  return AddFileStat(source, dest, std::move(rule), st);
}

Status Tree::AddFileStat(const fs::path& source, const std::string& dest, std::string rule,
                         const struct stat& st) {
  if (!S_ISREG(st.st_mode)) {
    return Status(Code::kInputError, "cannot ship " + source.string() + ": not a regular file");
  }
  if (Status s = CheckPlace(dest, source.string(), rule); !s.ok()) return s;
  auto [it, inserted] = entries_.try_emplace(dest);
  TreeEntry& e = it->second;
  if (!inserted) {
    std::error_code ec;
    if (!e.directory && !e.source.empty() && fs::equivalent(e.source, source, ec))
      return OkStatus();
    return Status(Code::kUsage, "two things want the same place '" + dest + "' in the package: " +
                                    (e.directory        ? std::string("a folder")
                                     : e.source.empty() ? "a generated file"
                                                        : e.source.string()) +
                                    " and " + source.string() + "; rename one");
  }
  e.source = source;
  e.size = static_cast<std::uint64_t>(st.st_size);
  e.dev = st.st_dev;
  e.ino = st.st_ino;
  e.mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  e.ctime_ns = static_cast<std::int64_t>(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
  e.executable = (st.st_mode & 0111) != 0;
  e.rule = std::move(rule);
  return OkStatus();
}

Status Tree::AddContent(const std::string& dest, std::string content, bool executable,
                        std::string rule, bool replace) {
  if (Status s = CheckPlace(dest, "a generated file", rule); !s.ok()) return s;
  auto [it, inserted] = entries_.try_emplace(dest);
  if (!inserted && replace && !it->second.directory) {
    it->second = TreeEntry();
  } else if (!inserted) {
    return Status(Code::kUsage, "'" + dest + "' in the package is generated by stagekit, but " +
                                    (it->second.directory ? std::string("a folder")
                                                          : it->second.source.string()) +
                                    " wants that place too; rename it");
  }
  TreeEntry& e = it->second;
  e.size = content.size();
  e.content = std::make_shared<const std::string>(std::move(content));
  e.executable = executable;
  e.rule = std::move(rule);
  return OkStatus();
}

Status Tree::AddDirectory(const fs::path& source, const std::string& dest,
                          const WalkOptions& options, const std::string& rule) {
  std::error_code ec;
  fs::path root = fs::weakly_canonical(source, ec);
  if (ec || !fs::is_directory(root, ec)) {
    return Status(Code::kInputError, "cannot ship " + source.string() + ": not a directory");
  }
  fs::path link_root =
      options.link_root.empty() ? root : fs::weakly_canonical(options.link_root, ec);
  Walker walker(options, dest, rule, link_root, excluded_,
                [&](const std::string& rel, const fs::path& path, const struct stat& st) -> Status {
                  std::string place = Join(dest, rel);
                  if (S_ISDIR(st.st_mode)) return AddDirectoryEntry(place, path, rule);
                  return AddFileStat(path, place, rule, st);
                });
  const size_t before = excluded_.size();
  Status s = walker.Walk(root, "");
  if (s.ok() && dest.empty() && excluded_.size() > before && excluded_[before].path.empty()) {
    root_excluded_ = true;
    excluded_[before].path = ".";
  }
  return s;
}

std::uint64_t Tree::file_bytes() const {
  std::uint64_t total = 0;
  for (const auto& [path, e] : entries_) total += e.directory ? 0 : e.size;
  return total;
}

size_t Tree::file_count() const {
  return static_cast<size_t>(std::count_if(entries_.begin(), entries_.end(),
                                           [](const auto& kv) { return !kv.second.directory; }));
}

Status CheckSizeCap(const Tree& tree, std::uint64_t cap_bytes) {
  const std::uint64_t total = tree.file_bytes();
  if (total <= cap_bytes) return OkStatus();
  std::vector<std::pair<std::uint64_t, std::string>> files, folders;
  std::map<std::string, std::uint64_t> folder_bytes;
  for (const auto& [path, e] : tree.entries()) {
    if (e.directory) continue;
    files.emplace_back(e.size, path);
    for (size_t pos = path.find('/'); pos != std::string::npos; pos = path.find('/', pos + 1)) {
      folder_bytes[path.substr(0, pos)] += e.size;
    }
  }
  for (const auto& [path, bytes] : folder_bytes) folders.emplace_back(bytes, path + "/");
  auto top = [](std::vector<std::pair<std::uint64_t, std::string>>& v) {
    std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    std::string out;
    for (size_t i = 0; i < v.size() && i < 8; ++i) {
      out += "\n    " + util::HumanBytes(v[i].first) + "  " + v[i].second;
    }
    return out;
  };
  std::string message = "the package would be " + util::HumanBytes(total) + " in " +
                        std::to_string(tree.file_count()) + " files, over the " +
                        util::HumanBytes(cap_bytes) +
                        " cap; exclude what the workers do not need (--exclude PATTERN, or a "
                        ".gitignore/.rayignore) or raise the cap (--max-size)\n  largest files:" +
                        top(files);
  if (!folders.empty()) message += "\n  largest folders:" + top(folders);
  return Status(util::kTooLarge, message);
}

namespace {

// The whole file, checking that it still has the size the walk saw.
Status ReadWhole(const TreeEntry& e, std::string& data) {
  util::UniqueFd fd(::open(e.source.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd)
    return Status(Code::kInputError,
                  "cannot read " + e.source.string() + ": " + std::strerror(errno));
  data.resize(e.size + 1);  // one byte more tells a file that grew
  size_t got = 0;
  while (got < data.size()) {
    ssize_t n = ::read(fd.get(), data.data() + got, data.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      return Status(Code::kInputError,
                    "cannot read " + e.source.string() + ": " + std::strerror(errno));
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  if (got != e.size) {
    return Status(Code::kInputError, e.source.string() +
                                         " changed size while being packaged; run again once it is "
                                         "no longer being written");
  }
  data.resize(got);
  return OkStatus();
}

// A file of the tree to hash: its place in the package and its entry.
using FileRef = std::pair<const std::string*, TreeEntry*>;

// Ray's package hash: the first 8 bytes of every entry's SHA-1, XORed into "00000000".
struct PackageHash {
  std::uint8_t acc[8];
  PackageHash() { std::memset(acc, '0', sizeof acc); }
  void Fold(const std::uint8_t* digest) {
    for (int i = 0; i < 8; ++i) acc[i] ^= digest[i];
  }
  std::string Name() const { return "_ray_pkg_" + util::Hex(acc, sizeof acc) + ".zip"; }
};

// Folds the root and the directories into `hash`; returns the files, which need their bytes read.
std::vector<FileRef> FoldDirectories(Tree& tree, PackageHash& hash) {
  std::vector<FileRef> files;
  // Ray visits the root itself as ".".
  if (!tree.root_excluded()) hash.Fold(util::Sha1(".").data());
  for (auto& [path, e] : const_cast<std::map<std::string, TreeEntry>&>(tree.entries())) {
    if (e.directory) {
      hash.Fold(util::Sha1(path).data());
    } else {
      files.emplace_back(&path, &e);
    }
  }
  return files;
}

// A file's two digests at once: SHA-1 for the package name, SHA-256 for the manifest.
struct FileDigests {
  util::Sha1Stream sha1;
  util::Sha256Stream sha256;
  void Update(const void* data, size_t n) {
    sha1.Update(std::string_view(static_cast<const char*>(data), n));
    sha256.Update(std::string_view(static_cast<const char*>(data), n));
  }
};

// Streams the file through `digests` in `buf`-sized reads, checking the size the walk saw.
Status StreamFile(const TreeEntry& e, std::vector<std::uint8_t>& buf, FileDigests& digests) {
  util::UniqueFd fd(::open(e.source.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    return Status(Code::kInputError,
                  "cannot read " + e.source.string() + ": " + std::strerror(errno));
  }
  std::uint64_t seen = 0;
  while (true) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return Status(Code::kInputError,
                    "cannot read " + e.source.string() + ": " + std::strerror(errno));
    }
    if (n == 0) break;
    digests.Update(buf.data(), static_cast<size_t>(n));
    seen += static_cast<std::uint64_t>(n);
  }
  if (seen != e.size) {
    return Status(Code::kInputError, e.source.string() +
                                         " changed size while being packaged; run again "
                                         "once it is no longer being written");
  }
  return OkStatus();
}

// One file's SHA-1 (of its place, then its bytes) and e.sha256; keeps its bytes when `keep`.
Status HashFile(const std::string& path, TreeEntry& e, bool keep, std::vector<std::uint8_t>& buf,
                util::Sha1Digest& sha1) {
  FileDigests digests;
  digests.sha1.Update(path);
  if (!e.content && keep) {
    std::string data;
    if (Status s = ReadWhole(e, data); !s.ok()) return s;
    e.content = std::make_shared<const std::string>(std::move(data));
  }
  if (e.content) {
    digests.Update(e.content->data(), e.content->size());
  } else {
    // Too much to keep: stream it, and let WriteZip read it again.
    if (Status s = StreamFile(e, buf, digests); !s.ok()) return s;
  }
  sha1 = digests.sha1.Final();
  e.sha256 = util::HexDigest(digests.sha256.Final());
  return OkStatus();
}

// Hashes `files` into `sha1s` (same order) on up to `threads` threads; the first error wins.
Status HashFiles(const std::vector<FileRef>& files, int threads, bool keep,
                 std::vector<util::Sha1Digest>& sha1s) {
  std::atomic<size_t> next{0};
  std::mutex mu;
  Status first_error;
  auto worker = [&] {
    std::vector<std::uint8_t> buf(1 << 20);
    for (size_t i = next++; i < files.size(); i = next++) {
      Status error = HashFile(*files[i].first, *files[i].second, keep, buf, sha1s[i]);
      if (!error.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (first_error.ok()) first_error = error;
      }
    }
  };
  util::RunOnThreads(std::max<std::size_t>(1, std::min<std::size_t>(threads, files.size())),
                     [&](std::size_t) { worker(); });
  return first_error;
}

}  // namespace

Result<std::string> HashTree(Tree& tree, int threads, std::uint64_t keep_bytes) {
  PackageHash hash;
  std::vector<FileRef> files = FoldDirectories(tree, hash);
  const bool keep = keep_bytes > 0 && tree.file_bytes() <= keep_bytes;
  // Largest first, so one big file does not end up last on a single thread.
  std::sort(files.begin(), files.end(),
            [](const auto& a, const auto& b) { return a.second->size > b.second->size; });
  std::vector<util::Sha1Digest> sha1s(files.size());
  if (Status s = HashFiles(files, threads, keep, sha1s); !s.ok()) return s;
  for (const auto& d : sha1s) hash.Fold(d.data());
  return hash.Name();
}

namespace {

fs::path SiblingTemp(const fs::path& target) { return util::SiblingPath(target, "tmp"); }

Status ZipError(zip_t* za, const std::string& what, const fs::path& zip) {
  return Status(Code::kOutputError,
                "cannot write " + zip.string() + " (" + what + "): " + zip_strerror(za));
}

}  // namespace

namespace {

// Adds every entry, sorted, with fixed times and normalised modes.
bool AddEntries(zip_t* za, const Tree& tree, int level, std::string* failed) {
  for (const auto& [path, e] : tree.entries()) {
    *failed = path;
    zip_int64_t idx;
    if (e.directory) {
      idx = zip_dir_add(za, path.c_str(), ZIP_FL_ENC_UTF_8);
    } else {
      zip_source_t* src =
          e.content ? zip_source_buffer(za, e.content->data(), e.content->size(), 0)
                    : zip_source_file(za, e.source.c_str(), 0, static_cast<zip_int64_t>(e.size));
      if (src == nullptr) return false;
      idx = zip_file_add(za, path.c_str(), src, ZIP_FL_ENC_UTF_8);
      if (idx < 0) {
        zip_source_free(src);
        return false;
      }
      if (zip_set_file_compression(za, static_cast<zip_uint64_t>(idx),
                                   level == 0 ? ZIP_CM_STORE : ZIP_CM_DEFLATE,
                                   static_cast<zip_uint32_t>(level)) != 0) {
        return false;
      }
    }
    if (idx < 0) return false;
    const auto i = static_cast<zip_uint64_t>(idx);
    const zip_uint32_t mode =
        e.directory ? (S_IFDIR | 0755) : (S_IFREG | (e.executable ? 0755 : 0644));
    // 1980-01-01 00:00:00 in DOS date/time fields: no clock, no time zone.
    if (zip_file_set_dostime(za, i, 0, (0 << 9) | (1 << 5) | 1, 0) != 0 ||
        zip_file_set_external_attributes(za, i, 0, ZIP_OPSYS_UNIX, mode << 16) != 0) {
      return false;
    }
  }
  return true;
}

Status WriteAll(const fs::path& path, const std::string& data) {
  util::UniqueFd fd(
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
  if (!fd)
    return Status(Code::kOutputError,
                  "cannot write " + path.string() + ": " + std::strerror(errno));
  for (size_t done = 0; done < data.size();) {
    ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      return Status(Code::kOutputError,
                    "cannot write " + path.string() + ": " + std::strerror(errno));
    done += static_cast<size_t>(n);
  }
  if (::close(fd.Release()) != 0) {
    return Status(Code::kOutputError,
                  "cannot write " + path.string() + ": " + std::strerror(errno));
  }
  return OkStatus();
}

// The archive built in memory and written to `tmp` in large chunks.
Status ZipInMemory(const Tree& tree, int level, const fs::path& zip, const fs::path& tmp) {
  zip_error_t error;
  zip_error_init(&error);
  zip_source_t* out = zip_source_buffer_create(nullptr, 0, 0, &error);
  if (out == nullptr) {
    return Status(Code::kOutputError,
                  "cannot build " + zip.string() + ": " + zip_error_strerror(&error));
  }
  zip_source_keep(out);
  zip_t* za = zip_open_from_source(out, ZIP_TRUNCATE, &error);
  auto fail = [&](const std::string& what, const std::string& why) {
    Status s(Code::kOutputError, "cannot build " + zip.string() + " (" + what + "): " + why);
    zip_error_fini(&error);
    zip_source_free(out);
    return s;
  };
  if (za == nullptr) return fail("opening", zip_error_strerror(&error));
  std::string failed;
  if (!AddEntries(za, tree, level, &failed) || zip_close(za) != 0) {
    std::string why = zip_strerror(za);
    zip_discard(za);
    return fail(failed, why);
  }
  if (zip_source_open(out) != 0) return fail("reading", zip_error_strerror(zip_source_error(out)));
  util::UniqueFd fd(
      ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
  if (!fd) {
    zip_source_close(out);
    return fail("writing", std::strerror(errno));
  }
  std::vector<char> chunk(4 << 20);
  Status written;
  for (;;) {
    zip_int64_t n = zip_source_read(out, chunk.data(), chunk.size());
    if (n < 0) {
      written = Status(Code::kOutputError, "cannot build " + zip.string() + ": read failed");
      break;
    }
    if (n == 0) break;
    for (zip_int64_t done = 0; done < n;) {
      ssize_t w = ::write(fd.get(), chunk.data() + done, static_cast<size_t>(n - done));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        written = Status(Code::kOutputError,
                         "cannot write " + zip.string() + ": " + std::strerror(errno));
        break;
      }
      done += w;
    }
    if (!written.ok()) break;
  }
  zip_source_close(out);
  zip_error_fini(&error);
  zip_source_free(out);
  if (written.ok() && ::close(fd.Release()) != 0) {
    written =
        Status(Code::kOutputError, "cannot write " + zip.string() + ": " + std::strerror(errno));
  }
  return written;
}

}  // namespace

Status VerifySources(const Tree& tree) {
  for (const auto& [path, e] : tree.entries()) {
    if (e.directory || e.source.empty()) continue;
    struct stat st {};
    if (::stat(e.source.c_str(), &st) != 0) {
      return Status(Code::kInputError, e.source.string() + " disappeared while being packaged (" +
                                           std::strerror(errno) + "); run again");
    }
    const std::int64_t mtime =
        static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    const std::int64_t ctime =
        static_cast<std::int64_t>(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
    if (static_cast<std::uint64_t>(st.st_size) != e.size || st.st_dev != e.dev ||
        st.st_ino != e.ino || mtime != e.mtime_ns || ctime != e.ctime_ns) {
      return Status(Code::kInputError,
                    e.source.string() + " changed while being packaged (it is '" + path +
                        "' in the package), so the package could hold other bytes than its "
                        "name and manifest say; run again once nothing writes it");
    }
  }
  return OkStatus();
}

Status WriteZip(const Tree& tree, const fs::path& zip, int level) {
  std::error_code ec;
  if (!zip.parent_path().empty()) fs::create_directories(zip.parent_path(), ec);
  const fs::path tmp = SiblingTemp(zip);
  auto finish = [&](Status written) {
    if (written.ok()) written = VerifySources(tree);
    if (written.ok()) {
      fs::rename(tmp, zip, ec);
      if (ec)
        written = Status(Code::kOutputError, "cannot write " + zip.string() + ": " + ec.message());
    }
    if (!written.ok()) fs::remove(tmp, ec);
    return written;
  };
  if (tree.entries().empty()) {
    // libzip writes no file for an archive without entries; an empty zip is
    // its end-of-central-directory record alone.
    return finish(WriteAll(tmp, std::string("PK\x05\x06", 4) + std::string(18, '\0')));
  }
  // Up to 256 MiB the archive is built in memory and written in a few large
  // writes; libzip's own file output writes in small pieces.
  if (tree.file_bytes() <= (256ull << 20)) return finish(ZipInMemory(tree, level, zip, tmp));
  int err = 0;
  zip_t* za = zip_open(tmp.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
  if (za == nullptr) {
    zip_error_t error;
    zip_error_init_with_code(&error, err);
    Status s(Code::kOutputError,
             "cannot write " + zip.string() + ": " + zip_error_strerror(&error));
    zip_error_fini(&error);
    return s;
  }
  std::string failed;
  if (!AddEntries(za, tree, level, &failed) || zip_close(za) != 0) {
    Status s = ZipError(za, failed, zip);
    zip_discard(za);
    return finish(s);
  }
  return finish(OkStatus());
}

Status Materialize(const Tree& tree, const fs::path& dir) {
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    return Status(Code::kOutputError,
                  dir.string() + " already exists; remove it or choose another directory");
  }
  if (!dir.parent_path().empty()) fs::create_directories(dir.parent_path(), ec);
  const fs::path tmp = SiblingTemp(dir);
  auto fail = [&](const std::string& what) {
    fs::remove_all(tmp, ec);
    return Status(Code::kOutputError, "cannot write " + dir.string() + ": " + what);
  };
  if (!fs::create_directory(tmp, ec)) return fail(ec.message());
  for (const auto& [path, e] : tree.entries()) {
    const fs::path to = tmp / path;
    if (e.directory) {
      if (!fs::create_directory(to, ec) && ec) return fail(path + ": " + ec.message());
      continue;
    }
    if (e.content) {
      std::ofstream out(to, std::ios::binary);
      out << *e.content;
      if (!out.flush()) return fail(path + ": cannot write");
    } else if (!fs::copy_file(e.source, to, ec)) {
      return fail(path + ": " + ec.message());
    }
    fs::permissions(to, e.executable ? fs::perms(0755) : fs::perms(0644), ec);
  }
  if (Status s = VerifySources(tree); !s.ok()) {
    fs::remove_all(tmp, ec);
    return s;
  }
  fs::rename(tmp, dir, ec);
  if (ec) return fail(ec.message());
  return OkStatus();
}

Json ManifestJson(const Tree& tree, const std::string& package_name) {
  Json entries = Json::array();
  for (const auto& [path, e] : tree.entries()) {
    Json j = {{"path", path}, {"type", e.directory ? "dir" : "file"}, {"rule", e.rule}};
    if (!e.directory) {
      j["size"] = e.size;
      j["sha256"] = e.sha256;
      j["mode"] = ModeString(e);
    }
    entries.push_back(std::move(j));
  }
  Json excluded = Json::array();
  for (const Excluded& x : tree.excluded()) {
    excluded.push_back({{"path", x.path}, {"pattern", x.pattern}, {"from", x.origin}});
  }
  return {{"format", "stagekit-manifest/1"}, {"package", package_name},
          {"files", tree.file_count()},      {"bytes", tree.file_bytes()},
          {"entries", std::move(entries)},   {"excluded", std::move(excluded)}};
}

}  // namespace stagekit::deploy
