"""Dispatcher(broker=RedisBroker(url)): what is particular to a dispatcher on a shared queue.

The behaviour it shares with the in-memory dispatcher runs on both brokers in
tests/engine (the tests marked ``both_brokers``). Here: producers and workers in separate
dispatchers, results and errors crossing as JSON, cancelling in Redis, shutdown with jobs
elsewhere in the fleet, replies that race their submit, and bad input.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from engine import (
    BrokerUnavailable,
    ConfigError,
    Dispatcher,
    DispatcherClosed,
    JobState,
    RemoteJobError,
    RetryPolicy,
    TaskRegistry,
    UnknownTask,
)
from engine.brokers.redis import RedisBroker, RedisQueue
from engine.redis_worker import RedisWorker
from tests.redis.conftest import WAIT_S, MakeDispatcher, RedisServer, eventually

tasks = TaskRegistry()


@tasks.task("add")
def add(a: int, b: int) -> int:
    return a + b


@tasks.task("echo")
def echo(value: Any) -> Any:
    return value


@tasks.task("make_set")
def make_set() -> set[int]:
    return {1, 2}


@tasks.task("fail")
def fail(message: str) -> None:
    raise ValueError(message)


_gate = threading.Event()
_ran: list[str] = []


@tasks.task("gated")
def gated(label: str) -> str:
    _ran.append(label)
    if not _gate.wait(WAIT_S):
        raise RuntimeError("gate never opened")
    return label


@tasks.task("record")
def record(label: str) -> str:
    _ran.append(label)
    return label


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    _gate.clear()
    _ran.clear()
    yield
    _gate.set()  # never leave a worker blocked


@pytest.fixture
def make_dispatcher(make_dispatcher: MakeDispatcher) -> Iterator[MakeDispatcher]:
    """The conftest's dispatchers (this module's tasks), with the gate opened before they stop."""
    yield make_dispatcher
    _gate.set()


@pytest.fixture
def worker(redis_url: str, prefix: str) -> Iterator[Callable[..., RedisWorker]]:
    """Another member of the fleet: a RedisWorker on the same queue (as in another process)."""
    made: list[RedisWorker] = []

    def make(**options: Any) -> RedisWorker:
        options.setdefault("min_workers", 2)
        options.setdefault("max_workers", 2)
        options.setdefault("autoscale", False)
        w = RedisWorker(RedisQueue(redis_url, prefix=prefix), tasks, heartbeat_s=0.1, poll_s=0.05,
                        log_interval_s=0, **options).start()
        made.append(w)
        return w

    yield make
    _gate.set()
    for w in made:
        w.stop(graceful=False)
        w.queue.close()


# -- one API, two brokers -----------------------------------------------------------------------
def test_a_redis_broker_selects_the_redis_dispatcher_with_the_same_api(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(min_workers=2, max_workers=2)
    assert isinstance(d, Dispatcher) and isinstance(d, cf.Executor)
    handle = d.submit(add, 2, 3)
    assert isinstance(handle, cf.Future) and handle.result(timeout=WAIT_S) == 5
    assert handle.state is JobState.SUCCEEDED and handle.attempts == 1 and handle.task == "add"
    assert [h.result(timeout=WAIT_S) for h in d.submit_many(add, [(n, n) for n in range(100)])] == [
        2 * n for n in range(100)]
    assert d.submit_task("add", 1, b=1).result(timeout=WAIT_S) == 2
    assert list(d.map(add, [1, 2], [10, 20])) == [11, 22]
    assert d.join(WAIT_S)
    c = d.snapshot().counters
    assert (c.submitted, c.succeeded) == (104, 104)


def test_results_and_failures_cross_as_json(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(retry=RetryPolicy(max_retries=1, base_s=0.0))
    value = {"a": [1, 2.5, None, True], "b": {"c": "d"}}
    assert d.submit(echo, value).result(timeout=WAIT_S) == value
    assert d.submit(echo, (1, 2)).result(timeout=WAIT_S) == [1, 2]  # tuples travel as lists

    unencodable = d.submit(make_set)
    with pytest.raises(TypeError, match=r"succeeded, but the result \(set\) is not JSON-serialisable"):
        unencodable.result(timeout=WAIT_S)
    assert unencodable.state is JobState.SUCCEEDED

    failing = d.submit(fail, "disk full")
    exc = failing.exception(timeout=WAIT_S)
    assert isinstance(exc, RemoteJobError)
    assert (exc.job_id, exc.exc_type, exc.exc_message, exc.attempts) == (failing.id, "ValueError", "disk full", 2)
    assert exc.reason == "retries exhausted (1 retries)"
    assert "in fail" in exc.remote_traceback and "ValueError: disk full" in exc.remote_traceback
    assert str(exc) == f"job {failing.id} failed after 2 attempts: ValueError: disk full (retries exhausted (1 retries))"
    assert failing.state is JobState.DEAD_LETTERED
    assert d.dlq_get(failing.id).exc_message == "disk full"


def test_a_producer_and_a_worker_elsewhere_share_one_queue(
    make_dispatcher: MakeDispatcher, worker: Callable[..., RedisWorker]
) -> None:
    producer = make_dispatcher(min_workers=0, max_workers=0)
    assert (producer.min_workers, producer.max_workers) == (0, 0)
    handles = producer.submit_many(add, [(n, 1) for n in range(50)])
    assert producer.snapshot().backlog == 50  # nobody runs jobs yet
    other = worker()
    assert [h.result(timeout=WAIT_S) for h in handles] == [n + 1 for n in range(50)]
    snap = eventually(lambda: (s := producer.snapshot()).workers_total == 2 and s, what="the worker's threads")
    assert {w.process for w in snap.workers} == {other.process}
    assert snap.counters.succeeded == 50


def test_two_dispatchers_each_get_only_their_own_outcomes(make_dispatcher: MakeDispatcher) -> None:
    a = make_dispatcher(min_workers=1, max_workers=1)
    b = make_dispatcher(min_workers=1, max_workers=1)
    ha = a.submit_many(echo, [(f"a{n}",) for n in range(30)])
    hb = b.submit_many(echo, [(f"b{n}",) for n in range(30)])
    assert [h.result(timeout=WAIT_S) for h in ha] == [f"a{n}" for n in range(30)]
    assert [h.result(timeout=WAIT_S) for h in hb] == [f"b{n}" for n in range(30)]
    assert a.join(WAIT_S) and b.join(WAIT_S)
    assert not a._early and not b._early  # no reply went to the wrong dispatcher


# -- cancelling, in Redis -------------------------------------------------------------------------
def test_cancel_removes_a_waiting_job_from_redis(
    make_dispatcher: MakeDispatcher, worker: Callable[..., RedisWorker], raw: redis.Redis, prefix: str
) -> None:
    producer = make_dispatcher(min_workers=0, max_workers=0)
    first, second, third = (producer.submit(record, label) for label in ("first", "second", "third"))
    assert second.cancel() is True and second.cancel() is True
    assert second.cancelled() and second.state is JobState.CANCELLED
    with pytest.raises(cf.CancelledError):
        second.result(timeout=0)
    assert not raw.exists(f"{prefix}:{{default}}:job:{second.id}")
    snap = producer.snapshot()
    assert snap.backlog == 2 and snap.counters.cancelled == 1 and snap.consistent
    worker()
    assert (first.result(timeout=WAIT_S), third.result(timeout=WAIT_S)) == ("first", "third")
    assert sorted(_ran) == ["first", "third"]


def test_a_job_a_worker_has_taken_cannot_be_cancelled(
    make_dispatcher: MakeDispatcher, worker: Callable[..., RedisWorker]
) -> None:
    producer = make_dispatcher(min_workers=0, max_workers=0)
    worker(min_workers=1, max_workers=1)
    running = producer.submit(gated, "r")
    eventually(lambda: _ran == ["r"], what="the job to start")
    assert running.cancel() is False and not running.done()
    _gate.set()
    assert running.result(timeout=WAIT_S) == "r"
    assert running.cancel() is False


# -- shutdown with jobs elsewhere in the fleet ----------------------------------------------------
def test_forceful_shutdown_cancels_waiting_jobs_and_lists_those_left_running_elsewhere(
    make_dispatcher: MakeDispatcher, worker: Callable[..., RedisWorker], raw: redis.Redis, prefix: str
) -> None:
    producer = make_dispatcher(min_workers=0, max_workers=0)
    other = worker(min_workers=1, max_workers=1, prefetch=0)
    running = producer.submit(gated, "running")
    eventually(lambda: _ran == ["running"], what="the job to start")
    waiting = producer.submit_many(record, [(f"w{n}",) for n in range(5)])
    report = producer.shutdown(cancel_futures=True)
    assert report.completed and report.forceful and not report.escalated
    assert sorted(job_id for job_id, _ in report.cancelled) == [h.id for h in waiting]
    assert report.abandoned == ((running.id, "gated"),)
    assert all(h.cancelled() for h in waiting)
    with pytest.raises(DispatcherClosed, match=f"job {running.id} .*still queued or running in Redis"):
        running.result(timeout=0)
    with pytest.raises(DispatcherClosed):
        producer.submit(add, 1, 1)
    assert producer.shutdown() is report  # idempotent
    _gate.set()  # the abandoned job still ends, in the fleet
    eventually(lambda: other.status().settled == 1, what="the worker to settle the running job")
    assert not raw.exists(producer._reply_to)  # the reply list went with the dispatcher
    assert _ran == ["running"]


def test_graceful_shutdown_waits_for_its_jobs_then_escalates_after_its_timeout(
    make_dispatcher: MakeDispatcher,
) -> None:
    producer = make_dispatcher(min_workers=0, max_workers=0)  # nobody will run these
    handles = producer.submit_many(add, [(1, 1)] * 3)
    report = producer.shutdown(timeout_s=0.05)
    assert report.escalated and report.forceful
    assert [job_id for job_id, _ in report.cancelled] == [h.id for h in handles]
    assert all(h.cancelled() for h in handles) and report.abandoned == ()


def test_graceful_shutdown_lets_its_own_threads_finish_the_jobs(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(min_workers=2, max_workers=2)
    handles = d.submit_many(add, [(n, n) for n in range(200)])
    report = d.shutdown()
    assert report.completed and not report.forceful and report.cancelled == () and report.abandoned == ()
    assert [h.result(timeout=0) for h in handles] == [2 * n for n in range(200)]


# -- the DLQ, with handles --------------------------------------------------------------------
def test_requeued_dead_letters_report_to_the_dispatcher_that_requeued_them(
    make_dispatcher: MakeDispatcher, worker: Callable[..., RedisWorker]
) -> None:
    a = make_dispatcher(min_workers=0, max_workers=0, retry=RetryPolicy(max_retries=0))
    other = worker()
    dead = [a.submit(fail, f"e{n}") for n in range(3)]
    for h in dead:
        assert isinstance(h.exception(timeout=WAIT_S), RemoteJobError)
    b = make_dispatcher(min_workers=0, max_workers=0)
    again = b.dlq_requeue(dead[0].id)
    assert again.id == dead[0].id and again.name == "fail" and again.task == "fail"
    assert isinstance(again.exception(timeout=WAIT_S), RemoteJobError)
    rest = b.dlq_requeue_all()
    assert sorted(h.id for h in rest) == sorted(h.id for h in dead)
    assert all(isinstance(h.exception(timeout=WAIT_S), RemoteJobError) for h in rest)
    assert b.join(WAIT_S) and a.join(WAIT_S)
    assert not a._early  # the requeued jobs' outcomes went to b, not to a
    eventually(lambda: other.status().settled == 7, what="the worker to count its 7 outcomes")


# -- replies --------------------------------------------------------------------------------------
def test_a_reply_that_arrives_before_its_submit_returns_is_kept(
    make_dispatcher: MakeDispatcher, raw: redis.Redis, prefix: str
) -> None:
    producer = make_dispatcher(min_workers=0, max_workers=0)
    next_id = int(raw.get(f"{prefix}:{{default}}:seq") or 0) + 1
    raw.rpush(producer._reply_to, json.dumps([next_id, 0, "ok", 1, 42]))  # [id, life, kind, attempts, body]
    eventually(lambda: (next_id, 0) in producer._early, what="the early reply to be read")
    handle = producer.submit(add, 40, 2)
    assert handle.id == next_id and handle.done() and handle.result(timeout=0) == 42


def test_malformed_replies_are_logged_and_skipped(
    make_dispatcher: MakeDispatcher, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    d = make_dispatcher(min_workers=1, max_workers=1)
    with caplog.at_level(logging.WARNING, logger="engine.redis"):
        raw.rpush(d._reply_to, "not json", "[]", '{"a": 1}', b"\xff\xfe")
        assert d.submit(add, 1, 2).result(timeout=WAIT_S) == 3  # the reader lives on
    skipped = [r for r in caplog.records if "malformed reply" in r.getMessage()]
    assert len(skipped) == 4


def test_handles_wait_through_a_redis_restart(private_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    broker = RedisBroker(private_redis.url, prefix="restart", poll_s=0.05, heartbeat_s=0.1, connect_timeout_s=0.2)
    with caplog.at_level(logging.WARNING, logger="engine.redis"):
        d = Dispatcher(broker=broker, tasks=tasks, min_workers=1, max_workers=1, autoscale=False, log_interval_s=0)
        try:
            assert d.submit(add, 1, 1).result(timeout=WAIT_S) == 2
            private_redis.stop()
            with pytest.raises(BrokerUnavailable):
                d.submit(add, 2, 2)
            eventually(lambda: any("Redis unavailable" in r.getMessage() and "dispatcher" in r.getMessage()
                                   for r in caplog.records), what="the reader to notice")
            private_redis.start()
            assert d.submit(add, 3, 3).result(timeout=WAIT_S) == 6
            eventually(lambda: any("reachable again" in r.getMessage() and "dispatcher" in r.getMessage()
                                   for r in caplog.records), what="the reader to say it is back")
        finally:
            d.shutdown(cancel_futures=True)


# -- bad input --------------------------------------------------------------------------------------
def test_an_unreachable_redis_fails_at_construction_with_a_clear_error() -> None:
    broker = RedisBroker("redis://:secret@127.0.0.1:1/0", connect_timeout_s=0.2)
    with pytest.raises(BrokerUnavailable, match=r"Redis at redis://:\*\*\*@127\.0\.0\.1:1/0 is unavailable") as info:
        Dispatcher(broker=broker, tasks=tasks)
    assert "secret" not in str(info.value) and "secret" not in repr(broker)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda b: Dispatcher(broker=b), r"needs tasks=TaskRegistry"),
        (lambda b: Dispatcher(broker=b, tasks=tasks, max_queue=10), "max_queue is not supported"),
        (lambda b: Dispatcher(broker=b, tasks=tasks, dlq_max=10), r"pass it to RedisBroker\(\.\.\., dlq_max"),
        (lambda b: Dispatcher(broker=b, tasks=tasks, max_workers=0, min_workers=1), "min_workers must be 0"),
        (lambda b: Dispatcher(broker=b, tasks=tasks, retry=3), "retry must be a RetryPolicy"),
        (lambda b: Dispatcher(broker=b, tasks=tasks, max_worker=3), r"unknown Dispatcher option\(s\) 'max_worker'"),
    ],
)
def test_bad_dispatcher_options_are_named(redis_url: str, build: Callable[[RedisBroker], Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(RedisBroker(redis_url))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "http://x"}, "url must start with redis://"),
        ({"queue": "a b"}, "queue must be 1-100 characters"),
        ({"lease_s": 0}, "lease_s must be a number > 0"),
        ({"heartbeat_s": 20}, r"heartbeat_s \(20\) must be below lease_s / 2"),
        ({"prefetch": -1}, "prefetch must be None or an int >= 0"),
    ],
)
def test_bad_broker_options_are_named(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RedisBroker(**options)


def test_bad_jobs_are_refused_before_anything_is_sent(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(min_workers=0, max_workers=0)

    def unregistered() -> None: ...

    with pytest.raises(ConfigError, match=r"'.*unregistered' is not a registered task"):
        d.submit(unregistered)
    with pytest.raises(UnknownTask, match=r"unknown task 'nope' \(registered: add, echo"):
        d.submit_task("nope")
    with pytest.raises(ConfigError, match=r"task 'echo': argument 0 is not JSON-serialisable: set"):
        d.submit(echo, {1, 2})
    with pytest.raises(ConfigError, match=r"task 'add': keyword argument 'b' is nan"):
        d.submit_task("add", 1, b=float("nan"))
    with pytest.raises(ConfigError, match="not JSON-serialisable"):
        d.submit_many(echo, [(1,), (object(),)])  # the whole batch is refused
    with pytest.raises(ConfigError, match=r"retry=\.\.\.\) is not supported on a RedisBroker"):
        d.submit_job(add, (1, 2), retry=RetryPolicy())
    assert d.snapshot().counters.submitted == 0


def test_a_submit_that_races_a_finished_shutdown_gets_a_closed_handle(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(min_workers=0, max_workers=0)
    handle = d.submit(add, 1, 1)  # sent; its handle is then tracked after the shutdown ended
    d.shutdown(cancel_futures=True)
    late = type(handle)(d, 999, add, (1, 1), None, "add", handle.options, task="add")
    d._track([late])
    with pytest.raises(DispatcherClosed, match=r"job 999 .*queued in Redis while this dispatcher shut down"):
        late.result(timeout=0)


def test_a_forceful_shutdown_ends_a_graceful_one_that_is_waiting(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(min_workers=0, max_workers=0)  # nobody runs the job: a graceful drain waits
    handle = d.submit(add, 1, 1)
    reports: list[Any] = []
    graceful = threading.Thread(target=lambda: reports.append(d.shutdown()))
    graceful.start()
    eventually(lambda: d.state.value == "draining", what="the graceful shutdown to start")
    forced = d.shutdown(cancel_futures=True)
    graceful.join(WAIT_S)
    assert not graceful.is_alive()
    assert reports == [forced] and forced.forceful and forced.escalated
    assert forced.cancelled == ((handle.id, "add"),) and handle.cancelled()
