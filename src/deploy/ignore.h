// Ignore rules with the exact semantics of Ray's working_dir packaging, so a
// tree we stage gets the package name Ray itself would give it.
//
// Ray matches paths with its vendored pathspec ("gitwildmatch"): every
// pattern becomes a regular expression over the path relative to the
// directory that declared it ("." for that directory itself); the last
// pattern that matches decides (a "!" pattern re-includes). A walk applies the
// user's and default patterns from the root, plus every .gitignore and
// .rayignore met on the way down, each relative to its own directory.
#ifndef STAGEKIT_DEPLOY_IGNORE_H_
#define STAGEKIT_DEPLOY_IGNORE_H_

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "stagekit/status.h"

namespace stagekit::deploy {

// pathspec's GitWildMatchPattern.pattern_to_regex, ported: the regular
// expression for one pattern line (Python `re` syntax, which PCRE2 shares for
// everything this emits), or "" for a comment, blank line or lone "/".
// `include` is false for "!" patterns.
std::string GitWildMatchToRegex(std::string_view pattern, bool* include);

// One pattern source: a list of lines, anchored at a directory.
// A .gitignore or .rayignore is read up to this size (kInputError past it).
inline constexpr std::uint64_t kMaxPatternFileBytes = std::uint64_t{16} << 20;

class PatternSet {
 public:
  // `origin` names where the lines came from ("--exclude", "a/.gitignore"),
  // for error messages and for the rule a manifest records.
  static Result<std::shared_ptr<const PatternSet>> Compile(const std::vector<std::string>& lines,
                                                           std::string origin);
  static Result<std::shared_ptr<const PatternSet>> FromFile(const std::filesystem::path& file,
                                                            std::string origin);
  ~PatternSet();
  PatternSet(const PatternSet&) = delete;
  PatternSet& operator=(const PatternSet&) = delete;

  // `relative` is the '/'-separated path below the anchor directory, "." for
  // the anchor itself. Returns the pattern text that excluded it, or nullptr.
  // Throws std::runtime_error when a pattern reaches PCRE2's match limit (a
  // line with many wildcards against a long path): neither answer would be true.
  const std::string* Match(std::string_view relative) const;
  const std::string& origin() const { return origin_; }
  bool empty() const { return patterns_.empty(); }

 private:
  struct Compiled;
  struct Group;
  PatternSet() = default;
  void MakeGroups();  // fills groups_ from patterns_
  std::string origin_;
  std::vector<std::unique_ptr<Compiled>> patterns_;
  // Runs of patterns of one kind (exclude, or '!' re-include), each run
  // matched by one regex of them all: a 10,000-line .gitignore made ship
  // 70x slower when every path met every pattern's regex in turn.
  std::vector<std::unique_ptr<Group>> groups_;
};

// The patterns stagekit excludes unless told otherwise: Ray's own defaults
// (.git, .venv, venv, __pycache__) plus build output and tool caches.
const std::vector<std::string>& DefaultExcludes();

}  // namespace stagekit::deploy

#endif  // STAGEKIT_DEPLOY_IGNORE_H_
