/* The C ABI between libstagekit (default libstdc++ ABI) and the Ray bridge,
 * libstagekit_ray.so, which is compiled with Ray's -D_GLIBCXX_USE_CXX11_ABI=0
 * and is the only code that includes Ray's headers. libstagekit dlopen()s the
 * bridge on demand, so nothing else needs Ray to build or run. Buffers
 * returned through `out` are malloc()ed; release them with stagekit_free(). */
#ifndef STAGEKIT_SRC_RAY_BRIDGE_API_H_
#define STAGEKIT_SRC_RAY_BRIDGE_API_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct stagekit_ray_bridge stagekit_ray_bridge;

/* config: {"address": "ip:port", "code_search_path": ["/abs/libstagekit_ray.so"]}.
 * Connects the Ray C++ driver. 0 on success, else a stagekit exit code and
 * {"error": {...}} in *out. */
typedef int (*stagekit_ray_bridge_open_fn)(const char* config, size_t config_len,
                                           stagekit_ray_bridge** handle, char** out,
                                           size_t* out_len);
/* request: StageRequest JSON. task: {"resources": {"CPU": 1, ...}, "timeout_ms": N
 * (0: none), "max_attempts": N, "libraries": ["/abs/lib.so", ...], and for a
 * warm stage either "warm_key": "<instance key>" (run it on a warm actor of
 * that key) or "cold": true (a plain task that sets up for this run only)}.
 * Runs the stage as a Ray task (or actor task), writes its output atomically
 * at request.output, and returns RunStats JSON (0) or an error JSON
 * (non-zero). Thread-safe. */
typedef int (*stagekit_ray_bridge_run_fn)(stagekit_ray_bridge* handle, const char* request,
                                          size_t request_len, const char* task, size_t task_len,
                                          char** out, size_t* out_len);
/* The asynchronous form of _run: starts the stage and returns at once (0).
 * Its completion, {"ticket": ticket, "rc": N, "reply": RunStats or error
 * JSON}, comes back from _wait. One driver thread awaits every running stage
 * with ray::Wait, and a few more fetch outputs; none is parked per stage.
 * Thread-safe. */
typedef int (*stagekit_ray_bridge_submit_fn)(stagekit_ray_bridge* handle, uint64_t ticket,
                                             const char* request, size_t request_len,
                                             const char* task, size_t task_len);
/* Waits up to timeout_ms for a submitted stage to finish; *out is a JSON
 * array of the completions since the last call (possibly empty). A stage
 * whose output other stages read and the driver fetches first comes back
 * with "made_only": true once its output is made (its RunStats, readable by
 * reference), then again, without it, once the fetch ended. */
typedef int (*stagekit_ray_bridge_wait_fn)(stagekit_ray_bridge* handle, int timeout_ms, char** out,
                                           size_t* out_len);
/* {"objects_put": N, "bytes_put": N, "tasks_submitted": N, "system_retries": N,
 *  "actors_started": N, "actors_alive": N} */
typedef int (*stagekit_ray_bridge_stats_fn)(stagekit_ray_bridge* handle, char** out,
                                            size_t* out_len);
/* Once cancelled(ctx) returns non-zero, running stages are stopped and
 * fetches end ("interrupted"). Called from the bridge's threads, so it must be
 * thread-safe; NULL: never cancelled. Set right after open, before anything is
 * submitted. */
typedef void (*stagekit_ray_bridge_set_cancel_fn)(stagekit_ray_bridge* handle,
                                                  int (*cancelled)(const void* ctx),
                                                  const void* ctx);
/* Kills the warm actors, then disconnects the driver (ray::Shutdown). Stops
 * no cluster processes. */
typedef void (*stagekit_ray_bridge_close_fn)(stagekit_ray_bridge* handle);

#ifdef __cplusplus
}
#endif

#endif /* STAGEKIT_SRC_RAY_BRIDGE_API_H_ */
