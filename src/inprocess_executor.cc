#include <atomic>

#include "stagekit/executor.h"

namespace stagekit {
namespace {
std::atomic<bool> g_interrupted{false};
}  // namespace

void RequestInterrupt() noexcept { g_interrupted.store(true, std::memory_order_relaxed); }
bool Interrupted() noexcept { return g_interrupted.load(std::memory_order_relaxed); }
void ResetInterrupt() noexcept { g_interrupted.store(false, std::memory_order_relaxed); }

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
  if (request.executor == name()) return Invoke(request, registry_);
  StageRequest copy = request;
  copy.executor = std::string(name());
  return Invoke(copy, registry_);
}

}  // namespace stagekit
