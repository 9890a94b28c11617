"""Failing tests for bugs found in review of the Redis broker, worker and fleet view.

Each is ``xfail(strict=True)``: it documents a real bug and turns into a pass (and so an
error) once the bug is fixed, so the xfail marker must then be removed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from engine import FakeClock, RetryPolicy, TaskRegistry
from engine.brokers.redis import RedisQueue
from engine.errors import ConfigError
from engine.redis_worker import RedisWorker
from tests.redis.conftest import advance_live

WALL = 1_700_000_000.0
SHORT_S = 2.0  # bound of the waits that a bug makes run out (keeps the xfails quick)


def wait_until(predicate: Callable[[], Any], timeout_s: float = SHORT_S) -> bool:
    """Poll ``predicate`` (bounded); whether it became true."""
    pause = threading.Event()
    deadline = threading.Event()
    timer = threading.Timer(timeout_s, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():
            if predicate():
                return True
            pause.wait(0.01)
        return bool(predicate())
    finally:
        timer.cancel()
        timer.join()


@pytest.fixture
def bytes_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client that writes raw bytes (to store what a non-Python producer could store)."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def fake_worker(redis_url: str, prefix: str) -> Iterator[Callable[..., tuple[RedisWorker, RedisQueue, FakeClock]]]:
    """A worker on a fake clock that nobody advances: leases never expire during the test."""
    made: list[tuple[RedisWorker, RedisQueue]] = []

    def make(tasks: TaskRegistry, **options: Any) -> tuple[RedisWorker, RedisQueue, FakeClock]:
        clock = FakeClock(start=100.0, wall_start=WALL, max_real_wait_s=0.05)
        queue = RedisQueue(redis_url, prefix=prefix, clock=clock)
        settings: dict[str, Any] = dict(min_workers=1, max_workers=1, autoscale=False, lease_s=30.0,
                                        heartbeat_s=0.1, poll_s=0.05, log_interval_s=0,
                                        retry=RetryPolicy(base_s=0.001, cap_s=0.01), clock=clock)
        settings.update(options)
        worker = RedisWorker(queue, tasks, **settings)
        made.append((worker, queue))
        return worker, queue, clock

    yield make
    for worker, queue in made:
        worker.stop(graceful=False, timeout_s=5)
        queue.close()


# -- 1. payloads that make the worker drop a whole fetched batch --------------------------------
BAD_PAYLOADS = {
    # bytes a non-Python producer (or anyone who can write to Redis) can store
    "invalid-utf8": b'{"task":"good","a":[["\xff"],{}]}',
    # valid JSON that json.loads cannot parse: RecursionError, not ValueError
    "deeply-nested": b'{"task":"good","a":[[' + b"[" * 5000 + b"]" * 5000 + b'],{}]}',
    # valid JSON: math.isfinite(10**400) raises OverflowError, not MalformedPayload
    "huge-int-timeout": b'{"task":"good","timeout_s":' + b"9" * 400 + b',"a":[[],{}]}',
}


@pytest.mark.parametrize("kind", sorted(BAD_PAYLOADS))
def test_a_malformed_payload_is_dead_lettered_and_its_batch_runs(
    kind: str, fake_worker: Any, bytes_client: redis.Redis
) -> None:
    tasks = TaskRegistry()
    ran: list[int] = []
    tasks.register("good", lambda *args: ran.append(1))
    worker, queue, _ = fake_worker(tasks, prefetch=4)
    bad = queue.submit("good")
    queue.submit_many("good", [()] * 3)
    bytes_client.hset(queue.base + f"job:{bad}", "p", BAD_PAYLOADS[kind])
    worker.start()
    # The 3 good jobs run; the bad one ends too (dead-lettered as malformed, or run if a fix
    # decodes it leniently), all without any lease having to expire.
    def all_done() -> bool:
        succeeded: int = queue.counters().get("succeeded", 0)
        return succeeded >= 3 and succeeded + queue.dlq_len() == 4

    finished = wait_until(all_done)
    assert finished, (f"after {SHORT_S}s: succeeded={queue.counters().get('succeeded', 0)}, "
                      f"dlq={queue.dlq_len()}, leased={worker.status().leased}")
    # Nothing was charged an attempt it did not run, and the bad job is dead-lettered as such.
    assert queue.counters().get("retries", 0) == 0 and len(ran) == 3
    [entry] = queue.dlq_list()
    assert (entry.job_id, entry.exc_type, entry.attempts) == (bad, "engine.brokers.redis.MalformedPayload", 1)
    assert entry.reason.startswith("not runnable: malformed payload"), entry.reason


# -- 2. such a payload, once dead-lettered, breaks every DLQ read (and so the dashboard's poll) --
def _lose_lease_until_dead(queue: RedisQueue, clock: FakeClock) -> None:
    """Lease job 1 and let the lease expire until the fleet dead-letters it (3 free losses + 1)."""
    for _ in range(4):
        try:
            queue.fetch("w", 1, lease_s=5.0)
        except Exception:  # a reply the client could not decode (a bug); the script did run
            pass
        advance_live(queue, clock, 6.0)
    queue.fetch("w", 0, lease_s=5.0)  # reclaims the 4th expired lease


@pytest.mark.parametrize("kind", ["invalid-utf8", "deeply-nested"])
def test_dlq_reads_survive_an_undecodable_payload(
    kind: str, queue: RedisQueue, clock: FakeClock, bytes_client: redis.Redis
) -> None:
    job_id = queue.submit_job("good", max_retries=0)
    bytes_client.hset(queue.base + f"job:{job_id}", "p", BAD_PAYLOADS[kind])
    _lose_lease_until_dead(queue, clock)
    assert queue.dlq_len() == 1  # the setup worked: the job is a dead letter
    [entry] = queue.dlq_list()
    assert entry.job_id == job_id
    assert entry.name == "<malformed payload>" and entry.task is None
    assert entry.exc_type == "engine.brokers.redis.LeaseExpired"
    assert queue.dlq_get(job_id) == entry
    entry.args_repr.encode("utf-8")  # printable: no lone surrogates reach the screen


# -- 3. Lua reads max_retries with cjson, which rejects payloads Python wrote and accepts --------
@pytest.mark.parametrize("how", ["forceful-put-back", "lease-expired-after-start"])
def test_a_lost_running_attempt_is_retried_whatever_the_arguments(
    how: str, queue: RedisQueue, clock: FakeClock
) -> None:
    # A str that os.listdir() returns for a non-UTF-8 file name (surrogateescape): plain JSON to
    # encode_payload, and Python's json reads it back; Lua's cjson refuses "\udcff".
    job_id = queue.submit_job("files.process", ["report-\udcff.txt"], max_retries=3)
    [d] = queue.fetch("w", 1, lease_s=5.0).deliveries
    if how == "forceful-put-back":
        assert queue.put_back([(d.job_id, d.token)], started=True) == 1
    else:
        assert queue.extend([(d.job_id, d.token)], lease_s=5.0, started={d.token}) == []
        advance_live(queue, clock, 6.0)
        assert queue.fetch("other", 0, lease_s=5.0).reclaimed == 1
    # 1 attempt of 4 spent: the job must be retried, not dead-lettered.
    assert queue.dlq_len() == 0, queue.dlq_list()[0].reason
    assert queue.fleet_state().backlog == 1 and queue.counters()["retries"] == 1
    assert job_id == d.job_id


# -- 4. a DLQ requeue gives "fresh attempts" but keeps the count of free lease losses ------------
def test_a_requeued_dead_letter_gets_the_free_lease_losses_of_a_fresh_job(
    redis_url: str, prefix: str, clock: FakeClock, raw: redis.Redis
) -> None:
    queue = RedisQueue(redis_url, prefix=prefix, clock=clock, max_retries=0)
    try:
        job_id = queue.submit("t")
        _lose_lease_until_dead(queue, clock)
        assert queue.dlq_len() == 1
        queue.dlq_requeue(job_id)
        queue.fetch("w", 1, lease_s=5.0)  # prefetched by a worker that then dies before starting it
        advance_live(queue, clock, 6.0)
        queue.fetch("w", 0, lease_s=5.0)
        # A fresh job would be back on the ready list with no attempt spent.
        assert queue.dlq_len() == 0
        assert raw.lrange(queue.base + "ready", 0, -1) == [str(job_id)]
        assert raw.hget(queue.base + f"job:{job_id}", "a") == "0"
    finally:
        queue.close()


# -- 5. passwords in messages and labels --------------------------------------------------------
@pytest.mark.parametrize("url", [
    "redis://:s3cr/et@127.0.0.1:6379/0",          # a base64 password, not percent-encoded
    "redis://app:s3cr#et@127.0.0.1:6379/0",
    "redis://127.0.0.1:6379/0?password=s3cret",   # redis-py honours it (checked with requirepass)
])
def test_no_password_in_errors_or_labels(url: str) -> None:
    try:
        queue = RedisQueue(url)
    except ConfigError as exc:
        shown = str(exc)
    else:
        shown = f"{queue.url} {queue!r}"
        queue.close()
    assert "s3cr" not in shown, shown
