"""LiveSource over a real Dispatcher (on a FakeClock), alone and under the dashboard's keys."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from engine import (
    Dispatcher,
    EngineState,
    FakeClock,
    JobNotFound,
    Permanent,
    RetryPolicy,
)
from tui_dispatch.app import make_app
from tui_dispatch.source import FixedSource, LiveSource, Source
from tui_dispatch.widgets._text import LiveText

from .conftest import quiesce, wait_until

WAIT_S = 5.0


def eventually(predicate: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        pause.wait(0.002)


class Gate:
    """Jobs that block until the test opens the gate."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered = threading.Semaphore(0)

    def job(self, i: int) -> int:
        self.entered.release()
        if not self.opened.wait(WAIT_S * 2):
            raise RuntimeError("the gate never opened")
        return i

    def wait_entered(self, n: int) -> None:
        for _ in range(n):
            assert self.entered.acquire(timeout=WAIT_S), "a gated job never started"


def fail(i: int) -> None:
    raise Permanent(f"job {i} fails on purpose")


class TestWorkload:
    """A workload double: ``job`` for normal bursts, :func:`fail` for failing ones."""

    __test__ = False

    def __init__(self, job: Callable[[int], Any] = abs) -> None:
        self.job = job
        self.bursts: list[tuple[int, bool]] = []

    def submit_burst(self, dispatcher: Dispatcher, n: int, *, failing: bool = False) -> int:
        self.bursts.append((n, failing))
        fn = fail if failing else self.job
        name = "test.fail" if failing else "test.ok"
        return len(dispatcher.submit_many(fn, [(i,) for i in range(n)], name=name))


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.opened.set()


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    d = Dispatcher(
        min_workers=2,
        max_workers=4,
        autoscale=False,
        log_interval_s=0,
        retry=RetryPolicy(max_retries=0),
        force_wait_s=0.0,
        clock=FakeClock(max_real_wait_s=0.05),
        rng=random.Random(7),
    )
    yield d
    d.shutdown(wait=True, cancel_futures=True)


def test_both_sources_follow_the_protocol(dispatcher: Dispatcher) -> None:
    assert isinstance(LiveSource(dispatcher, TestWorkload()), Source)
    assert isinstance(FixedSource(dispatcher.snapshot()), Source)


def test_burst_submits_through_the_workload(dispatcher: Dispatcher) -> None:
    workload = TestWorkload()
    source = LiveSource(dispatcher, workload)
    assert source.burst(25) == 25
    assert dispatcher.join(timeout_s=WAIT_S)
    snap = source.snapshot()
    assert workload.bursts == [(25, False)]
    assert (snap.counters.submitted, snap.counters.succeeded) == (25, 25)
    assert snap.consistent


def test_dlq_commands(dispatcher: Dispatcher) -> None:
    source = LiveSource(dispatcher, TestWorkload())
    assert source.burst(6, failing=True) == 6
    assert dispatcher.join(timeout_s=WAIT_S)
    entries = source.dlq_list(0, 100)
    assert len(entries) == 6
    assert [e.job_id for e in source.dlq_list(2, 2)] == [e.job_id for e in entries[2:4]]
    first, second = entries[0], entries[1]
    assert source.dlq_get(first.job_id) == first
    assert "fails on purpose" in first.traceback

    source.dlq_delete(first.job_id)
    with pytest.raises(JobNotFound):
        source.dlq_get(first.job_id)
    source.dlq_requeue(second.job_id)  # it fails again and comes back
    assert dispatcher.join(timeout_s=WAIT_S)
    snap = source.snapshot()
    assert (snap.dlq_size, snap.counters.requeued) == (5, 1)

    assert source.dlq_requeue_all() == 5
    assert dispatcher.join(timeout_s=WAIT_S)
    assert source.snapshot().counters.requeued == 6
    assert source.dlq_purge() == 5
    assert source.snapshot().dlq_size == 0
    assert source.snapshot().consistent


