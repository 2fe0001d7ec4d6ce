// A staged tree (files and directories at their place in a package), walked
// with Ray's working_dir rules, hashed the way Ray names packages, and written
// as a deterministic zip, a directory, or a manifest.
#ifndef STAGEKIT_DEPLOY_PACKAGE_H_
#define STAGEKIT_DEPLOY_PACKAGE_H_

#include <sys/stat.h>

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "deploy/ignore.h"
#include "stagekit/stage.h"
#include "stagekit/status.h"
#include "util/files.h"

namespace stagekit::deploy {

struct TreeEntry {
  std::filesystem::path source;                // empty for a directory implied by what is below it
  std::shared_ptr<const std::string> content;  // a generated file (no source)
  bool directory = false;
  std::uint64_t size = 0;
  bool executable = false;
  std::string rule;    // why it is in the tree ("input of stage map_00", "--include src", ...)
  std::string sha256;  // hex; files only, filled by HashTree
  // The source as it was when added: a package whose bytes were read at
  // another moment (hashed, then zipped) is checked against it (VerifySources).
  dev_t dev = 0;
  ino_t ino = 0;
  std::int64_t mtime_ns = 0;
  std::int64_t ctime_ns = 0;
};

// A path that a walk left out, and the pattern that did it.
struct Excluded {
  std::string path;  // in the tree
  std::string pattern;
  std::string origin;  // "default", "--exclude", "a/.gitignore", ...
};

struct WalkOptions {
  // Anchored at the walked directory; any set that matches a path excludes it.
  std::vector<std::shared_ptr<const PatternSet>> excludes;
  bool gitignore = true;  // honour .gitignore files (.rayignore always is), like Ray
  // Symbolic links must resolve inside this directory (the walked one if empty).
  std::filesystem::path link_root;
};

class Tree {
 public:
  // A file at `dest` ('/'-separated, relative). Adding the same source at the
  // same place twice is a no-op; another source there is kUsage.
  Status AddFile(const std::filesystem::path& source, const std::string& dest, std::string rule);
  // A generated file; it replaces a file already at `dest` when `replace`.
  Status AddContent(const std::string& dest, std::string content, bool executable, std::string rule,
                    bool replace = false);
  // Walks `source` as Ray's _dir_travel does, placing it at `dest` ("" for the
  // root). kInputError for links that dangle, loop or leave link_root, and for
  // FIFOs, sockets and devices.
  Status AddDirectory(const std::filesystem::path& source, const std::string& dest,
                      const WalkOptions& options, const std::string& rule);

  // Sorted by path; every directory above a file is present.
  const std::map<std::string, TreeEntry>& entries() const { return entries_; }
  const std::vector<Excluded>& excluded() const { return excluded_; }
  // Ray's walk skipped the root itself (a pattern matched "."): its hash
  // then covers nothing at all.
  bool root_excluded() const { return root_excluded_; }
  std::uint64_t file_bytes() const;
  size_t file_count() const;

 private:
  Status AddFileStat(const std::filesystem::path& source, const std::string& dest, std::string rule,
                     const struct stat& st);
  Status CheckPlace(const std::string& dest, const std::string& what, const std::string& rule);
  Status AddDirectoryEntry(const std::string& dest, const std::filesystem::path& source,
                           const std::string& rule);
  std::map<std::string, TreeEntry> entries_;
  std::vector<Excluded> excluded_;
  bool root_excluded_ = false;
};

// util::kTooLarge when the files add up to more than `cap_bytes`, listing the
// largest files and folders.
Status CheckSizeCap(const Tree& tree, std::uint64_t cap_bytes);

// Fills every file's sha256 and returns Ray's package name for the tree,
// "_ray_pkg_<16 hex>.zip": the XOR of sha1(path [+ content]) over ".", every
// directory and every file, as ray._private.runtime_env.packaging does.
// When the files add up to at most `keep_bytes` (0: never), their bytes stay in memory
// (TreeEntry::content), so that WriteZip reads nothing a second time.
Result<std::string> HashTree(Tree& tree, int threads, std::uint64_t keep_bytes = 256ull << 20);

// Writes the tree as a zip: entries sorted, DOS time 1980-01-01 00:00, Unix
// modes in the external attributes, deflate at `level` (0 stores). Atomic:
// `zip` is complete or untouched.
Status WriteZip(const Tree& tree, const std::filesystem::path& zip, int level);
// kInputError naming the first source file that changed (size, inode, mtime
// or ctime) since it was added to the tree: its bytes in a package might not
// be the bytes its name and manifest were hashed from. WriteZip and
// Materialize call it after reading the sources and publish nothing then.
Status VerifySources(const Tree& tree);

// Copies the tree into a new directory `dir` (must not exist), modes kept.
Status Materialize(const Tree& tree, const std::filesystem::path& dir);

// Every file with size, sha256, mode and rule; directories; what was excluded.
Json ManifestJson(const Tree& tree, const std::string& package_name);

}  // namespace stagekit::deploy

#endif  // STAGEKIT_DEPLOY_PACKAGE_H_
