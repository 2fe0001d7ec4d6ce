// Regular expressions: PCRE2 (Perl syntax, UTF-8, JIT), the one engine
// stagekit uses. std::regex is not used: it recurses per character and
// overflows the stack on long input, and it is slow.
#ifndef STAGEKIT_UTIL_REGEX_H_
#define STAGEKIT_UTIL_REGEX_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "stagekit/status.h"

namespace stagekit::util {

class Regex {
 public:
  // Bytes by default; `utf8`: the pattern and the text are UTF-8 ("." and
  // "[é]" match a character), and invalid UTF-8 in a text never matches.
  // kUsage with PCRE2's reason ("missing closing parenthesis at offset 3")
  // when it does not compile; the caller says which pattern.
  static Result<Regex> Compile(std::string_view pattern, bool utf8 = false);
  // A pattern written in the code: std::logic_error when it does not compile.
  explicit Regex(std::string_view pattern, bool utf8 = false);

  // Whether all of `text` matches (from its first byte to its last, whatever
  // the mode); `groups` (when given) gets the whole
  // match and then each group ("" for a group that took no part).
  bool FullMatch(std::string_view text, std::vector<std::string>* groups = nullptr) const;
  // Whether some part of `text` matches.
  bool Search(std::string_view text, std::vector<std::string>* groups = nullptr) const;
  // Every match, left to right, without overlaps: the groups of each.
  std::vector<std::vector<std::string>> FindAll(std::string_view text) const;
  // `text` with every match replaced by `replacement` ($1... are groups).
  std::string ReplaceAll(std::string_view text, std::string_view replacement) const;

 private:
  struct Compiled;
  explicit Regex(std::shared_ptr<const Compiled> code) : code_(std::move(code)) {}
  bool Match(std::string_view text, std::size_t start, bool whole, std::vector<std::string>* groups,
             std::size_t* end) const;
  std::shared_ptr<const Compiled> code_;
};

}  // namespace stagekit::util

#endif  // STAGEKIT_UTIL_REGEX_H_
