"""Hostile or broken data in Redis, secrets in URLs, and failures between Redis and a worker.

Whoever can write to Redis can store any bytes in a job; none of it may crash a worker, stall
its batch-mates, break a dashboard read, or leak a password into a message.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from engine import FakeClock, RetryPolicy, TaskRegistry
from engine.brokers.redis import (
    MalformedPayload,
    Outcome,
    RedisQueue,
    dead_letter_entry,
    decode_payload,
    redact_url,
)
from engine.errors import ConfigError
from engine.fleet import FleetView
from engine.redis_worker import RedisWorker
from tests.redis.conftest import advance_live, eventually

WALL = 1_700_000_000.0


@pytest.fixture(params=["default-parser", "pure-python-parser"])
def queue(request: pytest.FixtureRequest, redis_url: str, prefix: str, clock: FakeClock) -> Iterator[RedisQueue]:
    """The queue, once with redis-py's default reply parser (hiredis, a dependency) and once
    with its pure-Python one: hostile bytes must be handled the same by both."""
    q = RedisQueue(redis_url, prefix=prefix, clock=clock)
    if request.param == "pure-python-parser":
        from redis._parsers import _RESP2Parser  # redis-py moves it to RESP3's under protocol 3

        q._redis.connection_pool.connection_kwargs["parser_class"] = _RESP2Parser  # before any connection
    connection = q._redis.connection_pool.make_connection()  # not connected: only looked at
    assert ("Hiredis" in type(connection._parser).__name__) == (request.param == "default-parser")
    yield q
    q.close()


@pytest.fixture
def bytes_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# -- decode_payload never raises anything but MalformedPayload ----------------------------------
@pytest.mark.parametrize(("text", "reason"), [
    ('{"task":"t","a":[["\udcff"],{}]}', "not valid UTF-8"),  # a byte 0xff as fetch hands it over
    ('{"task":"t","a":[[' + "[" * 100_000 + "]" * 100_000 + "],{}]}", "nested too deeply"),
    ('{"task":"t","timeout_s":' + "9" * 400 + "}", "'timeout_s' must be null or a number > 0"),
    ('{"task":"t","timeout_s":1e999}', "'timeout_s' must be null or a number > 0"),
    ('{"task":"t","timeout_s":' + "9" * 5000 + "}", "not JSON"),  # beyond int's str limit
    ('{"task":' + "[" * 50 + "]" * 50 + "}", "'task' must be a task name"),
])
def test_decode_payload_refuses_hostile_text_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(MalformedPayload, match=r"^malformed payload: ") as info:
        decode_payload(text)
    assert reason in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300
    str(info.value).encode("utf-8")  # printable


def _nested_payload(depth: int, extra: str = "") -> str:
    """A payload whose JSON nests ``depth`` levels (the object, "a", the args list, then lists)."""
    k = depth - 3
    return '{"task":"t","a":[[' + "[" * k + "]" * k + extra + "],{}]}"


def test_decode_payload_nesting_limit_is_exact() -> None:
    assert decode_payload(_nested_payload(128)).args == (_nested(125),)
    with pytest.raises(MalformedPayload, match="nested too deeply"):
        decode_payload(_nested_payload(129))
    # Brackets inside strings do not nest: a shallow payload full of them is fine.
    text = '{"task":"t","a":[["' + "[{" * 500 + '"],{"k":"' + "]}" * 500 + '"}]}'
    assert decode_payload(text).args == ("[{" * 500,)
    # Many brackets, but shallow: fine; the same with one deep argument: refused.
    wide = ",".join(["[[]]"] * 200)
    assert len(decode_payload('{"task":"t","a":[[' + wide + "],{}]}").args) == 200
    with pytest.raises(MalformedPayload, match="nested too deeply"):
        decode_payload(_nested_payload(129, "," + wide))


def _nested(levels: int) -> list[object]:
    value: list[object] = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(("text", "error"), [
    ('{"task":"t"}', None),
    (' \n{"task":"t"}\t ', None),  # whitespace around the value is JSON
    ('{"task":"t"} x', "not JSON (Extra data"),
    ('{"task":"t"}{"task":"u"}', "not JSON (Extra data"),
    ('\ufeff{"task":"t"}', "not JSON (Unexpected UTF-8 BOM"),
    ("", "not JSON (Expecting value"),
    ('{"task":"t","a":null}', "'a' must be [args list, kwargs object], got None"),
])
def test_decode_payload_takes_exactly_one_json_value(text: str, error: str | None) -> None:
    if error is None:
        assert decode_payload(text).task == "t"
    else:
        with pytest.raises(MalformedPayload, match=re.escape(error)):
            decode_payload(text)


def test_decode_payload_accepts_escaped_surrogates_that_python_writes() -> None:
    job = decode_payload('{"task":"t","a":[["report-\\udcff.txt"],{}]}')
    assert job.args == ("report-\udcff.txt",)


@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape")))
def test_decode_payload_raises_only_malformed_payload(text: str) -> None:
    try:
        decode_payload(text)
    except MalformedPayload:
        pass


# -- the fetch and read replies survive bytes that are not UTF-8 ---------------------------------
def test_one_undecodable_payload_does_not_fail_the_fetch_of_its_batch(
    queue: RedisQueue, bytes_client: redis.Redis
) -> None:
    ids = queue.submit_many("t", [(1,), (2,), (3,)])
    bytes_client.hset(queue.base + f"job:{ids[1]}", "p", b'{"task":"t","a":[["\xff\xfe"],{}]}')
    result = queue.fetch("w", 10, lease_s=5.0)
    assert [d.job_id for d in result.deliveries] == ids
    assert decode_payload(result.deliveries[0].payload).args == (1,)
    assert decode_payload(result.deliveries[2].payload).args == (3,)
    with pytest.raises(MalformedPayload, match="not valid UTF-8"):
        decode_payload(result.deliveries[1].payload)


def test_fleet_state_survives_undecodable_retries_and_heartbeats(
    queue: RedisQueue, bytes_client: redis.Redis
) -> None:
    job_id = queue.submit("t")
    [d] = queue.fetch("w", 1, lease_s=5.0).deliveries


    queue.settle([Outcome.retry(d.job_id, d.token, due_at=WALL + 60, retry_no=1)])
    bytes_client.hset(queue.base + f"job:{job_id}", "p", b"\xff" * 10)
    bytes_client.hset(queue.base + "worker:bad", mapping={"id": b"bad\xff", "last_seen": b"\xff",
                                                          "threads": b"[[", "heartbeat_s": b"x"})
    bytes_client.zadd(queue.base + "workers", {"bad": WALL})
    bytes_client.hset(queue.base + "stats", "odd", b"\xff")
    state = queue.fleet_state()
    assert state.next_retries == [(job_id, WALL + 60, "<malformed payload>", 1)]
    assert state.workers[0]["id"] == "bad\ufffd"
    snap = FleetView(queue).snapshot()  # the dashboard's poll does not raise either
    assert snap.scheduled == 1


def test_dlq_entry_with_undecodable_entry_text_is_shown(
    queue: RedisQueue, clock: FakeClock, bytes_client: redis.Redis
) -> None:
    job_id = queue.submit("t")
    [d] = queue.fetch("w", 1, lease_s=5.0).deliveries


    entry = dead_letter_entry(exc_type="E", exc_message="m", traceback="", attempts=1, reason="r",
                              last_failure_at=WALL)
    queue.settle([Outcome.dead(d.job_id, d.token, entry=entry)])
    bytes_client.hset(queue.base + f"job:{job_id}", mapping={"d": b'{"exc_type":"E\xff","attempts":"x"}',
                                                             "f": b"nan?"})
    [shown] = queue.dlq_list()
    assert (shown.job_id, shown.exc_type, shown.attempts, shown.name) == (job_id, "E\ufffd", 0, "t")


def test_scripts_are_loaded_again_after_a_script_flush(queue: RedisQueue, raw: redis.Redis) -> None:
    queue.submit("t")
    raw.script_flush()  # as after a Redis restart without persistence of the script cache
    assert len(queue.fetch("w", 5, lease_s=5.0).deliveries) == 1
    assert queue.dlq_list() == []


# -- the worker: an unexpected failure between the fetch script and its reply ---------------------
def test_a_fetch_that_fails_after_leasing_is_recovered_without_waiting_for_leases(
    redis_url: str, prefix: str
) -> None:
    clock = FakeClock(start=100.0, wall_start=WALL, max_real_wait_s=0.05)  # never advanced
    queue = RedisQueue(redis_url, prefix=prefix, clock=clock)
    real_fetch = queue.fetch
    failed = threading.Event()

    def fetch_then_fail(*args: Any, **kwargs: Any) -> Any:
        result = real_fetch(*args, **kwargs)
        if result.deliveries and not failed.is_set():
            failed.set()
            raise RuntimeError("reply lost in a way nobody expected")
        return result

    queue.fetch = fetch_then_fail  # type: ignore[method-assign]
    tasks = TaskRegistry()
    ran: list[int] = []
    tasks.register("t", ran.append)
    worker = RedisWorker(queue, tasks, min_workers=1, max_workers=1, autoscale=False, lease_s=30.0,
                         heartbeat_s=0.1, poll_s=0.05, log_interval_s=0, clock=clock,
                         retry=RetryPolicy(base_s=0.001, cap_s=0.01))
    try:
        queue.submit_many("t", [(i,) for i in range(5)])
        worker.start()
        eventually(lambda: queue.counters().get("succeeded", 0) == 5, what="5 jobs succeeded")
        assert failed.is_set() and sorted(ran) == list(range(5))
        assert queue.counters().get("retries", 0) == 0 and queue.dlq_len() == 0
    finally:
        worker.stop(graceful=False, timeout_s=5)
        queue.close()


# -- secrets in URLs ---------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "shown"), [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://user:pa/ss#w?rd@h:1/2", "redis://user:***@h:1/2"),
    ("redis://:p@ss@h:1/0", "redis://:***@h:1/0"),
    ("rediss://token@h", "rediss://***@h"),
    ("redis://h/0?db=1&Password=x&pass%77ord=y;password=z", "redis://h/0?db=1&Password=***&pass%77ord=***;password=***"),
    ("unix:///tmp/r.sock?password=x&db=2", "unix:///tmp/r.sock?password=***&db=2"),
    ("not a url with pass@word", "***@word"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize("url", [
    "redis://:s3cret-xyz@h:port/0",
    "redis://:s3cret-xyz@[::1/0",
    "ftp://:s3cret-xyz@h/0",
])
def test_config_errors_never_quote_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedisQueue(url)
    assert "s3cret" not in str(info.value) and "***" in str(info.value)


# -- requeue-all and purge work in chunks, on the entries present when they began ------------------
def _dead_letters(queue: RedisQueue, n: int) -> list[int]:
    ids = queue.submit_many("t", [(i,) for i in range(n)], max_retries=0)
    ds = queue.fetch("w", n, lease_s=60.0).deliveries
    entry = dead_letter_entry(exc_type="E", exc_message="m", traceback="", attempts=1, reason="r",
                              last_failure_at=WALL)
    assert queue.settle([Outcome.dead(d.job_id, d.token, entry=entry) for d in ds]).accepted == n
    return ids


@pytest.mark.parametrize("command", ["requeue", "purge"])
def test_dlq_requeue_all_and_purge_go_in_chunks_and_leave_later_entries(
    command: str, queue: RedisQueue, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _dead_letters(queue, 2500)
    late = queue.submit("t")
    [held] = queue.fetch("w", 1, lease_s=60.0).deliveries
    calls: list[int] = []
    real_run = queue._run

    def counting_run(script: str, args: Any) -> Any:
        reply = real_run(script, args)
        if script == "dlq":
            calls.append(len(reply))
            if len(calls) == 1:  # a job dead-lettered while the command is under way
                queue.settle([Outcome.dead(held.job_id, held.token, entry="{}")])
        return reply

    monkeypatch.setattr(queue, "_run", counting_run)
    if command == "requeue":
        assert queue.dlq_requeue_all() == ids
        assert raw.lrange(queue.base + "ready", 0, -1) == [str(i) for i in ids]
        assert queue.counters()["requeued"] == 2500
    else:
        assert queue.dlq_purge() == 2500
        assert raw.exists(queue.base + f"job:{ids[0]}", queue.base + f"job:{ids[-1]}") == 0
    assert calls == [1000, 1000, 500]
    assert [e.job_id for e in queue.dlq_list()] == [late]


# -- Redis away for longer than a lease: live workers keep their running jobs -----------------------
def test_after_a_fleet_wide_silence_longer_than_the_lease_live_leases_are_not_reclaimed(
    queue: RedisQueue, clock: FakeClock
) -> None:
    queue.submit_many("t", [(1,), (2,)])
    [running] = queue.fetch("w1", 1, lease_s=10.0).deliveries
    assert queue.extend([(running.job_id, running.token)], lease_s=10.0, started={running.token}) == []
    [other] = queue.fetch("w3", 1, lease_s=10.0).deliveries
    clock.advance(40.0)  # Redis unreachable for everyone: nobody fetches or renews
    # Whoever gets through first (here w1's heartbeat) does not let the others' leases lapse.
    assert queue.extend([(running.job_id, running.token)], lease_s=10.0, started={running.token}) == []
    first = queue.fetch("w2", 5, lease_s=10.0)
    assert first.reclaimed == 0 and first.deliveries == []
    assert queue.extend([(other.job_id, other.token)], lease_s=10.0) == []  # w3 is back too
    assert queue.settle([Outcome.ok(running.job_id, running.token)]).accepted == 1
    assert queue.settle([Outcome.ok(other.job_id, other.token)]).accepted == 1
    assert queue.counters()["lease_pauses"] == 1 and "failed" not in queue.counters()


def test_after_a_silence_a_dead_workers_lease_still_ends_half_a_lease_later(
    queue: RedisQueue, clock: FakeClock
) -> None:
    job_id = queue.submit("t")
    [d] = queue.fetch("w1", 1, lease_s=10.0).deliveries  # w1 then dies
    clock.advance(40.0)  # the silence: its lease (due at +10) is pushed back to 5 s after it
    assert queue.fetch("w2", 1, lease_s=10.0).reclaimed == 0
    advance_live(queue, clock, 4.5)
    assert queue.fetch("w2", 1, lease_s=10.0).deliveries == []
    advance_live(queue, clock, 1.0)
    taken = queue.fetch("w2", 1, lease_s=10.0)
    assert taken.reclaimed == 1 and [x.job_id for x in taken.deliveries] == [job_id]
    assert queue.settle([Outcome.ok(d.job_id, d.token)]).stale == 1


def test_a_live_fleet_never_postpones_an_expired_lease(queue: RedisQueue, clock: FakeClock) -> None:
    queue.submit("t")
    queue.fetch("w1", 1, lease_s=10.0)  # w1 dies at once
    for _ in range(10):  # the rest of the fleet fetches every second
        clock.advance(1.0)
        result = queue.fetch("w2", 0, lease_s=10.0)
    assert result.reclaimed == 1 and "lease_pauses" not in queue.counters()
