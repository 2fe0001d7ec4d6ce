// Fuzz target: the ignore-pattern compiler (.gitignore/.rayignore lines to
// PCRE2). Input: pattern lines, a NUL, then paths to match, one per line.
// Property: no crash, no sanitizer report, no exception but the documented
// std::runtime_error of a pattern that reaches PCRE2's match limit.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "deploy/ignore.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::size_t nul = text.find('\0');
  std::vector<std::string> lines;
  std::istringstream patterns(text.substr(0, nul));
  for (std::string line; std::getline(patterns, line);) lines.push_back(line);
  auto set = stagekit::deploy::PatternSet::Compile(lines, "fuzz");
  if (!set.ok()) return 0;
  std::istringstream paths(nul == std::string::npos ? "a/b.txt\n.\nx" : text.substr(nul + 1));
  for (std::string path; std::getline(paths, path);) {
    try {
      (*set)->Match(path);
    } catch (const std::runtime_error&) {
    }
  }
  return 0;
}
