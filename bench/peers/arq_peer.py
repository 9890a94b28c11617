"""arq: one worker process (asyncio) running at most 4 jobs at once. Runs in ``bench/.peers``.

arq has no threads: ``max_jobs=4`` concurrent coroutines on one event loop stand in for 4
worker threads. Its queue, job ids and so every key carry the run's prefix. ``poll_delay`` is
0.01 s instead of the default 0.5 s: arq reads at most ``queue_read_limit`` (here 100) job ids
per poll and then sleeps for what is left of ``poll_delay``, so the default caps it near
200 jobs/s (measured: see ``docs/benchmarks.md``); otherwise defaults (results kept 1 h). The
worker logs at WARNING (arq's command line logs every job at INFO). Retries: the job raises
``Retry(defer=0)`` (arq retries only on ``Retry``), ``max_tries=2``; it knows its first attempt
by ``ctx["job_try"] == 1``. The producer runs ``enqueue_job`` 100 at a time with
``asyncio.gather``. Completion: the jobs count themselves in a
:data:`~bench.peers._common.TALLY`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any, ClassVar

from arq import Retry, create_pool, func
from arq.connections import RedisSettings

from bench.peers._common import TALLY, THREADS, Side, body_noop, env_prefix, env_url, record_wait

POLL_DELAY_S = float(os.environ.get("BENCH_PEERS_ARQ_POLL_DELAY_S", "0.01"))
GATHER = 100


async def noop(ctx: dict[str, Any], i: int) -> None:
    """Nothing."""
    body_noop()


async def fail_once(ctx: dict[str, Any], i: int, fail: bool) -> None:
    """Fail on the first attempt if ``fail``."""
    if fail and ctx["job_try"] == 1:
        TALLY.add("failed")
        raise Retry(defer=0)
    TALLY.add("ok")


async def wait(ctx: dict[str, Any], i: int, enqueued_at: float) -> None:
    """Record the enqueue-to-start time."""
    record_wait(enqueued_at)


class WorkerSettings:
    """What ``arq.worker.run_worker`` reads."""

    functions: ClassVar[list[Any]] = [func(noop, max_tries=1), func(fail_once, max_tries=2),
                                      func(wait, max_tries=1)]
    redis_settings = RedisSettings.from_dsn(env_url())
    queue_name = f"{env_prefix()}:arq"
    max_jobs = THREADS
    poll_delay = POLL_DELAY_S


_WORKER = ("import logging; logging.basicConfig(level=logging.WARNING); "
           "from arq.worker import run_worker; from bench.peers.arq_peer import WorkerSettings; "
           "run_worker(WorkerSettings)")


class ArqSide(Side):
    """arq, 1 process, 4 concurrent jobs."""

    name = "arq"

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(url, prefix)
        self.loop = asyncio.new_event_loop()
        self.pool = self.loop.run_until_complete(create_pool(WorkerSettings.redis_settings))

    def worker_commands(self) -> list[list[str]]:
        return [[sys.executable, "-c", _WORKER]]

    def submit(self, workload: str, items: Sequence[Any]) -> None:
        async def go() -> None:
            for at in range(0, len(items), GATHER):
                await asyncio.gather(*(
                    self.pool.enqueue_job(workload, *((item,) if workload == "noop" else item),
                                          _job_id=f"{self.prefix}-{workload[0]}{item if workload == 'noop' else item[0]}",
                                          _queue_name=WorkerSettings.queue_name)
                    for item in items[at:at + GATHER]))

        self.loop.run_until_complete(go())

    def submit_wait(self, i: int, enqueued_at: float) -> None:
        self.loop.run_until_complete(self.pool.enqueue_job(
            "wait", i, enqueued_at, _job_id=f"{self.prefix}-l{i}", _queue_name=WorkerSettings.queue_name))

    def versions(self) -> dict[str, str]:
        return {"arq": metadata.version("arq"), "redis-py": metadata.version("redis"),
                "poll_delay_s": repr(POLL_DELAY_S)}

    def close(self) -> None:
        self.loop.run_until_complete(self.pool.aclose())
        self.loop.close()
        super().close()


SIDE = ArqSide
