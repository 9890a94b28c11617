"""Concurrency review of engine/dispatcher.py, engine/jobs.py, engine/brokers/memory.py and
engine/clock.py: one deterministic reproduction per bug found.

Each test states the behaviour the engine documents (or that ``concurrent.futures`` guarantees).
All eleven bugs are fixed; the tests keep them fixed. Ordering comes from gates (events, a held
Condition, the fake clock), never from sleeps, and every wait is bounded. Even while a bug is
present, every test leaves no thread behind.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from engine import DispatcherClosed, JobState, JobTimeout, QueueFull, ShutdownReport, TaskRegistry
from engine.brokers.memory import MemoryBroker
from engine.jobs import JobHandle
from tests.engine.conftest import WAIT_S, eventually, failed_with

SHORT_S = 2.0  # how long a test waits for something a bug prevents


@pytest.fixture
def tasks(tasks: TaskRegistry) -> TaskRegistry:
    """The conftest's registry, plus the builtins these tests submit."""
    tasks.register("int", int)
    tasks.register("str", str)
    return tasks


# -- lost wake-up ----------------------------------------------------------------------------
@pytest.mark.both_brokers
def test_join_wakes_when_the_last_job_times_out_into_the_dlq(make_dispatcher, clock, gate):
    d = make_dispatcher(min_workers=1, max_workers=1)
    # FakeClock.advance() notifies every Condition ever passed to clock.wait(), _settled included;
    # RealClock never does. Take _settled off the fake clock's list so join() is woken only by the
    # engine's own notify calls, as in production. (Both dispatchers wait on a _settled Condition.)
    clock._waiters.discard(d._settled)  # type: ignore[attr-defined]
    handle = d.submit_job(gate.job, max_retries=0, timeout_s=1.0)
    gate.wait_entered(1)
    joined: list[bool] = []
    joiner = threading.Thread(target=lambda: joined.append(d.join()))  # no timeout, like most callers
    joiner.start()
    eventually(lambda: d._settled._waiters, what="join() to wait")  # type: ignore[attr-defined]
    clock.advance(1.0)
    failed_with(handle, JobTimeout, "ran past its timeout")
    assert d.snapshot().unfinished == 0
    # Nothing is queued, scheduled or running now; only the stuck thread (still in the gate)
    # would ever notify the waiting join(), when it finally returns.
    joiner.join(SHORT_S)
    returned_in_time = not joiner.is_alive()
    gate.open()
    joiner.join(WAIT_S)
    assert returned_in_time, "join() kept waiting although nothing was unfinished"
    assert joined == [True]


# -- a job handed to a worker that never starts -----------------------------------------------
def test_a_job_handed_to_a_worker_whose_thread_cannot_start_still_runs(make_dispatcher, gate, monkeypatch):
    d = make_dispatcher(min_workers=1, max_workers=2)
    first = d.submit(gate.job, "first")
    gate.wait_entered(1)
    waiting = d.submit(int, 7)  # in the backlog: worker 1 is busy

    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if "-worker-" in self.name:  # what CPython 3.12 raises for every new thread in atexit
            raise RuntimeError("can't create new thread at interpreter shutdown")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    d.set_limits(min_workers=2)  # adds worker 2, hands it `waiting`, then fails to start it
    monkeypatch.undo()

    gate.open()
    assert first.result(timeout=WAIT_S) == "first"
    assert waiting.result(timeout=SHORT_S) == 7


# -- user code calling back into the dispatcher -----------------------------------------------
@pytest.mark.both_brokers
def test_shutdown_from_a_done_callback_returns(make_dispatcher, gate, broker_kind):
    d = make_dispatcher(min_workers=1, max_workers=1)
    handle = d.submit(gate.job, 1)
    gate.wait_entered(1)
    returned = threading.Event()
    outcome: list[Any] = []

    def stop_when_done(_: Any) -> None:
        try:
            outcome.append(d.shutdown(wait=True, timeout_s=1.0))
        except BaseException as exc:  # a clear error (as ThreadPoolExecutor gives) is fine too
            outcome.append(exc)
        returned.set()

    handle.add_done_callback(stop_when_done)
    gate.open()
    came_back = returned.wait(SHORT_S)
    # unstick the worker so no thread outlives the test
    if not came_back and broker_kind == "memory":
        with d._lock:
            d._workers.clear()
        returned.wait(WAIT_S)
    assert came_back, "shutdown() called from a done-callback never returned"
    [report] = outcome
    assert isinstance(report, ShutdownReport) and report.completed, report  # on Redis too: callbacks run off the reader


