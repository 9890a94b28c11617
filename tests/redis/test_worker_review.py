"""Review of the Redis worker's throughput changes (adaptive prefetch, which then held up to
2,000 jobs, and the lingering flusher): each test here failed on the reviewed code because of the
bug its docstring describes, and checks the behaviour that replaced it."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import pytest

from engine import FakeClock, TaskRegistry
from engine.brokers.redis import RedisQueue
from engine.fleet import FleetView
from engine.redis_worker import RedisWorker, socket_timeout_for
from tests.redis.conftest import WAIT_S, MakeWorker, eventually

WALL = 1_700_000_000.0

@pytest.fixture
def make_worker(make_worker: MakeWorker) -> MakeWorker:
    """The conftest's workers (short intervals, the default adaptive prefetch), jobs with no retries."""
    return functools.partial(make_worker, max_retries=0)


def _drained(queue: RedisQueue, finished: int) -> Callable[[], bool]:
    def check() -> bool:
        snap = FleetView(queue).snapshot()
        c = snap.counters
        return c.succeeded + c.dead_lettered >= finished and snap.unfinished == 0
    return check


class SlowJobs:
    """Slow jobs: each records which thread ran it, then blocks until the gate opens."""

    def __init__(self, tasks: TaskRegistry) -> None:
        self.tasks = tasks
        self.gate = threading.Event()
        self.lock = threading.Condition()
        self.ran_by: dict[int, str] = {}

        @tasks.task("slow")
        def slow(i: int) -> None:
            with self.lock:
                self.ran_by[i] = threading.current_thread().name
                self.lock.notify_all()
            self.gate.wait(WAIT_S)

    def started(self, n: int) -> None:
        with self.lock:
            if not self.lock.wait_for(lambda: len(self.ran_by) >= n, WAIT_S):
                pytest.fail(f"only {len(self.ran_by)} of {n} slow jobs started")

    def by(self, prefix: str) -> list[int]:
        with self.lock:
            return sorted(i for i, name in self.ran_by.items() if name.startswith(prefix))


def _slow_jobs_after_a_burst(
    make_worker: MakeWorker, burst: str = "no-op"
) -> tuple[FakeClock, SlowJobs, RedisWorker, RedisQueue]:
    """Worker A on a fake clock, its rate spiked by a burst of quick jobs; "slow" jobs registered."""
    clock = FakeClock(start=100.0, wall_start=WALL, max_real_wait_s=0.05)
    tasks = TaskRegistry()

    @tasks.task("fast")
    def fast() -> None:
        pass

    slow = SlowJobs(tasks)
    a, queue = make_worker(tasks, clock=clock, name="A")
    _spike_the_rate(burst, a, queue, clock)
    return clock, slow, a, queue


def _spike_the_rate(kind: str, worker: RedisWorker, queue: RedisQueue, clock: FakeClock) -> None:
    """200 jobs that end at once (no-ops, or jobs dead-lettered for an unknown task), then 10 ms
    of fake time: the worker's next rate sample says 20,000 jobs/s, i.e. a buffer of 1000."""
    if kind == "no-op":
        queue.submit_many("fast", [() for _ in range(200)])
    else:  # not run at all: dead-lettered when fetched, yet counted as completions
        queue.submit_many("not-registered-here", [() for _ in range(200)])
    worker.start()
    eventually(_drained(queue, 200), what="the 200 quick jobs to end")
    clock.advance(0.01)


@pytest.mark.parametrize("burst", ["no-op", "unknown-task"])
def test_after_a_burst_of_quick_jobs_one_process_does_not_hoard_the_slow_jobs_behind_it(
    make_worker: MakeWorker, burst: str
) -> None:
    """Adaptive prefetch sizes the buffer from the *past* completion rate ("up at once, down
    gently"). A burst of quick jobs (or of jobs dead-lettered without running: an unknown task)
    made the next fetch take up to 2,000 jobs, whatever they were: slow jobs queued behind the
    burst all sat in one process's buffer, behind its 2 threads, while a second process found the
    queue empty and idled. The buffer is now capped (64), so the second process gets some."""
    clock, slow, a, queue = _slow_jobs_after_a_burst(make_worker, burst)
    b, _ = make_worker(slow.tasks, clock=clock, name="B")
    try:
        queue.submit_many("slow", [(i,) for i in range(100)])
        slow.started(2)  # A's two threads are busy with slow jobs
        b.start()
        # B is idle and 98 slow jobs are waiting: it must get some of them.
        eventually(lambda: slow.by("B"), timeout_s=3.0,
                   what=f"idle worker B to run any slow job (A holds {a.status().leased} leases)")
    finally:
        slow.gate.set()


