// The determinism audit's pure parts: where two outputs differ, how that is
// shown, which perturbation a stage is blamed for, and the report.
#include <gtest/gtest.h>

#include "analyse/audit.h"

namespace stagekit::analyse {

namespace {

TEST(AuditCompareBytes, IdenticalBytesHaveNoDifference) {
  EXPECT_FALSE(CompareBytes("", "").has_value());
  EXPECT_FALSE(CompareBytes("same\n", "same\n").has_value());
}

TEST(AuditCompareBytes, FindsTheFirstDifferingByteWithContextOnBothSides) {
  const std::string a = "report date: 2011-06-15\nvalues: 2000\n";
  const std::string b = "report date: 2033-09-21\nvalues: 2000\n";
  auto d = CompareBytes(a, b, /*before=*/4, /*after=*/6);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->offset, 15u);
  EXPECT_EQ(d->size_a, a.size());
  EXPECT_EQ(d->size_b, b.size());
  EXPECT_EQ(d->excerpt_start, 11u);
  EXPECT_EQ(d->excerpt_a, ": 2011-06-");
  EXPECT_EQ(d->excerpt_b, ": 2033-09-");
}

TEST(AuditCompareBytes, APrefixDiffersWhereTheShorterOneEnds) {
  auto d = CompareBytes("abc", "abcdef");
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->offset, 3u);
  EXPECT_EQ(d->size_a, 3u);
  EXPECT_EQ(d->size_b, 6u);
  EXPECT_EQ(d->excerpt_a, "abc");
  EXPECT_EQ(d->excerpt_b, "abcdef");

  d = CompareBytes("", "x");
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->offset, 0u);
  EXPECT_EQ(d->excerpt_a, "");
  EXPECT_EQ(d->excerpt_b, "x");
}

TEST(AuditCompareBytes, ExcerptStartsAtTheDifferenceWhenItIsNearTheStart) {
  auto d = CompareBytes("xyz", "Xyz", 16, 32);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->offset, 0u);
  EXPECT_EQ(d->excerpt_start, 0u);
  EXPECT_EQ(d->excerpt_a, "xyz");
}

TEST(AuditPrintableExcerpt, EscapesEverythingThatIsNotPrintableAscii) {
  EXPECT_EQ(PrintableExcerpt("a\tb\nc\\d"), "a\\tb\\nc\\\\d");
  EXPECT_EQ(PrintableExcerpt(std::string("\x00\x7f\xff", 3)), "\\x00\\x7f\\xff");
  EXPECT_EQ(PrintableExcerpt("caf\xc3\xa9"), "caf\\xc3\\xa9");
}

StageAudit Stage(const std::vector<std::pair<std::string, std::string>>& results) {
  StageAudit s;
  s.name = "s";
  s.stage = "test.s";
  s.output = "s.txt";
  for (const char* p : kAuditPerturbations) {
    AuditFinding f;
    f.perturbation = p;
    f.result = "same";
    for (const auto& [name, result] : results) {
      if (name == p) f.result = result;
    }
    if (f.result == "differs") f.diff = CompareBytes("a", "b");
    s.findings.push_back(f);
  }
  return s;
}

TEST(AuditAttribute, BlamesEveryPerturbationThatChangedTheOutput) {
  StageAudit s = Stage({{"threads", "differs"}, {"env", "differs"}, {"cwd", "failed"}});
  Attribute(s);
  EXPECT_EQ(s.blamed, (std::vector<std::string>{"cwd", "env", "threads"}));
  for (const AuditFinding& f : s.findings) EXPECT_EQ(f.masked_by, "") << f.perturbation;
}

TEST(AuditAttribute, AStageUnstableUnderRepeatIsBlamedForThatAlone) {
  StageAudit s = Stage({{"repeat", "differs"}, {"clock", "differs"}, {"threads", "differs"}});
  Attribute(s);
  EXPECT_EQ(s.blamed, (std::vector<std::string>{"repeat"}));
  EXPECT_EQ(s.Find("clock")->masked_by, "repeat");
  EXPECT_EQ(s.Find("threads")->masked_by, "repeat");
  EXPECT_EQ(s.Find("env")->masked_by, "");
}

TEST(AuditAttribute, LayoutDependenceExplainsOrderExecutorAndNamelessPathDifferences) {
  StageAudit s = Stage({{"memory-layout", "differs"},
                        {"order", "differs"},
                        {"executor", "differs"},
                        {"paths", "differs"},
                        {"tz-locale", "differs"}});
  Attribute(s);
  EXPECT_EQ(s.blamed, (std::vector<std::string>{"tz-locale", "memory-layout"}));
  EXPECT_EQ(s.Find("order")->masked_by, "memory-layout");
  EXPECT_EQ(s.Find("executor")->masked_by, "memory-layout");
  EXPECT_EQ(s.Find("paths")->masked_by, "memory-layout");

  // An output that names its files is about the names, whatever the layout does.
  s.Find("paths")->shows_paths = true;
  Attribute(s);
  EXPECT_EQ(s.blamed, (std::vector<std::string>{"paths", "tz-locale", "memory-layout"}));
  EXPECT_EQ(s.Find("paths")->masked_by, "");
}

