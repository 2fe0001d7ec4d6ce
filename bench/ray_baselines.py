"""Python baselines for the ray executor's dispatch overhead, on the same cluster.

plain: a no-op @ray.remote task defined once, called and awaited N times in a row.
seed:  the seed's RayExecutor.run_stage pattern, which defines the remote function
       inside every call (so Ray exports a new function each time).
Prints one JSON object: per-call medians (seconds) over repetitions.
"""
import json
import os
import statistics
import sys
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
import ray  # noqa: E402

address, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ray.init(address=address, logging_level="ERROR", log_to_driver=False)


@ray.remote(num_cpus=1)
def noop():
    return b""


def seed_run_stage():
    @ray.remote(num_cpus=1)
    def _run_remote(module_path, attr, inputs_s, output_s, job_json, kwargs_in):
        return "{}"

    return ray.get(_run_remote.remote("m", "run", {}, "out", "{}", {}))


def per_call(fn, count):
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - start) / count


ray.get(noop.remote())  # warm a worker
seed_run_stage()
plain = [per_call(lambda: ray.get(noop.remote()), n) for _ in range(reps)]
seed = [per_call(seed_run_stage, max(1, n // 4)) for _ in range(reps)]
print(json.dumps({"plain_python_task_s": statistics.median(plain),
                  "seed_run_stage_s": statistics.median(seed),
                  "n": n, "reps": reps}))
ray.shutdown()
