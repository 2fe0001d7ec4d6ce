#include <gtest/gtest.h>

#include <stdexcept>

#include "stagekit/c_api.h"
#include "stagekit/executor.h"
#include "stagekit/invoke.h"
#include "unit/test_util.h"
#include "util/digest.h"

namespace stagekit {
namespace {

using testing::ListFiles;
using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;

std::uint64_t g_seen_seed = 0;

void Upper(StageContext& ctx) {
  std::string s = ctx.ReadInput("in");
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  g_seen_seed = ctx.seed();
  ctx.SetMetric("chars", s.size());
  ctx.WriteOutput(s);
}
void Throws(StageContext& ctx) {
  ctx.WriteOutput("half");
  throw std::runtime_error("disk on fire");
}
void ThrowsInt(StageContext&) { throw 42; }
void Silent(StageContext&) {}
void MissingInput(StageContext& ctx) { ctx.ReadInput("nope"); }

class InvokeTest : public ::testing::Test {
 protected:
  InvokeTest() {
    registry_.Add("t.upper", &Upper, __FILE__, __LINE__);
    registry_.Add("t.throws", &Throws, __FILE__, __LINE__);
    registry_.Add("t.throws_int", &ThrowsInt, __FILE__, __LINE__);
    registry_.Add("t.silent", &Silent, __FILE__, __LINE__);
    registry_.Add("t.missing_input", &MissingInput, __FILE__, __LINE__);
    WriteFile(dir_ / "in.txt", "hello\n");
  }
  StageRequest Request(const std::string& stage) {
    StageRequest r;
    r.stage = stage;
    r.instance = "inst";
    r.inputs = {{"in", dir_ / "in.txt"}};
    r.output = dir_ / "out.txt";
    r.job = JobSpec{"j", 7, Json::object()};
    return r;
  }
  Registry registry_;
  TempDir dir_;
};

TEST_F(InvokeTest, RunsTheStageAndReportsStats) {
  auto stats = Invoke(Request("t.upper"), registry_);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(ReadFile(dir_ / "out.txt"), "HELLO\n");
  EXPECT_EQ(stats->stage, "t.upper");
  EXPECT_EQ(stats->executor, "inprocess");
  EXPECT_EQ(stats->attempt, 1);
  EXPECT_EQ(stats->bytes_in, 6u);
  EXPECT_EQ(stats->bytes_out, 6u);
  EXPECT_EQ(stats->host, HostName());
  EXPECT_GE(stats->wall_s, 0.0);
  EXPECT_EQ(stats->output_digest, "sha256:" + util::HexDigest(util::Sha256("HELLO\n")));
  EXPECT_EQ(stats->metrics, Json({{"chars", 6}}));
  EXPECT_EQ(g_seen_seed, DeriveSeed(JobSpec{"j", 7, Json::object()}, "inst"));
  EXPECT_EQ(ListFiles(dir_.path()), (std::vector<std::string>{"in.txt", "out.txt"}));
}

TEST_F(InvokeTest, UnknownStageSuggestsCloseNames) {
  auto r = Invoke(Request("t.uper"), registry_);
  EXPECT_EQ(r.status().code(), Code::kUnknownStage);
  EXPECT_NE(r.status().message().find("unknown stage 't.uper'; did you mean 't.upper'"),
            std::string::npos)
      << r.status().message();
}

TEST_F(InvokeTest, MissingOrUnreadableInputsFailBeforeTheStageRuns) {
  StageRequest req = Request("t.upper");
  req.inputs["in"] = dir_ / "absent.txt";
  auto r = Invoke(req, registry_);
  EXPECT_EQ(r.status().code(), Code::kInputError);
  EXPECT_NE(r.status().message().find("input 'in' of stage 'inst' (t.upper)"), std::string::npos)
      << r.status().message();
  EXPECT_NE(r.status().message().find("No such file or directory"), std::string::npos);
  req.inputs["in"] = dir_.path();
  EXPECT_NE(Invoke(req, registry_).status().message().find("is not a regular file"),
            std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "out.txt"));
}

TEST_F(InvokeTest, UnwritableOutputLocationsFail) {
  StageRequest req = Request("t.upper");
  req.output = dir_ / "no-such-dir" / "out.txt";
  EXPECT_EQ(Invoke(req, registry_).status().code(), Code::kOutputError);
  req.output = dir_ / "in.txt" / "out.txt";  // parent is a file
  auto r = Invoke(req, registry_);
  EXPECT_EQ(r.status().code(), Code::kOutputError);
  EXPECT_NE(r.status().message().find("is not a directory"), std::string::npos)
      << r.status().message();
  std::filesystem::create_directory(dir_ / "taken");
  req.output = dir_ / "taken";
  EXPECT_NE(Invoke(req, registry_).status().message().find("exists and is a folder"),
            std::string::npos);
}

TEST_F(InvokeTest, AFailingStageLeavesTheEarlierGoodOutputAlone) {
  ASSERT_TRUE(Invoke(Request("t.upper"), registry_).ok());
  auto r = Invoke(Request("t.throws"), registry_);
  EXPECT_EQ(r.status().code(), Code::kStageFailed);
  EXPECT_EQ(r.status().message(), "stage 'inst' (t.throws) failed: disk on fire");
  EXPECT_EQ(ReadFile(dir_ / "out.txt"), "HELLO\n");
  EXPECT_EQ(ListFiles(dir_.path()), (std::vector<std::string>{"in.txt", "out.txt"}));

  auto odd = Invoke(Request("t.throws_int"), registry_);
  EXPECT_NE(odd.status().message().find("not a std::exception"), std::string::npos);
  auto missing = Invoke(Request("t.missing_input"), registry_);
  EXPECT_NE(
      missing.status().message().find("needs an input named 'nope' but the request has only: in"),
      std::string::npos)
      << missing.status().message();
  EXPECT_EQ(ReadFile(dir_ / "out.txt"), "HELLO\n");
}

TEST_F(InvokeTest, AStageThatWritesNothingFails) {
  auto r = Invoke(Request("t.silent"), registry_);
  EXPECT_EQ(r.status().code(), Code::kStageFailed);
  EXPECT_NE(r.status().message().find("wrote no output"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "out.txt"));
}

TEST_F(InvokeTest, InProcessExecutorRecordsItsName) {
  InProcessExecutor ex(registry_);
  StageRequest req = Request("t.upper");
  req.executor = "something-else";
  auto stats = ex.Run(req, {});
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->executor, "inprocess");
}

