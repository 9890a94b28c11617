"""RedisWorker in this process, against a real Redis: running, retrying, dead-lettering,
leases, stopping, the fleet view and fleet commands."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from engine import (
    ConfigError,
    EngineState,
    FakeClock,
    Permanent,
    RetryAfter,
    RetryPolicy,
    TaskRegistry,
    WorkerState,
    cancel_token,
)
from engine.brokers.redis import RedisQueue
from engine.fleet import FleetView
from engine.redis_worker import RedisWorker, socket_timeout_for
from tests.redis.conftest import WAIT_S, MakeWorker, eventually

WALL = 1_700_000_000.0

class Gate:
    """Jobs that block until opened; the test can wait until n of them have started."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.entered: list[Any] = []
        self.opened = threading.Event()

    def enter(self, value: Any) -> None:
        with self._cond:
            self.entered.append(value)
            self._cond.notify_all()
        if not self.opened.wait(WAIT_S):
            raise RuntimeError("gate never opened")

    def wait_entered(self, n: int) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.entered) >= n, WAIT_S):
                pytest.fail(f"only {len(self.entered)} of {n} gated jobs started")


def drained(queue: RedisQueue) -> Callable[[], bool]:
    def check() -> bool:
        snap = FleetView(queue).snapshot()
        return snap.counters.submitted > 0 and snap.unfinished == 0
    return check


def test_worker_runs_every_job_exactly_once(make_worker: MakeWorker) -> None:
    tasks = TaskRegistry()
    seen: list[int] = []
    lock = threading.Lock()

    @tasks.task("record")
    def record(i: int, label: str = "") -> None:
        assert label == "x"
        with lock:
            seen.append(i)

    worker, queue = make_worker(tasks, max_workers=4, autoscale=True)
    queue.submit_many("record", [(i,) for i in range(300)], kwargs={"label": "x"})
    worker.start()
    eventually(drained(queue), what="300 jobs to finish")
    assert sorted(seen) == list(range(300))
    snap = FleetView(queue).snapshot()
    assert snap.counters.succeeded == 300 and snap.counters.failed == 0 and snap.consistent
    assert snap.run_time.count == 300 and snap.queue_wait.count == 300
    report = worker.stop()
    assert (report.graceful, report.put_back, report.abandoned, report.unflushed) == (True, 0, 0, 0)
    assert worker.status().settled == 300


def test_failures_retry_then_dead_letter_with_the_story(make_worker: MakeWorker) -> None:
    tasks = TaskRegistry()
    attempts: Counter[int] = Counter()

    @tasks.task("flaky")
    def flaky(i: int) -> None:
        attempts[i] += 1
        if i == 0 or attempts[i] == 1:
            raise ValueError(f"fail {i}")

    worker, queue = make_worker(tasks, max_retries=2)
    queue.submit_many("flaky", [(0,), (1,)])
    worker.start()
    eventually(drained(queue), what="both jobs to finish")
    assert attempts == {0: 3, 1: 2}
    [dead] = queue.dlq_list()
    assert (dead.job_id, dead.name, dead.task, dead.args_repr) == (1, "flaky", "flaky", "(0)")
    assert (dead.exc_type, dead.exc_message, dead.attempts) == ("ValueError", "fail 0", 3)
    assert dead.reason == "retries exhausted (2 retries)"
    assert "raise ValueError" in dead.traceback and "ValueError: fail 0" in dead.traceback
    assert dead.first_failure_at <= dead.last_failure_at
    c = queue.counters()
    assert (c["succeeded"], c["failed"], c["retries"], c["dead_lettered"]) == (1, 4, 3, 1)
    assert (c["retry:1"], c["retry:2"]) == (2, 1)


