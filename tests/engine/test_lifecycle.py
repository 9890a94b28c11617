"""Shutdown (graceful, escalated, forceful, idempotent), per-attempt timeouts, autoscaling and
limits, on real threads with a fake clock."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading

import pytest

from engine import (
    AutoscalePolicy,
    DispatcherClosed,
    FakeClock,
    JobState,
    JobTimeout,
    RetryPolicy,
    TaskRegistry,
    WorkerState,
    cancel_token,
)
from tests.engine.conftest import WAIT_S, Gate, eventually, failed_with

NO_JITTER = RetryPolicy(max_retries=2, base_s=1.0, factor=2.0, jitter="none")


def fails_once_factory():
    seen: set[int] = set()
    lock = threading.Lock()

    def job(n: int) -> int:
        with lock:
            first = n not in seen
            seen.add(n)
        if first:
            raise ValueError(f"first try of {n}")
        return n

    return job


def heartbeats(clock: FakeClock, broker_kind: str) -> bool:
    """For use inside eventually, where moving fake time is harmless: on Redis, worker figures
    (threads, stuck threads, applied limits) come from heartbeats sent every ``heartbeat_s`` of
    the dispatcher's (fake) clock, so move it on; in memory they are live and time stays put."""
    if broker_kind == "redis":
        clock.advance(0.25)
    return True


