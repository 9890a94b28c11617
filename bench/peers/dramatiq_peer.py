"""Dramatiq: its ``RedisBroker`` and one ``dramatiq`` worker process with 4 threads. Runs in
``bench/.peers``.

Broker and actors are made at import from the run's URL and prefix (``namespace``), as the
``dramatiq`` command imports this module. Defaults otherwise (default middleware, prefetch);
``CurrentMessage`` is added so a job can tell its first attempt (``options["retries"]``).
Retries: ``max_retries=1``, ``min_backoff=0`` (Dramatiq still routes a retry through its delay
queue, with an ETA of now). The producer sends one message per call (Dramatiq has no bulk
enqueue). Completion: the jobs count themselves in a :data:`~bench.peers._common.TALLY`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from bench.peers._common import (
    THREADS,
    Side,
    body_fail_once,
    body_noop,
    env_prefix,
    env_url,
    record_wait,
)

QUEUE = "bench"

broker = RedisBroker(url=env_url(), namespace=env_prefix())
broker.add_middleware(CurrentMessage())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop(i: int) -> None:
    """Nothing."""
    body_noop()


@dramatiq.actor(queue_name=QUEUE, max_retries=1, min_backoff=0)
def fail_once(i: int, fail: bool) -> None:
    """Fail on the first attempt if ``fail``."""
    message = CurrentMessage.get_current_message()
    body_fail_once(fail, message is None or message.options.get("retries", 0) == 0)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def wait(i: int, enqueued_at: float) -> None:
    """Record the enqueue-to-start time."""
    record_wait(enqueued_at)


class DramatiqSide(Side):
    """Dramatiq with its Redis broker, 1 process x 4 threads."""

    name = "Dramatiq"

    def worker_commands(self) -> list[list[str]]:
        return [[os.path.join(os.path.dirname(sys.executable), "dramatiq"), __name__,
                 "--processes", "1", "--threads", str(THREADS), "--queues", QUEUE]]

    def submit(self, workload: str, items: Sequence[Any]) -> None:
        if workload == "noop":
            for i in items:
                noop.send(i)
        else:
            for i, fail in items:
                fail_once.send(i, fail)

    def submit_wait(self, i: int, enqueued_at: float) -> None:
        wait.send(i, enqueued_at)

    def versions(self) -> dict[str, str]:
        return {"dramatiq": metadata.version("dramatiq"), "redis-py": metadata.version("redis")}

    def close(self) -> None:
        broker.close()
        super().close()


SIDE = DramatiqSide
