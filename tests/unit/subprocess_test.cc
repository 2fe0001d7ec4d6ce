#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "stagekit/executor.h"
#include "unit/test_util.h"

namespace stagekit {
namespace {

using testing::ListFiles;
using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;

class SubprocessTest : public ::testing::Test {
 protected:
  SubprocessTest() {
    WriteFile(dir_ / "in.txt", "payload\n");
    SubprocessExecutor::Options o;
    o.runner = STAGEKIT_CLI;
    o.libraries = {STAGEKIT_TEST_STAGES};
    o.kill_grace = std::chrono::milliseconds(300);
    o.cancel = &cancel_;
    executor_ = std::make_unique<SubprocessExecutor>(o);
  }
  StageRequest Request(const std::string& stage, Json kwargs = Json::object()) {
    StageRequest r;
    r.stage = stage;
    r.instance = "inst";
    r.inputs = {{"in", dir_ / "in.txt"}};
    r.output = dir_ / "out.txt";
    r.job = JobSpec{"j", 5, Json::object()};
    r.kwargs = std::move(kwargs);
    return r;
  }
  std::vector<std::string> Files() { return ListFiles(dir_.path()); }

  TempDir dir_;
  CancelFlag cancel_;  // outlives executor_, which reads it
  std::unique_ptr<SubprocessExecutor> executor_;
};

TEST_F(SubprocessTest, ProducesTheSameBytesAsInProcess) {
  ASSERT_TRUE(LoadStageLibrary(STAGEKIT_TEST_STAGES).ok());
  auto sub = executor_->Run(Request("test.describe", {{"k", 1}}), {});
  ASSERT_TRUE(sub.ok()) << sub.status().message();
  std::string sub_bytes = ReadFile(dir_ / "out.txt");
  EXPECT_EQ(sub->executor, "subprocess");
  EXPECT_EQ(sub->metrics, Json({{"answer", 42}}));
  InProcessExecutor inproc;
  auto in = inproc.Run(Request("test.describe", {{"k", 1}}), {});
  ASSERT_TRUE(in.ok());
  EXPECT_EQ(ReadFile(dir_ / "out.txt"), sub_bytes);
  EXPECT_EQ(in->output_digest, sub->output_digest);
}

TEST_F(SubprocessTest, StagePrintsDoNotBreakTheProtocol) {
  auto r = executor_->Run(Request("test.chatty"), {});
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(ReadFile(dir_ / "out.txt"), "chatty ok\n");
}

TEST_F(SubprocessTest, AThrowingStageReportsItsMessageAndKeepsTheOldOutput) {
  WriteFile(dir_ / "out.txt", "good old output");
  auto r = executor_->Run(Request("test.throws", {{"message", "bad pixel"}}), {});
  EXPECT_EQ(r.status().code(), Code::kStageFailed);
  EXPECT_NE(r.status().message().find("stage 'inst' (test.throws) failed: bad pixel"),
            std::string::npos)
      << r.status().message();
  EXPECT_EQ(ReadFile(dir_ / "out.txt"), "good old output");
  EXPECT_EQ(Files(), (std::vector<std::string>{"in.txt", "out.txt"}));
}

TEST_F(SubprocessTest, AChildKilledByASignalIsReportedWithItsOutput) {
  WriteFile(dir_ / "out.txt", "good old output");
  auto r = executor_->Run(Request("test.crash"), {});
  EXPECT_EQ(r.status().code(), Code::kStageFailed);
  const std::string& m = r.status().message();
  EXPECT_NE(m.find("was killed by SIGABRT"), std::string::npos) << m;
  EXPECT_NE(m.find("stderr tail:\n    about to die"), std::string::npos) << m;
  EXPECT_EQ(ReadFile(dir_ / "out.txt"), "good old output");
  EXPECT_EQ(Files(), (std::vector<std::string>{"in.txt", "out.txt"}));  // no temp left behind
}

TEST_F(SubprocessTest, TimeoutStopsTheChildAndCleansUp) {
  StageOptions options;
  options.timeout = std::chrono::milliseconds(300);
  auto r = executor_->Run(Request("test.sleep", {{"seconds", 30}}), options);
  EXPECT_EQ(r.status().code(), Code::kTimeout);
  EXPECT_NE(r.status().message().find("timed out after 300ms"), std::string::npos)
      << r.status().message();
  EXPECT_EQ(Files(), (std::vector<std::string>{"in.txt"}));
}

TEST_F(SubprocessTest, TimeoutEscalatesToSigkill) {
  StageOptions options;
  options.timeout = std::chrono::milliseconds(300);
  auto r = executor_->Run(Request("test.sleep", {{"seconds", 30}, {"ignore_term", true}}), options);
  EXPECT_EQ(r.status().code(), Code::kTimeout);
  EXPECT_EQ(Files(), (std::vector<std::string>{"in.txt"}));
}

TEST_F(SubprocessTest, ChildSideErrorsKeepTheirCodes) {
  auto unknown = executor_->Run(Request("test.nope"), {});
  EXPECT_EQ(unknown.status().code(), Code::kUnknownStage);
  EXPECT_NE(unknown.status().message().find("unknown stage 'test.nope'"), std::string::npos);
  StageRequest req = Request("test.copy");
  req.inputs["in"] = dir_ / "absent";
  EXPECT_EQ(executor_->Run(req, {}).status().code(), Code::kInputError);
  auto none = executor_->Run(Request("test.no_output"), {});
  EXPECT_EQ(none.status().code(), Code::kStageFailed);
  EXPECT_NE(none.status().message().find("wrote no output"), std::string::npos);
}

TEST_F(SubprocessTest, MissingRunnerSaysHowToFixIt) {
  SubprocessExecutor::Options o;
  o.runner = "/nonexistent/stagekit";
  SubprocessExecutor ex(o);
  auto r = ex.Run(Request("test.copy"), {});
  EXPECT_EQ(r.status().code(), Code::kInternal);
  EXPECT_NE(r.status().message().find("STAGEKIT_RUNNER"), std::string::npos);
}

TEST_F(SubprocessTest, CancellingStopsTheRunningChild) {
  // Set while the child runs (the executor's own flag, passed in its options).
  std::thread canceller([this] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    cancel_.Cancel();
  });
  const auto start = std::chrono::steady_clock::now();
  auto r = executor_->Run(Request("test.sleep", {{"seconds", 30}}), {});
  canceller.join();
  EXPECT_EQ(r.status().code(), Code::kInterrupted) << r.status().message();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20))
      << "the child ran on";
  EXPECT_EQ(Files(), (std::vector<std::string>{"in.txt"}));
  // Another executor's flag is not this one's: a second executor without one runs.
  SubprocessExecutor::Options o;
  o.runner = STAGEKIT_CLI;
  o.libraries = {STAGEKIT_TEST_STAGES};
  EXPECT_TRUE(SubprocessExecutor(o).Run(Request("test.copy"), {}).ok());
}

}  // namespace
}  // namespace stagekit
