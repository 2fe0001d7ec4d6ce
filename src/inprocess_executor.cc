#include "stagekit/executor.h"

namespace stagekit {

void StageExecutor::Submit(std::uint64_t ticket, const StageRequest& request,
                           const StageOptions& options) {
  StageCompletion done;
  done.ticket = ticket;
  done.stats = Run(request, options);
  completed_.push_back(std::move(done));
}

std::vector<StageCompletion> StageExecutor::AwaitCompletions(
    std::chrono::milliseconds /*timeout*/) {
  std::vector<StageCompletion> done;
  done.swap(completed_);
  return done;
}

Result<RunStats> InProcessExecutor::Run(const StageRequest& request,
                                        const StageOptions& /*options*/) {
  if (request.executor == name()) return InvokeWarm(request, registry_, warm_);
  StageRequest copy = request;
  copy.executor = std::string(name());
  return InvokeWarm(copy, registry_, warm_);
}

}  // namespace stagekit