TEST(TempOutputTest, AProcesssTemporariesBesideTheTargetAreRemovable) {
  TempDir dir;
  WriteFile(dir / ".stagekit-tmp.123.0123456789abcdef.h" / "out.bin", "x");
  WriteFile(dir / ".stagekit-tmp.124.0123456789abcdef.h" / "out.bin", "y");
  WriteFile(dir / "out.bin", "the output");
  RemoveTempOutputs(dir / "out.bin", 123);
  EXPECT_EQ(ListFiles(dir.path()),
            (std::vector<std::string>{".stagekit-tmp.124.0123456789abcdef.h/out.bin", "out.bin"}));
}

// The stage writes into a private folder (0700, unpredictable name) under the
// output's own file name, and nothing of it is left after the run.
TEST(TempOutputTest, TheStageWritesItsOutputsNameInAPrivateFolder) {
  ASSERT_TRUE(LoadStageLibrary(STAGEKIT_TEST_STAGES).ok());
  TempDir dir;
  StageRequest req;
  req.stage = "test.describe";
  req.output = dir / "described.json";
  ASSERT_TRUE(Invoke(req).ok());
  EXPECT_EQ(ListFiles(dir.path()), (std::vector<std::string>{"described.json"}));
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    EXPECT_EQ(e.path().filename().string().rfind(".stagekit-tmp", 0), std::string::npos);
  }
  // An output place that holds a link is never replaced.
  WriteFile(dir / "elsewhere", "not yours");
  std::filesystem::create_symlink(dir / "elsewhere", dir / "linked.json");
  req.output = dir / "linked.json";
  auto refused = Invoke(req);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::kOutputError);
  EXPECT_NE(refused.status().message().find("exists and is a symbolic link"), std::string::npos)
      << refused.status().message();
  EXPECT_EQ(ReadFile(dir / "elsewhere"), "not yours");
}

TEST(CApiTest, InvokeJsonReturnsStatsOrStructuredErrors) {
  ASSERT_TRUE(LoadStageLibrary(STAGEKIT_TEST_STAGES).ok());
  TempDir dir;
  WriteFile(dir / "in", "abc");
  std::string req = CanonicalJson({{"stage", "test.copy"},
                                   {"inputs", {{"in", (dir / "in").string()}}},
                                   {"output", (dir / "out").string()}});
  char* out = nullptr;
  std::size_t len = 0;
  ASSERT_EQ(stagekit_invoke_json(req.data(), req.size(), &out, &len), 0);
  auto stats = RunStats::FromJson(Json::parse(std::string(out, len)));
  stagekit_free(out);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->bytes_out, 3u);

  const char bad[] = "{not json";
  int rc = stagekit_invoke_json(bad, sizeof(bad) - 1, &out, &len);
  EXPECT_EQ(rc, static_cast<int>(Code::kBadRequest));
  Json err = Json::parse(std::string(out, len));
  stagekit_free(out);
  EXPECT_EQ(err["error"]["code"], "bad_request");

  rc = stagekit_load_library("/nonexistent.so", &out, &len);
  EXPECT_EQ(rc, static_cast<int>(Code::kLibraryError));
  stagekit_free(out);
  EXPECT_STREQ(stagekit_version(), STAGEKIT_VERSION_FOR_TEST);
}

}  // namespace
}  // namespace stagekit
