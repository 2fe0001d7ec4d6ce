// The local parts of `stagekit submit`: credential detection, the dashboard
// address and token lookup, and shell quoting for the entrypoint.
#include <gtest/gtest.h>

#include <cstdlib>

#include "deploy/jobs.h"
#include "deploy/secrets.h"
#include "deploy/ship.h"
#include "unit/test_util.h"
#include "util/outcome.h"
#include "util/text.h"

namespace stagekit::deploy {
using namespace ::stagekit::util;  // NOLINT(google-build-using-namespace): helpers under test

namespace {

using testing::TempDir;
using testing::WriteFile;

TEST(SecretsTest, NamesThatSayCredential) {
  for (const char* name :
       {"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GITHUB_TOKEN", "DB_PASSWORD", "my_api_key",
        "OPENAI_API_KEY", "SSH_PRIVATE_KEY", "AWS_ACCESS_KEY_ID", "HF_TOKEN", "SERVICE_CREDENTIALS",
        "client-secret"}) {
    EXPECT_TRUE(LooksLikeCredential(name, "x").has_value()) << name;
  }
}

TEST(SecretsTest, OrdinaryNamesAndValuesPass) {
  for (const auto& [name, value] : std::vector<std::pair<const char*, const char*>>{
           {"TOKENIZERS_PARALLELISM", "false"},
           {"MY_APP_BACKEND", "cuda"},
           {"BYPASS_CACHE", "1"},
           {"OMP_NUM_THREADS", "8"},
           {"KEYBOARD", "us"},
           {"DATA_URL", "https://example.com/a.bin"},
           {"MONKEY_ID", "AKIA"},  // too short for a key id
           {"PATH_HINT", "/opt/sk-tools/bin"}}) {
    EXPECT_FALSE(LooksLikeCredential(name, value).has_value()) << name << "=" << value;
  }
}

TEST(SecretsTest, ValuesThatLookLikeCredentials) {
  const std::vector<std::string> values = {
      "AKIAIOSFODNN7EXAMPLE",
      "prefix ASIAABCDEFGHIJKLMNOP suffix",
      "-----BEGIN RSA PRIVATE KEY-----\nMIIE...",
      "-----BEGIN OPENSSH PRIVATE KEY-----",
      "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB",
      "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
      "xoxb-123456789012-abcdefghijkl",
      "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
      "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH",
      "AIzaSyA-abcdefghijklmnopqrstuvwxyz0123456",
      "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_"
      "XgL0n3I9PlFUP0THsR8U",
      "postgres://admin:hunter2@db.internal:5432/prod"};
  for (const std::string& v : values) {
    auto why = LooksLikeCredential("SETTING", v);
    ASSERT_TRUE(why.has_value()) << v;
    EXPECT_EQ(why->find(v), std::string::npos) << "the reason must not quote the value: " << *why;
  }
}

TEST(SecretsTest, CheckEnvVarsRefusesAndAllowsOnRequest) {
  std::map<std::string, std::string> env = {{"MODE", "fast"}, {"AWS_SECRET_ACCESS_KEY", "abc"}};
  Status s = CheckEnvVars(env, {});
  EXPECT_EQ(s.code(), util::kSecretRefused);
  EXPECT_NE(s.message().find("AWS_SECRET_ACCESS_KEY"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("instance role"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("--allow-secret AWS_SECRET_ACCESS_KEY"), std::string::npos);
  EXPECT_EQ(s.message().find("abc"), std::string::npos) << "never echo the value";
  EXPECT_TRUE(CheckEnvVars(env, {"AWS_SECRET_ACCESS_KEY"}).ok());
}

class EnvGuard {
 public:
  explicit EnvGuard(std::vector<std::string> names) : names_(std::move(names)) {
    for (const auto& n : names_) {
      const char* v = std::getenv(n.c_str());
      saved_.emplace_back(v != nullptr, v != nullptr ? v : "");
      ::unsetenv(n.c_str());
    }
  }
  ~EnvGuard() {
    for (size_t i = 0; i < names_.size(); ++i) {
      if (saved_[i].first) {
        ::setenv(names_[i].c_str(), saved_[i].second.c_str(), 1);
      } else {
        ::unsetenv(names_[i].c_str());
      }
    }
  }

 private:
  std::vector<std::string> names_;
  std::vector<std::pair<bool, std::string>> saved_;
};

TEST(JobsClientTest, DashboardAddressOrder) {
  EnvGuard guard({"RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"});
  EXPECT_EQ(*DashboardAddress(""), "http://127.0.0.1:8265");
  ::setenv("RAY_ADDRESS", "10.0.0.5:6379", 1);  // a GCS address is not the dashboard
  EXPECT_EQ(*DashboardAddress(""), "http://127.0.0.1:8265");
  ::setenv("RAY_ADDRESS", "http://10.0.0.5:8265/", 1);
  EXPECT_EQ(*DashboardAddress(""), "http://10.0.0.5:8265");
  ::setenv("RAY_API_SERVER_ADDRESS", "https://head.example:443", 1);
  EXPECT_EQ(*DashboardAddress(""), "https://head.example:443");
  EXPECT_EQ(*DashboardAddress("http://flag:1"), "http://flag:1");
  auto bad = DashboardAddress("10.0.0.5:6379");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Code::kUsage);
  EXPECT_NE(bad.status().message().find("http://HOST:8265"), std::string::npos);
}

TEST(JobsClientTest, TokenOrder) {
  EnvGuard guard({"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "HOME"});
  TempDir dir;
  ::setenv("HOME", dir.path().c_str(), 1);
  EXPECT_EQ(*AuthToken(""), "");
  WriteFile(dir / ".ray" / "auth_token", "from-home\n");
  EXPECT_EQ(*AuthToken(""), "from-home");
  WriteFile(dir / "t", "from-path");
  ::setenv("RAY_AUTH_TOKEN_PATH", (dir / "t").c_str(), 1);
  EXPECT_EQ(*AuthToken(""), "from-path");
  ::setenv("RAY_AUTH_TOKEN", "from-env", 1);
  EXPECT_EQ(*AuthToken(""), "from-env");
  WriteFile(dir / "flag", "from-flag\r\n");
  EXPECT_EQ(*AuthToken((dir / "flag").string()), "from-flag");
  auto missing = AuthToken((dir / "nope").string());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kUsage);
}

TEST(JobsClientTest, UnreachableDashboardIsRayUnavailable) {
  JobsClient client("http://127.0.0.1:9", "");  // discard port: nothing listens
  auto v = client.Version();
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), Code::kRayUnavailable);
  EXPECT_NE(v.status().message().find("cannot reach the Ray dashboard at http://127.0.0.1:9"),
            std::string::npos)
      << v.status().message();
}

TEST(ShipPipelineTest, NoAbsolutePathOfThisMachineIsShipped) {
  TempDir dir;
  auto r =
      testing::RunCli({"ship", STAGEKIT_SOURCE_DIR "/examples/wordcount/pipeline.yaml", "--include",
                       "/usr/share/games/fortunes=corpus", "--max-size", "1GiB", "-o",
                       (dir / "out").string(), "--tree", (dir / "tree").string(), "--json"});
  ASSERT_EQ(r.exit_code, 0) << testing::Show(r);
  const std::string shipped = testing::ReadFile(dir / "tree" / "pipeline.yaml");
  EXPECT_EQ(shipped.find("/usr/share"), std::string::npos) << shipped;
  EXPECT_EQ(shipped.find(STAGEKIT_SOURCE_DIR), std::string::npos) << shipped;
  // The foreach's input template points where its instances' files went.
  EXPECT_NE(shipped.find("text: \"corpus/{item}\""), std::string::npos) << shipped;
  EXPECT_TRUE(std::filesystem::exists(dir / "tree" / "corpus" / "art"));
  auto run = testing::RunCli({"run", (dir / "tree" / "pipeline.yaml").string(), "-q", "--no-cache",
                              "-o", (dir / "ran").string()});
  ASSERT_EQ(run.exit_code, 0) << testing::Show(run);
  EXPECT_EQ(testing::ListFiles(dir / "ran" / "map").size(), 16u);
  EXPECT_NE(shipped.find(".stagekit/lib/stagekit/stages/libstagekit_examples.so"),
            std::string::npos)
      << shipped;
  // The lean stage runner travels beside the driver.
  EXPECT_TRUE(std::filesystem::exists(dir / "tree" / ".stagekit" / "bin" / "stagekit-stage"));
  // The shipped tree runs as it is, from anywhere, and gives what the original gives.
  auto shipped_run = testing::RunCli(
      {"run", (dir / "tree" / "pipeline.yaml").string(), "-q", "--out", (dir / "a").string()});
  ASSERT_EQ(shipped_run.exit_code, 0) << testing::Show(shipped_run);
  auto original = testing::RunCli({"run", STAGEKIT_SOURCE_DIR "/examples/wordcount/pipeline.yaml",
                                   "-q", "--out", (dir / "b").string()});
  ASSERT_EQ(original.exit_code, 0) << testing::Show(original);
  EXPECT_EQ(testing::ReadFile(dir / "a" / "top_words.tsv"),
            testing::ReadFile(dir / "b" / "top_words.tsv"));
}

TEST(ShellQuoteTest, QuotesOnlyWhatNeedsIt) {
  EXPECT_EQ(util::ShellQuote("runs/stagekit-x_1.yaml"), "runs/stagekit-x_1.yaml");
  EXPECT_EQ(util::ShellQuote("map_*:vm:x=1"), "'map_*:vm:x=1'");
  EXPECT_EQ(util::ShellQuote("it's"), "'it'\\''s'");
  EXPECT_EQ(util::ShellQuote(""), "''");
  EXPECT_EQ(util::ShellQuote("a b;rm -rf /"), "'a b;rm -rf /'");
}

}  // namespace
}  // namespace stagekit::deploy
