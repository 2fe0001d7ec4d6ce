// One way to spread work over threads: the caller is one of them.
#ifndef STAGEKIT_UTIL_THREADS_H_
#define STAGEKIT_UTIL_THREADS_H_

#include <cstddef>
#include <thread>
#include <vector>

namespace stagekit::util {

// Runs `worker(i)` for i in [0, threads) at once, worker(0) on the calling
// thread, and returns when all have returned. The workers share out the work
// themselves (an index under a mutex, a queue); threads < 1 counts as 1.
template <typename Worker>
void RunOnThreads(std::size_t threads, Worker&& worker) {
  std::vector<std::thread> pool;
  if (threads > 1) pool.reserve(threads - 1);
  for (std::size_t t = 1; t < threads; ++t) pool.emplace_back([&worker, t] { worker(t); });
  worker(std::size_t{0});
  for (std::thread& t : pool) t.join();
}

}  // namespace stagekit::util

#endif  // STAGEKIT_UTIL_THREADS_H_
