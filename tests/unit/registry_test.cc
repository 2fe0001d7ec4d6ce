#include <gtest/gtest.h>

#include "stagekit/stage.h"

namespace stagekit {
namespace {

void A(StageContext&) {}
void B(StageContext&) {}

TEST(RegistryTest, FindsAndListsSorted) {
  Registry r;
  r.Add("zeta", &A, "z.cc", 1);
  r.Add("alpha", &B, "a.cc", 2);
  ASSERT_NE(r.Find("alpha"), nullptr);
  EXPECT_EQ(r.Find("alpha")->fn, &B);
  EXPECT_EQ(r.Find("alpha")->file, "a.cc");
  EXPECT_EQ(r.Find("beta"), nullptr);
  auto list = r.List();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].name, "alpha");
  EXPECT_EQ(list[1].name, "zeta");
  EXPECT_TRUE(r.Problems().empty());
}

TEST(RegistryTest, DuplicatesAreRecordedWithBothSitesAndFirstWins) {
  Registry r;
  r.Add("s", &A, "first.cc", 10);
  r.Add("s", &B, "second.cc", 20);
  EXPECT_EQ(r.Find("s")->fn, &A);
  auto problems = r.Problems();
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("first.cc:10"), std::string::npos) << problems[0];
  EXPECT_NE(problems[0].find("second.cc:20"), std::string::npos) << problems[0];
  r.Add("", &A, "empty.cc", 1);
  EXPECT_EQ(r.Problems().size(), 2u);
}

TEST(RegistryTest, SuggestsCloseNames) {
  Registry r;
  r.Add("wordcount.map", &A, "w.cc", 1);
  r.Add("wordcount.reduce", &A, "w.cc", 2);
  r.Add("montecarlo.sample", &A, "m.cc", 3);
  auto s = r.Suggest("wordcount.mapp");
  ASSERT_FALSE(s.empty());
  EXPECT_EQ(s[0], "wordcount.map");
  EXPECT_TRUE(r.Suggest("qqqqqqqqqqqqqqqqqqq").empty());
}

TEST(LoadStageLibraryTest, RegistersTheLibrarysStages) {
  ASSERT_TRUE(LoadStageLibrary(STAGEKIT_TEST_STAGES).ok());
  const Registry::Entry* e = Registry::Global().Find("test.copy");
  ASSERT_NE(e, nullptr);
  EXPECT_NE(e->library.find("libstagekit_test_stages.so"), std::string::npos) << e->library;
  // Loading the same library again is harmless.
  EXPECT_TRUE(LoadStageLibrary(STAGEKIT_TEST_STAGES).ok());
}

TEST(LoadStageLibraryTest, MissingAndBrokenLibrariesFail) {
  Status missing = LoadStageLibrary("/nonexistent/libnope.so");
  EXPECT_EQ(missing.code(), Code::kLibraryError);
  EXPECT_NE(missing.message().find("does not exist"), std::string::npos);
  Status not_elf = LoadStageLibrary(STAGEKIT_SOURCE_DIR "/README.md");
  EXPECT_EQ(not_elf.code(), Code::kLibraryError);
  EXPECT_NE(not_elf.message().find("cannot load stage library"), std::string::npos);
}

TEST(LoadStageLibraryTest, DuplicateRegistrationsInALibraryAreReported) {
  Status s = LoadStageLibrary(STAGEKIT_DUP_STAGES);
  EXPECT_EQ(s.code(), Code::kLibraryError);
  EXPECT_NE(s.message().find("'dup.same_name' is registered twice"), std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("dup_a.cc"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("dup_b.cc"), std::string::npos) << s.message();
}

TEST(LoadStageLibraryTest, WholeArchiveKeepsRegistrationOnlyObjects) {
  // Control first: linked normally, the registration-only object is dropped.
  ASSERT_TRUE(LoadStageLibrary(STAGEKIT_PLAIN_LINK_STAGES).ok());
  EXPECT_EQ(Registry::Global().Find("test.static_only"), nullptr);
  ASSERT_TRUE(LoadStageLibrary(STAGEKIT_WHOLE_ARCHIVE_STAGES).ok());
  EXPECT_NE(Registry::Global().Find("test.static_only"), nullptr);
}

}  // namespace
}  // namespace stagekit