def test_backoff_and_retry_after_are_exact_on_a_fake_clock(make_worker: MakeWorker, raw: redis.Redis) -> None:
    clock = FakeClock(start=100.0, wall_start=WALL, max_real_wait_s=0.05)
    tasks = TaskRegistry()
    runs: list[str] = []

    @tasks.task("backoff")
    def backoff() -> None:
        runs.append("backoff")
        raise ValueError("again")

    @tasks.task("after")
    def after() -> None:
        runs.append("after")
        if runs.count("after") == 1:
            raise RetryAfter(7.5)

    worker, queue = make_worker(tasks, clock=clock, max_retries=2,
                                retry=RetryPolicy(base_s=10.0, factor=3.0, jitter="none"))
    queue.submit("backoff")
    queue.submit("after")
    worker.start()
    scheduled = queue.base + "scheduled"
    eventually(lambda: raw.zcard(scheduled) == 2, what="both first attempts to fail")
    assert raw.zrange(scheduled, 0, -1, withscores=True) == [("2", WALL + 7.5), ("1", WALL + 10.0)]
    clock.advance(7.5)
    eventually(lambda: queue.counters().get("succeeded") == 1, what="the RetryAfter job to run again")
    assert raw.zrange(scheduled, 0, -1, withscores=True) == [("1", WALL + 10.0)]
    clock.advance(2.5)  # t = +10: the backoff job's first retry
    eventually(lambda: raw.zrange(scheduled, 0, -1, withscores=True) == [("1", WALL + 10.0 + 30.0)],
               what="the second retry to be scheduled 10 * 3 s later")
    clock.advance(30.0)
    eventually(lambda: queue.dlq_len() == 1, what="the backoff job to be dead-lettered")
    assert runs.count("backoff") == 3 and runs.count("after") == 2
    assert queue.dlq_get(1).last_failure_at == WALL + 40.0


def test_permanent_is_not_retried(make_worker: MakeWorker) -> None:
    tasks = TaskRegistry()
    tasks.register("perm", lambda: (_ for _ in ()).throw(Permanent("bad input")))
    worker, queue = make_worker(tasks, max_retries=5)
    queue.submit("perm")
    worker.start()
    eventually(lambda: queue.dlq_len() == 1, what="the job to be dead-lettered")
    dead = queue.dlq_get(1)
    assert dead.reason == "not retryable: raised Permanent" and dead.attempts == 1
    assert dead.exc_type == "engine.errors.Permanent"


def test_unknown_task_and_malformed_payload_are_dead_lettered_and_the_worker_lives(
    make_worker: MakeWorker, raw: redis.Redis
) -> None:
    tasks = TaskRegistry()
    done = threading.Event()
    tasks.register("good", done.set)
    worker, queue = make_worker(tasks)
    queue.submit("nope", 1)
    bad = queue.submit("good")
    raw.hset(queue.base + f"job:{bad}", "p", "{not json")
    queue.submit_job("good", max_retries=0)
    worker.start()
    eventually(drained(queue), what="all three jobs to finish")
    assert done.is_set()
    by_id = {e.job_id: e for e in queue.dlq_list()}
    assert set(by_id) == {1, 2}
    assert by_id[1].exc_type == "engine.errors.UnknownTask"
    assert by_id[1].reason.startswith("not runnable: unknown task 'nope'")
    assert by_id[1].exc_message == "unknown task 'nope' (registered: good)"
    assert by_id[2].exc_type == "engine.brokers.redis.MalformedPayload"
    assert by_id[2].name == "<malformed payload>" and by_id[2].args_repr == "{not json"
    assert "malformed payload: not JSON" in by_id[2].reason
    assert worker.status().state == "running"
    assert queue.counters()["succeeded"] == 1


def test_a_local_timeout_is_a_failed_attempt(make_worker: MakeWorker) -> None:
    tasks = TaskRegistry()
    calls: list[bool] = []

    @tasks.task("slow_once")
    def slow_once() -> None:
        calls.append(True)
        if len(calls) == 1:
            cancel_token().wait(WAIT_S)  # returns as soon as the timeout cancels it

    worker, queue = make_worker(tasks)
    queue.submit_job("slow_once", timeout_s=0.2)
    worker.start()
    eventually(drained(queue), what="the job to succeed on its second attempt")
    c = queue.counters()
    assert (c["succeeded"], c["failed"], c["timed_out"], c["retries"]) == (1, 1, 1, 1)
    assert len(calls) == 2
    assert worker.snapshot().dlq_size == 0  # the local DLQ entry of the timeout was dropped


