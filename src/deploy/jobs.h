// A client for Ray's Jobs REST API on the dashboard (default port 8265):
// package upload, job submission, status, logs and stop, with token
// authentication. libcurl underneath.
#ifndef STAGEKIT_DEPLOY_JOBS_H_
#define STAGEKIT_DEPLOY_JOBS_H_

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "stagekit/stage.h"
#include "stagekit/status.h"

namespace stagekit::deploy {

struct HttpResponse {
  long status = 0;
  std::string body;
};

// The dashboard address: `flag`, else $RAY_API_SERVER_ADDRESS, else
// $RAY_ADDRESS when it is an http(s):// URL, else http://127.0.0.1:8265 (the
// order Ray's own `ray job` CLI uses). kUsage for a non-HTTP address.
Result<std::string> DashboardAddress(const std::string& flag);

// The token for `Authorization: Bearer`: `token_file` if given, else
// $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token
// if it exists; "" when there is none.
Result<std::string> AuthToken(const std::string& token_file);

class JobsClient {
 public:
  JobsClient(std::string address, std::string token);
  ~JobsClient();
  JobsClient(const JobsClient&) = delete;
  JobsClient& operator=(const JobsClient&) = delete;

  const std::string& address() const { return address_; }

  // GET /api/version: reachable, authenticated, and which Ray it runs.
  Result<Json> Version();
  Result<bool> PackageExists(const std::string& package);
  Status UploadPackage(const std::string& package, const std::string& zip_bytes);
  // POST /api/jobs/ -> the submission id.
  Result<std::string> Submit(const Json& request);
  Result<Json> Job(const std::string& id);
  Result<std::string> Logs(const std::string& id);
  Result<bool> Stop(const std::string& id);
  Result<Json> List();
  // GET /api/v0/tasks?QUERY (Ray's state API; QUERY already URL-encoded):
  // the answer's data.result object (total, num_filtered, result, ...).
  Result<Json> ListTasks(const std::string& query);
  // Limit for each whole request (default 600 s; connecting: at most 10 s).
  void SetTimeout(std::chrono::milliseconds timeout) { timeout_ms_ = timeout.count(); }

 private:
  Result<HttpResponse> Request(const char* method, const std::string& path, const std::string* body,
                               const char* content_type);
  // A Status for an unexpected answer, naming what was asked.
  Status Unexpected(const std::string& what, const HttpResponse& r) const;

  std::string address_;
  std::string token_;
  long timeout_ms_ = 600000;
  void* curl_ = nullptr;  // CURL*, reused for keep-alive
};

// Terminal Ray job states: SUCCEEDED, FAILED, STOPPED.
bool IsTerminal(const std::string& status);

}  // namespace stagekit::deploy

#endif  // STAGEKIT_DEPLOY_JOBS_H_
