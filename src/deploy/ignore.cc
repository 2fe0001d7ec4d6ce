#include "deploy/ignore.h"

#include <optional>

#include "util/files.h"
#include "util/regex.h"

namespace stagekit::deploy {
namespace {

// Python's str.strip(): the whitespace it knows, ASCII and (UTF-8) Unicode.
std::string_view Strip(std::string_view s) {
  static constexpr std::string_view kUnicodeSpaces[] = {
      "\u0085", "\u00a0", "\u1680", "\u2000", "\u2001", "\u2002", "\u2003",
      "\u2004", "\u2005", "\u2006", "\u2007", "\u2008", "\u2009", "\u200a",
      "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"};
  auto ascii = [](char c) {
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= '\x1c' && c <= '\x1f');
  };
  for (bool changed = true; changed && !s.empty();) {
    changed = false;
    if (ascii(s.front())) {
      s.remove_prefix(1);
      changed = true;
      continue;
    }
    if (ascii(s.back())) {
      s.remove_suffix(1);
      changed = true;
      continue;
    }
    for (std::string_view u : kUnicodeSpaces) {
      if (s.size() >= u.size() && s.substr(0, u.size()) == u) {
        s.remove_prefix(u.size());
        changed = true;
      } else if (s.size() >= u.size() && s.substr(s.size() - u.size()) == u) {
        s.remove_suffix(u.size());
        changed = true;
      }
      if (changed) break;
    }
  }
  return s;
}

// Python's re.escape (3.7+) for one character.
void Escape(char c, std::string& out) {
  static constexpr std::string_view kSpecial = "()[]{}?*+-|^$\\.&~# \t\n\r\v\f";
  if (kSpecial.find(c) != std::string_view::npos) out += '\\';
  out += c;
}

std::vector<std::string> Split(std::string_view s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    size_t pos = s.find(sep, start);
    out.emplace_back(s.substr(start, pos == std::string_view::npos ? pos : pos - start));
    if (pos == std::string_view::npos) return out;
    start = pos + 1;
  }
}

// GitWildMatchPattern._translate_segment_glob.
std::string TranslateSegmentGlob(std::string_view pattern) {
  std::string regex;
  bool escape = false;
  size_t i = 0, end = pattern.size();
  while (i < end) {
    char c = pattern[i++];
    if (escape) {
      escape = false;
      Escape(c, regex);
    } else if (c == '\\') {
      escape = true;
    } else if (c == '*') {
      // "**" inside a segment is "*": one "[^/]*" for a run of them matches
      // the same paths, without the exponential backtracking of many.
      static constexpr std::string_view kStar = "[^/]*";
      if (regex.size() < kStar.size() ||
          regex.compare(regex.size() - kStar.size(), kStar.size(), kStar) != 0) {
        regex += kStar;
      }
    } else if (c == '?') {
      regex += "[^/]";
    } else if (c == '[') {
      size_t j = i;
      if (j < end && pattern[j] == '!') ++j;
      if (j < end && pattern[j] == ']') ++j;
      while (j < end && pattern[j] != ']') ++j;
      if (j < end) {
        ++j;
        std::string expr = "[";
        if (pattern[i] == '!') {
          expr += '^';
          ++i;
        } else if (pattern[i] == '^') {
          expr += "\\^";
          ++i;
        }
        // pathspec doubles backslashes; '[' is literal inside a Python class,
        // so escape it to keep PCRE2 from reading "[:alpha:]" as a POSIX class.
        for (char e : pattern.substr(i, j - i)) {
          if (e == '\\') {
            expr += "\\\\";
          } else if (e == '[') {
            expr += "\\[";
          } else {
            expr += e;
          }
        }
        regex += expr;
        i = j;
      } else {
        regex += "\\[";
      }
    } else {
      Escape(c, regex);
    }
  }
  return regex;
}

}  // namespace

std::string GitWildMatchToRegex(std::string_view line, bool* include) {
  std::string_view pattern = Strip(line);
  *include = true;
  if (pattern.empty() || pattern.front() == '#' || pattern == "/") return "";
  if (pattern.front() == '!') {
    *include = false;
    pattern.remove_prefix(1);
  }
  if (!pattern.empty() && pattern.front() == '\\') pattern.remove_prefix(1);

  std::vector<std::string> segs = Split(pattern, '/');
  if (segs.front().empty()) {
    segs.erase(segs.begin());
  } else if (segs.size() == 1 || (segs.size() == 2 && segs[1].empty())) {
    if (segs.front() != "**") segs.insert(segs.begin(), "**");
  }
  if (segs.size() > 1 && segs.back().empty()) segs.back() = "**";

  std::string out = "^";
  bool need_slash = false;
  size_t end = segs.size() - 1;  // segs is never empty here: "/" returned above
  for (size_t i = 0; i < segs.size(); ++i) {
    const std::string& seg = segs[i];
    if (seg == "**") {
      if (i == 0 && i == end) {
        out += ".+";
      } else if (i == 0) {
        out += "(?:.+/)?";
        need_slash = false;
      } else if (i == end) {
        out += "/.*";
      } else {
        out += "(?:/.+)?";
        need_slash = true;
      }
    } else if (seg == "*") {
      if (need_slash) out += '/';
      out += "[^/]+";
      need_slash = true;
    } else {
      if (need_slash) out += '/';
      out += TranslateSegmentGlob(seg);
      if (i == end && *include) out += "(?:/.*)?";
      need_slash = true;
    }
  }
  out += '$';
  return out;
}

