"""Our side: ``tui-dispatch worker`` (one process, a fixed pool of 4 threads) on RedisQueue.

Runs in the project's virtualenv. The worker is the real command line
(``python -m tui_dispatch.worker_cli``) with ``--tasks bench.peers.ours:TASKS``; the producer
is :class:`engine.brokers.redis.RedisQueue` in the runner process (``submit_many`` in chunks of
1,000, ``submit`` for the latency jobs). Completion is read from the broker's own counters
(``succeeded + dead_lettered``, written when outcomes are acknowledged, in batches), so nothing
is added to the jobs. Retries: ``max_retries=1``, delay 0 (``--retry-base-s 0 --retry-jitter
none``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from bench.peers._common import (
    THREADS,
    PlannedFailure,
    Side,
    percentile,
    record_wait,
)
from engine import TaskRegistry
from engine.brokers.redis import RedisQueue
from engine.redis_worker import current_redis_job

TASKS = TaskRegistry()
QUEUE = "bench"


@TASKS.task("noop")
def noop(i: int) -> None:
    """Nothing."""


@TASKS.task("fail_once")
def fail_once(i: int, fail: bool) -> None:
    """Fail on the first attempt if ``fail``."""
    job = current_redis_job()
    if fail and job is not None and job.attempt == 1:
        raise PlannedFailure("planned failure (first attempt)")


@TASKS.task("wait")
def wait(i: int, enqueued_at: float) -> None:
    """Record the enqueue-to-start time."""
    record_wait(enqueued_at)


class Ours(Side):
    """tui-dispatch's Redis broker and worker."""

    name = "tui-dispatch"

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(url, prefix)
        self.queue = RedisQueue(url, queue=QUEUE, prefix=prefix, max_retries=1)

    def worker_commands(self) -> list[list[str]]:
        return [[sys.executable, "-m", "tui_dispatch.worker_cli", "--redis", self.url,
                 "--tasks", "bench.peers.ours:TASKS", "--queue", QUEUE, "--prefix", self.prefix,
                 "--min-workers", str(THREADS), "--max-workers", str(THREADS), "--no-autoscale",
                 "--retry-base-s", "0", "--retry-jitter", "none",
                 "--log-level", "WARNING", "--log-interval-s", "0"]]

    def submit(self, workload: str, items: Sequence[Any]) -> None:
        args = [(i,) for i in items] if workload == "noop" else [tuple(item) for item in items]
        self.queue.submit_many(workload, args)

    def submit_wait(self, i: int, enqueued_at: float) -> None:
        self.queue.submit("wait", i, enqueued_at)

    def finished(self) -> int:
        c = self.queue.counters()
        return c.get("succeeded", 0) + c.get("dead_lettered", 0)

    def retries(self) -> int | None:
        return self.queue.counters().get("retries", 0)

    def extra(self, n_wait: int) -> dict[str, Any]:
        """Dead letters, and the broker's own enqueue-to-start samples of the latency jobs (the
        newest ``n_wait``; its clock starts inside the enqueue script, ours just before it)."""
        state = self.queue.fleet_state()
        native = sorted(state.wait_samples[:n_wait])
        return {"dead_lettered": state.counters.get("dead_lettered", 0),
                "native_wait": {"n": len(native), "p50_ms": percentile(native, 0.50) * 1000,
                                "p99_ms": percentile(native, 0.99) * 1000}}

    def versions(self) -> dict[str, str]:
        return {"tui-dispatch": metadata.version("tui-dispatch"), "redis-py": metadata.version("redis")}

    def close(self) -> None:
        self.queue.close()
        super().close()


SIDE = Ours
