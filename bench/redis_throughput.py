"""The Redis broker against a bare LPUSH/BRPOP loop, on the same Redis, with 4 worker threads.

Workloads (the goals come from issue 4):

* **R1** 20,000 no-op jobs: jobs per second. Goal: more than the bare loop, and at least 5x the
  fastest peer the issue lists (Huey with Redis, about 1.1k/s on 2 cores).
* **R2** 5,000 jobs of which 20 % (picked by a seeded ``random.Random``) fail once and succeed
  on their retry, retry delay 0: jobs per second.
* **LAT** enqueue-to-start latency (p50/p99) of 2,000 jobs submitted one at a time at about
  1,000/s to an idle worker.

Sides:

* **tui-dispatch**: one :class:`engine.redis_worker.RedisWorker` with a fixed pool of 4 threads
  (one worker process), idle when the clock starts. A producer in the same process enqueues the
  jobs with ``submit_many`` in chunks of 1,000 (the workers start on the first chunk); the
  clock stops when the fleet counters show every job finished (succeeded or dead-lettered).
* **Dispatcher**: R1 through ``Dispatcher(broker=RedisBroker(url))`` with 4 threads of its own:
  the same work plus a handle per job, completed from the job's reply (one process).
* **bare loop**: 4 consumer threads blocked in ``BRPOP`` when the clock starts; a producer does
  one ``LPUSH`` round trip per job; each consumer does one ``BRPOP`` round trip per job and
  nothing else (no lease, no counters, no retries: a job is lost if its consumer dies). The
  clock stops when every job has been popped.

Each run is a fresh subprocess (``bench._util.run_child``), the sides alternate, and results are
the median and range of the repetitions. Keys live under a random prefix, deleted afterwards.

Run: ``python -m bench redis_throughput [--reps N] [--quick] [--json PATH] [--redis URL]``
(default URL: ``$TUI_DISPATCH_REDIS_URL`` or ``redis://127.0.0.1:6379/0``). Without a Redis
that answers it prints why and exits 0, so ``make bench`` still runs the other benchmarks.
"""

from __future__ import annotations

import math
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from bench._util import (
    BenchError,
    Summary,
    check_reps,
    common_parser,
    engine_revision,
    machine_info,
    markdown_table,
    redis_problem,
    run_child,
    write_json,
)

THREADS = 4
N_NOOP = 20_000
N_FAIL = 5_000
N_LAT = 2_000


# ------------------------------------------------------------------------------------------------
# Children (run in fresh interpreters by run_child)
# ------------------------------------------------------------------------------------------------
def _tasks() -> Any:
    from engine import TaskRegistry
    from engine.redis_worker import current_redis_job

    tasks = TaskRegistry()

    @tasks.task("noop")
    def noop(i: int) -> None:
        return None

    @tasks.task("fail_once")
    def fail_once(i: int, fail: bool) -> None:
        job = current_redis_job()
        if fail and job is not None and job.attempt == 1:
            raise ValueError("planned failure")

    return tasks


