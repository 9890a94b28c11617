"""Celery: a Redis broker and one ``celery worker --pool threads --concurrency 4`` process.
Runs in ``bench/.peers``.

The app is made at import from the run's URL; every broker key gets the run's prefix
(``global_keyprefix``). No result backend (``task_ignore_result``). The worker runs without
gossip, mingle and heartbeat (the usual advice for a Redis broker; they are cluster chatter,
not job work); everything else is Celery's default (early ack, prefetch multiplier 4).
Retries: ``autoretry_for`` with ``max_retries=1`` and ``default_retry_delay=0`` (Celery sends a
new message with an ETA of now); a job knows its first attempt by ``request.retries == 0``. The
producer publishes one message per call through one held producer connection (Celery has no
bulk publish). Completion: the jobs count themselves in a :data:`~bench.peers._common.TALLY`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from celery import Celery

from bench.peers._common import (
    THREADS,
    PlannedFailure,
    Side,
    body_fail_once,
    body_noop,
    env_prefix,
    env_url,
    record_wait,
)

QUEUE = "bench"

app = Celery("bench_peers", broker=env_url())
app.conf.update(
    broker_transport_options={"global_keyprefix": f"{env_prefix()}:"},
    task_default_queue=QUEUE,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")
def noop(i: int) -> None:
    """Nothing."""
    body_noop()


@app.task(name="fail_once", bind=True, autoretry_for=(PlannedFailure,), max_retries=1,
          default_retry_delay=0, retry_backoff=False, retry_jitter=False)
def fail_once(self: Any, i: int, fail: bool) -> None:
    """Fail on the first attempt if ``fail``."""
    body_fail_once(fail, self.request.retries == 0)


@app.task(name="wait")
def wait(i: int, enqueued_at: float) -> None:
    """Record the enqueue-to-start time."""
    record_wait(enqueued_at)


class CelerySide(Side):
    """Celery with a Redis broker, 1 worker process x 4 threads."""

    name = "Celery (threads)"

    def worker_commands(self) -> list[list[str]]:
        return [[sys.executable, "-m", "celery", "-A", __name__, "worker", "--pool", "threads",
                 "--concurrency", str(THREADS), "--queues", QUEUE, "--hostname", f"{self.prefix}@%h",
                 "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]]

    def submit(self, workload: str, items: Sequence[Any]) -> None:
        with app.producer_or_acquire() as producer:
            if workload == "noop":
                for i in items:
                    noop.apply_async((i,), producer=producer)
            else:
                for i, fail in items:
                    fail_once.apply_async((i, fail), producer=producer)

    def submit_wait(self, i: int, enqueued_at: float) -> None:
        wait.apply_async((i, enqueued_at))

    def versions(self) -> dict[str, str]:
        return {"celery": metadata.version("celery"), "kombu": metadata.version("kombu"),
                "redis-py": metadata.version("redis")}

    def close(self) -> None:
        app.close()
        super().close()


SIDE = CelerySide
