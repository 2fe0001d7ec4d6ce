// Warm stage instances: one process-wide pool, used by Invoke(). Internal.
#ifndef STAGEKIT_SRC_WARM_H_
#define STAGEKIT_SRC_WARM_H_

#include <cstddef>
#include <string>

#include "stagekit/invoke.h"

namespace stagekit::internal {

// The instance key of a request: stage, canonical job spec and setup object.
std::string WarmKey(const StageRequest& request);

// Whether `registry` knows `stage` as a warm stage.
bool IsWarmStage(const Registry& registry, const std::string& stage);

}  // namespace stagekit::internal

#endif  // STAGEKIT_SRC_WARM_H_
