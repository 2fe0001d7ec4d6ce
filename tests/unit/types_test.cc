#include <gtest/gtest.h>

#include "stagekit/executor.h"
#include "stagekit/invoke.h"
#include "stagekit/stage.h"
#include "util/json_fields.h"

namespace stagekit {
namespace {

TEST(CanonicalJsonTest, SortsKeysAndHasNoWhitespace) {
  Json v = Json::parse(R"({"b": 1, "a": [1.5, 2, "x"], "c": {"z": null, "y": true}})");
  EXPECT_EQ(CanonicalJson(v), R"({"a":[1.5,2,"x"],"b":1,"c":{"y":true,"z":null}})");
}

TEST(CanonicalJsonTest, NumbersRoundTripToTheSameBytes) {
  Json v = {{"x", 0.1}, {"y", 1e-7}, {"z", 12345678901234567890ull}, {"w", -3}};
  std::string once = CanonicalJson(v);
  EXPECT_EQ(once, CanonicalJson(Json::parse(once)));
  EXPECT_EQ(once, R"({"w":-3,"x":0.1,"y":1e-07,"z":12345678901234567890})");
}

TEST(CanonicalJsonTest, RejectsInvalidUtf8) {
  EXPECT_THROW(CanonicalJson(Json(std::string("\xff\xfe"))), Json::type_error);
}

TEST(JobSpecTest, RoundTripsAndRejectsBadFields) {
  JobSpec job{"wc", 42, Json{{"lang", "en"}}};
  auto back = JobSpec::FromJson(job.ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->Canonical(), job.Canonical());
  EXPECT_EQ(job.Canonical(), R"({"name":"wc","params":{"lang":"en"},"seed":42})");

  auto neg = JobSpec::FromJson(Json{{"seed", -1}});
  EXPECT_EQ(neg.status().code(), Code::kBadRequest);
  EXPECT_NE(neg.status().message().find("'seed' must be a non-negative integer"),
            std::string::npos);
  auto unknown = JobSpec::FromJson(Json{{"sead", 1}});
  EXPECT_NE(unknown.status().message().find("unknown field 'sead'"), std::string::npos);
}

TEST(RunStatsTest, RoundTripsCanonically) {
  RunStats s;
  s.stage = "x";
  s.executor = "subprocess";
  s.attempt = 2;
  s.host = "h";
  s.node = "h:1";
  s.wall_s = 0.125;
  s.bytes_in = 10;
  s.bytes_out = 20;
  s.output_digest = "sha256:00";
  s.metrics = {{"n", 3}};
  auto back = RunStats::FromJson(Json::parse(s.Canonical()));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->Canonical(), s.Canonical());
  EXPECT_EQ(
      s.Canonical(),
      R"({"attempt":2,"bytes_in":10,"bytes_out":20,"executor":"subprocess","host":"h",)"
      R"("metrics":{"n":3},"node":"h:1","output_digest":"sha256:00","stage":"x","wall_s":0.125})");
}

TEST(StageRequestTest, ParsesAndRoundTrips) {
  StageRequest req;
  req.stage = "s";
  req.inputs = {{"a", "/x/a.txt"}};
  req.output = "/x/out";
  req.job = JobSpec{"j", 1, Json::object()};
  req.kwargs = {{"k", 1}};
  auto back = StageRequest::Parse(CanonicalJson(req.ToJson()));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->instance, "s");  // defaults to the stage name
  EXPECT_EQ(back->inputs.at("a"), "/x/a.txt");
  EXPECT_EQ(back->kwargs, req.kwargs);
}

// Nesting is refused while parsing, before anything walks the document
// recursively: kwargs 200,000 levels deep used to crash the runner.
TEST(StageRequestTest, DeepOrHugeRequestsAreRefusedNotCrashedOn) {
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  auto r = StageRequest::Parse(R"({"stage": "s", "output": "o", "kwargs": {"x": )" + deep + "}}");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kBadRequest);
  EXPECT_NE(r.status().message().find("nested more than 256 levels"), std::string::npos)
      << r.status().message();
  // 255 levels inside the request object still pass.
  const std::string ok_depth = std::string(254, '[') + std::string(254, ']');
  auto fine =
      StageRequest::Parse(R"({"stage": "s", "output": "o", "kwargs": {"x": )" + ok_depth + "}}");
  EXPECT_TRUE(fine.ok()) << fine.status().message();

  util::JsonLimits small;
  small.max_bytes = 10;
  auto big = util::ParseJsonWithin("[1, 2, 3, 4, 5]", "a list", Code::kInputError, small);
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), Code::kInputError);
  EXPECT_NE(big.status().message().find("a list is 15 bytes; at most 10"), std::string::npos)
      << big.status().message();
}

