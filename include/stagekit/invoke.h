// The one invocation entry point. Every executor ends here: the in-process
// executor calls Invoke() directly, `stagekit stage NAME` calls it after
// reading the request from stdin, and the Ray worker calls it (through the C
// ABI in c_api.h) inside its task.
#ifndef STAGEKIT_INVOKE_H_
#define STAGEKIT_INVOKE_H_

#include <filesystem>
#include <map>
#include <string>

#include "stagekit/export.h"
#include "stagekit/stage.h"
#include "stagekit/status.h"

namespace stagekit {

// Everything that crosses an executor boundary. Plain data, JSON on the wire.
struct STAGEKIT_API StageRequest {
  std::string stage;     // registered stage name
  std::string instance;  // pipeline stage name; defaults to `stage`
  std::map<std::string, std::filesystem::path> inputs;
  std::filesystem::path output;
  JobSpec job;
  Json kwargs = Json::object();
  std::string executor = "inprocess";  // recorded in RunStats
  int attempt = 1;                     // recorded in RunStats
  // How many threads the stage may use (StageContext::threads()); 0: one per
  // whole CPU of its resources, at least 1. Never part of what the output may
  // depend on: the determinism audit changes it.
  int threads = 0;

  Json ToJson() const;
  // kBadRequest with a message naming the offending field.
  static Result<StageRequest> FromJson(const Json& json);
  static Result<StageRequest> Parse(std::string_view json_text);

  // How messages name the stage: "stage 'map_3' (wc.map)", or "stage 'wc.map'"
  // when the instance is the registered name.
  std::string Label() const {
    if (instance.empty() || instance == stage) return "stage '" + stage + "'";
    return "stage '" + instance + "' (" + stage + ")";
  }
};

// Runs the stage named by the request:
//  - kUnknownStage (with close names) if it is not registered;
//  - kInputError if an input is missing or unreadable;
//  - kOutputError if the output's directory cannot be written;
//  - kStageFailed if the stage throws or writes no output.
//  - kOutputError if request.output exists and is not a regular file.
// The stage writes into a private temporary folder beside request.output; its
// file is renamed over the target only on success; on failure the temporary
// is removed and any earlier file at request.output is left untouched.
STAGEKIT_API Result<RunStats> Invoke(const StageRequest& request,
                                     const Registry& registry = Registry::Global());

// Invoke() with warm stage instances on or off (Invoke() has them on): a
// warm stage (STAGEKIT_WARM_STAGE) keeps one set-up instance per stage, setup
// object and job in this process, reused by later requests. The library reads
// no environment for this: the command line maps STAGEKIT_WARM=0 to warm=false.
STAGEKIT_API Result<RunStats> InvokeWarm(const StageRequest& request, const Registry& registry,
                                         bool warm);
// Tears down every idle warm instance of this process (and restarts the
// setup counts); returns how many.
STAGEKIT_API std::size_t DropWarmInstances();

// Removes every temporary file or folder that process `pid` may have left in
// `output`'s folder (Invoke() writes into ".stagekit-tmp.<pid>.<random>.<host>/").
// Executors that kill a child use it to clean up after it.
STAGEKIT_API void RemoveTempOutputs(const std::filesystem::path& output, long pid);

// {"error": {"code": "<CodeName>", "message": "..."}}
STAGEKIT_API Json ErrorToJson(const Status& status);
// Decodes either form: RunStats JSON or an ErrorToJson object.
STAGEKIT_API Result<RunStats> RunStatsOrErrorFromJson(const Json& json);

// This machine's host name (cached).
STAGEKIT_API const std::string& HostName();

}  // namespace stagekit

#endif  // STAGEKIT_INVOKE_H_
