"""Review of the Redis dispatcher (engine/redis_dispatcher.py) and its broker plumbing.

Each test here reproduces one bug found in review: it failed on the code as reviewed, and now
checks the fixed behaviour. Where a race needs a precise interleaving, it is forced by wrapping a
RedisQueue method *on the dispatcher's own instance* (never by sleeping), or by playing a fleet
member by hand with a plain RedisQueue (fetch + settle), so every test is deterministic and every
wait is bounded.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from engine import DispatcherClosed, RemoteJobError, TaskRegistry
from engine.brokers.redis import (
    BrokerUnavailable,
    Outcome,
    RedisQueue,
    dead_letter_entry,
    encode_result,
)
from engine.redis_dispatcher import RedisDispatcher
from tests.redis.conftest import MakeDispatcher, eventually

SHORT_S = 3.0  # how long a handle may take to end before we call it hung

tasks = TaskRegistry()


@tasks.task("rv.echo")
def echo(value: Any) -> Any:
    return value


@tasks.task("rv.fail")
def fail(message: str) -> None:
    raise ValueError(message)


class _BrokenItems(dict):  # type: ignore[type-arg]
    """A mapping whose items() raises: json.dumps calls items() on dict subclasses."""

    def items(self):  # type: ignore[no-untyped-def,override]
        raise KeyError("items() is unavailable")


@tasks.task("rv.broken_mapping")
def broken_mapping() -> dict[str, int]:
    return _BrokenItems(a=1)




@pytest.fixture
def fleet(redis_url: str, prefix: str) -> Iterator[RedisQueue]:
    """A fleet member played by hand: fetch and settle exactly when the test says."""
    q = RedisQueue(redis_url, prefix=prefix)
    yield q
    q.close()


def _run_one(q: RedisQueue, *, result: Any = None, text: str | None = None, dead: bool = False) -> int:
    """Fetch one job and settle it: ok with ``result`` (or raw reply ``text``), or dead."""
    fetched = q.fetch("hand", 1, lease_s=30.0).deliveries
    assert len(fetched) == 1, "no job to fetch"
    d = fetched[0]
    if dead:
        entry = dead_letter_entry(exc_type="ValueError", exc_message="boom", traceback="", attempts=d.attempt,
                                  reason="retries exhausted (0 retries)", last_failure_at=0.0)
        outcome = Outcome.dead(d.job_id, d.token, entry=entry)
    else:
        body, kind = (text, "ok") if text is not None else encode_result(result)
        outcome = Outcome.ok(d.job_id, d.token, result=body, result_kind=kind)
    assert q.settle([outcome]).accepted == 1
    return d.job_id


class _ReaderGate:
    """Holds a dispatcher's reply reader before its next read (as a slow batch, a Redis blip and
    its reconnect backoff, or a busy host would), by wrapping read_replies on its own queue."""

    def __init__(self, d: RedisDispatcher) -> None:
        self._real = d._queue.read_replies
        self._open = threading.Event()
        self._open.set()
        self.parked = threading.Event()
        d._queue.read_replies = self._read  # type: ignore[method-assign]

    def _read(self, reply_to: str, *, timeout_s: float, count: int = 1000) -> list[str]:
        if not self._open.is_set():
            self.parked.set()
            self._open.wait(10)
        return self._real(reply_to, timeout_s=timeout_s, count=count)

    def hold(self) -> None:
        self.parked.clear()
        self._open.clear()
        assert self.parked.wait(5), "the reader did not come back to read"

    def release(self) -> None:
        self._open.set()


def _replies_consumed(raw: redis.Redis, d: RedisDispatcher) -> bool:
    return raw.llen(d._reply_to) == 0


# ------------------------------------------------------------------------------------------------
# 1. A job cancelled in Redis by anyone but this handle sends no reply: its handle never ends.
# ------------------------------------------------------------------------------------------------
def test_a_job_cancelled_through_the_queue_api_ends_its_dispatcher_handle(
    make_dispatcher: MakeDispatcher, redis_url: str, prefix: str
) -> None:
    producer = make_dispatcher(min_workers=0, max_workers=0)
    handle = producer.submit(echo, "x")
    admin = RedisQueue(redis_url, prefix=prefix)  # an operator, a CLI, another process
    try:
        assert admin.cancel([handle.id]) == [handle.id]
    finally:
        admin.close()
    # The job is gone from Redis; the handle must learn it (cancelled), not wait forever.
    try:
        handle.exception(timeout=SHORT_S)
    except cf.CancelledError:
        pass
    except cf.TimeoutError:
        pytest.fail(f"handle {handle.id} still pending {SHORT_S}s after its job was cancelled in Redis "
                    f"(join() would wait forever too: {producer.join(0)=})")


def test_a_cancel_whose_reply_is_lost_does_not_leave_the_handle_pending_forever(
    make_dispatcher: MakeDispatcher,
) -> None:
    producer = make_dispatcher(min_workers=0, max_workers=0)
    handle = producer.submit(echo, "x")
    real_cancel = producer._queue.cancel

    def cancel_then_lose_the_reply(ids: Any, **options: Any) -> list[int]:
        real_cancel(ids, **options)  # Redis ran the script...
        raise BrokerUnavailable("connection dropped before the reply")  # ...and the reply was lost

    producer._queue.cancel = cancel_then_lose_the_reply  # type: ignore[method-assign]
    try:
        assert handle.cancel() is False  # documented: "may or may not be cancelled"
    finally:
        producer._queue.cancel = real_cancel  # type: ignore[method-assign]
    # The job no longer exists anywhere in Redis: nothing will ever reply for it.
    assert not producer._queue._redis.exists(f"{producer._queue.base}job:{handle.id}")
    assert handle.cancel() in (True, False)  # a retry returns [] from Redis: still pending
    try:
        handle.exception(timeout=SHORT_S)
    except cf.CancelledError:
        pass
    except cf.TimeoutError:
        pytest.fail(f"handle {handle.id} hangs: its job was deleted by a cancel whose reply was lost")


# ------------------------------------------------------------------------------------------------
# 2. dlq_requeue by the dispatcher that got the job's first outcome: a new outcome read before
#    _track runs is dropped as a "duplicate" (the id is still in _recent).
# ------------------------------------------------------------------------------------------------
def test_a_requeued_jobs_outcome_read_before_its_handle_is_tracked_is_not_dropped(
    make_dispatcher: MakeDispatcher, fleet: RedisQueue, raw: redis.Redis
) -> None:
    d = make_dispatcher(min_workers=0, max_workers=0)
    first = d.submit_job(fail, ("x",), max_retries=0)
    _run_one(fleet, dead=True)
    assert isinstance(first.exception(timeout=SHORT_S), RemoteJobError)

    real = d._queue.dlq_requeue_ids

    def requeue_then_fleet_runs_it(ids: Any, **options: Any) -> list[int]:
        done = real(ids, **options)
        # The fleet is fast: the requeued job runs and its reply is read before we return.
        _run_one(fleet, result="second run")
        eventually(lambda: _replies_consumed(raw, d), what="the reader to read the reply")
        return done

    d._queue.dlq_requeue_ids = requeue_then_fleet_runs_it  # type: ignore[method-assign]
    again = d.dlq_requeue(first.id)
    try:
        assert again.result(timeout=SHORT_S) == "second run"
    except cf.TimeoutError:
        pytest.fail("the requeued job succeeded, but its reply was dropped as a duplicate of the first "
                    "outcome (_recent); the handle never ends")


# ------------------------------------------------------------------------------------------------
# 3. dlq_requeue of a job whose dead reply this dispatcher has not read yet: _track overwrites
#    _pending[id]; the old reply completes the NEW handle and the OLD handle hangs forever.
# ------------------------------------------------------------------------------------------------
def test_requeueing_before_the_dead_reply_is_read_completes_each_handle_with_its_own_outcome(
    make_dispatcher: MakeDispatcher, fleet: RedisQueue
) -> None:
    d = make_dispatcher(min_workers=0, max_workers=0)
    gate = _ReaderGate(d)
    first = d.submit_job(fail, ("x",), max_retries=0)
    gate.hold()
    try:
        _run_one(fleet, dead=True)  # its dead reply waits in the reply list, unread
        again = d.dlq_requeue(first.id)  # the entry is visible in the DLQ: requeue it
        _run_one(fleet, result="second run")
    finally:
        gate.release()
    first_done, again_done = _wait(first), _wait(again)
    assert first_done, "the first handle never ends (its _pending entry was overwritten by the requeue)"
    assert isinstance(first.exception(timeout=0), RemoteJobError)
    assert again_done and again.exception(timeout=0) is None, (
        f"the requeued handle got the first run's outcome: {again.exception(timeout=0)!r}")
    assert again.result(timeout=0) == "second run"


def _wait(handle: cf.Future[Any]) -> bool:
    done, _ = cf.wait([handle], timeout=SHORT_S)
    return bool(done)


# ------------------------------------------------------------------------------------------------
# 4. encode_result "never raises" - it does, and then RedisWorker._run never settles the job:
#    it stays leased (heartbeats renew it) forever, and its handle never ends.
# ------------------------------------------------------------------------------------------------
def test_encode_result_never_raises() -> None:
    text, kind = encode_result(_BrokenItems(a=1))
    assert kind == "unencodable" and "not JSON" in text


def test_a_result_whose_encoding_raises_still_ends_the_handle(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(min_workers=1, max_workers=1)
    handle = d.submit(broken_mapping)
    try:
        exc = handle.exception(timeout=SHORT_S)
    except cf.TimeoutError:
        snap = d.snapshot()
        pytest.fail(f"handle hangs; the job stays leased forever (in_flight={snap.in_flight}, "
                    f"succeeded={snap.counters.succeeded})")
    assert isinstance(exc, TypeError)


# ------------------------------------------------------------------------------------------------
# 6. A worker's result text that is not JSON: the reply is "malformed", skipped, and the handle
#    whose id it names never ends.
# ------------------------------------------------------------------------------------------------
def test_a_reply_with_unreadable_result_text_still_ends_its_handle(
    make_dispatcher: MakeDispatcher, fleet: RedisQueue
) -> None:
    d = make_dispatcher(min_workers=0, max_workers=0)
    handle = d.submit(echo, 1)
    _run_one(fleet, text="{not json")  # Outcome.ok accepts any text (another worker implementation)
    try:
        handle.exception(timeout=SHORT_S)
    except cf.TimeoutError:
        pytest.fail("a reply whose body is not JSON is skipped as malformed; the handle it names hangs")


# ------------------------------------------------------------------------------------------------
# 7. More than _EARLY_KEPT (10 000) outcomes arriving while one big submit_many is still sending
#    its later chunks: the oldest early replies are evicted and their handles hang.
# ------------------------------------------------------------------------------------------------
def test_a_big_submit_many_whose_first_jobs_finish_before_it_returns_loses_no_outcome(
    make_dispatcher: MakeDispatcher, fleet: RedisQueue, raw: redis.Redis
) -> None:
    d = make_dispatcher(min_workers=0, max_workers=0)
    n = 10_050
    real = d._queue.submit_many

    def submit_while_the_fleet_runs(*args: Any, **kwargs: Any) -> list[int]:
        ids = real(*args, **kwargs)
        # A fast fleet finishes the early chunks while later chunks are still being sent.
        while True:
            got = fleet.fetch("hand", 1000, lease_s=30.0).deliveries
            if not got:
                break
            fleet.settle([Outcome.ok(x.job_id, x.token, result=str(x.job_id)) for x in got])
        eventually(lambda: _replies_consumed(raw, d), what="the reader to read every reply")
        return ids

    d._queue.submit_many = submit_while_the_fleet_runs  # type: ignore[method-assign]
    handles = d.submit_many(echo, [(i,) for i in range(n)])
    _, pending = cf.wait(handles, timeout=SHORT_S)
    assert not pending, f"{len(pending)} of {n} handles never end (their early replies were evicted)"


# ------------------------------------------------------------------------------------------------
# 8. read_replies blocks poll_s without regard to the socket timeout (wait_for_work clamps, this
#    does not): with a short lease, an idle reader "loses" Redis on every poll.
# ------------------------------------------------------------------------------------------------
def test_an_idle_reply_reader_does_not_time_out_its_own_socket(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher({"lease_s": 1.0, "heartbeat_s": 0.1, "poll_s": 0.5}, min_workers=0, max_workers=0)
    assert d._queue.socket_timeout_s < d._broker_config.poll_s  # a valid configuration
    # Exactly what the reader does on an empty reply list: it must return [] after poll_s.
    assert d._queue.read_replies(d._reply_to, timeout_s=d._broker_config.poll_s) == []


# ------------------------------------------------------------------------------------------------
# 10. A submit that races a shutdown: its handle gets DispatcherClosed, but its job keeps the
#     reply list in field y, so the reply list the shutdown deleted comes back (for a day).
# ------------------------------------------------------------------------------------------------
def test_a_submit_racing_shutdown_leaves_no_reply_list_behind(
    make_dispatcher: MakeDispatcher, fleet: RedisQueue, raw: redis.Redis
) -> None:
    d = make_dispatcher(min_workers=0, max_workers=0)
    real = d._queue.submit_many

    def submit_while_shutting_down(*args: Any, on_chunk: Any, **kwargs: Any) -> list[int]:
        def shut_down_then_track(ids: list[int]) -> None:  # the shutdown ends between send and track
            t = threading.Thread(target=d.shutdown)
            t.start()
            t.join(10)
            assert not t.is_alive()
            on_chunk(ids)

        return real(*args, on_chunk=shut_down_then_track, **kwargs)

    d._queue.submit_many = submit_while_shutting_down  # type: ignore[method-assign]
    handle = d.submit(echo, "late")
    with pytest.raises(DispatcherClosed):
        handle.result(timeout=0)
    assert not raw.exists(d._reply_to)
    _run_one(fleet, result="late")  # the job still ends in the fleet
    assert not raw.exists(d._reply_to), (
        f"reply list {d._reply_to} re-created with TTL {raw.ttl(d._reply_to)}s after the dispatcher stopped")


# ------------------------------------------------------------------------------------------------
# 11. The same root cause as 3, across dispatchers: A still counts a job as its own (it has not
#     read the dead reply yet) after B requeued it; A's forceful shutdown then cancels B's job in
#     Redis, and B's handle never ends.
# ------------------------------------------------------------------------------------------------
def test_a_forceful_shutdown_does_not_cancel_a_job_another_dispatcher_requeued(
    make_dispatcher: MakeDispatcher, fleet: RedisQueue, raw: redis.Redis
) -> None:
    a = make_dispatcher(min_workers=0, max_workers=0)
    b = make_dispatcher(min_workers=0, max_workers=0)
    gate = _ReaderGate(a)
    x = a.submit_job(fail, ("x",), max_retries=0)
    key = f"{fleet.base}job:{x.id}"
    stopper = threading.Thread(target=a.shutdown, kwargs={"cancel_futures": True})
    gate.hold()  # A's reply reader lags
    try:
        _run_one(fleet, dead=True)  # X is dead; A has not read that yet
        mine = b.dlq_requeue(x.id)  # B takes it over: its outcome is B's now
        assert raw.exists(key)
        stopper.start()
        # A's forceful shutdown cancels A's pending ids, then waits for its reader.
        eventually(lambda: a._reader_stop or not raw.exists(key), what="A's shutdown to pass its cancel step")
    finally:
        gate.release()
        stopper.join(10)
    assert not stopper.is_alive()
    assert raw.exists(key), "A's shutdown cancelled the job B requeued; B's handle can never end"
    _run_one(fleet, result="B ran it")
    assert mine.result(timeout=SHORT_S) == "B ran it"


# ------------------------------------------------------------------------------------------------
# 12. Interpreter exit runs shutdown(wait=True) with no timeout (engine.dispatcher's atexit hook):
#     a producer that submits and exits waits for the fleet to finish its jobs, forever if no
#     worker is up - though on Redis its jobs "stay in Redis and end there".
# ------------------------------------------------------------------------------------------------
_PRODUCER = """
import sys
from engine import Dispatcher, TaskRegistry
from engine.brokers.redis import RedisBroker
tasks = TaskRegistry()
tasks.register("rv.noop", lambda: 1)
d = Dispatcher(broker=RedisBroker(sys.argv[1], prefix=sys.argv[2]), tasks=tasks, min_workers=0, max_workers=0)
d.submit_task("rv.noop")
"""


def test_a_producer_that_submits_and_exits_is_not_held_at_exit_by_jobs_left_in_redis(
    redis_url: str, prefix: str
) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _PRODUCER, redis_url, prefix],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
        pytest.fail(f"the producer process still had not exited after 10 s: {out.decode()[-300:]!r}")
    assert proc.returncode == 0, out.decode()
