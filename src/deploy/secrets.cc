#include "deploy/secrets.h"
#include "util/outcome.h"
#include "util/regex.h"

#include <algorithm>
#include <cctype>
#include <vector>

namespace stagekit::deploy {
namespace {

std::vector<std::string> Words(const std::string& name) {
  std::vector<std::string> words;
  std::string current;
  for (char c : name) {
    if (std::isalnum(static_cast<unsigned char>(c))) {
      current += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    } else if (!current.empty()) {
      words.push_back(std::move(current));
      current.clear();
    }
  }
  if (!current.empty()) words.push_back(std::move(current));
  return words;
}

}  // namespace

std::optional<std::string> LooksLikeCredential(const std::string& name, const std::string& value) {
  // Names: whole words, so TOKENIZERS_PARALLELISM or BYPASS_CACHE pass.
  const std::vector<std::string> words = Words(name);
  auto has = [&](const char* w) { return std::find(words.begin(), words.end(), w) != words.end(); };
  auto pair = [&](const char* a, const char* b) {
    for (size_t i = 0; i + 1 < words.size(); ++i) {
      if (words[i] == a && words[i + 1] == b) return true;
    }
    return false;
  };
  for (const char* w : {"SECRET", "SECRETS", "PASSWORD", "PASSWD", "PASSPHRASE", "TOKEN", "TOKENS",
                        "CREDENTIAL", "CREDENTIALS", "APIKEY", "PRIVATEKEY"}) {
    if (has(w)) return std::string("its name has ") + w;
  }
  for (auto [a, b] : {std::pair{"API", "KEY"},
                      {"PRIVATE", "KEY"},
                      {"ACCESS", "KEY"},
                      {"SESSION", "KEY"},
                      {"AUTH", "KEY"}}) {
    if (pair(a, b)) return std::string("its name has ") + a + "_" + b;
  }
  // Values: formats that credentials come in.
  static const std::vector<std::pair<util::Regex, const char*>> kValues = [] {
    std::vector<std::pair<util::Regex, const char*>> v;
    auto add = [&](const char* re, const char* what) { v.emplace_back(util::Regex(re), what); };
    add(R"((^|[^A-Z0-9])(AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{16}([^A-Z0-9]|$))",
        "an AWS access key id");
    add(R"(-----BEGIN [A-Z ]*PRIVATE KEY-----)", "a private key");
    add(R"((^|[^A-Za-z0-9])(ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,})", "a GitHub token");
    add(R"(github_pat_[A-Za-z0-9_]{30,})", "a GitHub token");
    add(R"(xox[abposr]-[A-Za-z0-9-]{10,})", "a Slack token");
    add(R"((^|[^A-Za-z0-9])sk-[A-Za-z0-9_-]{20,})", "an API secret key");
    add(R"((^|[^A-Za-z0-9])hf_[A-Za-z0-9]{30,})", "a Hugging Face token");
    add(R"(AIza[0-9A-Za-z_-]{35})", "a Google API key");
    add(R"(eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})", "a JSON web token");
    add(R"([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:[^/\s@]+@)", "a URL with a password in it");
    return v;
  }();
  for (const auto& [re, what] : kValues) {
    if (re.Search(value)) return std::string("its value looks like ") + what;
  }
  return std::nullopt;
}

Status CheckEnvVars(const std::map<std::string, std::string>& env,
                    const std::set<std::string>& allowed) {
  for (const auto& [name, value] : env) {
    if (allowed.count(name) != 0) continue;
    if (auto why = LooksLikeCredential(name, value)) {
      return Status(util::kSecretRefused,
                    "env var " + name + " looks like a credential (" + *why +
                        "); runtime_env env_vars are stored in the cluster's job table and shown "
                        "in the dashboard, so they are not a secret store. Give the cluster's "
                        "nodes an instance role (IAM instance profile) for cloud access instead, "
                        "or pass --allow-secret " +
                        name + " if this is not a secret");
    }
  }
  return OkStatus();
}

}  // namespace stagekit::deploy
