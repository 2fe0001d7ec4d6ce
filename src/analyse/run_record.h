// The documents the command line writes about runs, typed: the run record
// (what `stagekit run` writes beside its outputs, OUT/.stagekit-run.json, and
// prints with --json) and the parity document (what `stagekit parity --json`
// prints, one run record per executor). `stagekit report` reads both back.
//
// ToJson() writes "version": kVersion. FromJson() is strict: a missing
// required field or a field of the wrong type is a kInputError that names it
// ("run record: stages[2]: 'state' must be a string"); a document without a
// version is version 1 (written before versions were recorded), and one of a
// newer version is refused. Fields that may be null (or absent) are
// std::optional; fields the reader does not know are ignored.
#ifndef STAGEKIT_ANALYSE_RUN_RECORD_H_
#define STAGEKIT_ANALYSE_RUN_RECORD_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "stagekit/stage.h"
#include "stagekit/status.h"

namespace stagekit::analyse {

// The error of a failed run or stage: {"code": "stage_failed", "message": ...}.
struct RecordError {
  std::string code;  // the outcome's wire name (util::OutcomeName)
  std::string message;
};

// One stage of a run, in the pipeline's order.
struct StageRecord {
  std::string name;                  // the pipeline's name for this use of the stage
  std::string stage;                 // the registered stage
  std::string state;                 // succeeded | failed | not_run | pending | running
  std::string output;                // the output's path
  Json resources = Json::object();   // Resources::ToJson()
  std::optional<double> timeout_s;   // null: no timeout
  std::optional<RunStats> stats;     // null: it never finished (failed, not run)
  bool cached = false;               // restored from the cache
  bool fetched = true;               // its output is a file in the output folder
  std::optional<double> start_s;     // seconds since the run started; null: never started
  std::optional<double> end_s;       //
  std::optional<int> slot;           // the scheduler slot; null: never started
  std::optional<RecordError> error;  // a failed stage's error
};

// Bytes of one node (or host) of a run: "by_node" of the data plane.
struct NodeBytes {
  std::uint64_t stages = 0;                     // stages it ran
  std::uint64_t bytes_produced = 0;             // bytes they wrote
  std::uint64_t bytes_fetched = 0;              // of them, fetched by the driver
  std::optional<std::uint64_t> bytes_uploaded;  // uploaded from it to the artifacts
};

// Where the bytes went ("data"): per node, and what the driver fetched.
struct DataPlane {
  std::map<std::string, NodeBytes> by_node;
  std::uint64_t outputs_fetched = 0;
  std::uint64_t bytes_fetched = 0;
  std::uint64_t outputs_left_on_cluster = 0;
  std::uint64_t bytes_left_on_cluster = 0;
  std::uint64_t bytes_uploaded_from_nodes = 0;
};

// The artifacts' sync ("artifacts"): the URI, then what the sync after the run did.
struct ArtifactsRecord {
  struct FromNodes {
    std::uint64_t outputs = 0;  // uploaded by the nodes that made them
    std::uint64_t bytes = 0;
    std::uint64_t failed = 0;  // uploads that failed on a node
  };
  std::string uri;
  std::optional<FromNodes> from_nodes;  // executors whose outputs stay remote (Ray)
  std::optional<bool> synced;           // set once the sync ran (or was skipped)
  std::optional<double> seconds;        // how long the driver's sync took
  std::optional<std::string> error;     // why it failed
};

// The run's estimated cost ("cost"), when every node type had a price.
struct CostEstimate {
  std::map<std::string, int> node_types;  // nodes by instance type
  double usd_per_hour = 0;
  double wall_s = 0;
  double estimated_usd = 0;
  std::optional<double> budget_usd;  // --budget
};

// The record of one run.
struct RunRecord {
  static constexpr int kVersion = 1;
  std::string pipeline;
  std::string file;      // the pipeline file
  std::string executor;  // inprocess | subprocess | ray
  int jobs = 0;
  std::string out_dir;
  std::string status;  // succeeded | failed
  std::optional<RecordError> error;
  std::optional<std::string> failed_stage;
  double wall_s = 0;
  JobSpec job;
  DataPlane data;
  std::vector<StageRecord> stages;
  // Written by `run` only:
  std::optional<std::string> outputs;    // --outputs: all | final | none
  std::optional<bool> started_executor;  // false: every stage was restored, no cluster used
  std::optional<ArtifactsRecord> artifacts;
  std::optional<CostEstimate> cost;
  // What the executor says about itself (StageExecutor::Describe(), e.g. the
  // Ray cluster), an object written under the executor's name ("ray"); null
  // when it said nothing.
  Json executor_details;

  Json ToJson() const;
  static Result<RunRecord> FromJson(const Json& json);
};

// One output compared across the executors ("outputs" of a parity document).
struct ParityRow {
  std::string stage;
  std::string output;
  std::map<std::string, std::string> digests;    // executor -> "sha256:<hex>" (or "unreadable: ..")
  std::optional<long long> first_difference;     // the byte where the first two that differ differ
  std::optional<std::string> changed_after_run;  // the executor whose file changed after its run
  std::string result;                            // identical | DIFFERS | CHANGED
};

// What `stagekit parity` found: status identical, mismatch, or failed (a run
// failed: no outputs were compared, and runs holds those that ran).
struct ParityDocument {
  static constexpr int kVersion = 1;
  std::string status;
  std::vector<std::string> executors;
  std::optional<std::vector<ParityRow>> outputs;  // absent when a run failed
  std::map<std::string, RunRecord> runs;          // by executor

  Json ToJson() const;
  static Result<ParityDocument> FromJson(const Json& json);
};

}  // namespace stagekit::analyse

#endif  // STAGEKIT_ANALYSE_RUN_RECORD_H_
