"""Tasks for the multi-process tests, run by worker processes started with
``python -m tui_dispatch.worker_cli --tasks tests.redis.fleet_tasks``.

They record what they do in the test Redis named by ``TDTEST_REDIS_URL``, under
``TDTEST_PREFIX:test:`` (which may be another Redis than the queue's, so a task can still
record while the queue's Redis restarts).
"""

from __future__ import annotations

import os
import random
import threading

import redis

from engine import TaskRegistry

tasks = TaskRegistry()

_lock = threading.Lock()
_client: redis.Redis | None = None


def _r() -> redis.Redis:
    global _client
    with _lock:
        if _client is None:
            _client = redis.Redis.from_url(os.environ["TDTEST_REDIS_URL"], decode_responses=True)
        return _client


def _key(name: str) -> str:
    return f"{os.environ['TDTEST_PREFIX']}:test:{name}"


def failures_planned(job_no: int, seed: int) -> int:
    """How many times job ``job_no`` fails before it succeeds: 5% always, 20% once, else never."""
    x = random.Random(seed * 1_000_003 + job_no).random()
    if x < 0.05:
        return 1_000
    return 1 if x < 0.25 else 0


@tasks.task("flaky")
def flaky(job_no: int, seed: int) -> None:
    """Fail as planned for this job, else record one success."""
    tries = _r().hincrby(_key("tries"), str(job_no), 1)
    if tries <= failures_planned(job_no, seed):
        raise ValueError(f"planned failure {tries} of job {job_no}")
    _r().hincrby(_key("done"), str(job_no), 1)


@tasks.task("gated")
def gated(tag: str) -> None:
    """Say it started (with this process's pid), then wait for the test to open the gate."""
    r = _r()
    r.rpush(_key("started"), f"{tag}:{os.getpid()}")
    if r.blpop([_key(f"gate:{tag}")], timeout=20) is None:
        raise TimeoutError("the test never opened the gate")
    r.hincrby(_key("done"), tag, 1)
