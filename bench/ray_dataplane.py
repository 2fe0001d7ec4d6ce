"""Plain Python Ray baselines for the data-plane and dispatch benchmarks.

batch N REPS:        N no-op tasks submitted at once, then all awaited; prints
                     the median seconds per task.
fanin W MIB REPS:    W tasks that each make MIB MiB, one reduce reading all W by
                     reference (size and checksum); median wall seconds.
chain L MIB REPS:    one task makes MIB MiB, L-1 tasks copy it on by reference;
                     the driver fetches the last one; median wall seconds.
Outputs are made with random.randbytes and reduced with SHA-256 (stagekit's
test.fill uses xorshift, test.sizes a multiply-add checksum): the shapes and
sizes match, the bytes and the compute do not.
"""
import hashlib
import json
import os
import random
import statistics
import sys
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
import ray  # noqa: E402

address, mode = sys.argv[1], sys.argv[2]
ray.init(address=address, logging_level="ERROR", log_to_driver=False)


@ray.remote(num_cpus=1)
def noop():
    return b""


@ray.remote(num_cpus=1)
def fill(seed, size):
    r = random.Random(seed)
    return b"".join(r.randbytes(min(64 << 20, size - at)) for at in range(0, size, 64 << 20))


@ray.remote(num_cpus=1)
def copy(data):
    return bytes(data)


@ray.remote(num_cpus=1)
def sizes(*parts):
    return "".join("%d %s\n" % (len(p), hashlib.sha256(p).hexdigest()) for p in parts)


def timed(fn, reps):
    walls = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
    return statistics.median(walls)


ray.get(noop.remote())  # a warm worker
if mode == "batch":
    n, reps = int(sys.argv[3]), int(sys.argv[4])
    out = {"per_task_s": timed(lambda: ray.get([noop.remote() for _ in range(n)]), reps) / n}
elif mode == "fanin":
    width, size, reps = int(sys.argv[3]), int(sys.argv[4]) << 20, int(sys.argv[5])
    out = {"wall_s": timed(lambda: ray.get(sizes.remote(*[fill.remote(i, size) for i in range(width)])), reps)}
elif mode == "chain":
    length, size, reps = int(sys.argv[3]), int(sys.argv[4]) << 20, int(sys.argv[5])

    def chain():
        ref = fill.remote(1, size)
        for _ in range(length - 1):
            ref = copy.remote(ref)
        return len(ray.get(ref))

    out = {"wall_s": timed(chain, reps)}
else:
    sys.exit("unknown mode " + mode)
print(json.dumps(out))
ray.shutdown()