def test_the_tick_failure_log_is_emitted_without_the_dispatcher_lock(make_dispatcher, clock):
    class FlakyBroker(MemoryBroker):
        armed = False

        def pop_due(self, now: float) -> list[JobHandle]:
            if self.armed:
                self.armed = False
                raise OSError("store hiccup")
            return super().pop_due(now)

    snapshot_done = threading.Event()
    handled = threading.Event()
    box: dict[str, Any] = {}

    class SnapshotOnError(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno < logging.ERROR:
                return
            # Ask for a snapshot from another thread, so a deadlock shows up as a timeout.
            helper = threading.Thread(target=lambda: (box["d"].snapshot(), snapshot_done.set()))
            helper.start()
            box["in_time"] = snapshot_done.wait(SHORT_S)
            handled.set()
            box["helper"] = helper

    logger = logging.getLogger("engine.review.tick")
    logger.propagate = False
    handler = SnapshotOnError()
    logger.addHandler(handler)
    try:
        broker = FlakyBroker()
        d = box["d"] = make_dispatcher(min_workers=1, max_workers=1, broker=broker, logger=logger)
        broker.armed = True
        clock.advance(0.0)  # wake the timer: its next tick fails
        assert handled.wait(WAIT_S)
        box["helper"].join(WAIT_S)
        assert box["in_time"], "a log handler ran while the timer held the dispatcher lock"
        assert d.snapshot().consistent
    finally:
        logger.removeHandler(handler)


# -- a done-callback holding up the next job --------------------------------------------------
@pytest.mark.both_brokers
def test_a_slow_done_callback_does_not_time_out_the_next_job(make_dispatcher, clock, gate, broker_kind):
    ticked = threading.Event()

    class TickSeen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno == logging.INFO and "successful=" in record.getMessage():
                ticked.set()

    logger = logging.getLogger("engine.review.callback")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = TickSeen()
    logger.addHandler(handler)
    in_callback, release_callback = threading.Event(), threading.Event()
    try:
        d = make_dispatcher(min_workers=1, max_workers=1, log_interval_s=1.0, logger=logger)
        first = d.submit(gate.job, "first")
        gate.wait_entered(1)
        first.add_done_callback(lambda _: (in_callback.set(), release_callback.wait(WAIT_S)))
        second = d.submit_job(str, ("second",), max_retries=0, timeout_s=1.0)
        gate.open()
        assert in_callback.wait(WAIT_S)  # the worker is in first's callback; second has not run
        if broker_kind == "redis":
            # Callbacks run on the reply reader here, not on a worker: second runs meanwhile. Let
            # it end (as the fleet counts it) so the fake clock's jump cannot land inside its run.
            eventually(lambda: d.snapshot().counters.succeeded == 2, what="second to run")
        clock.advance(1.0)  # the log line and second's timeout (if its clock already runs) fall due
        if broker_kind == "memory":  # on Redis the log line is the pool's own, not on this logger
            assert ticked.wait(WAIT_S)  # that timer tick is over
        release_callback.set()
        assert second.result(timeout=WAIT_S) == "second"
        assert second.attempts == 1
    finally:
        release_callback.set()
        logger.removeHandler(handler)


@pytest.mark.both_brokers
def test_no_job_waits_behind_a_done_callback_while_a_worker_is_idle(make_dispatcher, tasks):
    d = make_dispatcher(min_workers=2, max_workers=2)
    a_go, j1_go = threading.Event(), threading.Event()
    j1_started = threading.Event()
    in_callback, release_callback = threading.Event(), threading.Event()

    def run_j1() -> str:
        j1_started.set()
        assert j1_go.wait(WAIT_S)
        return "j1"

    tasks.register("a_go.wait", a_go.wait)
    tasks.register("run_j1", run_j1)
    try:
        a = d.submit(a_go.wait, WAIT_S)  # worker 1
        a.add_done_callback(lambda _: (in_callback.set(), release_callback.wait(WAIT_S)))
        a_go.set()
        assert in_callback.wait(WAIT_S)  # worker 1 is running a's callback, listed as idle
        j1 = d.submit(run_j1)  # round-robin: worker 2
        assert j1_started.wait(WAIT_S)
        j2 = d.submit(str, "j2")  # the only "idle" worker is 1, still in the callback
        j1_go.set()
        # worker 2 is free from here on; j1's result must not wait for a's callback either
        assert j1.result(timeout=SHORT_S) == "j1"
        assert j2.result(timeout=SHORT_S) == "j2"
    finally:
        release_callback.set()
        j1_go.set()


# -- pause during a graceful shutdown ---------------------------------------------------------
@pytest.mark.both_brokers
def test_pause_cannot_stall_a_graceful_shutdown(make_dispatcher, gate):
    d = make_dispatcher(min_workers=1, max_workers=1)
    running = d.submit(gate.job, "running")
    gate.wait_entered(1)
    queued = d.submit(int, 7)
    d.shutdown(wait=False)
    try:
        try:
            d.pause()  # ignoring it or refusing it are both fine
        except DispatcherClosed:
            pass
        gate.open()
        assert running.result(timeout=WAIT_S) == "running"
        assert queued.result(timeout=SHORT_S) == 7
    finally:
        d.resume()  # let the drain (and its thread) finish either way


# -- Executor.map semantics -------------------------------------------------------------------
def test_map_with_a_bounded_queue_blocks_like_executor_map(make_dispatcher):
    d = make_dispatcher(min_workers=1, max_workers=1, max_queue=2)
    try:
        results = list(d.map(abs, range(-5, 0)))
    except QueueFull as exc:
        pytest.fail(f"Executor.map must wait for room, not raise: {exc}")
    assert results == [5, 4, 3, 2, 1]


# -- the handle's two views of its state ------------------------------------------------------
@pytest.mark.both_brokers
def test_join_returning_true_means_every_handle_is_done(make_dispatcher, gate):
    d = make_dispatcher(min_workers=1, max_workers=1)
    handle = d.submit(gate.job, 5)
    gate.wait_entered(1)
    # Hold the handle's Condition, as concurrent.futures.wait() or result() does for a moment.
    with handle._condition:
        gate.open()
        eventually(lambda: handle.state is JobState.SUCCEEDED)  # recorded, but not yet delivered
        joined = d.join(timeout_s=0.2)
        done_when_joined = handle.done()
        state_when_joined = handle.state
    assert not joined or done_when_joined, (
        f"join() returned True with the handle in state {state_when_joined} but not done()"
    )
    assert d.join(timeout_s=WAIT_S) and handle.done()


@pytest.mark.both_brokers
def test_cancel_returning_true_means_cancelled(make_dispatcher, gate):
    d = make_dispatcher(min_workers=1, max_workers=1, force_wait_s=0)
    d.submit(gate.job, "running")
    gate.wait_entered(1)
    first, second = d.submit(int, 1), d.submit(int, 2)
    in_callback, release_callback = threading.Event(), threading.Event()
    first.add_done_callback(lambda _: (in_callback.set(), release_callback.wait(WAIT_S)))
    stopper = threading.Thread(target=d.shutdown, kwargs={"cancel_futures": True})
    stopper.start()
    try:
        assert in_callback.wait(WAIT_S)  # shutdown is completing the cancelled futures, one by one
        assert second.cancel() is True
        assert second.cancelled(), "cancel() returned True but the future is not cancelled"
    finally:
        release_callback.set()
        gate.open()
        stopper.join(WAIT_S)


# -- user __repr__ under the dispatcher lock --------------------------------------------------
def test_a_timed_out_jobs_argument_repr_may_read_the_dispatcher(make_dispatcher, clock, gate):
    d = make_dispatcher(min_workers=1, max_workers=1)
    probe: dict[str, bool] = {}
    helpers: list[threading.Thread] = []

    class Reporter:
        """Like passing the Dispatcher itself, whose repr takes a snapshot, but bounded."""

        def __repr__(self) -> str:
            done = threading.Event()
            helper = threading.Thread(target=lambda: (d.snapshot(), done.set()))
            helper.start()
            probe["in_time"] = done.wait(SHORT_S)
            helpers.append(helper)  # joined by the test: it needs the lock this caller may hold
            return "<Reporter>"

    handle = d.submit_job(lambda _reporter: gate.job(), args=(Reporter(),), max_retries=0, timeout_s=1.0)
    gate.wait_entered(1)
    clock.advance(1.0)
    assert isinstance(handle.exception(timeout=WAIT_S), JobTimeout)
    for helper in helpers:
        helper.join(WAIT_S)
    assert d.dlq_get(handle.id).args_repr == "(<Reporter>)"
    assert probe["in_time"], "the argument's __repr__ ran while the timer held the dispatcher lock"
