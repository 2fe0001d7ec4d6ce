#define PCRE2_CODE_UNIT_WIDTH 8
#include "util/regex.h"

#include <pcre2.h>

#include <stdexcept>

namespace stagekit::util {

namespace {
constexpr uint32_t kSharedPairs = 16;  // whole match + 15 groups
}  // namespace

struct Regex::Compiled {
  pcre2_code* code = nullptr;
  ~Compiled() { pcre2_code_free(code); }
};

Result<Regex> Regex::Compile(std::string_view pattern, bool utf8) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  auto code = std::make_shared<Compiled>();
  code->code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                    utf8 ? PCRE2_UTF | PCRE2_MATCH_INVALID_UTF : 0, &error, &offset, nullptr);
  if (code->code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    return Status(Code::kUsage, std::string(reinterpret_cast<const char*>(message)) +
                                    " at offset " + std::to_string(offset));
  }
  pcre2_jit_compile(code->code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter
  return Regex(std::shared_ptr<const Compiled>(std::move(code)));
}

Regex::Regex(std::string_view pattern, bool utf8) {
  auto compiled = Compile(pattern, utf8);
  if (!compiled.ok()) {
    throw std::logic_error("bad pattern '" + std::string(pattern) +
                           "': " + compiled.status().message());
  }
  code_ = std::move(compiled->code_);
}

bool Regex::Match(std::string_view text, std::size_t start, bool whole,
                  std::vector<std::string>* groups, std::size_t* end) const {
  // One match block per thread, reused (a package walk matches every path
  // against every pattern); a pattern with more groups than it holds gets
  // one of its own.
  using Data = std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)>;
  static thread_local Data shared(pcre2_match_data_create(kSharedPairs, nullptr),
                                  &pcre2_match_data_free);
  uint32_t captures = 0;
  pcre2_pattern_info(code_->code, PCRE2_INFO_CAPTURECOUNT, &captures);
  Data own(nullptr, &pcre2_match_data_free);
  if (captures + 1 > kSharedPairs) own.reset(pcre2_match_data_create(captures + 1, nullptr));
  pcre2_match_data* data = own ? own.get() : shared.get();
  if (data == nullptr) throw std::bad_alloc();
  const uint32_t options = whole ? PCRE2_ANCHORED | PCRE2_ENDANCHORED : 0;
  auto match = [&](uint32_t more) {
    return pcre2_match(code_->code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), start,
                       options | more, data, nullptr);
  };
  int rc = match(0);
  // The JIT's stack is small; the interpreter keeps its backtracking on the heap.
  if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) rc = match(PCRE2_NO_JIT);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {  // a limit: neither "matches" nor "does not" would be true
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(rc, message, sizeof message);
    throw std::runtime_error("regular expression on " + std::to_string(text.size()) +
                             " bytes of text: " + reinterpret_cast<const char*>(message));
  }
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data);
  // In UTF-8 mode PCRE2 starts an anchored match after invalid bytes at the
  // start ("\xff2" matched "[0-9]"): a whole match must span the whole text.
  if (whole && (ov[0] != start || ov[1] != text.size())) return false;
  if (end != nullptr) *end = ov[1];
  if (groups != nullptr) {
    groups->assign(captures + 1, std::string());
    for (uint32_t i = 0; i <= captures; ++i) {
      if (ov[2 * i] != PCRE2_UNSET)
        (*groups)[i] = text.substr(ov[2 * i], ov[2 * i + 1] - ov[2 * i]);
    }
  }
  return true;
}

bool Regex::FullMatch(std::string_view text, std::vector<std::string>* groups) const {
  return Match(text, 0, true, groups, nullptr);
}

bool Regex::Search(std::string_view text, std::vector<std::string>* groups) const {
  return Match(text, 0, false, groups, nullptr);
}

std::vector<std::vector<std::string>> Regex::FindAll(std::string_view text) const {
  std::vector<std::vector<std::string>> all;
  std::size_t start = 0, end = 0;
  std::vector<std::string> groups;
  while (start <= text.size() && Match(text, start, false, &groups, &end)) {
    const bool empty = groups[0].empty();
    all.push_back(std::move(groups));
    start = empty ? end + 1 : end;  // an empty match moves on by one
  }
  return all;
}

std::string Regex::ReplaceAll(std::string_view text, std::string_view replacement) const {
  std::string out(text.size() + 64, '\0');
  for (int attempt = 0; attempt < 2; ++attempt) {
    PCRE2_SIZE size = out.size();
    const int rc =
        pcre2_substitute(code_->code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0,
                         PCRE2_SUBSTITUTE_GLOBAL | PCRE2_SUBSTITUTE_OVERFLOW_LENGTH, nullptr,
                         nullptr, reinterpret_cast<PCRE2_SPTR>(replacement.data()),
                         replacement.size(), reinterpret_cast<PCRE2_UCHAR*>(out.data()), &size);
    if (rc >= 0) {
      out.resize(size);
      return out;
    }
    if (rc != PCRE2_ERROR_NOMEMORY)
      throw std::logic_error("bad replacement '" + std::string(replacement) + "'");
    out.assign(size, '\0');  // the length it needs
  }
  throw std::logic_error("pcre2_substitute");
}

}  // namespace stagekit::util