struct PatternSet::Compiled {
  std::string text;
  bool include = true;
  std::string source;  // the regex, for its group's
  std::optional<util::Regex> regex;
};

// Patterns [begin, end) of one kind; `any` matches what any of them matches.
struct PatternSet::Group {
  std::size_t begin = 0, end = 0;
  bool include = true;
  std::optional<util::Regex> any;  // absent: too large to compile as one; try each
};

namespace {
// Patterns per combined regex: PCRE2 (link size 2) caps a compiled pattern
// at 64 KiB, and a modest alternation keeps each match call cheap.
constexpr std::size_t kPatternsPerGroup = 128;
}  // namespace

PatternSet::~PatternSet() = default;

Result<std::shared_ptr<const PatternSet>> PatternSet::Compile(const std::vector<std::string>& lines,
                                                              std::string origin) {
  std::shared_ptr<PatternSet> set(new PatternSet());
  set->origin_ = std::move(origin);
  for (const std::string& line : lines) {
    auto c = std::make_unique<Compiled>();
    std::string regex = GitWildMatchToRegex(line, &c->include);
    if (regex.empty()) continue;
    auto compiled = util::Regex::Compile(regex, /*utf8=*/true);
    if (!compiled.ok()) {
      return Status(Code::kUsage, set->origin_ + ": bad pattern '" + std::string(Strip(line)) +
                                      "': " + compiled.status().message() + "; fix or remove it");
    }
    c->regex.emplace(std::move(compiled).value());
    c->text = std::string(Strip(line));
    c->source = std::move(regex);
    set->patterns_.push_back(std::move(c));
  }
  set->MakeGroups();
  return std::shared_ptr<const PatternSet>(std::move(set));
}

void PatternSet::MakeGroups() {
  const std::size_t n = patterns_.size();
  for (std::size_t begin = 0; begin < n;) {
    auto g = std::make_unique<Group>();
    g->begin = begin;
    g->include = patterns_[begin]->include;
    std::string any;
    std::size_t end = begin;
    while (end < n && end - begin < kPatternsPerGroup && patterns_[end]->include == g->include) {
      any += (any.empty() ? "(?:" : "|(?:") + patterns_[end]->source + ")";
      ++end;
    }
    g->end = end;
    if (auto compiled = util::Regex::Compile(any, /*utf8=*/true); compiled.ok()) {
      g->any.emplace(std::move(compiled).value());
    }
    groups_.push_back(std::move(g));
    begin = end;
  }
}

Result<std::shared_ptr<const PatternSet>> PatternSet::FromFile(const std::filesystem::path& file,
                                                               std::string origin) {
  auto read = util::ReadFile(file, kMaxPatternFileBytes);
  if (!read.ok()) return read.status();
  // Python reads the file in text mode: "\r\n", "\r" and "\n" all end a line.
  std::vector<std::string> lines;
  std::string current;
  const std::string text = std::move(read).value();
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '\r' || c == '\n') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      lines.push_back(std::move(current));
      current.clear();
    } else {
      current += c;
    }
  }
  if (!current.empty()) lines.push_back(std::move(current));
  return Compile(lines, std::move(origin));
}

const std::string* PatternSet::Match(std::string_view relative) const {
  // The last pattern that matches decides: the last group with a match holds it.
  for (auto g = groups_.rbegin(); g != groups_.rend(); ++g) {
    if ((*g)->any) {
      bool any = false;
      try {
        any = (*g)->any->Search(relative);
      } catch (const std::runtime_error&) {
        any = true;  // the combined regex hit the match limit: ask each pattern
      }
      if (!any) continue;
    }
    for (std::size_t i = (*g)->end; i-- > (*g)->begin;) {
      const Compiled& p = *patterns_[i];
      if (p.regex->Search(relative)) return p.include ? &p.text : nullptr;
    }
  }
  return nullptr;
}

const std::vector<std::string>& DefaultExcludes() {
  static const std::vector<std::string> kDefaults = {
      // Ray's own (RAY_RUNTIME_ENV_DEFAULT_EXCLUDES)
      ".git", ".venv", "venv", "__pycache__",
      // build output, packaging output, tool caches
      "build", "dist", "*.egg-info", "node_modules", ".cache", ".pytest_cache", ".mypy_cache",
      ".ruff_cache", ".tox", ".nox", "CMakeFiles", ".DS_Store"};
  return kDefaults;
}

}  // namespace stagekit::deploy