TEST(AuditAttribute, WithoutLayoutDependenceOrderAndExecutorAreBlamed) {
  StageAudit s = Stage({{"order", "differs"}, {"executor", "failed"}, {"clock", "unavailable"}});
  Attribute(s);
  EXPECT_EQ(s.blamed, (std::vector<std::string>{"order", "executor"}));
}

TEST(AuditAttribute, AttributingAgainStartsFromScratch) {
  StageAudit s = Stage({{"repeat", "differs"}, {"env", "differs"}});
  Attribute(s);
  s.Find("repeat")->result = "same";
  s.Find("repeat")->diff.reset();
  Attribute(s);
  EXPECT_EQ(s.blamed, (std::vector<std::string>{"env"}));
  EXPECT_EQ(s.Find("env")->masked_by, "");
}

AuditReport Report() {
  AuditReport r;
  r.pipeline = "demo";
  r.file = "/p/demo.yaml";
  r.env.aslr_off = true;
  r.env.aslr_off_how = "setarch x86_64 -R";
  r.env.aslr_on = true;
  r.other_executor = "inprocess";
  StageAudit good = Stage({});
  good.name = "good";
  StageAudit bad = Stage({{"clock", "differs"}});
  bad.name = "bad";
  bad.Find("clock")->diff = CompareBytes("date: 2011\n", "date: 2033\n");
  r.stages = {good, bad};
  for (StageAudit& s : r.stages) Attribute(s);
  return r;
}

TEST(AuditReport, SummaryNamesEachNondeterministicStageAndItsPerturbations) {
  AuditReport r = Report();
  EXPECT_EQ(r.Nondeterministic(), 1u);
  EXPECT_EQ(r.Summary(),
            "1 of 2 audited stages changed their output under a perturbation that must not "
            "matter: bad (clock)");
  r.stages.pop_back();
  EXPECT_EQ(r.Nondeterministic(), 0u);
  EXPECT_EQ(r.Summary(),
            "all 1 audited stages produced identical outputs under every perturbation");
}

TEST(AuditReport, JsonHasOneFindingPerPerturbationWithOffsetAndExcerpts) {
  AuditReport r = Report();
  r.env.faketime.clear();
  Json j = r.ToJson();
  EXPECT_EQ(j["status"], "nondeterministic");
  ASSERT_EQ(j["stages"].size(), 2u);
  EXPECT_EQ(j["stages"][0]["deterministic"], true);
  const Json& bad = j["stages"][1];
  EXPECT_EQ(bad["blamed"], Json::array({"clock"}));
  EXPECT_EQ(bad["findings"].size(), std::size(kAuditPerturbations));
  EXPECT_EQ(bad["findings"]["clock"]["offset"], 8);
  EXPECT_EQ(bad["findings"]["clock"]["excerpt_baseline"], "date: 2011\\n");
  EXPECT_EQ(bad["findings"]["clock"]["excerpt_perturbed"], "date: 2033\\n");
  EXPECT_EQ(bad["findings"]["repeat"]["result"], "same");
  // The clock cannot be moved without libfaketime, and the report says so.
  bool said = false;
  for (const Json& p : j["perturbations"]) {
    if (p["name"] == "clock") {
      EXPECT_EQ(p["available"], false);
      EXPECT_NE(p["note"].get<std::string>().find("apt-get install libfaketime"),
                std::string::npos);
      said = true;
    }
  }
  EXPECT_TRUE(said);
}

TEST(AuditReport, TableShowsTheVerdictsAndWhereTheBytesDiffer) {
  AuditReport r = Report();
  r.env.aslr_off = false;
  r.env.aslr_off_problem = "`setarch x86_64 -R` was refused: Operation not permitted";
  const std::string t = r.Table();
  EXPECT_NE(t.find("ASLR ON: it could not be turned off"), std::string::npos) << t;
  EXPECT_NE(t.find("Operation not permitted"), std::string::npos) << t;
  EXPECT_NE(t.find("bad    DIFFERS    clock"), std::string::npos) << t;
  EXPECT_NE(t.find("good   ok\n"), std::string::npos) << t;
  EXPECT_NE(t.find("differs at byte 8"), std::string::npos) << t;
  EXPECT_NE(t.find("\"date: 2033\\n\""), std::string::npos) << t;
}

}  // namespace
}  // namespace stagekit::analyse
