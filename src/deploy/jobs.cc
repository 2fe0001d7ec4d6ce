#include "deploy/jobs.h"
#include "util/files.h"
#include "util/text.h"

#include <curl/curl.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace stagekit::deploy {
namespace {

size_t Collect(char* data, size_t size, size_t n, void* user) {
  static_cast<std::string*>(user)->append(data, size * n);
  return size * n;
}

std::string TrimBody(const std::string& body) {
  std::string out = body.substr(0, 300);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  for (char& c : out) {
    if (c == '\n') c = ' ';
  }
  return out;
}

std::string Escape(const std::string& segment) {
  std::string out;
  for (unsigned char c : segment) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

Result<std::string> ReadToken(const std::string& path, const std::string& what) {
  auto token = util::ReadFile(path, 64 << 10);
  if (!token.ok()) {
    return Status(Code::kUsage, "cannot read the Ray token file " + path + " (" + what +
                                    "): " + token.status().message());
  }
  return util::Trim(*token);
}

}  // namespace

Result<std::string> DashboardAddress(const std::string& flag) {
  std::string address = flag;
  if (address.empty()) {
    if (const char* env = std::getenv("RAY_API_SERVER_ADDRESS"); env != nullptr && *env) {
      address = env;
    } else if (const char* ray = std::getenv("RAY_ADDRESS");
               ray != nullptr && (std::string(ray).rfind("http://", 0) == 0 ||
                                  std::string(ray).rfind("https://", 0) == 0)) {
      address = ray;
    } else {
      address = "http://127.0.0.1:8265";
    }
  }
  if (address.rfind("http://", 0) != 0 && address.rfind("https://", 0) != 0) {
    return Status(Code::kUsage, "'" + address +
                                    "' is not a dashboard address; give the head's dashboard as "
                                    "http://HOST:8265 (the Jobs API is served there, not on the "
                                    "GCS port 6379 or the client port 10001)");
  }
  while (!address.empty() && address.back() == '/') address.pop_back();
  return address;
}

Result<std::string> AuthToken(const std::string& token_file) {
  if (!token_file.empty()) return ReadToken(token_file, "--token-file");
  if (const char* env = std::getenv("RAY_AUTH_TOKEN"); env != nullptr && *env)
    return std::string(env);
  if (const char* env = std::getenv("RAY_AUTH_TOKEN_PATH"); env != nullptr && *env) {
    return ReadToken(env, "RAY_AUTH_TOKEN_PATH");
  }
  if (const char* home = std::getenv("HOME"); home != nullptr) {
    std::string path = std::string(home) + "/.ray/auth_token";
    std::ifstream probe(path);
    if (probe) return ReadToken(path, "~/.ray/auth_token");
  }
  return std::string();
}

bool IsTerminal(const std::string& status) {
  return status == "SUCCEEDED" || status == "FAILED" || status == "STOPPED";
}

JobsClient::JobsClient(std::string address, std::string token)
    : address_(std::move(address)), token_(std::move(token)) {
  static const bool initialized = curl_global_init(CURL_GLOBAL_DEFAULT) == 0;
  (void)initialized;
  curl_ = curl_easy_init();
}

JobsClient::~JobsClient() { curl_easy_cleanup(static_cast<CURL*>(curl_)); }

Result<HttpResponse> JobsClient::Request(const char* method, const std::string& path,
                                         const std::string* body, const char* content_type) {
  CURL* curl = static_cast<CURL*>(curl_);
  if (curl == nullptr) return Status(Code::kInternal, "libcurl failed to initialise");
  curl_easy_reset(curl);
  const std::string url = address_ + path;
  HttpResponse response;
  char error[CURL_ERROR_SIZE] = "";
  curl_slist* headers = nullptr;
  if (!token_.empty())
    headers = curl_slist_append(headers, ("Authorization: Bearer " + token_).c_str());
  if (content_type != nullptr) {
    headers = curl_slist_append(headers, (std::string("Content-Type: ") + content_type).c_str());
  }
  headers = curl_slist_append(headers, "Expect:");  // no 100-continue round trip on uploads
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &Collect);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &response.body);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, std::min(timeout_ms_, 10000L));
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms_);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_USERAGENT, "stagekit");
  if (body != nullptr) {
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body->data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body->size()));
  }
  CURLcode rc = curl_easy_perform(curl);
  curl_slist_free_all(headers);
  if (rc != CURLE_OK) {
    return Status(Code::kRayUnavailable,
                  "cannot reach the Ray dashboard at " + address_ + ": " +
                      (*error ? error : curl_easy_strerror(rc)) +
                      "; check --address (http://HEAD:8265), that the head runs the dashboard "
                      "(ray start --head --include-dashboard=true) and any tunnel to it");
  }
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response.status);
  if (response.status == 401) {
    return Status(Code::kRayUnavailable,
                  "the Ray dashboard at " + address_ +
                      " wants a token (401); set RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                      "--token-file to the cluster's token");
  }
  if (response.status == 403) {
    return Status(Code::kRayUnavailable,
                  "the Ray dashboard at " + address_ +
                      " refused the token (403); use the cluster's token "
                      "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or --token-file)");
  }
  return response;
}