TEST(StageRequestTest, MalformedRequestsSayWhatIsWrong) {
  struct Case {
    const char* json;
    const char* expect;
  } cases[] = {
      {"{", "request is not valid JSON"},
      {"[1]", "request: must be a JSON object"},
      {R"({"output": "o"})", "missing required field 'stage'"},
      {R"({"stage": "s"})", "missing required field 'output'"},
      {R"({"stage": 3, "output": "o"})", "'stage' must be a string"},
      {R"({"stage": "s", "output": "o", "inputs": {"a": 1}})",
       "input 'a' must be a non-empty path"},
      {R"({"stage": "s", "output": "o", "attempt": 0})", "'attempt' must be >= 1"},
      {R"({"stage": "s", "output": "o", "job": {"seed": "x"}})", "'seed' must be a non-negative"},
      {R"({"stage": "s", "output": "o", "extra": 1})", "unknown field 'extra'"},
      // 2^32 + 1 once wrapped to 1 thread without a word.
      {R"({"stage": "s", "output": "o", "threads": 4294967297})", "'threads' must be an integer"},
      {R"({"stage": "s", "output": "o", "job": {"seed": -1}})", "'seed' must be a non-negative"},
  };
  for (const Case& c : cases) {
    auto r = StageRequest::Parse(c.json);
    ASSERT_FALSE(r.ok()) << c.json;
    EXPECT_EQ(r.status().code(), Code::kBadRequest) << c.json;
    EXPECT_NE(r.status().message().find(c.expect), std::string::npos)
        << c.json << " -> " << r.status().message();
  }
}

TEST(ErrorJsonTest, RoundTripsCodeAndMessage) {
  Status s(Code::kInputError, "input 'a' is missing");
  auto r = RunStatsOrErrorFromJson(ErrorToJson(s));
  EXPECT_EQ(r.status().code(), Code::kInputError);
  EXPECT_EQ(r.status().message(), "input 'a' is missing");
}

TEST(CodeTest, NamesRoundTrip) {
  for (Code c : {Code::kOk, Code::kStageFailed, Code::kUsage, Code::kInvalidPipeline,
                 Code::kUnknownStage, Code::kInputError, Code::kBadRequest, Code::kOutputError,
                 Code::kTimeout, Code::kLibraryError, Code::kInfeasible, Code::kRayUnavailable,
                 Code::kInternal, Code::kInterrupted}) {
    EXPECT_EQ(CodeFromName(CodeName(c)), c);
  }
  EXPECT_EQ(CodeFromName("no such code"), Code::kInternal);
}

TEST(DeriveSeedTest, IsPinnedAndDependsOnJobAndInstance) {
  JobSpec job{"j", 7, Json::object()};
  // First 8 bytes, big-endian, of SHA-256('{"name":"j","params":{},"seed":7}' NUL 'map_00'),
  // computed independently with Python's hashlib.
  EXPECT_EQ(DeriveSeed(job, "map_00"), 10954795505277447818ull);
  EXPECT_NE(DeriveSeed(job, "map_01"), DeriveSeed(job, "map_00"));
  JobSpec other = job;
  other.seed = 8;
  EXPECT_NE(DeriveSeed(other, "map_00"), DeriveSeed(job, "map_00"));
}

TEST(ParseTest, BytesAndDurations) {
  EXPECT_EQ(*ParseBytes("1GiB"), 1073741824u);
  EXPECT_EQ(*ParseBytes("512MiB"), 536870912u);
  EXPECT_EQ(*ParseBytes("2GB"), 2000000000u);
  EXPECT_EQ(*ParseBytes("1000"), 1000u);
  EXPECT_EQ(ParseBytes("lots").status().code(), Code::kInvalidPipeline);
  EXPECT_EQ(ParseBytes("-1GiB").status().code(), Code::kInvalidPipeline);
  EXPECT_EQ(ParseBytes("1 parsec").status().code(), Code::kInvalidPipeline);
  EXPECT_EQ(ParseDuration("250ms")->count(), 250);
  EXPECT_EQ(ParseDuration("30s")->count(), 30000);
  EXPECT_EQ(ParseDuration("2.5")->count(), 2500);
  EXPECT_EQ(ParseDuration("5m")->count(), 300000);
  EXPECT_EQ(ParseDuration("1h")->count(), 3600000);
  EXPECT_EQ(ParseDuration("0s").status().code(), Code::kInvalidPipeline);
  EXPECT_EQ(ParseDuration("soon").status().code(), Code::kInvalidPipeline);
}

TEST(ResourcesTest, ValidatesLikeRay) {
  Resources r;
  r.gpus = 0.01;
  r.custom = {{"vm:g4dn.2xlarge", 1}};
  EXPECT_TRUE(r.Validate().ok());
  r.gpus = 1.5;
  EXPECT_NE(r.Validate().message().find("fractions are only allowed below 1"), std::string::npos);
  r.gpus = 2;
  EXPECT_TRUE(r.Validate().ok());
  r.cpus = -1;
  EXPECT_EQ(r.Validate().code(), Code::kInvalidPipeline);
  r.cpus = 1;
  r.custom = {{"GPU", 1}};
  EXPECT_NE(r.Validate().message().find("built in"), std::string::npos);
  r.custom = {{"vm:x", 0}};
  EXPECT_NE(r.Validate().message().find("= 0 means nothing"), std::string::npos);
}

}  // namespace
}  // namespace stagekit