def run_broker(url: str, workload: str, n: int, seed: int = 0) -> dict[str, Any]:
    """One tui-dispatch run: ``workload`` is ``"noop"``, ``"fail_once"`` or ``"latency"``."""
    from engine import RetryPolicy
    from engine.brokers.redis import RedisQueue
    from engine.redis_worker import RedisWorker

    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    queue = RedisQueue(url, prefix=prefix, max_retries=1)
    worker = RedisWorker(queue, _tasks(), min_workers=THREADS, max_workers=THREADS, autoscale=False,
                         retry=RetryPolicy(base_s=0.0, jitter="none"), log_interval_s=0)
    pause = threading.Event()
    try:
        if workload == "latency":
            worker.start()
            pause.wait(0.5)  # let the fetcher settle into its idle wait
            started = time.perf_counter()
            for i in range(n):
                queue.submit("noop", i)
                pause.wait(0.001)
        else:
            worker.start()
            pause.wait(0.5)  # let the fetcher settle into its idle wait
            rng = random.Random(seed)
            args = [(i,) for i in range(n)] if workload == "noop" else [(i, rng.random() < 0.2) for i in range(n)]
            started = time.perf_counter()
            for chunk in range(0, n, 1000):  # the producer's natural batch; workers start on the first
                queue.submit_many(workload, args[chunk:chunk + 1000])
        while True:
            c = queue.counters()
            if c.get("succeeded", 0) + c.get("dead_lettered", 0) >= n:
                break
            pause.wait(0.002)
        elapsed = time.perf_counter() - started
        state = queue.fleet_state()
        waits = sorted(state.wait_samples)
        result = {
            "jobs_per_s": n / elapsed,
            "elapsed_s": elapsed,
            "succeeded": c.get("succeeded", 0),
            "retries": c.get("retries", 0),
            "dead": c.get("dead_lettered", 0),
            "wait_p50_ms": _pct(waits, 0.50) * 1000,
            "wait_p99_ms": _pct(waits, 0.99) * 1000,
        }
    finally:
        worker.stop(graceful=False)
        queue.clear()
        queue.close()
    return result


def run_dispatcher(url: str, n: int) -> dict[str, Any]:
    """R1 through the Dispatcher API: ``Dispatcher(broker=RedisBroker(url))`` with 4 threads of its
    own, ``submit_many`` in chunks of 1,000, and ``join()``: every job's handle completes from
    its reply (what the broker side does not pay for)."""
    from engine import Dispatcher, RetryPolicy
    from engine.brokers.redis import RedisBroker

    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    tasks = _tasks()
    noop = tasks.get("noop")
    d = Dispatcher(broker=RedisBroker(url, prefix=prefix), tasks=tasks, min_workers=THREADS, max_workers=THREADS,
                   autoscale=False, retry=RetryPolicy(max_retries=1, base_s=0.0, jitter="none"), log_interval_s=0)
    try:
        threading.Event().wait(0.5)  # let the fetcher settle into its idle wait
        started = time.perf_counter()
        handles = []
        for chunk in range(0, n, 1000):
            handles += d.submit_many(noop, [(i,) for i in range(chunk, min(n, chunk + 1000))])
        if not d.join(300):
            raise RuntimeError("the dispatcher did not finish")
        elapsed = time.perf_counter() - started
        done = sum(1 for h in handles if h.done() and h.exception() is None)
    finally:
        d.shutdown(cancel_futures=True)
        from engine.brokers.redis import RedisQueue

        cleaner = RedisQueue(url, prefix=prefix)
        cleaner.clear()
        cleaner.close()
    return {"jobs_per_s": n / elapsed, "elapsed_s": elapsed, "succeeded": done}


def run_bare(url: str, n: int) -> dict[str, Any]:
    """The bare loop: fill a list, then 4 threads BRPOP it empty, one round trip per job."""
    import redis

    key = f"bench-bare-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(url)
    try:
        remaining = [n]
        lock = threading.Lock()

        def consume() -> None:
            while True:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                client.brpop([key], timeout=5)

        threads = [threading.Thread(target=consume) for _ in range(THREADS)]
        for t in threads:
            t.start()
        started = time.perf_counter()
        for i in range(n):  # the producer: one LPUSH round trip per job
            client.lpush(key, i)
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        return {"jobs_per_s": n / elapsed, "elapsed_s": elapsed}
    finally:
        client.delete(key)
        client.close()


def _pct(ordered: Sequence[float], p: float) -> float:
    if not ordered:
        return 0.0
    index = max(0, min(len(ordered) - 1, math.ceil(round(p * len(ordered), 9)) - 1))  # nearest rank
    return ordered[index]


