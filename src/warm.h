// Warm stage instances: one process-wide pool, used by Invoke(). Internal.
#ifndef STAGEKIT_SRC_WARM_H_
#define STAGEKIT_SRC_WARM_H_

#include <cstddef>
#include <string>

#include "stagekit/invoke.h"

namespace stagekit::internal {

// False when the environment says STAGEKIT_WARM=0 (or "off", "false"): warm
// stages then set up and tear down on every invocation (the cold baseline).
bool WarmEnabled();

// Invoke() with warm instances on or off, whatever the environment says.
Result<RunStats> InvokeWarm(const StageRequest& request, const Registry& registry, bool warm);

// The instance key of a request: stage, canonical job spec and setup object.
std::string WarmKey(const StageRequest& request);

// Whether `registry` knows `stage` as a warm stage.
bool IsWarmStage(const Registry& registry, const std::string& stage);

// Tears down every idle warm instance of this process (and restarts the
// setup counts); returns how many.
std::size_t DropWarmInstances();

}  // namespace stagekit::internal

#endif  // STAGEKIT_SRC_WARM_H_