def in_thread(fn):
    """Run ``fn`` in a thread; returns (thread, result list)."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    return t, out


# -- graceful ---------------------------------------------------------------------------------
@pytest.mark.both_brokers
def test_graceful_shutdown_finishes_running_queued_and_scheduled(
    make_dispatcher, gate: Gate, clock: FakeClock, tasks: TaskRegistry,
):
    d = make_dispatcher(min_workers=2, max_workers=2, retry=NO_JITTER)
    running = [d.submit(gate.job, n) for n in range(2)]
    gate.wait_entered(2)
    queued = [d.submit(abs, -n) for n in range(5)]
    job = fails_once_factory()
    tasks.register("fails_once", job)
    retrying = d.submit(job, 42)
    t, out = in_thread(lambda: d.shutdown(wait=True))
    eventually(lambda: d.state.value == "draining")
    with pytest.raises(DispatcherClosed):
        d.submit(abs, 1)
    gate.open()
    eventually(lambda: d.snapshot().scheduled == 1 and d.snapshot().backlog == 0)
    assert t.is_alive()  # still waiting for the retry
    clock.advance(1)
    t.join(WAIT_S)
    assert not t.is_alive()
    report = out[0]
    assert not report.forceful and not report.escalated and report.completed
    assert report.cancelled == () and report.abandoned == ()
    assert [h.result(timeout=0) for h in running + queued] == [0, 1, 0, 1, 2, 3, 4]
    assert retrying.result(timeout=0) == 42 and retrying.attempts == 2
    snap = d.snapshot()
    assert snap.state.value == "stopped" and snap.workers_total == 0 and snap.consistent


@pytest.mark.both_brokers
def test_graceful_shutdown_escalates_after_its_timeout(make_dispatcher, gate: Gate, clock: FakeClock, broker_kind):
    d = make_dispatcher(min_workers=1, max_workers=1, force_wait_s=2)
    running = d.submit(gate.job, "r")
    gate.wait_entered(1)
    queued = [d.submit(abs, -n) for n in range(3)]
    t, out = in_thread(lambda: d.shutdown(wait=True, timeout_s=10))
    eventually(lambda: d.state.value == "draining")
    clock.advance(9.9)
    assert not any(h.done() for h in queued)
    clock.advance(0.1)  # the graceful window closes: escalate
    eventually(lambda: all(h.cancelled() for h in queued), what="queued jobs cancelled")
    clock.advance(2)  # force_wait_s passes with the job still running: abandon it
    if broker_kind == "redis":  # the pool's force_wait_s starts when its stop begins, which the test cannot see
        eventually(lambda: heartbeats(clock, broker_kind) and not t.is_alive(), what="shutdown to finish")
    t.join(WAIT_S)
    assert not t.is_alive()
    report = out[0]
    assert report.escalated and report.forceful
    assert report.cancelled == tuple((h.id, h.name) for h in queued)
    assert report.abandoned == ((running.id, running.name),)
    snap = d.snapshot()
    assert snap.consistent
    if broker_kind == "memory":
        assert running.cancelled()
        assert snap.stuck_threads == 1
    else:  # the abandoned job goes back to Redis and ends there (documented); the pool that holds
        # the stuck thread has stopped, and with it the heartbeat that would report it
        with pytest.raises(DispatcherClosed):
            running.result(timeout=0)
    gate.open()  # the abandoned thread comes back; its result is discarded
    eventually(lambda: d.snapshot().stuck_threads == 0)
    assert d.snapshot().counters.succeeded == 0


@pytest.mark.both_brokers
def test_forceful_shutdown_cancels_queued_and_scheduled_and_waits_briefly(
    make_dispatcher, gate: Gate, clock: FakeClock, tasks: TaskRegistry, broker_kind,
):
    d = make_dispatcher(min_workers=2, max_workers=2, retry=NO_JITTER, force_wait_s=1)
    tokens: list = []

    def cooperative() -> str:
        token = cancel_token()
        tokens.append(token)
        gate.job()
        return "finished" if not token.cancelled() else "stopped early"

    tasks.register("cooperative", cooperative)
    fails_once = fails_once_factory()
    tasks.register("fails_once", fails_once)
    coop = d.submit(cooperative)
    stubborn = d.submit(gate.job, "stubborn")
    gate.wait_entered(2)
    queued = [d.submit(abs, -n) for n in range(4)]
    retry = d.submit(fails_once, 1)
    # let the retry be scheduled: it needs a free worker, so release nothing; it sits in the backlog
    t, out = in_thread(lambda: d.shutdown(wait=True, cancel_futures=True))
    eventually(lambda: all(h.cancelled() for h in queued) and retry.cancelled())
    if broker_kind == "redis":  # the queue is cancelled first, then the pool stops and tells its running jobs
        eventually(lambda: tokens and tokens[0].cancelled(), what="the running job told to stop")
    assert tokens and tokens[0].cancelled() and tokens[0].reason == "forceful shutdown"
    clock.advance(1)
    if broker_kind == "redis":  # the pool's force_wait_s starts when its stop begins, which the test cannot see
        eventually(lambda: heartbeats(clock, broker_kind) and not t.is_alive(), what="shutdown to finish")
    t.join(WAIT_S)
    report = out[0]
    assert report.forceful and not report.escalated
    assert {job_id for job_id, _ in report.cancelled} == {h.id for h in queued} | {retry.id}
    assert {job_id for job_id, _ in report.abandoned} == {coop.id, stubborn.id}
    for h in [*queued, retry]:
        with pytest.raises(cf.CancelledError):
            h.result(timeout=0)
    for h in [coop, stubborn]:
        # in memory an abandoned job is cancelled; on Redis it goes back to the queue and ends
        # there, so its handle raises DispatcherClosed (documented in RedisDispatcher.shutdown)
        with pytest.raises(cf.CancelledError if broker_kind == "memory" else DispatcherClosed):
            h.result(timeout=0)
    assert d.snapshot().consistent
    gate.open()
    eventually(lambda: d.snapshot().stuck_threads == 0)


@pytest.mark.both_brokers
def test_shutdown_is_idempotent(make_dispatcher):
    d = make_dispatcher()
    d.submit(abs, 1).result(timeout=WAIT_S)
    first = d.shutdown()
    assert d.shutdown() is first
    assert d.shutdown(cancel_futures=True) is first


@pytest.mark.both_brokers
def test_shutdown_without_waiting(make_dispatcher, gate: Gate, clock: FakeClock):
    d = make_dispatcher(min_workers=1, max_workers=1)
    h = d.submit(gate.job, "late")
    gate.wait_entered(1)
    report = d.shutdown(wait=False)
    assert not report.completed
    with pytest.raises(DispatcherClosed):
        d.submit(abs, 1)
    gate.open()
    assert h.result(timeout=WAIT_S) == "late"
    eventually(lambda: d.state.value == "stopped")


# -- timeouts ---------------------------------------------------------------------------------
@pytest.mark.both_brokers
def test_a_job_past_its_timeout_is_retried_and_its_worker_replaced(
    make_dispatcher, gate: Gate, clock: FakeClock, tasks: TaskRegistry, broker_kind,
):
    d = make_dispatcher(min_workers=2, max_workers=2, retry=RetryPolicy(max_retries=1, base_s=1, jitter="none"))
    calls = []
    tokens = []

    def slow_then_fast() -> str:
        calls.append(1)
        if len(calls) == 1:
            tokens.append(cancel_token())
            gate.job()
            return "too late"
        return "in time"

    tasks.register("slow_then_fast", slow_then_fast)
    handle = d.submit_job(slow_then_fast, timeout_s=3)
    gate.wait_entered(1)
    clock.advance(2.999)
    assert d.snapshot().counters.timed_out == 0
    clock.advance(0.001)
    snap = eventually(lambda: (s := d.snapshot()).counters.timed_out == 1 and s)
    if broker_kind == "memory":  # on Redis, worker rows come from the next heartbeat: checked below
        assert snap.stuck_threads == 1
        assert snap.workers_total == 2  # a fresh worker replaced the stuck one
    assert snap.scheduled == 1 and tokens[0].cancelled()
    clock.advance(1)
    assert handle.result(timeout=WAIT_S) == "in time"
    # still stuck, and still replaced (on Redis, as the heartbeat sent at this time reports)
    eventually(lambda: (s := d.snapshot()).stuck_threads == 1 and s.workers_total == 2, what="stuck and replaced")
    gate.open()  # the stuck thread returns "too late", which is discarded
    eventually(lambda: heartbeats(clock, broker_kind) and d.snapshot().stuck_threads == 0)
    snap = d.snapshot()
    assert handle.result() == "in time" and snap.counters.succeeded == 1 and snap.consistent


@pytest.mark.both_brokers
def test_a_timeout_on_the_last_attempt_dead_letters_with_the_stuck_stack(
    make_dispatcher, gate: Gate, clock: FakeClock, caplog, broker_kind,
):
    d = make_dispatcher(min_workers=1, max_workers=1, retry=RetryPolicy(max_retries=0), default_timeout_s=5)
    with caplog.at_level(logging.WARNING, logger="engine"):
        handle = d.submit(gate.job, "x")
        gate.wait_entered(1)
        clock.advance(5)
        failed_with(handle, JobTimeout, "ran past its timeout of 5s")
        eventually(lambda: any("timed out" in r.getMessage() for r in caplog.records))
    entry = d.dlq_get(handle.id)
    assert entry.exc_type == "engine.errors.JobTimeout"
    assert "ran past its timeout of 5s" in entry.exc_message
    assert "Stack of the abandoned thread" in entry.traceback and "in job" in entry.traceback
    assert d.submit(abs, -4).result(timeout=WAIT_S) == 4  # capacity held
    gate.open()
    eventually(lambda: heartbeats(clock, broker_kind) and d.snapshot().stuck_threads == 0)


# -- autoscaling -----------------------------------------------------------------------------------
def ticking(clock: FakeClock) -> bool:
    """Move fake time on by a quarter of an autoscale interval (for use inside eventually)."""
    clock.advance(0.25)
    return True


SCALING = AutoscalePolicy(
    interval_s=1.0, up_backlog_per_worker=2.0, up_sustain_s=1.0, up_cooldown_s=1.0,
    down_utilisation=0.3, down_sustain_s=5.0, down_cooldown_s=5.0,
)


@pytest.mark.both_brokers
def test_scales_up_with_backlog_and_down_when_idle_never_killing_busy(
    make_dispatcher, gate: Gate, clock: FakeClock, caplog, broker_kind,
):
    d = make_dispatcher(min_workers=1, max_workers=4, autoscale=SCALING)
    with caplog.at_level(logging.INFO, logger="engine"):
        handles = [d.submit(gate.job, n) for n in range(12)]
        gate.wait_entered(1)
        # The policy's exact timing is unit-tested; here time moves until the pool reacts.
        snap = eventually(lambda: ticking(clock) and (s := d.snapshot()).workers_total > 1 and s)
        assert snap.counters.scale_ups == snap.workers_total - 1
        assert "backlog" in snap.scale_events[-1].reason
        eventually(lambda: ticking(clock) and d.snapshot().workers_total == 4, what="pool grows to max_workers")
        gate.wait_entered(4)
        if broker_kind == "memory":
            assert d.snapshot().workers_busy == 4
        else:  # on Redis, busy threads are reported by the next heartbeat
            eventually(lambda: ticking(clock) and d.snapshot().workers_busy == 4, what="4 busy threads reported")
        gate.open()
        assert [h.result(timeout=WAIT_S) for h in handles] == list(range(12))
        eventually(lambda: ticking(clock) and d.snapshot().workers_total == 1, what="pool shrinks to min_workers")
        eventually(lambda: any("scaled down" in r.getMessage() for r in caplog.records))
    snap = d.snapshot()
    assert snap.counters.scale_downs == 3
    assert any("scaled up" in r.getMessage() for r in caplog.records)


@pytest.mark.both_brokers
def test_lowering_max_workers_retires_busy_workers_after_their_job(
    make_dispatcher, gate: Gate, clock: FakeClock, broker_kind,
):
    d = make_dispatcher(min_workers=3, max_workers=3)
    handles = [d.submit(gate.job, n) for n in range(3)]
    gate.wait_entered(3)
    d.set_limits(min_workers=1, max_workers=1)
    if broker_kind == "memory":  # in memory the limits apply at once
        snap = d.snapshot()
    else:  # on Redis each process applies them with its next heartbeat, which then reports them
        snap = eventually(lambda: heartbeats(clock, broker_kind) and (s := d.snapshot()).workers_retiring == 2 and s)
    assert snap.max_workers == 1 and snap.workers_retiring == 2 and snap.workers_total == 3
    assert sorted(w.state for w in snap.workers) == [WorkerState.BUSY, WorkerState.RETIRING, WorkerState.RETIRING]
    assert all(not h.done() for h in handles)  # nobody was killed
    gate.open()
    assert [h.result(timeout=WAIT_S) for h in handles] == [0, 1, 2]
    eventually(lambda: heartbeats(clock, broker_kind) and d.snapshot().workers_total == 1)
    d.set_limits(max_workers=5, min_workers=3)
    eventually(lambda: heartbeats(clock, broker_kind) and d.snapshot().workers_total == 3)
    # on Redis a scale event's reason names its process ("host:pid: ...")
    assert d.snapshot().scale_events[-1].reason.endswith("min_workers raised to 3")


@pytest.mark.both_brokers
def test_cancel_state_and_handles_after_forceful_shutdown_add_up(make_dispatcher, clock: FakeClock):
    d = make_dispatcher(min_workers=2, max_workers=2)
    d.pause()
    handles = [d.submit(abs, -n) for n in range(100)]
    report = d.shutdown(cancel_futures=True)
    assert len(report.cancelled) == 100
    assert all(h.state is JobState.CANCELLED for h in handles)
    assert d.snapshot().counters.cancelled == 100 and d.snapshot().consistent