def test_a_pause_stops_the_buffer_from_starting(make_worker: MakeWorker) -> None:
    """The fleet's pause ("no worker fetches; running jobs finish") was seen only by the fetch:
    buffered jobs kept starting, after a burst up to 2,000 of them. Now the worker gives its
    buffer back within a heartbeat of the pause."""
    clock, slow, a, queue = _slow_jobs_after_a_burst(make_worker)
    try:
        queue.submit_many("slow", [(i,) for i in range(60)])
        slow.started(2)
        queue.set_paused(True)
        eventually(lambda: FleetView(queue).snapshot().state.value == "paused", what="the pause")
        with slow.lock:
            before = len(slow.ran_by)
        clock.advance(1.0)  # the worker learns of the pause within a heartbeat: its buffer goes back
        eventually(lambda: a.status().leased <= 2, what="A to give its buffer back")
        slow.gate.set()
        # Jobs drain: those started after the pause are the buffered ones.
        eventually(lambda: a.status().leased == 0 or len(slow.ran_by) >= 60, what="A's buffer to drain")
        eventually(lambda: a.status().outbox == 0, what="A's outcomes to be flushed")
        started_after_pause = len(slow.ran_by) - before
        assert started_after_pause <= 2 * 2, (
            f"{started_after_pause} jobs started after the fleet was paused (buffer of the old default: 4)")
    finally:
        slow.gate.set()
        queue.set_paused(False)


def test_buffered_jobs_whose_lease_was_lost_are_not_run(
    make_worker: MakeWorker, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The heartbeat learns which leases this process no longer holds (they expired while it
    could not reach Redis, or it was suspended, and other workers took the jobs). It logged
    "they run again elsewhere" and still ran every one that was only buffered; now those are
    dropped before they start."""
    clock, slow, a, queue = _slow_jobs_after_a_burst(make_worker)
    try:
        ids = queue.submit_many("slow", [(i,) for i in range(40)])
        slow.started(2)
        eventually(lambda: a.status().leased == 40, what="A to hold all 40 slow jobs")
        with slow.lock:
            running = set(slow.ran_by)
        # Another worker took the buffered jobs over (what lease_lost + a fetch elsewhere do).
        for i, job_id in enumerate(ids):
            if i not in running:
                raw.hset(f"{queue.base}job:{job_id}", "l", "999999999")
        caplog.set_level("WARNING", logger="engine.redis")
        clock.advance(0.2)  # the next heartbeat
        eventually(lambda: "lost the lease of 38 jobs" in caplog.text, what="A's heartbeat to see 38 leases lost")
        slow.gate.set()
        eventually(lambda: a.status().leased == 0, what="A to finish")
        with slow.lock:
            ran_again = sorted(set(slow.ran_by) - running)
        assert ran_again == [], f"A ran {len(ran_again)} jobs whose lease it knew it had lost"
    finally:
        slow.gate.set()


def test_a_large_result_does_not_wedge_the_flusher(private_redis: Any) -> None:
    """Every job's return value travels in the settle batch (encode_result, sent even when nobody
    waits for a reply). Unbounded, a batch that Redis refused (here: bigger than
    proto-max-bulk-len, 512 MB by default, lowered to 1 MB to keep the test small) was retried
    unchanged for ever, and the outcomes behind it were never recorded. A result over 1 MiB is
    now reported as unencodable instead."""
    import redis as redis_py

    admin = redis_py.Redis.from_url(private_redis.url)
    admin.config_set("proto-max-bulk-len", 1024 * 1024)
    admin.close()
    tasks = TaskRegistry()

    @tasks.task("big")
    def big() -> str:
        return "x" * (1024 * 1024 + 1)

    @tasks.task("small")
    def small() -> int:
        return 1

    queue = RedisQueue(private_redis.url, prefix="review", max_retries=0,
                       socket_timeout_s=socket_timeout_for(5.0, 0.1))
    worker = RedisWorker(queue, tasks, min_workers=1, max_workers=1, autoscale=False, lease_s=5.0,
                         heartbeat_s=0.1, poll_s=0.1, log_interval_s=0, stop_redis_timeout_s=0.5)
    try:
        queue.submit("big")
        queue.submit_many("small", [() for _ in range(5)])
        worker.start()
        # Whatever becomes of the big result (refused, truncated, reported as unencodable),
        # the other five jobs must end.
        eventually(lambda: queue.counters().get("succeeded", 0) >= 5, timeout_s=3.0,
                   what="the small jobs to be recorded (the flusher resends the refused batch for ever)")
    finally:
        worker.stop(graceful=False, timeout_s=2)
        queue.close()