Status JobsClient::Unexpected(const std::string& what, const HttpResponse& r) const {
  return Status(Code::kRayUnavailable, what + " at " + address_ + " failed: HTTP " +
                                           std::to_string(r.status) + ": " + TrimBody(r.body));
}

Result<Json> JobsClient::Version() {
  auto r = Request("GET", "/api/version", nullptr, nullptr);
  if (!r.ok()) return r.status();
  Json j = Json::parse(r->body, nullptr, false);
  if (r->status != 200 || !j.is_object() || !j.contains("ray_version")) {
    return Status(Code::kRayUnavailable,
                  address_ + " does not answer like a Ray dashboard (GET /api/version: HTTP " +
                      std::to_string(r->status) + "); check --address");
  }
  return j;
}

Result<bool> JobsClient::PackageExists(const std::string& package) {
  auto r = Request("GET", "/api/packages/gcs/" + Escape(package), nullptr, nullptr);
  if (!r.ok()) return r.status();
  if (r->status == 200) return true;
  if (r->status == 404) return false;
  return Unexpected("checking for package " + package, *r);
}

Status JobsClient::UploadPackage(const std::string& package, const std::string& zip_bytes) {
  auto r = Request("PUT", "/api/packages/gcs/" + Escape(package), &zip_bytes,
                   "application/octet-stream");
  if (!r.ok()) return r.status();
  if (r->status != 200) return Unexpected("uploading package " + package, *r);
  return OkStatus();
}

Result<std::string> JobsClient::Submit(const Json& request) {
  const std::string body = request.dump();
  auto r = Request("POST", "/api/jobs/", &body, "application/json");
  if (!r.ok()) return r.status();
  Json j = Json::parse(r->body, nullptr, false);
  if (r->status != 200 || !j.is_object() || !j.contains("submission_id")) {
    return Unexpected("submitting the job", *r);
  }
  return j["submission_id"].get<std::string>();
}

Result<Json> JobsClient::Job(const std::string& id) {
  auto r = Request("GET", "/api/jobs/" + Escape(id), nullptr, nullptr);
  if (!r.ok()) return r.status();
  if (r->status == 404) {
    return Status(Code::kUsage, "no job '" + id + "' on the cluster at " + address_ +
                                    "; `stagekit jobs list` shows the ones it has");
  }
  Json j = Json::parse(r->body, nullptr, false);
  if (r->status != 200 || !j.is_object()) return Unexpected("asking for job " + id, *r);
  return j;
}

Result<std::string> JobsClient::Logs(const std::string& id) {
  auto r = Request("GET", "/api/jobs/" + Escape(id) + "/logs", nullptr, nullptr);
  if (!r.ok()) return r.status();
  if (r->status == 404)
    return Status(Code::kUsage, "no job '" + id + "' on the cluster at " + address_);
  Json j = Json::parse(r->body, nullptr, false);
  if (r->status != 200 || !j.is_object()) return Unexpected("reading the logs of job " + id, *r);
  return j.value("logs", std::string());
}

Result<bool> JobsClient::Stop(const std::string& id) {
  auto r = Request("POST", "/api/jobs/" + Escape(id) + "/stop", nullptr, nullptr);
  if (!r.ok()) return r.status();
  if (r->status == 404)
    return Status(Code::kUsage, "no job '" + id + "' on the cluster at " + address_);
  Json j = Json::parse(r->body, nullptr, false);
  if (r->status != 200 || !j.is_object()) return Unexpected("stopping job " + id, *r);
  return j.value("stopped", false);
}

Result<Json> JobsClient::List() {
  auto r = Request("GET", "/api/jobs/", nullptr, nullptr);
  if (!r.ok()) return r.status();
  Json j = Json::parse(r->body, nullptr, false);
  if (r->status != 200 || !j.is_array()) return Unexpected("listing jobs", *r);
  return j;
}

Result<Json> JobsClient::ListTasks(const std::string& query) {
  auto r = Request("GET", "/api/v0/tasks" + (query.empty() ? "" : "?" + query), nullptr, nullptr);
  if (!r.ok()) return r.status();
  Json j = Json::parse(r->body, nullptr, false);
  if (r->status != 200 || !j.is_object() || !j.contains("data") || !j["data"].is_object() ||
      !j["data"].contains("result") || !j["data"]["result"].is_object()) {
    return Unexpected("listing tasks (state API)", *r);
  }
  return j["data"]["result"];
}

}  // namespace stagekit::deploy