def test_graceful_stop_puts_back_unstarted_jobs_without_spending_attempts(
    make_worker: MakeWorker, raw: redis.Redis
) -> None:
    tasks = TaskRegistry()
    gate = Gate()
    tasks.register("gated", gate.enter)
    worker, queue = make_worker(tasks, min_workers=1, max_workers=1, prefetch=3)
    queue.submit_many("gated", [(i,) for i in range(5)])
    worker.start()
    gate.wait_entered(1)
    eventually(lambda: worker.status().leased == 4, what="4 jobs to be leased (1 running + 3 prefetched)")
    reports: list[Any] = []
    stopper = threading.Thread(target=lambda: reports.append(worker.stop()))
    stopper.start()
    ready = queue.base + "ready"
    eventually(lambda: raw.llen(ready) == 4, what="the 3 unstarted jobs to go back")
    assert raw.lrange(ready, 0, -1) == ["2", "3", "4", "5"]  # back at the front, in order
    assert [raw.hget(queue.base + f"job:{i}", "a") for i in (2, 3, 4)] == ["0", "0", "0"]
    assert stopper.is_alive()  # still waiting for the running job
    gate.opened.set()
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    [report] = reports
    assert (report.graceful, report.put_back, report.abandoned, report.unflushed) == (True, 3, 0, 0)
    assert gate.entered == [0]
    c = queue.counters()
    assert c["succeeded"] == 1 and "failed" not in c
    snap = FleetView(queue).snapshot()
    assert snap.backlog == 4 and snap.in_flight == 0 and snap.consistent
    assert snap.state is EngineState.STOPPED and snap.workers == ()


def test_forceful_stop_hands_running_jobs_back_as_failed_attempts(make_worker: MakeWorker, raw: redis.Redis) -> None:
    tasks = TaskRegistry()
    gate = Gate()
    tasks.register("stubborn", gate.enter)  # ignores its cancel token
    worker, queue = make_worker(tasks, min_workers=1, max_workers=1, prefetch=0, force_wait_s=0.1)
    queue.submit("stubborn", 1)
    worker.start()
    gate.wait_entered(1)
    try:
        report = worker.stop(graceful=False)
    finally:
        gate.opened.set()
    assert (report.graceful, report.abandoned) == (False, 1)
    assert raw.lrange(queue.base + "ready", 0, -1) == ["1"]
    assert raw.hget(queue.base + "job:1", "a") == "1"
    assert queue.counters()["failed"] == 1


def test_heartbeats_keep_a_long_job_leased(make_worker: MakeWorker, redis_url: str, prefix: str) -> None:
    tasks = TaskRegistry()
    gate = Gate()
    tasks.register("long", gate.enter)
    worker, queue = make_worker(tasks, lease_s=0.4, heartbeat_s=0.05)
    queue.submit("long", 1)
    worker.start()
    gate.wait_entered(1)
    other = RedisQueue(redis_url, prefix=prefix)
    try:
        # Another worker keeps trying to reclaim expired leases for 3 lease periods.
        stop_at = threading.Event()
        timer = threading.Timer(1.2, stop_at.set)
        timer.start()
        reclaimed = 0
        while not stop_at.is_set():
            reclaimed += other.fetch("other", 0, lease_s=1).reclaimed
            stop_at.wait(0.02)
        timer.join()
    finally:
        gate.opened.set()
        other.close()
    assert reclaimed == 0
    eventually(drained(queue), what="the long job to finish")
    c = queue.counters()
    assert c["succeeded"] == 1 and "failed" not in c
    assert gate.entered == [1]


def test_the_fleet_view_shows_each_thread_of_each_process(make_worker: MakeWorker) -> None:
    tasks = TaskRegistry()
    gate = Gate()
    tasks.register("gated", gate.enter)
    worker, queue = make_worker(tasks, min_workers=3, max_workers=3, prefetch=0)
    queue.submit_job("gated", (7,), name="the-gated-job")
    worker.start()
    try:
        gate.wait_entered(1)

        def busy_row() -> Any:
            snap = FleetView(queue).snapshot()
            return snap if snap.workers_busy == 1 else None

        snap = eventually(busy_row, what="a heartbeat showing the busy thread")
        assert snap.state is EngineState.RUNNING
        assert (snap.workers_total, snap.workers_idle, snap.min_workers, snap.max_workers) == (3, 2, 3, 3)
        assert {w.process for w in snap.workers} == {worker.process}
        [busy] = [w for w in snap.workers if w.state is WorkerState.BUSY]
        assert (busy.job_id, busy.job_name) == (1, "the-gated-job")
        assert all(w.last_seen_s is not None and w.last_seen_s < 2.0 for w in snap.workers)
        assert snap.in_flight == 1 and snap.consistent
    finally:
        gate.opened.set()
    worker.stop()
    assert FleetView(queue).snapshot().state is EngineState.STOPPED


