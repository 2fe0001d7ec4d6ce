// The exit code table (src/util/outcome.cc) against the library's codes
// (include/stagekit/c_api.h, status.h) and against docs/exit-codes.md.
#include "util/outcome.h"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "stagekit/c_api.h"
#include "stagekit/status.h"

namespace stagekit {
namespace {

constexpr Code kLibraryCodes[] = {
    Code::kOk,           Code::kStageFailed,  Code::kUsage,      Code::kInvalidPipeline,
    Code::kUnknownStage, Code::kInputError,   Code::kBadRequest, Code::kOutputError,
    Code::kTimeout,      Code::kLibraryError, Code::kInfeasible, Code::kRayUnavailable,
    Code::kInternal,     Code::kInterrupted,
};

TEST(OutcomeTest, EveryLibraryCodeIsNamedAsTheCApiNamesIt) {
  for (Code c : kLibraryCodes) {
    const char* c_name = stagekit_code_name(static_cast<int>(c));
    ASSERT_NE(c_name, nullptr) << static_cast<int>(c);
    EXPECT_EQ(CodeName(c), c_name);
    EXPECT_EQ(CodeFromName(c_name), c);
    EXPECT_EQ(util::OutcomeName(c), c_name);
  }
  // The C API names the library's codes and nothing else.
  int named = 0;
  for (int v = -1; v < 300; ++v) {
    if (stagekit_code_name(v) != nullptr) ++named;
  }
  EXPECT_EQ(named, static_cast<int>(std::size(kLibraryCodes)));
}

TEST(OutcomeTest, ToolOutcomesKeepTheirNamesAndNumbers) {
  const std::map<int, std::string> expected = {
      {10, "parity_mismatch"}, {13, "too_large"},     {14, "secret_refused"},  {15, "job_failed"},
      {16, "budget_exceeded"}, {17, "checks_failed"}, {18, "operation_failed"}};
  for (const auto& [number, name] : expected) {
    EXPECT_EQ(stagekit_code_name(number), nullptr) << number << " is a library code";
    EXPECT_EQ(util::OutcomeName(Code{number}), name);
    // Not a library code: the library names it "internal" and cannot parse it.
    EXPECT_EQ(CodeName(Code{number}), "internal");
    EXPECT_EQ(CodeFromName(name), Code::kInternal);
    EXPECT_EQ(util::ExitCode(Status(Code{number}, "x")), number);
  }
  EXPECT_EQ(util::kTooLarge, Code{13});
  EXPECT_EQ(util::kOperationFailed, Code{18});
  EXPECT_EQ(util::kNodeTooOld, Code{19});
  EXPECT_EQ(util::OutcomeName(Code{42}), "internal");
  EXPECT_EQ(util::ExitCode(Status(Code{42}, "x")), 70);
}

TEST(OutcomeTest, TheTableHasOneRowPerCodeInOrderAndTheHelpListsThemAll) {
  std::set<int> numbers;
  std::set<std::string_view> names;
  int last = -1;
  const std::string help = util::ExitCodesHelp();
  for (const util::Outcome& o : util::Outcomes()) {
    int n = static_cast<int>(o.code);
    EXPECT_GT(n, last) << o.name;
    last = n;
    EXPECT_TRUE(numbers.insert(n).second) << n;
    EXPECT_TRUE(names.insert(o.name).second) << o.name;
    EXPECT_FALSE(o.meaning.empty()) << o.name;
    EXPECT_NE(help.find(std::to_string(n) + " " + std::string(o.meaning)), std::string::npos)
        << o.name << "\n"
        << help;
  }
  for (Code c : kLibraryCodes) EXPECT_EQ(numbers.count(static_cast<int>(c)), 1u);
}

TEST(OutcomeTest, DocsTableMatchesTheOutcomeTableBothWays) {
  std::ifstream in(STAGEKIT_SOURCE_DIR "/docs/exit-codes.md");
  ASSERT_TRUE(in) << "cannot read docs/exit-codes.md";
  // Rows like "| 13 | `too_large` | package over its size cap |".
  static const std::regex kRow(R"(^\|\s*(\d+)\s*\|\s*`([a-z_]+)`\s*\|.*\|\s*$)");
  std::map<int, std::string> docs;
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (!std::regex_match(line, m, kRow)) continue;
    int number = std::stoi(m[1]);
    EXPECT_TRUE(docs.emplace(number, m[2]).second) << "docs list " << number << " twice";
  }
  std::map<int, std::string> table;
  for (const util::Outcome& o : util::Outcomes()) {
    table.emplace(static_cast<int>(o.code), std::string(o.name));
  }
  ASSERT_FALSE(docs.empty());
  for (const auto& [number, name] : table) {
    auto it = docs.find(number);
    if (it == docs.end()) {
      ADD_FAILURE() << "docs/exit-codes.md has no row for " << number << " `" << name << "`";
    } else {
      EXPECT_EQ(it->second, name) << "exit code " << number;
    }
  }
  for (const auto& [number, name] : docs) {
    EXPECT_EQ(table.count(number), 1u)
        << "docs/exit-codes.md lists " << number << " `" << name << "`, the outcome table does not";
  }
}

}  // namespace
}  // namespace stagekit
