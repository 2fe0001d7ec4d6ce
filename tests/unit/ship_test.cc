// `stagekit ship`'s building blocks: the gitwildmatch port (against Ray's
// vendored pathspec), the walk (against Ray's _dir_travel), the size cap, the
// package name (against Ray's get_uri_for_directory), the zip, the tree.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "deploy/ignore.h"
#include "deploy/package.h"
#include "deploy/ship.h"
#include "unit/test_util.h"
#include "util/outcome.h"
#include "util/regex.h"

namespace stagekit::deploy {
using namespace ::stagekit::util;  // NOLINT(google-build-using-namespace): helpers under test

namespace {

namespace fs = std::filesystem;
using stagekit::testing::ListFiles;
using stagekit::testing::ReadFile;
using stagekit::testing::RunCli;
using stagekit::testing::Show;
using stagekit::testing::TempDir;
using stagekit::testing::WriteFile;

// ---------------------------------------------------------------------------
// GitWildMatchToRegex / PatternSet
// ---------------------------------------------------------------------------

// Expected strings are pathspec's own, printed with Ray 2.60.0's vendored copy:
//   .venv/bin/python -c 'import json,sys;
//     from ray._private.thirdparty.pathspec.patterns.gitwildmatch import GitWildMatchPattern as G;
//     [print(json.dumps(p), json.dumps(G.pattern_to_regex(p))) for p in sys.argv[1:]]'
//     'build/' '*.o' ...   (all on one line in the shell)
// (None, None) from Python is "" here.
struct RegexCase {
  const char* pattern;
  const char* regex;
  bool include;
};
const RegexCase kRegexCases[] = {
    {"build/", R"(^(?:.+/)?build/.*$)", true},
    {"*.o", R"(^(?:.+/)?[^/]*\.o(?:/.*)?$)", true},
    {"/abs", R"(^abs(?:/.*)?$)", true},
    {"a/**/b", R"(^a(?:/.+)?/b(?:/.*)?$)", true},
    {"**", R"(^.+$)", true},
    {"!keep.txt", R"(^(?:.+/)?keep\.txt$)", false},
    {R"(\#x)", R"(^(?:.+/)?\#x(?:/.*)?$)", true},
    {"[!a-c]x", R"(^(?:.+/)?[^a-c]x(?:/.*)?$)", true},
    {"[]x]", R"(^(?:.+/)?[]x](?:/.*)?$)", true},
    {"dir/*", R"(^dir/[^/]+$)", true},
    {"foo/", R"(^(?:.+/)?foo/.*$)", true},
    {"#comment", "", true},
    {"", "", true},
    {"/", "", true},
    {"a?c", R"(^(?:.+/)?a[^/]c(?:/.*)?$)", true},
    {"**/foo", R"(^(?:.+/)?foo(?:/.*)?$)", true},
    {"foo/**", R"(^foo/.*$)", true},
    {R"(a\*b)", R"(^(?:.+/)?a\*b(?:/.*)?$)", true},
    {"[^x]y", R"(^(?:.+/)?[\^x]y(?:/.*)?$)", true},
    {"  spaced  ", R"(^(?:.+/)?spaced(?:/.*)?$)", true},
    {"!/a/b/", R"(^a/b/.*$)", false},
    {"*", R"(^(?:.+/)?[^/]+$)", true},
    {"x[", R"(^(?:.+/)?x\[(?:/.*)?$)", true},
    {"a b", R"(^(?:.+/)?a\ b(?:/.*)?$)", true},
    {"a+b", R"(^(?:.+/)?a\+b(?:/.*)?$)", true},
    {"**/", R"(^(?:.+/)?/.*$)", true},
    {"a/**/", R"(^a(?:/.+)?/.*$)", true},
    {R"(a\[b])", R"(^(?:.+/)?a\[b\](?:/.*)?$)", true},
    {R"([a\]]c)", R"(^(?:.+/)?[a\\]\]c(?:/.*)?$)", true},
    {"~u-v&w", R"(^(?:.+/)?\~u\-v\&w(?:/.*)?$)", true},
};

TEST(IgnoreTest, RegexIsPathspecs) {
  for (const RegexCase& c : kRegexCases) {
    bool include = !c.include;
    EXPECT_EQ(GitWildMatchToRegex(c.pattern, &include), c.regex) << "pattern '" << c.pattern << "'";
    if (*c.regex != '\0') {
      EXPECT_EQ(include, c.include) << "pattern '" << c.pattern << "'";
    }
  }
}

// pathspec emits "[[:alpha:]\]" for "[[:alpha:]]": in Python's re the class is
// the characters "[:alph" (no POSIX classes), then a literal "]". The port
// escapes the '[' so PCRE2 does not read a POSIX class; the text differs by
// that one backslash, the matches must not.
TEST(IgnoreTest, BracketInsideAClassIsLiteralAsInPython) {
  bool include = false;
  EXPECT_EQ(GitWildMatchToRegex("[[:alpha:]]", &include), R"(^(?:.+/)?[\[:alpha:]\](?:/.*)?$)");
  auto set = PatternSet::Compile({"[[:alpha:]]"}, "t");
  ASSERT_TRUE(set.ok()) << set.status().message();
  // Python: re.match(r'^(?:.+/)?[[:alpha:]\](?:/.*)?$', s) for each.
  for (const char* yes : {"a]", "h]", ":]", "[]", "d/p]"})
    EXPECT_NE((*set)->Match(yes), nullptr) << yes;
  for (const char* no : {"a", "b]", "ab]", "alpha", "]"})
    EXPECT_EQ((*set)->Match(no), nullptr) << no;
}

// Which of kPaths each single-pattern PathSpec matches, from
//   PathSpec.from_lines("gitwildmatch", [p]).match_file(q)
// with Ray's vendored pathspec.
const char* const kPaths[] = {
    ".",   "build",   "build/x", "a/build/y", "x.o", "d/x.o", "x.o/y", "abs", "abs/z", "d/abs",
    "a/b", "a/x/y/b", "a/b/c",   "ab",        "zx",  "ax",    "]",     "x",   "dir/f", "dir/f/g",
    "dir", "abc",     "a/c",     "a:",        "h",   "[",     "^y",    "xy",  "a*b",   "ab2"};
struct MatchCase {
  const char* pattern;
  std::vector<std::string> matched;
};

TEST(IgnoreTest, MatchesWhatPathspecMatches) {
  const std::vector<std::string> all(std::begin(kPaths), std::end(kPaths));
  const MatchCase cases[] = {
      {"build/", {"build/x", "a/build/y"}},
      {"*.o", {"x.o", "d/x.o", "x.o/y"}},
      {"/abs", {"abs", "abs/z"}},
      {"a/**/b", {"a/b", "a/x/y/b", "a/b/c"}},
      {"**", all},
      {"*", all},
      {".*", {"."}},
      {"[!a-c]x", {"zx"}},
      {"[]x]", {"build/x", "a/x/y/b", "]", "x"}},
      {"dir/*", {"dir/f"}},
      {"a?c", {"abc"}},
      {"foo/**", {}},
      {"[^x]y", {"^y", "xy"}},
      {R"(a\*b)", {"a*b"}},
  };
  for (const MatchCase& c : cases) {
    auto set = PatternSet::Compile({c.pattern}, "t");
    ASSERT_TRUE(set.ok()) << set.status().message();
    std::vector<std::string> matched;
    for (const char* p : kPaths) {
      if ((*set)->Match(p) != nullptr) matched.push_back(p);
    }
    EXPECT_EQ(matched, c.matched) << "pattern '" << c.pattern << "'";
  }
}

TEST(IgnoreTest, LastMatchWinsAndNegationReincludes) {
  auto set = PatternSet::Compile({"*.log", "!keep.log", "keep.log.d/"}, "t");
  ASSERT_TRUE(set.ok());
  const std::string* m = (*set)->Match("a.log");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(*m, "*.log");  // the text of the pattern that decided
  EXPECT_EQ((*set)->Match("keep.log"), nullptr);
  EXPECT_EQ((*set)->Match("d/keep.log"), nullptr);
  m = (*set)->Match("keep.log.d/x");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(*m, "keep.log.d/");
  EXPECT_EQ((*set)->Match("keep.log.d"), nullptr);  // "dir/" spares the folder itself

  auto negate_first = PatternSet::Compile({"!x", "x"}, "t");
  auto negate_last = PatternSet::Compile({"x", "!x"}, "t");
  ASSERT_TRUE(negate_first.ok() && negate_last.ok());
  EXPECT_NE((*negate_first)->Match("x"), nullptr);
  EXPECT_EQ((*negate_last)->Match("x"), nullptr);
}

// A set of many patterns is matched a group of patterns at a time; the
// answer (and the pattern named) must be the one-by-one answer: the last
// pattern that matches decides. Random sets of 1 to 600 lines, mixed kinds.
TEST(IgnoreTest, GroupedMatchingAgreesWithOneByOne) {
  std::mt19937 rng(7);
  const std::vector<std::string> atoms = {"a",    "b", "*.log", "d/",   "**/x",
                                          "a/**", "?", "[ab]c", "/top", "k*"};
  const std::vector<std::string> paths = {"a", "b",  "x.log", "d",     "d/e", "q/x",     "a/b/c",
                                          "z", "ac", "top",   "s/top", "kit", "d/x.log", "."};
  for (int round = 0; round < 40; ++round) {
    std::vector<std::string> lines;
    const int n = 1 + static_cast<int>(rng() % 600);
    for (int i = 0; i < n; ++i) {
      std::string line = rng() % 4 == 0 ? "!" : "";
      line += atoms[rng() % atoms.size()];
      if (rng() % 3 == 0) line += std::to_string(rng() % 5);
      lines.push_back(line);
    }
    auto set = PatternSet::Compile(lines, "t");
    ASSERT_TRUE(set.ok()) << set.status().message();
    for (const std::string& path : paths) {
      const std::string* expected = nullptr;
      for (const std::string& line : lines) {
        bool include = true;
        const std::string regex = GitWildMatchToRegex(line, &include);
        if (!regex.empty() && Regex(regex, true).Search(path)) {
          expected = include ? &line : nullptr;
        }
      }
      const std::string* got = (*set)->Match(path);
      ASSERT_EQ(got == nullptr, expected == nullptr) << "round " << round << " path " << path;
      if (got != nullptr) {
        EXPECT_EQ(*got, *expected) << "round " << round << " path " << path;
      }
    }
  }
}

TEST(IgnoreTest, TheAnchorItselfIsDotAndStarMatchesIt) {
  // Ray matches a folder's own path as "." against the patterns it declares,
  // so a .gitignore holding "*" excludes its own folder.
  auto star = PatternSet::Compile({"*"}, "t");
  auto dirs = PatternSet::Compile({"build/", "/x", "a"}, "t");
  ASSERT_TRUE(star.ok() && dirs.ok());
  EXPECT_NE((*star)->Match("."), nullptr);
  EXPECT_EQ((*dirs)->Match("."), nullptr);
}

TEST(IgnoreTest, CommentsBlanksAndSlashAreNoPatterns) {
  auto set = PatternSet::Compile({"# c", "", "   ", "/"}, "t");
  ASSERT_TRUE(set.ok());
  EXPECT_TRUE((*set)->empty());
  EXPECT_EQ((*set)->Match("."), nullptr);
  EXPECT_EQ((*set)->Match("#c"), nullptr);
}

TEST(IgnoreTest, BadPatternIsAUsageErrorNamingIt) {
  // Python's re refuses it too ("bad character range z-a").
  auto set = PatternSet::Compile({"ok", "[z-a]"}, "sub/.gitignore");
  ASSERT_FALSE(set.ok());
  EXPECT_EQ(set.status().code(), Code::kUsage);
  EXPECT_NE(set.status().message().find("sub/.gitignore"), std::string::npos)
      << set.status().message();
  EXPECT_NE(set.status().message().find("[z-a]"), std::string::npos) << set.status().message();
}

TEST(IgnoreTest, FromFileEndsLinesAsPythonTextMode) {
  TempDir dir;
  WriteFile(dir / "ig", "a\r\nb\rc\n  d  \n#e\n!f");
  auto set = PatternSet::FromFile(dir / "ig", "ig");
  ASSERT_TRUE(set.ok()) << set.status().message();
  for (const char* yes : {"a", "b", "c", "d", "x/d"}) EXPECT_NE((*set)->Match(yes), nullptr) << yes;
  for (const char* no : {"a\r", "#e", "e", "f", "b\rc"})
    EXPECT_EQ((*set)->Match(no), nullptr) << no;
  EXPECT_EQ((*set)->origin(), "ig");
  auto missing = PatternSet::FromFile(dir / "nope", "nope");
  EXPECT_FALSE(missing.ok());
}

TEST(IgnoreTest, DefaultsIncludeRaysOwn) {
  const auto& d = DefaultExcludes();
  for (const char* ray : {".git", ".venv", "venv", "__pycache__"}) {
    EXPECT_NE(std::find(d.begin(), d.end(), ray), d.end()) << ray;
  }
  auto set = PatternSet::Compile(d, "default");
  ASSERT_TRUE(set.ok());
  EXPECT_EQ((*set)->Match("."), nullptr);  // never the root itself
}

// Python's str.strip() also strips Unicode whitespace (U+00A0, U+3000, ...);
// the port strips only ASCII. Disabled: a known divergence, reported.
TEST(IgnoreTest, StripsUnicodeWhitespaceAsPythonDoes) {
  bool include = false;
  // G.pattern_to_regex("foo\u00a0") -> ('^(?:.+/)?foo(?:/.*)?$', True)
  EXPECT_EQ(GitWildMatchToRegex("foo\xc2\xa0", &include), R"(^(?:.+/)?foo(?:/.*)?$)");
}

// ---------------------------------------------------------------------------
// Tree walks
// ---------------------------------------------------------------------------

std::vector<std::string> Paths(const Tree& tree) {
  std::vector<std::string> out;
  for (const auto& [path, e] : tree.entries()) out.push_back(e.directory ? path + "/" : path);
  return out;
}

std::shared_ptr<const PatternSet> Set(const std::vector<std::string>& lines,
                                      const std::string& origin = "--exclude") {
  auto set = PatternSet::Compile(lines, origin);
  EXPECT_TRUE(set.ok()) << set.status().message();
  return set.ok() ? *set : nullptr;
}

Result<Tree> Walk(const fs::path& dir, const std::vector<std::string>& excludes = {},
                  bool gitignore = true) {
  WalkOptions options;
  if (!excludes.empty()) options.excludes.push_back(Set(excludes));
  options.gitignore = gitignore;
  Tree tree;
  if (Status s = tree.AddDirectory(dir, "", options, "test"); !s.ok()) return s;
  return tree;
}

const Excluded* FindExcluded(const Tree& tree, const std::string& path) {
  for (const Excluded& x : tree.excluded()) {
    if (x.path == path) return &x;
  }
  return nullptr;
}

void MakeExecutable(const fs::path& p) { ASSERT_EQ(::chmod(p.c_str(), 0755), 0); }

TEST(PackageWalkTest, NestedGitignoreIsAnchoredToItsFolder) {
  TempDir d;
  WriteFile(d / "x.txt", "");
  WriteFile(d / "a.log", "");
  WriteFile(d / "sub/x.txt", "");
  WriteFile(d / "sub/deep/x.txt", "");
  WriteFile(d / "sub/deep/b.log", "");
  WriteFile(d / "sub/.gitignore", "/x.txt\n*.log\n");
  auto tree = Walk(d.path());
  ASSERT_TRUE(tree.ok()) << tree.status().message();
  EXPECT_EQ(Paths(*tree), (std::vector<std::string>{"a.log", "sub/", "sub/.gitignore", "sub/deep/",
                                                    "sub/deep/x.txt", "x.txt"}));
  const Excluded* x = FindExcluded(*tree, "sub/x.txt");
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(x->pattern, "/x.txt");
  EXPECT_EQ(x->origin, "sub/.gitignore");
  x = FindExcluded(*tree, "sub/deep/b.log");
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(x->pattern, "*.log");
  EXPECT_EQ(tree->excluded().size(), 2u);
}

TEST(PackageWalkTest, RayignoreIsHonouredWithOrWithoutGitignore) {
  TempDir d;
  WriteFile(d / ".gitignore", "a.txt\n");
  WriteFile(d / ".rayignore", "b.txt\n");
  WriteFile(d / "a.txt", "");
  WriteFile(d / "b.txt", "");
  WriteFile(d / "c.txt", "");
  auto with = Walk(d.path());
  ASSERT_TRUE(with.ok()) << with.status().message();
  EXPECT_EQ(Paths(*with), (std::vector<std::string>{".gitignore", ".rayignore", "c.txt"}));
  ASSERT_NE(FindExcluded(*with, "b.txt"), nullptr);
  EXPECT_EQ(FindExcluded(*with, "b.txt")->origin, ".rayignore");
  EXPECT_EQ(FindExcluded(*with, "a.txt")->origin, ".gitignore");

  auto without = Walk(d.path(), {}, /*gitignore=*/false);
  ASSERT_TRUE(without.ok()) << without.status().message();
  EXPECT_EQ(Paths(*without),
            (std::vector<std::string>{".gitignore", ".rayignore", "a.txt", "c.txt"}));
}

TEST(PackageWalkTest, ExcludedListRecordsPathPatternAndOrigin) {
  TempDir d;
  WriteFile(d / "keep/a.py", "");
  WriteFile(d / "keep/a.pyc", "");
  WriteFile(d / "data/big.bin", "");
  WalkOptions options;
  options.excludes = {Set({"__pycache__", "*.pyc"}, "default"), Set({"/data"}, "--exclude")};
  Tree tree;
  ASSERT_TRUE(tree.AddDirectory(d.path(), "", options, "walk").ok());
  EXPECT_EQ(Paths(tree), (std::vector<std::string>{"keep/", "keep/a.py"}));
  ASSERT_EQ(tree.excluded().size(), 2u);
  const Excluded* data = FindExcluded(tree, "data");  // the children are never visited
  ASSERT_NE(data, nullptr);
  EXPECT_EQ(data->pattern, "/data");
  EXPECT_EQ(data->origin, "--exclude");
  const Excluded* pyc = FindExcluded(tree, "keep/a.pyc");
  ASSERT_NE(pyc, nullptr);
  EXPECT_EQ(pyc->pattern, "*.pyc");
  EXPECT_EQ(pyc->origin, "default");
  EXPECT_EQ(tree.entries().at("keep/a.py").rule, "walk");
}

// What `--include DIR=PLACE` does: the walk placed below a folder of the
// package. The walked folder is PLACE itself, once, and excluded paths carry
// the PLACE prefix.
TEST(PackageWalkTest, AWalkPlacedBelowAFolderHasNoDoubledSlash) {
  TempDir d;
  WriteFile(d / "keep/a.py", "");
  WriteFile(d / "data/big.bin", "");
  WalkOptions options;
  options.excludes = {Set({"/data"})};
  Tree tree;
  Status s = tree.AddDirectory(d.path(), "pkg/in", options, "walk");
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(Paths(tree),
            (std::vector<std::string>{"pkg/", "pkg/in/", "pkg/in/keep/", "pkg/in/keep/a.py"}));
  EXPECT_NE(FindExcluded(tree, "pkg/in/data"), nullptr);
  // The hash is that of the same files laid out by hand.
  Tree by_hand;
  ASSERT_TRUE(by_hand.AddFile(d / "keep/a.py", "pkg/in/keep/a.py", "r").ok());
  auto a = HashTree(tree, 1);
  auto b = HashTree(by_hand, 1);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
  TempDir out;
  s = WriteZip(tree, out / "p.zip", 1);
  EXPECT_TRUE(s.ok()) << s.message();
}

// A file that changes between being hashed and being zipped would give a
// package whose bytes do not match its name and manifest: nothing is written.
TEST(PackageWalkTest, AFileChangedWhilePackagedIsCaughtAndNothingIsWritten) {
  TempDir d;
  WriteFile(d / "big.bin", std::string(1000, 'a'));
  WriteFile(d / "small.txt", "s");
  Tree tree;
  ASSERT_TRUE(tree.AddFile(d / "big.bin", "big.bin", "r").ok());
  ASSERT_TRUE(tree.AddFile(d / "small.txt", "small.txt", "r").ok());
  auto name = HashTree(tree, 1, /*keep_bytes=*/1);  // streamed: WriteZip reads the files again
  ASSERT_TRUE(name.ok()) << name.status().message();
  EXPECT_TRUE(VerifySources(tree).ok());
  // Same size, new bytes (as an editor or a build writing in place does), a
  // clock tick later: file times have a tick's resolution.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  WriteFile(d / "big.bin", std::string(1000, 'b'));
  Status s = VerifySources(tree);
  EXPECT_EQ(s.code(), Code::kInputError);
  EXPECT_NE(s.message().find("big.bin changed while being packaged"), std::string::npos)
      << s.message();
  TempDir out;
  s = WriteZip(tree, out / *name, 1);
  EXPECT_EQ(s.code(), Code::kInputError) << s.message();
  EXPECT_FALSE(fs::exists(out / *name));
  EXPECT_TRUE(fs::is_empty(out.path())) << "a temporary was left behind";
}

TEST(PackageWalkTest, DirSlashPatternKeepsTheFolderButNotItsChildren) {
  TempDir d;
  WriteFile(d / "build/x.o", "o");
  WriteFile(d / "build/sub/y.o", "o");
  WriteFile(d / "src/build/z.o", "o");
  WriteFile(d / "main.cc", "");
  auto tree = Walk(d.path(), {"build/"});
  ASSERT_TRUE(tree.ok()) << tree.status().message();
  // Ray: "build/" becomes ^(?:.+/)?build/.*$, which "build" itself misses.
  EXPECT_EQ(Paths(*tree), (std::vector<std::string>{"build/", "main.cc", "src/", "src/build/"}));
  EXPECT_NE(FindExcluded(*tree, "build/x.o"), nullptr);
  EXPECT_NE(FindExcluded(*tree, "build/sub"), nullptr);
  EXPECT_NE(FindExcluded(*tree, "src/build/z.o"), nullptr);
}

TEST(PackageWalkTest, FoldersWhoseChildrenAreAllExcludedAndEmptyFoldersStay) {
  TempDir d;
  WriteFile(d / "logs/a.log", "");
  fs::create_directories(d / "empty/inner");
  auto tree = Walk(d.path(), {"*.log"});
  ASSERT_TRUE(tree.ok());
  EXPECT_EQ(Paths(*tree), (std::vector<std::string>{"empty/", "empty/inner/", "logs/"}));
}

TEST(PackageWalkTest, AGitignoreHoldingStarExcludesItsOwnFolder) {
  TempDir d;
  WriteFile(d / "out/.gitignore", "*\n");
  WriteFile(d / "out/result.bin", "r");
  WriteFile(d / "keep.txt", "k");
  auto tree = Walk(d.path());
  ASSERT_TRUE(tree.ok());
  EXPECT_EQ(Paths(*tree), (std::vector<std::string>{"keep.txt"}));
  const Excluded* x = FindExcluded(*tree, "out");
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(x->pattern, "*");
  EXPECT_EQ(x->origin, "out/.gitignore");
  // Without .gitignore files the folder is walked.
  auto plain = Walk(d.path(), {}, false);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(Paths(*plain),
            (std::vector<std::string>{"keep.txt", "out/", "out/.gitignore", "out/result.bin"}));
}

TEST(PackageWalkTest, LinksInsideTheTreeAreFollowed) {
  TempDir d;
  WriteFile(d / "real/data.txt", "12345");
  MakeExecutable(d / "real/data.txt");
  fs::create_symlink("real/data.txt", d / "file-link");
  fs::create_directory_symlink("real", d / "dir-link");
  auto tree = Walk(d.path());
  ASSERT_TRUE(tree.ok()) << tree.status().message();
  EXPECT_EQ(Paths(*tree), (std::vector<std::string>{"dir-link/", "dir-link/data.txt", "file-link",
                                                    "real/", "real/data.txt"}));
  const TreeEntry& link = tree->entries().at("file-link");
  EXPECT_EQ(link.size, 5u);
  EXPECT_TRUE(link.executable);
}

TEST(PackageWalkTest, ALinkLeavingTheTreeIsRefusedByName) {
  TempDir outside, d;
  WriteFile(outside / "secret", "s");
  WriteFile(d / "a.txt", "");
  fs::create_symlink(outside / "secret", d / "escape");
  auto tree = Walk(d.path());
  ASSERT_FALSE(tree.ok());
  EXPECT_EQ(tree.status().code(), Code::kInputError);
  EXPECT_NE(tree.status().message().find("escape"), std::string::npos) << tree.status().message();
  EXPECT_NE(tree.status().message().find("outside"), std::string::npos) << tree.status().message();
  // Excluding the link makes the walk fine.
  auto excluded = Walk(d.path(), {"escape"});
  EXPECT_TRUE(excluded.ok()) << excluded.status().message();
  // A link_root above both admits it.
  WalkOptions options;
  options.link_root = fs::path(d.path()).parent_path();
  Tree wide;
  EXPECT_TRUE(wide.AddDirectory(d.path(), "", options, "t").ok());
}

TEST(PackageWalkTest, ALinkToAFolderOutsideIsRefused) {
  TempDir outside, d;
  WriteFile(outside / "f", "");
  fs::create_directories(d / "sub");
  fs::create_directory_symlink(outside.path(), d / "sub/out");
  auto tree = Walk(d.path());
  ASSERT_FALSE(tree.ok());
  EXPECT_EQ(tree.status().code(), Code::kInputError);
  EXPECT_NE(tree.status().message().find("sub/out"), std::string::npos) << tree.status().message();
}

TEST(PackageWalkTest, ADanglingLinkIsRefused) {
  TempDir d;
  fs::create_symlink("nowhere", d / "dangling");
  auto tree = Walk(d.path());
  ASSERT_FALSE(tree.ok());
  EXPECT_EQ(tree.status().code(), Code::kInputError);
  EXPECT_NE(tree.status().message().find("dangling"), std::string::npos) << tree.status().message();
}

TEST(PackageWalkTest, ALinkLoopIsRefused) {
  TempDir d;
  fs::create_directories(d / "a/b");
  fs::create_directory_symlink("../..", d / "a/b/up");
  auto tree = Walk(d.path());
  ASSERT_FALSE(tree.ok());
  EXPECT_EQ(tree.status().code(), Code::kInputError);
  EXPECT_NE(tree.status().message().find("a/b/up"), std::string::npos) << tree.status().message();

  TempDir self;
  fs::create_symlink("self", self / "self");  // ELOOP when followed
  auto t2 = Walk(self.path());
  ASSERT_FALSE(t2.ok());
  EXPECT_EQ(t2.status().code(), Code::kInputError);
}

TEST(PackageWalkTest, AFifoIsRefused) {
  TempDir d;
  WriteFile(d / "a.txt", "");
  ASSERT_EQ(::mkfifo((d / "pipe").c_str(), 0644), 0);
  auto tree = Walk(d.path());
  ASSERT_FALSE(tree.ok());
  EXPECT_EQ(tree.status().code(), Code::kInputError);
  EXPECT_NE(tree.status().message().find("pipe"), std::string::npos) << tree.status().message();
  EXPECT_TRUE(Walk(d.path(), {"pipe"}).ok());
}

TEST(PackageTreeTest, PlacesConflictAndDuplicatesAreNoOps) {
  TempDir d;
  WriteFile(d / "a", "1");
  WriteFile(d / "b", "2");
  Tree tree;
  ASSERT_TRUE(tree.AddFile(d / "a", "x/a", "r").ok());
  EXPECT_TRUE(tree.AddFile(d / "a", "x/a", "r").ok());
  Status s = tree.AddFile(d / "b", "x/a", "r");
  EXPECT_EQ(s.code(), Code::kUsage) << s.message();
  EXPECT_EQ(tree.AddFile(d / "b", "x/a/b", "r").code(), Code::kUsage);  // a file as a folder
  EXPECT_EQ(tree.AddFile(d / "b", "../b", "r").code(), Code::kUsage);
  EXPECT_EQ(tree.AddFile(d / "b", "/b", "r").code(), Code::kUsage);
  EXPECT_EQ(tree.AddFile(d / "missing", "m", "r").code(), Code::kInputError);
  EXPECT_EQ(tree.AddContent("x/a", "gen", false, "g").code(), Code::kUsage);
  EXPECT_TRUE(tree.AddContent("x/a", "gen", false, "g", /*replace=*/true).ok());
  EXPECT_EQ(*tree.entries().at("x/a").content, "gen");
  EXPECT_EQ(tree.file_count(), 1u);
  EXPECT_EQ(tree.file_bytes(), 3u);
  EXPECT_EQ(Paths(tree), (std::vector<std::string>{"x/", "x/a"}));
}

// ---------------------------------------------------------------------------
// Size cap
// ---------------------------------------------------------------------------

TEST(PackageSizeCapTest, OverTheCapNamesTheLargestFileAndFolder) {
  Tree tree;
  ASSERT_TRUE(tree.AddContent("models/weights.bin", std::string(5000, 'w'), false, "r").ok());
  ASSERT_TRUE(tree.AddContent("models/small.txt", "s", false, "r").ok());
  ASSERT_TRUE(tree.AddContent("code/main.py", std::string(100, 'c'), false, "r").ok());
  Status over = CheckSizeCap(tree, 1000);
  ASSERT_EQ(over.code(), util::kTooLarge) << over.message();
  const std::string& m = over.message();
  EXPECT_NE(m.find("models/weights.bin"), std::string::npos) << m;
  EXPECT_NE(m.find("models/"), std::string::npos) << m;
  EXPECT_NE(m.find("4.9 KiB"), std::string::npos) << m;
  EXPECT_NE(m.find("--max-size"), std::string::npos) << m;
  // the largest file is listed before the smaller ones
  EXPECT_LT(m.find("models/weights.bin"), m.find("code/main.py")) << m;

  EXPECT_TRUE(CheckSizeCap(tree, 5101).ok());  // exactly at the cap
  EXPECT_EQ(CheckSizeCap(tree, 5100).code(), util::kTooLarge);
  EXPECT_TRUE(CheckSizeCap(tree, 100 << 20).ok());
}

// ---------------------------------------------------------------------------
// Package name
// ---------------------------------------------------------------------------

// a.txt "hello\n", sub/b.sh "#!/bin/sh\necho hi\n" (0755), sub/empty/.
void MakeTinyTree(const fs::path& root) {
  WriteFile(root / "a.txt", "hello\n");
  WriteFile(root / "sub/b.sh", "#!/bin/sh\necho hi\n");
  MakeExecutable(root / "sub/b.sh");
  fs::create_directories(root / "sub/empty");
}

// Computed with Ray 2.60.0 on the tree MakeTinyTree writes:
//   mkdir -p t/sub/empty; printf 'hello\n' >t/a.txt; printf '#!/bin/sh\necho hi\n' >t/sub/b.sh
//   .venv/bin/python -c "from ray._private.runtime_env.packaging import get_uri_for_directory
//     as g; print(g('t', include_gitignore=True, excludes=[]))"   (one line in the shell)
//   -> gcs://_ray_pkg_03d7b696306613b4.zip
constexpr const char* kTinyTreePackage = "_ray_pkg_03d7b696306613b4.zip";
// The same for an empty folder: sha1(".")[:8] XOR b"00000000".
constexpr const char* kEmptyPackage = "_ray_pkg_0a62fe483960e4e9.zip";

TEST(PackageHashTest, MatchesRaysNameForATinyTree) {
  TempDir d;
  MakeTinyTree(d.path());
  auto tree = Walk(d.path());
  ASSERT_TRUE(tree.ok());
  auto name = HashTree(*tree, 1);
  ASSERT_TRUE(name.ok()) << name.status().message();
  EXPECT_EQ(*name, kTinyTreePackage);
  EXPECT_EQ(tree->entries().at("a.txt").sha256,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");
  auto threaded = HashTree(*tree, 8);
  ASSERT_TRUE(threaded.ok());
  EXPECT_EQ(*threaded, kTinyTreePackage);
}

// The tiny tree without sub/empty/, by Ray as above: _ray_pkg_3d56e3e38bb7b43d.zip.
TEST(PackageHashTest, GeneratedFilesHashAsFilesWould) {
  Tree tree;
  ASSERT_TRUE(tree.AddContent("a.txt", "hello\n", false, "g").ok());
  ASSERT_TRUE(tree.AddContent("sub/b.sh", "#!/bin/sh\necho hi\n", true, "g").ok());
  auto name = HashTree(tree, 2);
  ASSERT_TRUE(name.ok());
  EXPECT_EQ(*name, "_ray_pkg_3d56e3e38bb7b43d.zip");
  EXPECT_EQ(tree.entries().at("a.txt").sha256,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");
}

TEST(PackageHashTest, AnEmptyFolderHashesAsRayDoes) {
  TempDir d;
  auto tree = Walk(d.path());
  ASSERT_TRUE(tree.ok());
  auto name = HashTree(*tree, 1);
  ASSERT_TRUE(name.ok());
  EXPECT_EQ(*name, kEmptyPackage);
}

TEST(PackageHashTest, AFileThatChangesSizeIsAnError) {
  TempDir d;
  WriteFile(d / "grow.txt", "abc");
  auto tree = Walk(d.path());
  ASSERT_TRUE(tree.ok());
  WriteFile(d / "grow.txt", "abcdef");
  auto name = HashTree(*tree, 1);
  ASSERT_FALSE(name.ok());
  EXPECT_EQ(name.status().code(), Code::kInputError);
  EXPECT_NE(name.status().message().find("grow.txt"), std::string::npos);
}

// Ray matches the walked folder itself as "." against the root patterns, so
// `--exclude '.*'` (or a root .gitignore with "*") excludes everything and the
// hash is the untouched seed: get_uri_for_directory(t, True, ['.*']) is
// gcs://_ray_pkg_3030303030303030.zip for any t.
TEST(ShipPlanTest, AnExcludedRootHashesAsRayDoes) {
  TempDir d;
  MakeTinyTree(d.path());
  ShipOptions options;
  options.dir = d.path();
  options.excludes = {".*"};
  auto plan = PlanShip(options);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(plan->package, "_ray_pkg_3030303030303030.zip");
  EXPECT_EQ(plan->tree.file_count(), 0u);
}

// ---------------------------------------------------------------------------
// Zip
// ---------------------------------------------------------------------------

struct ZipEntry {
  std::string name;
  zip_uint8_t opsys = 0;
  zip_uint32_t mode = 0;  // external attributes >> 16
  zip_uint16_t method = 0;
  time_t mtime = 0;
  std::string content;
};

std::vector<ZipEntry> ReadZip(const fs::path& path) {
  int err = 0;
  zip_t* za = zip_open(path.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &err);
  EXPECT_NE(za, nullptr) << path << ": libzip error " << err;
  std::vector<ZipEntry> out;
  if (za == nullptr) return out;
  const zip_int64_t n = zip_get_num_entries(za, 0);
  for (zip_int64_t i = 0; i < n; ++i) {
    const auto idx = static_cast<zip_uint64_t>(i);
    ZipEntry e;
    e.name = zip_get_name(za, idx, 0);
    zip_uint32_t attr = 0;
    EXPECT_EQ(zip_file_get_external_attributes(za, idx, 0, &e.opsys, &attr), 0);
    e.mode = attr >> 16;
    zip_stat_t st;
    zip_stat_init(&st);
    EXPECT_EQ(zip_stat_index(za, idx, 0, &st), 0);
    e.method = st.comp_method;
    e.mtime = st.mtime;
    if (st.size > 0) {
      zip_file_t* f = zip_fopen_index(za, idx, 0);
      EXPECT_NE(f, nullptr);
      e.content.resize(st.size);
      EXPECT_EQ(zip_fread(f, e.content.data(), st.size), static_cast<zip_int64_t>(st.size));
      zip_fclose(f);
    }
    out.push_back(std::move(e));
  }
  zip_close(za);
  return out;
}

std::vector<std::string> DirNames(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(PackageZipTest, IsSortedWithUnixModesAndContents) {
  TempDir d, out;
  MakeTinyTree(d / "src");
  WriteFile(d / "src/B-upper.txt", "upper");
  auto tree = Walk(d / "src");
  ASSERT_TRUE(tree.ok());
  ASSERT_TRUE(tree->AddContent("gen/run.sh", "#!/bin/sh\n", true, "g").ok());
  Status s = WriteZip(*tree, out / "p.zip", 6);
  ASSERT_TRUE(s.ok()) << s.message();
  auto entries = ReadZip(out / "p.zip");
  std::vector<std::string> names;
  for (const ZipEntry& e : entries) names.push_back(e.name);
  EXPECT_EQ(names, (std::vector<std::string>{"B-upper.txt", "a.txt", "gen/", "gen/run.sh", "sub/",
                                             "sub/b.sh", "sub/empty/"}));
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  for (const ZipEntry& e : entries) {
    EXPECT_EQ(e.opsys, ZIP_OPSYS_UNIX) << e.name;
    zip_uint32_t want = S_IFREG | 0644;
    if (e.name.back() == '/') want = S_IFDIR | 0755;
    if (e.name == "sub/b.sh" || e.name == "gen/run.sh") want = S_IFREG | 0755;
    EXPECT_EQ(e.mode, want) << e.name << std::oct << " mode " << e.mode;
    if (e.name.back() != '/') {
      EXPECT_EQ(e.method, ZIP_CM_DEFLATE) << e.name;
    }
  }
  EXPECT_EQ(entries[1].content, "hello\n");
  EXPECT_EQ(entries[3].content, "#!/bin/sh\n");
  EXPECT_EQ(entries[5].content, "#!/bin/sh\necho hi\n");
  EXPECT_EQ(DirNames(out.path()), (std::vector<std::string>{"p.zip"}));  // no temp left

  // `unzip -Z` agrees on the modes, where it is installed.
  if (::access("/usr/bin/unzip", X_OK) == 0) {
    auto r = stagekit::testing::RunCommand({"/usr/bin/unzip", "-Z", (out / "p.zip").string()});
    EXPECT_NE(r.out.find("-rwxr-xr-x"), std::string::npos) << Show(r);
  }
}

TEST(PackageZipTest, LevelZeroStores) {
  TempDir d, out;
  MakeTinyTree(d.path());
  auto tree = Walk(d.path());
  ASSERT_TRUE(tree.ok());
  ASSERT_TRUE(WriteZip(*tree, out / "p.zip", 0).ok());
  for (const ZipEntry& e : ReadZip(out / "p.zip")) {
    if (e.name.back() != '/') {
      EXPECT_EQ(e.method, ZIP_CM_STORE) << e.name;
    }
  }
}

void SetMtime(const fs::path& p, time_t t) {
  struct timespec times[2] = {{t, 0}, {t, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, p.c_str(), times, AT_SYMLINK_NOFOLLOW), 0) << p;
}

TEST(PackageZipTest, SameTreeSameBytesWhateverTheMtimes) {
  TempDir d, out;
  MakeTinyTree(d.path());
  WriteFile(d / "z/big.bin", std::string(200000, 'z'));
  auto first = Walk(d.path());
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(WriteZip(*first, out / "1.zip", 1).ok());
  for (const char* p : {"a.txt", "sub/b.sh", "sub", "sub/empty", "z/big.bin", "z"}) {
    SetMtime(d / p, 1234567890);
  }
  auto second = Walk(d.path());
  ASSERT_TRUE(second.ok());
  ASSERT_TRUE(WriteZip(*second, out / "2.zip", 1).ok());
  const std::string a = ReadFile(out / "1.zip"), b = ReadFile(out / "2.zip");
  EXPECT_FALSE(a.empty());
  EXPECT_TRUE(a == b) << "zip bytes differ after touching the sources";
  for (const ZipEntry& e : ReadZip(out / "1.zip")) {
    struct tm tm {};
    ::localtime_r(&e.mtime, &tm);
    EXPECT_EQ(tm.tm_year, 80) << e.name;  // 1980-01-01
    EXPECT_EQ(tm.tm_mon, 0) << e.name;
    EXPECT_EQ(tm.tm_mday, 1) << e.name;
  }
}

TEST(PackageZipTest, AVanishedSourceLeavesNoFileBehind) {
  TempDir d, out;
  MakeTinyTree(d.path());
  auto tree = Walk(d.path());
  ASSERT_TRUE(tree.ok());
  fs::remove(d / "a.txt");
  Status s = WriteZip(*tree, out / "p.zip", 1);
  EXPECT_EQ(s.code(), Code::kOutputError) << s.message();
  EXPECT_TRUE(DirNames(out.path()).empty());
}

TEST(PackageZipTest, AFailedRewriteKeepsTheOldZip) {
  TempDir d, out;
  MakeTinyTree(d.path());
  auto tree = Walk(d.path());
  ASSERT_TRUE(tree.ok());
  ASSERT_TRUE(WriteZip(*tree, out / "p.zip", 1).ok());
  const std::string before = ReadFile(out / "p.zip");
  fs::remove(d / "sub/b.sh");
  EXPECT_FALSE(WriteZip(*tree, out / "p.zip", 1).ok());
  EXPECT_TRUE(ReadFile(out / "p.zip") == before);
  EXPECT_EQ(DirNames(out.path()), (std::vector<std::string>{"p.zip"}));
}

TEST(PackageZipTest, AnUnwritableTargetIsAnOutputError) {
  TempDir d, out;
  MakeTinyTree(d.path());
  auto tree = Walk(d.path());
  ASSERT_TRUE(tree.ok());
  WriteFile(out / "file", "not a folder");
  Status s = WriteZip(*tree, out / "file/p.zip", 1);
  EXPECT_EQ(s.code(), Code::kOutputError) << s.message();
  EXPECT_EQ(DirNames(out.path()), (std::vector<std::string>{"file"}));
  EXPECT_EQ(ReadFile(out / "file"), "not a folder");
}

// Ray zips an empty folder (or one where everything is excluded) into a valid
// empty zip; so must we, since the package name for it is a valid one.
TEST(PackageZipTest, AnEmptyTreeIsAnEmptyZip) {
  TempDir out;
  Tree tree;
  Status s = WriteZip(tree, out / "empty.zip", 1);
  ASSERT_TRUE(s.ok()) << s.message();
  ASSERT_TRUE(fs::exists(out / "empty.zip"));
  EXPECT_TRUE(ReadZip(out / "empty.zip").empty());
}

// ---------------------------------------------------------------------------
// Materialize and manifest
// ---------------------------------------------------------------------------

fs::perms Perms(const fs::path& p) { return fs::status(p).permissions() & fs::perms::mask; }

TEST(PackageMaterializeTest, WritesFilesFoldersAndModes) {
  TempDir d, out;
  MakeTinyTree(d / "src");
  ASSERT_EQ(::chmod((d / "src/a.txt").c_str(), 0600), 0);  // normalised to 0644
  auto tree = Walk(d / "src");
  ASSERT_TRUE(tree.ok());
  ASSERT_TRUE(tree->AddContent("gen/run.sh", "#!/bin/sh\n", true, "g").ok());
  Status s = Materialize(*tree, out / "deep/tree");
  ASSERT_TRUE(s.ok()) << s.message();
  const fs::path t = out / "deep/tree";
  EXPECT_EQ(ListFiles(t), (std::vector<std::string>{"a.txt", "gen/run.sh", "sub/b.sh"}));
  EXPECT_TRUE(fs::is_directory(t / "sub/empty"));
  EXPECT_EQ(ReadFile(t / "a.txt"), "hello\n");
  EXPECT_EQ(ReadFile(t / "gen/run.sh"), "#!/bin/sh\n");
  EXPECT_EQ(Perms(t / "a.txt"), fs::perms(0644));
  EXPECT_EQ(Perms(t / "sub/b.sh"), fs::perms(0755));
  EXPECT_EQ(Perms(t / "gen/run.sh"), fs::perms(0755));
  EXPECT_EQ(DirNames(out / "deep"), (std::vector<std::string>{"tree"}));  // no temp left
}

TEST(PackageMaterializeTest, RefusesAnExistingFolder) {
  TempDir d, out;
  MakeTinyTree(d.path());
  auto tree = Walk(d.path());
  ASSERT_TRUE(tree.ok());
  WriteFile(out / "tree/mine.txt", "mine");
  Status s = Materialize(*tree, out / "tree");
  EXPECT_EQ(s.code(), Code::kOutputError);
  EXPECT_NE(s.message().find("already exists"), std::string::npos) << s.message();
  EXPECT_EQ(ListFiles(out / "tree"), (std::vector<std::string>{"mine.txt"}));
  EXPECT_EQ(DirNames(out.path()), (std::vector<std::string>{"tree"}));
}

TEST(PackageMaterializeTest, AFailureLeavesNothing) {
  TempDir d, out;
  MakeTinyTree(d.path());
  auto tree = Walk(d.path());
  ASSERT_TRUE(tree.ok());
  fs::remove(d / "sub/b.sh");
  Status s = Materialize(*tree, out / "tree");
  EXPECT_EQ(s.code(), Code::kOutputError) << s.message();
  EXPECT_TRUE(DirNames(out.path()).empty());
}

TEST(PackageManifestTest, ListsEntriesAndExclusions) {
  TempDir d;
  MakeTinyTree(d.path());
  WriteFile(d / "x.pyc", "");
  auto tree = Walk(d.path(), {"*.pyc"});
  ASSERT_TRUE(tree.ok());
  auto name = HashTree(*tree, 1);
  ASSERT_TRUE(name.ok());
  Json m = ManifestJson(*tree, *name);
  EXPECT_EQ(m["package"], kTinyTreePackage);
  EXPECT_EQ(m["files"], 2);
  EXPECT_EQ(m["bytes"], 6 + 18);
  ASSERT_EQ(m["entries"].size(), 4u);
  EXPECT_EQ(m["entries"][0]["path"], "a.txt");
  EXPECT_EQ(m["entries"][0]["mode"], "0644");
  EXPECT_EQ(m["entries"][0]["sha256"],
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");
  EXPECT_EQ(m["entries"][2]["path"], "sub/b.sh");
  EXPECT_EQ(m["entries"][2]["mode"], "0755");
  EXPECT_EQ(m["entries"][3]["type"], "dir");
  ASSERT_EQ(m["excluded"].size(), 1u);
  EXPECT_EQ(m["excluded"][0],
            Json({{"path", "x.pyc"}, {"pattern", "*.pyc"}, {"from", "--exclude"}}));
}

// ---------------------------------------------------------------------------
// PlanShip and the command line
// ---------------------------------------------------------------------------

TEST(ShipPlanTest, DirectoryModeUsesDefaultsAndTheCap) {
  TempDir d;
  MakeTinyTree(d.path());
  WriteFile(d / ".git/HEAD", "ref");
  WriteFile(d / "__pycache__/m.pyc", "");
  WriteFile(d / "build/out.o", "");
  ShipOptions options;
  options.dir = d.path();
  auto plan = PlanShip(options);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(plan->package, kTinyTreePackage);
  EXPECT_EQ(plan->executables, (std::vector<std::string>{"sub/b.sh"}));
  EXPECT_TRUE(plan->pipeline.empty());

  options.default_excludes = false;
  auto all = PlanShip(options);
  ASSERT_TRUE(all.ok());
  EXPECT_NE(all->package, kTinyTreePackage);
  EXPECT_EQ(all->tree.file_count(), 5u);

  options.max_bytes = 10;
  auto capped = PlanShip(options);
  ASSERT_FALSE(capped.ok());
  EXPECT_EQ(capped.status().code(), util::kTooLarge);
}

TEST(ShipCliTest, ExitCodesAndJson) {
  TempDir d, out;
  MakeTinyTree(d / "t");
  auto ok = RunCli({"ship", (d / "t").string(), "--json", "-o", (out / "o").string()});
  ASSERT_EQ(ok.exit_code, 0) << Show(ok);
  Json summary = Json::parse(ok.out);
  EXPECT_EQ(summary["package"], kTinyTreePackage);
  EXPECT_TRUE(fs::exists(out / "o" / kTinyTreePackage));
  EXPECT_TRUE(fs::exists(out / "o/_ray_pkg_03d7b696306613b4.manifest.json"));

  auto big = RunCli({"ship", (d / "t").string(), "--max-size", "10B", "-o", (out / "b").string()});
  EXPECT_EQ(big.exit_code, 13) << Show(big);
  EXPECT_NE(big.err.find("sub/b.sh"), std::string::npos) << Show(big);

  fs::create_symlink("/etc/passwd", d / "t/link");
  auto link = RunCli({"ship", (d / "t").string(), "-o", (out / "l").string()});
  EXPECT_EQ(link.exit_code, 5) << Show(link);
  EXPECT_NE(link.err.find("link"), std::string::npos) << Show(link);
  fs::remove(d / "t/link");

  // Python's re refuses it too: "bad character range z-a".
  auto bad =
      RunCli({"ship", (d / "t").string(), "--exclude", "x[z-a]", "-o", (out / "x").string()});
  EXPECT_EQ(bad.exit_code, 2) << Show(bad);
  auto usage = RunCli({"ship", (d / "t").string(), "--include", "x"});
  EXPECT_EQ(usage.exit_code, 2) << Show(usage);
}

// A pattern that is one bracket expression must reach the matcher as typed
// (CLI11 reads "[a,b]" as a list and drops the brackets).
TEST(ShipCliTest, BracketPatternsReachTheMatcher) {
  TempDir d, out;
  WriteFile(d / "t/a", "");
  WriteFile(d / "t/b", "");
  WriteFile(d / "t/c", "");
  auto r = RunCli({"ship", (d / "t").string(), "--json", "--no-default-excludes", "--exclude",
                   "[ab]", "-o", (out / "o").string()});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  Json summary = Json::parse(r.out);
  EXPECT_EQ(summary["excludes"], Json({"[ab]"}));
  EXPECT_EQ(summary["excluded"], 2);
  EXPECT_EQ(summary["files"], 1);
}

// An empty folder has a valid Ray name (kEmptyPackage); shipping it must work.
TEST(ShipCliTest, AnEmptyFolderShips) {
  TempDir d, out;
  fs::create_directories(d / "empty");
  auto r = RunCli({"ship", (d / "empty").string(), "--json", "-o", (out / "o").string()});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_EQ(Json::parse(r.out)["package"], kEmptyPackage);
  EXPECT_TRUE(fs::exists(out / "o" / kEmptyPackage));
}

TEST(IgnoreTest, ARunOfStarsIsOneStarAndALimitIsAnErrorNotACrash) {
  // Found by the ignore fuzzer: a line of 60 '*' was 60 "[^/]*" in a row,
  // which backtracked past PCRE2's match limit on a 10-byte path.
  bool include = true;
  EXPECT_EQ(GitWildMatchToRegex(std::string(60, '*') + ".log", &include),
            GitWildMatchToRegex("*.log", &include));
  auto set = PatternSet::Compile({std::string(60, '*') + "x"}, "a/.gitignore");
  ASSERT_TRUE(set.ok());
  EXPECT_NE((*set)->Match("abcdefghix"), nullptr);
  EXPECT_EQ((*set)->Match("abcdefghiy"), nullptr);
  // Wildcards with letters between them cannot be merged; at the limit the
  // walk says which file and what to do instead of guessing.
  std::string hard;
  for (int k = 0; k < 40; ++k) hard += "*a";
  auto slow = PatternSet::Compile({hard + "b"}, "a/.gitignore");
  ASSERT_TRUE(slow.ok());
  try {
    EXPECT_EQ((*slow)->Match(std::string(200, 'a')), nullptr);
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("limit"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace stagekit::deploy