def test_fleet_commands_reach_running_workers(make_worker: MakeWorker) -> None:
    worker, queue = make_worker(TaskRegistry(), min_workers=1, max_workers=2)
    worker.start()
    queue.set_limits(max_workers=5)
    eventually(lambda: worker.snapshot().max_workers == 5, what="the new limit to be applied")
    assert worker.snapshot().min_workers == 1
    assert worker.wait_stop_requested(0) is None
    queue.request_stop(graceful=True)
    assert worker.wait_stop_requested(WAIT_S) == "graceful"


def test_bad_worker_settings_are_named(redis_url: str, prefix: str) -> None:
    queue = RedisQueue(redis_url, prefix=prefix)
    try:
        with pytest.raises(ConfigError, match=r"heartbeat_s \(5\) must be below lease_s / 2 \(5\)"):
            RedisWorker(queue, TaskRegistry(), heartbeat_s=5, lease_s=10)
        with pytest.raises(ConfigError, match="tasks must be a TaskRegistry"):
            RedisWorker(queue, {}, lease_s=10)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="prefetch must be None or an int >= 0"):
            RedisWorker(queue, TaskRegistry(), prefetch=-1)
        # The queue's default socket timeout (5 s) does not fit a 9 s lease with 1 s heartbeats.
        with pytest.raises(ConfigError, match=r"socket_timeout_s \(5\) is too long for lease_s \(9\).*"
                           r"heartbeat_s \+ 2 \* socket_timeout_s <= lease_s.*socket_timeout_s=4\)"):
            RedisWorker(queue, TaskRegistry(), heartbeat_s=1, lease_s=9)
        RedisWorker(queue, TaskRegistry(), heartbeat_s=1, lease_s=11).stop()  # 1 + 2 * 5 fits
    finally:
        queue.close()


def test_a_worker_built_from_a_url_gets_a_socket_timeout_that_fits_its_lease(redis_url: str, prefix: str) -> None:
    worker = RedisWorker(redis_url, TaskRegistry(), prefix=prefix, lease_s=2.0, heartbeat_s=0.4)
    try:
        assert worker.queue.socket_timeout_s == pytest.approx(0.8) == socket_timeout_for(2.0, 0.4)
    finally:
        worker.stop()
    assert socket_timeout_for(30.0, 1.0) == 5.0


def test_a_task_can_see_its_fleet_wide_attempt(make_worker: MakeWorker) -> None:
    from engine.redis_worker import RedisJob, current_redis_job

    tasks = TaskRegistry()
    seen: list[RedisJob | None] = []

    @tasks.task("look")
    def look() -> None:
        seen.append(current_redis_job())
        if len(seen) < 3:
            raise ValueError("again")

    worker, queue = make_worker(tasks, max_retries=4)
    queue.submit_job("look", name="looker")
    worker.start()
    eventually(drained(queue), what="the job to succeed on its third attempt")
    assert seen == [RedisJob(1, n, 4, "looker", "look") for n in (1, 2, 3)]
    assert current_redis_job() is None


def _record_fetch_counts(queue: RedisQueue) -> list[int]:
    """Wrap ``queue.fetch`` to record how many jobs each call asked for."""
    counts: list[int] = []
    fetch = queue.fetch

    def recording(worker_id: str, count: int, **kwargs: Any) -> Any:
        counts.append(count)
        return fetch(worker_id, count, **kwargs)

    queue.fetch = recording  # type: ignore[method-assign]
    return counts


