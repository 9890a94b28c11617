"""The engine's behaviour, run on both brokers: the in-memory Dispatcher and the Redis fleet
(RedisQueue + RedisWorker) must agree on retries, the DLQ and the counters."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol

import pytest

from engine import (
    DeadLetter,
    Dispatcher,
    Permanent,
    RetryAfter,
    RetryPolicy,
    Snapshot,
    TaskRegistry,
    cancel_token,
)
from engine.brokers.redis import RedisQueue
from engine.fleet import FleetView
from engine.redis_worker import RedisWorker
from tests.redis.conftest import WAIT_S, eventually

RETRY = RetryPolicy(max_retries=2, base_s=0.001, cap_s=0.005)


class Backend(Protocol):
    def submit(self, task: str, *args: Any, timeout_s: float | None = None) -> None: ...
    def wait(self) -> None: ...
    def snapshot(self) -> Snapshot: ...
    def dlq(self) -> list[DeadLetter]: ...
    def requeue_all(self) -> int: ...
    def close(self) -> None: ...


class MemoryBackend:
    def __init__(self, tasks: TaskRegistry) -> None:
        self.d = Dispatcher(min_workers=2, max_workers=2, autoscale=False, retry=RETRY, tasks=tasks,
                            log_interval_s=0)

    def submit(self, task: str, *args: Any, timeout_s: float | None = None) -> None:
        fn = self.d._tasks.get(task)  # type: ignore[union-attr]
        if timeout_s is None:
            self.d.submit_task(task, *args)
        else:
            self.d.submit_job(fn, args, name=task, timeout_s=timeout_s)

    def wait(self) -> None:
        assert self.d.join(WAIT_S)

    def snapshot(self) -> Snapshot:
        return self.d.snapshot()

    def dlq(self) -> list[DeadLetter]:
        return self.d.dlq_list(0, 1000)

    def requeue_all(self) -> int:
        return len(self.d.dlq_requeue_all())

    def close(self) -> None:
        self.d.shutdown(cancel_futures=True)


class RedisBackend:
    def __init__(self, tasks: TaskRegistry, url: str, prefix: str) -> None:
        self.queue = RedisQueue(url, prefix=prefix, max_retries=RETRY.max_retries)
        self.worker = RedisWorker(self.queue, tasks, min_workers=2, max_workers=2, autoscale=False, retry=RETRY,
                                  heartbeat_s=0.1, poll_s=0.1, log_interval_s=0).start()
        self.view = FleetView(self.queue)

    def submit(self, task: str, *args: Any, timeout_s: float | None = None) -> None:
        self.queue.submit_job(task, args, timeout_s=timeout_s)

    def wait(self) -> None:
        eventually(lambda: self.view.snapshot().unfinished == 0, what="the fleet to finish")

    def snapshot(self) -> Snapshot:
        return self.view.snapshot()

    def dlq(self) -> list[DeadLetter]:
        return self.queue.dlq_list(0, 1000)

    def requeue_all(self) -> int:
        return len(self.queue.dlq_requeue_all())

    def close(self) -> None:
        self.worker.stop(graceful=False)
        self.queue.close()


class Jobs:
    """Tasks with planned outcomes, recording every attempt."""

    def __init__(self) -> None:
        self.tasks = TaskRegistry()
        self.attempts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.heal = threading.Event()
        for name in ("ok", "fail_once", "always", "permanent", "after", "slow_once", "until_healed"):
            self.tasks.register(name, getattr(self, name))

    def _count(self, key: str) -> int:
        with self.lock:
            self.attempts[key] += 1
            return self.attempts[key]

    def ok(self, key: str) -> str:
        self._count(key)
        return key

    def fail_once(self, key: str) -> None:
        if self._count(key) == 1:
            raise ValueError(f"first try of {key}")

    def always(self, key: str) -> None:
        raise KeyError(f"attempt {self._count(key)} of {key}")

    def permanent(self, key: str) -> None:
        self._count(key)
        raise Permanent(f"{key} is hopeless")

    def after(self, key: str) -> None:
        if self._count(key) == 1:
            raise RetryAfter(0.01)

    def slow_once(self, key: str) -> None:
        if self._count(key) == 1:
            cancel_token().wait(WAIT_S)

    def until_healed(self, key: str) -> None:
        self._count(key)
        if not self.heal.is_set():
            raise RuntimeError("not yet")


@pytest.fixture(params=["memory", "redis"])
def backend_and_jobs(request: pytest.FixtureRequest) -> Iterator[tuple[Backend, Jobs]]:
    jobs = Jobs()
    backend: Backend
    if request.param == "memory":
        backend = MemoryBackend(jobs.tasks)
    else:
        backend = RedisBackend(jobs.tasks, request.getfixturevalue("redis_url"), request.getfixturevalue("prefix"))
    yield backend, jobs
    backend.close()


def test_outcomes_counters_and_dead_letters_agree(backend_and_jobs: tuple[Backend, Jobs]) -> None:
    backend, jobs = backend_and_jobs
    for i in range(5):
        backend.submit("ok", f"ok{i}")
    backend.submit("fail_once", "f")
    backend.submit("always", "a")
    backend.submit("permanent", "p")
    backend.submit("after", "r")
    backend.wait()
    snap = backend.snapshot()
    c = snap.counters
    assert snap.consistent
    assert (c.submitted, c.succeeded, c.dead_lettered, c.failed, c.retries) == (9, 7, 2, 6, 4)
    assert dict(snap.retries_by_attempt) == {1: 3, 2: 1}
    assert jobs.attempts == {**{f"ok{i}": 1 for i in range(5)}, "f": 2, "a": 3, "p": 1, "r": 2}
    dead = {e.task: e for e in backend.dlq()}
    assert set(dead) == {"always", "permanent"}
    a, p = dead["always"], dead["permanent"]
    assert (a.name, a.args_repr, a.exc_type, a.attempts, a.reason) == (
        "always", "('a')", "KeyError", 3, "retries exhausted (2 retries)")
    assert a.exc_message == "'attempt 3 of a'" and "KeyError: 'attempt 3 of a'" in a.traceback
    assert (p.exc_type, p.exc_message, p.attempts, p.reason) == (
        "engine.errors.Permanent", "p is hopeless", 1, "not retryable: raised Permanent")
    assert a.first_failure_at <= a.last_failure_at
    assert snap.dlq_size == 2 and snap.backlog == snap.scheduled == snap.in_flight == 0


def test_requeued_dead_letters_run_again_with_fresh_attempts(backend_and_jobs: tuple[Backend, Jobs]) -> None:
    backend, jobs = backend_and_jobs
    backend.submit("until_healed", "h")
    backend.wait()
    assert jobs.attempts["h"] == 3 and len(backend.dlq()) == 1
    jobs.heal.set()
    assert backend.requeue_all() == 1
    backend.wait()
    snap = backend.snapshot()
    c = snap.counters
    assert (c.submitted, c.requeued, c.succeeded, c.dead_lettered, c.failed) == (2, 1, 1, 1, 3)
    assert jobs.attempts["h"] == 4 and snap.dlq_size == 0 and snap.consistent


def test_a_timed_out_attempt_is_retried(backend_and_jobs: tuple[Backend, Jobs]) -> None:
    backend, jobs = backend_and_jobs
    backend.submit("slow_once", "s", timeout_s=0.1)
    backend.wait()
    c = backend.snapshot().counters
    assert (c.succeeded, c.failed, c.timed_out, c.retries) == (1, 1, 1, 1)
    assert jobs.attempts["s"] == 2
