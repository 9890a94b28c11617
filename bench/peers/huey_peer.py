"""Huey: ``RedisHuey`` and one ``huey_consumer`` process with 4 worker threads. Runs in
``bench/.peers``.

The Huey instance is made at import from the run's URL and prefix (its ``name``), as the
consumer imports this module. Defaults otherwise (blocking ``BRPOP`` dequeue; results stored
only for jobs that return something, and these return ``None``). Retries: ``retries=1``,
``retry_delay=0`` (re-enqueued at once); a job knows its first attempt by ``task.retries == 1``.
One enqueue per call (Huey has no bulk enqueue). Completion: the jobs count themselves in a
:data:`~bench.peers._common.TALLY`. The consumer stops gracefully on SIGINT.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from huey import RedisHuey

from bench.peers._common import (
    THREADS,
    Side,
    body_fail_once,
    body_noop,
    env_prefix,
    env_url,
    record_wait,
)

huey = RedisHuey(name=env_prefix(), url=env_url())


@huey.task()
def noop(i: int) -> None:
    """Nothing."""
    body_noop()


@huey.task(retries=1, retry_delay=0, context=True)
def fail_once(i: int, fail: bool, task: Any = None) -> None:
    """Fail on the first attempt if ``fail``."""
    body_fail_once(fail, task is None or task.retries == 1)


@huey.task()
def wait(i: int, enqueued_at: float) -> None:
    """Record the enqueue-to-start time."""
    record_wait(enqueued_at)


class HueySide(Side):
    """Huey with Redis, 1 consumer process x 4 threads."""

    name = "Huey"
    stop_signal = signal.SIGINT

    def worker_commands(self) -> list[list[str]]:
        return [[os.path.join(os.path.dirname(sys.executable), "huey_consumer"), f"{__name__}.huey",
                 "--workers", str(THREADS), "--worker-type", "thread", "--quiet"]]

    def submit(self, workload: str, items: Sequence[Any]) -> None:
        if workload == "noop":
            for i in items:
                noop(i)
        else:
            for i, fail in items:
                fail_once(i, fail)

    def submit_wait(self, i: int, enqueued_at: float) -> None:
        wait(i, enqueued_at)

    def versions(self) -> dict[str, str]:
        return {"huey": metadata.version("huey"), "redis-py": metadata.version("redis")}


SIDE = HueySide