def test_the_default_prefetch_grows_for_short_jobs(make_worker: MakeWorker) -> None:
    tasks = TaskRegistry()
    tasks.register("noop", lambda i: None)
    worker, queue = make_worker(tasks)  # 2 threads; default (adaptive) prefetch
    counts = _record_fetch_counts(queue)
    queue.submit_many("noop", [(i,) for i in range(5000)])
    worker.start()
    eventually(drained(queue), what="5000 no-op jobs to finish")
    assert queue.counters()["succeeded"] == 5000
    # A fixed prefetch of 2 x 2 threads would never ask for more than 6 jobs at once.
    assert max(counts) > 18, counts
    assert max(counts) <= 2 + 2000


def test_the_default_prefetch_stays_small_for_slow_jobs(make_worker: MakeWorker) -> None:
    tasks = TaskRegistry()
    pause = threading.Event()
    tasks.register("slow", lambda i: pause.wait(0.05))
    worker, queue = make_worker(tasks)  # 2 threads; default (adaptive) prefetch
    counts = _record_fetch_counts(queue)
    queue.submit_many("slow", [(i,) for i in range(24)])
    worker.start()
    eventually(drained(queue), what="24 jobs of 50 ms to finish")
    # 50 ms jobs: the window holds about 2 of them, so the floor of 2 x 2 threads applies.
    assert max(counts) <= 2 + 4, counts
    assert queue.counters()["succeeded"] == 24


def test_outcomes_are_sent_in_batches_but_never_wait_for_a_long_job(make_worker: MakeWorker) -> None:
    tasks = TaskRegistry()
    gate = Gate()
    tasks.register("gated", gate.enter)
    tasks.register("noop", lambda i: None)
    worker, queue = make_worker(tasks)
    settled: list[int] = []
    settle = queue.settle

    def recording(outcomes: Any) -> Any:
        settled.append(len(outcomes))
        return settle(outcomes)

    queue.settle = recording  # type: ignore[method-assign]
    queue.submit("gated", 0)
    queue.submit_many("noop", [(i,) for i in range(3)])
    worker.start()
    gate.wait_entered(1)
    # The gated job runs on: the flusher lingers only briefly, then sends what it has.
    eventually(lambda: queue.counters().get("succeeded", 0) == 3, what="the 3 quick jobs' outcomes")
    assert worker.status().outbox == 0
    gate.opened.set()
    eventually(drained(queue), what="the gated job to finish")
    queue.submit_many("noop", [(i,) for i in range(2000)])
    eventually(drained(queue), what="2000 no-op jobs to finish")
    assert sum(settled) == 2004
    assert len(settled) < 2004 / 10, settled  # many outcomes per round trip, not one each


def test_a_graceful_stop_gives_back_a_large_adaptive_buffer_without_spending_attempts(
    make_worker: MakeWorker, raw: redis.Redis
) -> None:
    tasks = TaskRegistry()
    ran: list[int] = []
    lock = threading.Lock()
    pause = threading.Event()

    @tasks.task("short")
    def short(i: int) -> None:
        with lock:
            ran.append(i)
        pause.wait(0.0002)

    worker, queue = make_worker(tasks)  # 2 threads; default (adaptive) prefetch
    counts = _record_fetch_counts(queue)
    n = 20_000
    for start in range(0, n, 1000):
        queue.submit_many("short", [(i,) for i in range(start, start + 1000)])
    worker.start()
    eventually(lambda: max(counts, default=0) > 2 * 2 + 2, what="the buffer to grow past the fixed default")
    report = worker.stop()
    assert report.graceful and report.abandoned == 0 and report.unflushed == 0
    assert report.put_back > 0  # the fetched but unstarted part of the buffer
    snap = FleetView(queue).snapshot()
    assert snap.consistent and snap.in_flight == 0
    assert snap.counters.succeeded == len(ran) == len(set(ran))  # each ran once, and was counted
    assert snap.backlog == n - len(ran)  # the rest is ready again (not lost, not leased)...
    ready = [int(i) for i in raw.lrange(queue.base + "ready", 0, -1)]
    assert len(ready) == snap.backlog and not set(ready) & {i + 1 for i in ran}  # ids are 1-based
    attempts = {raw.hget(queue.base + f"job:{i}", "a") for i in ready}
    assert attempts <= {"0", None}  # ... and a job given back unstarted spent no attempt