# ------------------------------------------------------------------------------------------------
# The parent
# ------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = common_parser(__doc__.splitlines()[0], default_reps=5)
    parser.add_argument("--redis", default=os.environ.get("TUI_DISPATCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
                        help="the Redis to measure on (default: %(default)s)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    reps = check_reps(args, parser)
    problem = redis_problem(args.redis)
    if problem is not None:
        print(f"redis_throughput: skipped: {problem}", file=sys.stderr)
        return 0
    n_noop, n_fail, n_lat = (N_NOOP, N_FAIL, N_LAT) if not args.quick else (5_000, 2_000, 500)
    runs: dict[str, list[dict[str, Any]]] = {"R1 broker": [], "R1 bare": [], "R1 dispatcher": [], "R2 broker": [],
                                             "LAT broker": []}
    try:
        for rep in range(reps):
            order = [("R1 bare", "run_bare", {"url": args.redis, "n": n_noop}),
                     ("R1 broker", "run_broker", {"url": args.redis, "workload": "noop", "n": n_noop}),
                     ("R1 dispatcher", "run_dispatcher", {"url": args.redis, "n": n_noop})]
            if rep % 2:
                order.reverse()
            order.append(("R2 broker", "run_broker",
                          {"url": args.redis, "workload": "fail_once", "n": n_fail, "seed": rep}))
            order.append(("LAT broker", "run_broker", {"url": args.redis, "workload": "latency", "n": n_lat}))
            for label, function, kwargs in order:
                runs[label].append(run_child("redis_throughput", function, kwargs, timeout_s=300))
    except BenchError as exc:
        print(f"redis_throughput: {exc}", file=sys.stderr)
        return 1

    def rate(label: str) -> Summary:
        return Summary.of([r["jobs_per_s"] for r in runs[label]])

    ratio = Summary.of([b["jobs_per_s"] / a["jobs_per_s"] for a, b in zip(runs["R1 bare"], runs["R1 broker"], strict=True)])
    lat50 = Summary.of([r["wait_p50_ms"] for r in runs["LAT broker"]])
    lat99 = Summary.of([r["wait_p99_ms"] for r in runs["LAT broker"]])
    rows = [
        [f"R1 {n_noop:,} no-op jobs", "tui-dispatch", rate("R1 broker").fmt(unit=" jobs/s"),
         f"{ratio.fmt('.2f', 'x')} the bare loop (Huey: see redis_peers)"],
        [f"R1 {n_noop:,} no-op jobs", "bare LPUSH/BRPOP", rate("R1 bare").fmt(unit=" jobs/s"), ""],
        [f"R1 {n_noop:,} no-op jobs", "Dispatcher(broker=RedisBroker)", rate("R1 dispatcher").fmt(unit=" jobs/s"),
         f"{rate('R1 dispatcher').median / rate('R1 broker').median:.2f} of the broker side: the cost of handles"],
        [f"R2 {n_fail:,} jobs, 20% fail once", "tui-dispatch", rate("R2 broker").fmt(unit=" jobs/s"),
         f"{runs['R2 broker'][0]['retries']} retries"],
        [f"LAT {n_lat:,} jobs at ~1k/s", "tui-dispatch", f"p50 {lat50.fmt('.2f', ' ms')}",
         f"p99 {lat99.fmt('.2f', ' ms')}"],
    ]
    payload = {
        "benchmark": "redis_throughput", "reps": reps, "threads": THREADS, "engine_revision": engine_revision(),
        "machine": machine_info(), "runs": runs,
        "summary": {"r1_broker": rate("R1 broker").to_dict(), "r1_bare": rate("R1 bare").to_dict(),
                    "r1_ratio": ratio.to_dict(), "r1_dispatcher": rate("R1 dispatcher").to_dict(),
                    "r2_broker": rate("R2 broker").to_dict(),
                    "lat_p50_ms": lat50.to_dict(), "lat_p99_ms": lat99.to_dict()},
    }
    if args.json:
        write_json(args.json, payload)
    if args.json != "-":
        print(f"Redis broker vs a bare LPUSH/BRPOP loop: {THREADS} threads, {reps} repetitions, "
              f"median (range); engine {payload['engine_revision']}")
        print(markdown_table(["workload", "side", "result", "note"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