def test_pause_resume_and_limits(dispatcher: Dispatcher) -> None:
    source = LiveSource(dispatcher, TestWorkload())
    source.pause()
    assert source.snapshot().state is EngineState.PAUSED
    source.burst(3)
    assert source.snapshot().backlog == 3
    source.resume()
    assert dispatcher.join(timeout_s=WAIT_S)
    assert source.snapshot().counters.succeeded == 3

    source.set_limits(max_workers=6)
    source.set_limits(min_workers=5)
    snap = source.snapshot()
    assert (snap.min_workers, snap.max_workers) == (5, 6)
    eventually(lambda: source.snapshot().workers_total == 5, "the pool to grow to min_workers")


def test_graceful_shutdown_returns_at_once_and_drains(dispatcher: Dispatcher, gate: Gate) -> None:
    source = LiveSource(dispatcher, TestWorkload(gate.job))
    source.burst(4)
    gate.wait_entered(2)  # two workers busy, two jobs queued
    source.shutdown(graceful=True)  # must not block while jobs run
    snap = source.snapshot()
    assert snap.state is EngineState.DRAINING
    assert snap.unfinished == 4
    gate.opened.set()
    eventually(lambda: source.snapshot().state is EngineState.STOPPED, "the drain to finish")
    source.close()
    snap = source.snapshot()
    assert (snap.counters.succeeded, snap.counters.cancelled) == (4, 0)
    assert source.report is not None and not source.report.forceful


def test_forceful_shutdown_cancels_what_waits(dispatcher: Dispatcher, gate: Gate) -> None:
    source = LiveSource(dispatcher, TestWorkload(gate.job))
    source.burst(5)
    gate.wait_entered(2)
    source.shutdown(graceful=False)
    eventually(lambda: source.snapshot().state is EngineState.STOPPED, "the forceful stop")
    gate.opened.set()
    source.close()
    snap = source.snapshot()
    assert snap.counters.cancelled == 5  # three queued ones cancelled, two running abandoned
    assert source.report is not None and source.report.forceful
    assert snap.consistent


def test_close_stops_a_running_engine(dispatcher: Dispatcher) -> None:
    source = LiveSource(dispatcher, TestWorkload())
    source.close()
    assert dispatcher.state is EngineState.STOPPED


# -- the dashboard over a live engine -------------------------------------------------------------
pilot_test = pytest.mark.anyio


@pilot_test
async def test_keys_drive_a_live_engine(dispatcher: Dispatcher) -> None:
    workload = TestWorkload()
    source = LiveSource(dispatcher, workload)
    app = make_app(source, small_burst=40, failing_burst=3, refresh_s=0.1)
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.press("b")
            await quiesce(pilot)
            assert dispatcher.join(timeout_s=WAIT_S)
            await pilot.press("f")
            await quiesce(pilot)
            assert dispatcher.join(timeout_s=WAIT_S)
            assert workload.bursts == [(40, False), (3, True)]
            await wait_until(pilot, lambda: app.snapshot is not None and app.snapshot.dlq_size == 3)
            assert app.dlq.total == 3
            assert app.snapshot is not None and app.snapshot.counters.succeeded == 40

            await pilot.press("p")
            await quiesce(pilot)
            assert dispatcher.paused
            await pilot.press("p")
            await wait_until(pilot, lambda: not dispatcher.paused)

            await pilot.press("plus")
            await quiesce(pilot)
            assert dispatcher.max_workers == 5

            app.dlq.table.focus()
            await pilot.press("r")
            await quiesce(pilot)
            assert dispatcher.join(timeout_s=WAIT_S)
            assert dispatcher.snapshot().counters.requeued == 1

            await pilot.press("s")
            await pilot.pause()
            await pilot.press("y")
            await wait_until(pilot, lambda: "STOPPED" in app.query_one("#state", LiveText).markup)
            assert dispatcher.state is EngineState.STOPPED
    finally:
        source.close()


def test_a_forceful_shutdown_escalates_a_drain(dispatcher: Dispatcher, gate: Gate) -> None:
    source = LiveSource(dispatcher, TestWorkload(gate.job))
    source.burst(6)
    gate.wait_entered(2)
    source.shutdown(graceful=True)
    assert source.snapshot().state is EngineState.DRAINING
    source.shutdown(graceful=False)  # the drain is stuck behind the gate: stop now
    eventually(lambda: source.snapshot().state is EngineState.STOPPED, "the escalated stop")
    gate.opened.set()
    source.close()
    snap = source.snapshot()
    assert snap.counters.cancelled == 6 and snap.consistent
    assert source.report is not None and source.report.forceful
