"""RedisQueue against a real Redis, on a fake clock: every script's effect, exactly."""

from __future__ import annotations

import json
import random
import time

import pytest
import redis

from engine import BrokerUnavailable, ConfigError, FakeClock, JobNotFound, TaskRegistry, UnknownTask
from engine.brokers.redis import (
    MalformedPayload,
    Outcome,
    RedisQueue,
    dead_letter_entry,
    decode_payload,
    encode_payload,
    redact_url,
)
from engine.fleet import FleetView
from tests.redis.conftest import advance_live

WALL = 1_700_000_000.0  # the fake clock's wall time at monotonic 100


def entry(attempts: int, at: float, reason: str = "retries exhausted (0 retries)") -> str:
    return dead_letter_entry(exc_type="builtins.ValueError", exc_message="boom", traceback="Traceback...\n",
                             attempts=attempts, reason=reason, last_failure_at=at)


def check_consistent(queue: RedisQueue) -> None:
    snap = FleetView(queue).snapshot()
    assert snap.consistent, snap


# -- payloads --------------------------------------------------------------------------------------
def test_payload_round_trip() -> None:
    text = encode_payload("img.resize", ("a.png", 3), {"fast": True}, name="resize", max_retries=2, timeout_s=1.5)
    job = decode_payload(text)
    assert (job.task, job.args, job.kwargs, job.name, job.max_retries, job.timeout_s) == (
        "img.resize", ("a.png", 3), {"fast": True}, "resize", 2, 1.5)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"task": 5}', "'task' must be a task name"),
        ('{"task": "t", "a": [1, 2]}', "'a' must be [args list, kwargs object]"),
        ('{"task": "t", "a": [[], {}], "max_retries": -1}', "'max_retries' must be an int >= 0"),
        ('{"task": "t", "a": [[], {}], "timeout_s": 0}', "'timeout_s' must be null or a number > 0"),
    ],
)
def test_malformed_payloads_are_named(text: str, needle: str) -> None:
    with pytest.raises(MalformedPayload, match="malformed payload") as info:
        decode_payload(text)
    assert needle in str(info.value)


def test_non_json_argument_is_refused_before_anything_is_sent(queue: RedisQueue) -> None:
    with pytest.raises(ConfigError, match=r"task 'work': argument 1 is not JSON-serialisable: object"):
        queue.submit("work", 1, object())
    with pytest.raises(ConfigError, match=r"keyword argument 'x' is nan"):
        queue.submit("work", x=float("nan"))
    with pytest.raises(ConfigError, match="task must be 1-200 characters"):
        queue.submit("no spaces allowed")
    with pytest.raises(ConfigError, match="max_retries must be an int >= 0"):
        queue.submit_job("work", max_retries=-1)
    # A batch with one bad job sends none.
    with pytest.raises(ConfigError, match="argument 0"):
        queue.submit_many("work", [(1,), (2,), ({1, 2},)])
    assert queue.fleet_state().counters == {}


def test_unknown_task_is_refused_when_the_producer_has_the_registry(redis_url: str, prefix: str) -> None:
    tasks = TaskRegistry()
    tasks.register("known", print)
    q = RedisQueue(redis_url, prefix=prefix, tasks=tasks)
    try:
        with pytest.raises(UnknownTask, match=r"unknown task 'nope' \(registered: known\)"):
            q.submit("nope")
        assert q.submit("known", 1) == 1
    finally:
        q.close()


# -- configuration and connection errors ----------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"url": "http://localhost"}, "url must start with redis://, rediss:// (TLS) or unix://"),
        ({"queue": "a b"}, "queue must be 1-100 characters"),
        ({"prefix": "x*"}, "prefix must be 1-100 characters"),
        ({"dlq_max": 0}, "dlq_max must be None or an int >= 1"),
        ({"socket_timeout_s": 0}, "socket_timeout_s must be a number > 0"),
        ({"timeout_s": -1}, "timeout_s must be None or a number > 0"),
    ],
)
def test_bad_configuration_is_named(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedisQueue(**kwargs)  # type: ignore[arg-type]
    assert needle in str(info.value)


def test_unreachable_url_fails_fast_with_a_clear_error() -> None:
    q = RedisQueue("redis://user:s3cret@127.0.0.1:1/0", connect_timeout_s=0.5, socket_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"Redis at redis://user:\*\*\*@127.0.0.1:1/0 is unavailable") as info:
        q.ping()
    with pytest.raises(BrokerUnavailable):
        q.submit("work", 1)
    with pytest.raises(BrokerUnavailable):
        q.fetch("w", 10, lease_s=5)
    assert time.monotonic() - started < 3.0
    assert "s3cret" not in str(info.value)
    q.close()


def test_refused_credentials_are_named(redis_url: str) -> None:
    url = redis_url.replace("redis://", "redis://nobody:wrong@", 1)
    q = RedisQueue(url, connect_timeout_s=1.0, socket_timeout_s=1.0)
    with pytest.raises(BrokerUnavailable) as info:
        q.ping()
    assert "wrong" not in str(info.value)
    assert "nobody:***@" in str(info.value)
    q.close()


def test_redact_url() -> None:
    assert redact_url("rediss://u:pw@h:6380/2") == "rediss://u:***@h:6380/2"
    assert redact_url("redis://:pw@h") == "redis://:***@h"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"


# -- the main path ---------------------------------------------------------------------------------
def test_enqueue_fetch_ack(queue: RedisQueue, clock: FakeClock) -> None:
    ids = queue.submit_many("add", [(1, 2), (3, 4), (5, 6)])
    assert ids == [1, 2, 3]
    assert queue.submit("add", 7, 8) == 4
    fetched = queue.fetch("w1", 2, lease_s=10)
    assert [d.job_id for d in fetched.deliveries] == [1, 2]
    assert [d.attempt for d in fetched.deliveries] == [1, 1]
    assert [decode_payload(d.payload).args for d in fetched.deliveries] == [(1, 2), (3, 4)]
    assert fetched.deliveries[0].enqueued_at == WALL
    assert fetched.next_lease_deadline == WALL + 10
    assert len({d.token for d in fetched.deliveries}) == 2
    clock.advance(0.5)
    result = queue.settle([Outcome.ok(d.job_id, d.token, run_s=0.25, wait_s=0.5) for d in fetched.deliveries])
    assert (result.accepted, result.stale) == (2, 0)
    state = queue.fleet_state()
    assert state.counters == {"submitted": 4, "succeeded": 2}
    assert (state.backlog, state.in_flight, state.scheduled, state.dlq_size) == (2, 0, 0, 0)
    assert state.run_samples == [0.25, 0.25]
    assert state.oldest_enqueued_at == WALL
    # A settled job's data is gone.
    rest = queue.fetch("w1", 10, lease_s=10)
    assert [d.job_id for d in rest.deliveries] == [3, 4]
    check_consistent(queue)


def test_acking_twice_counts_once(queue: RedisQueue) -> None:
    queue.submit("t")
    d = queue.fetch("w", 1, lease_s=10).deliveries[0]
    assert queue.settle([Outcome.ok(d.job_id, d.token)]).accepted == 1
    assert queue.settle([Outcome.ok(d.job_id, d.token)]) .stale == 1
    assert queue.counters()["succeeded"] == 1


def test_fetch_is_fifo_and_batched(queue: RedisQueue) -> None:
    queue.submit_many("t", [(i,) for i in range(2500)])  # three enqueue chunks
    first = queue.fetch("w", 1000, lease_s=10).deliveries
    second = queue.fetch("w", 2000, lease_s=10).deliveries
    assert [d.job_id for d in first + second] == list(range(1, 2501))
    assert [decode_payload(d.payload).args[0] for d in first[:3]] == [0, 1, 2]
    assert queue.fetch("w", 10, lease_s=10).deliveries == []


def test_retries_fall_due_in_due_order(queue: RedisQueue, clock: FakeClock) -> None:
    queue.submit_many("t", [(i,) for i in range(3)])
    ds = queue.fetch("w", 3, lease_s=60).deliveries
    delays = {1: 3.0, 2: 1.0, 3: 2.0}
    queue.settle([Outcome.retry(d.job_id, d.token, due_at=WALL + delays[d.job_id], retry_no=1) for d in ds])
    state = queue.fleet_state()
    assert [(job_id, due) for job_id, due, _, _ in state.next_retries] == [(2, WALL + 1), (3, WALL + 2), (1, WALL + 3)]
    nothing = queue.fetch("w", 10, lease_s=60)
    assert nothing.deliveries == [] and nothing.next_retry_at == WALL + 1.0
    clock.advance(0.999)
    assert queue.fetch("w", 10, lease_s=60).deliveries == []
    clock.advance(0.001)
    due = queue.fetch("w", 10, lease_s=60)
    assert [(d.job_id, d.attempt) for d in due.deliveries] == [(2, 2)]
    assert due.promoted == 1 and due.next_retry_at == WALL + 2.0
    clock.advance(5.0)
    late = queue.fetch("w", 10, lease_s=60).deliveries
    assert [(d.job_id, d.attempt) for d in late] == [(3, 2), (1, 2)]
    counters = queue.counters()
    assert counters["failed"] == 3 and counters["retries"] == 3 and counters["retry:1"] == 3
    check_consistent(queue)


def test_dead_letters_keep_their_story_and_can_be_requeued(queue: RedisQueue, clock: FakeClock) -> None:
    queue.submit_job("img.resize", ("a.png",), {"w": 3}, name="resize", max_retries=1)
    d = queue.fetch("w", 1, lease_s=60).deliveries[0]
    queue.settle([Outcome.retry(d.job_id, d.token, due_at=WALL + 1, retry_no=1)])
    clock.advance(2)
    d = queue.fetch("w", 1, lease_s=60).deliveries[0]
    assert d.attempt == 2
    queue.settle([Outcome.dead(d.job_id, d.token, entry=entry(2, WALL + 2, "retries exhausted (1 retries)"))])
    [dead] = queue.dlq_list()
    assert dead.job_id == 1 and dead.name == "resize" and dead.task == "img.resize"
    assert dead.args_repr == "('a.png', w=3)"
    assert (dead.exc_type, dead.exc_message, dead.traceback) == ("builtins.ValueError", "boom", "Traceback...\n")
    assert dead.attempts == 2 and dead.reason == "retries exhausted (1 retries)"
    assert dead.first_failure_at == WALL and dead.last_failure_at == WALL + 2
    assert queue.dlq_get(1) == dead
    assert queue.dlq_len() == 1
    assert queue.counters()["dead_lettered"] == 1
    check_consistent(queue)
    # Requeue: same id, fresh attempts, counted as submitted and requeued.
    assert queue.dlq_requeue(1) == 1
    with pytest.raises(JobNotFound, match="no dead-lettered job with id 1"):
        queue.dlq_requeue(1)
    again = queue.fetch("w", 1, lease_s=60).deliveries[0]
    assert (again.job_id, again.attempt) == (1, 1)
    counters = queue.counters()
    assert counters["submitted"] == 2 and counters["requeued"] == 1
    check_consistent(queue)


def test_dlq_paging_delete_purge_and_requeue_all(queue: RedisQueue) -> None:
    queue.submit_many("t", [(i,) for i in range(5)], max_retries=0)
    ds = queue.fetch("w", 5, lease_s=60).deliveries
    queue.settle([Outcome.dead(d.job_id, d.token, entry=entry(1, WALL)) for d in ds])
    assert [e.job_id for e in queue.dlq_list(1, 2)] == [2, 3]
    assert queue.dlq_delete(2).job_id == 2
    with pytest.raises(JobNotFound):
        queue.dlq_get(2)
    with pytest.raises(JobNotFound):
        queue.dlq_delete(2)
    assert [e.job_id for e in queue.dlq_list()] == [1, 3, 4, 5]
    assert queue.dlq_requeue_all() == [1, 3, 4, 5]
    assert queue.dlq_len() == 0
    assert [d.job_id for d in queue.fetch("w", 10, lease_s=60).deliveries] == [1, 3, 4, 5]
    assert queue.dlq_purge() == 0
    with pytest.raises(ConfigError, match="limit must be an int >= 1"):
        queue.dlq_list(0, 0)


def test_dlq_cap_evicts_the_oldest(redis_url: str, prefix: str, clock: FakeClock) -> None:
    q = RedisQueue(redis_url, prefix=prefix, clock=clock, dlq_max=2)
    try:
        q.submit_many("t", [(i,) for i in range(3)])
        ds = q.fetch("w", 3, lease_s=60).deliveries
        q.settle([Outcome.dead(d.job_id, d.token, entry=entry(1, WALL)) for d in ds])
        assert [e.job_id for e in q.dlq_list()] == [2, 3]
        counters = q.counters()
        assert counters["dead_lettered"] == 3 and counters["dlq_evicted"] == 1
        check_consistent(q)
    finally:
        q.close()


# -- leases ----------------------------------------------------------------------------------------
def test_expired_lease_is_reclaimed_and_the_late_outcome_ignored(queue: RedisQueue, clock: FakeClock) -> None:
    queue.submit("t")
    first = queue.fetch("w1", 1, lease_s=10).deliveries[0]
    assert queue.extend([(first.job_id, first.token)], lease_s=10, started={first.token}) == []
    advance_live(queue, clock, 9.999)
    assert queue.fetch("w2", 1, lease_s=10).deliveries == []
    advance_live(queue, clock, 0.001)
    taken = queue.fetch("w2", 1, lease_s=10)
    assert taken.reclaimed == 1
    [second] = taken.deliveries
    assert (second.job_id, second.attempt) == (first.job_id, 2)
    assert second.token != first.token
    # The first worker comes back late: ignored. The second one's outcome counts.
    assert queue.settle([Outcome.ok(first.job_id, first.token)]) .stale == 1
    assert queue.settle([Outcome.ok(second.job_id, second.token)]).accepted == 1
    counters = queue.counters()
    assert counters["succeeded"] == 1 and counters["failed"] == 1 and counters["retry:1"] == 1
    check_consistent(queue)


def test_a_lost_lease_of_a_job_never_reported_running_costs_no_attempt_up_to_3_times(
    queue: RedisQueue, clock: FakeClock
) -> None:
    queue.submit_job("t", max_retries=0)
    for _ in range(4):
        [d] = queue.fetch("w1", 1, lease_s=5).deliveries  # also takes back the previous lease
        assert d.attempt == 1
        queue.extend([(d.job_id, d.token)], lease_s=5)  # renewed, but never reported started
        advance_live(queue, clock, 5)
        assert "failed" not in queue.counters()
    assert queue.fetch("w1", 1, lease_s=5).deliveries == []
    # Three unstarted losses were free; the fourth counts, and with no retries left it is dead.
    assert queue.counters().get("failed") == 1
    [dead] = queue.dlq_list()
    assert dead.attempts == 1 and "lost its lease" in dead.reason
    check_consistent(queue)


def test_heartbeat_extends_the_lease(queue: RedisQueue, clock: FakeClock) -> None:
    queue.submit_many("t", [(1,), (2,)])
    ds = queue.fetch("w1", 2, lease_s=10).deliveries
    advance_live(queue, clock, 8)
    assert queue.extend([(d.job_id, d.token) for d in ds] + [(99, "nope")], lease_s=10) == [99]
    advance_live(queue, clock, 8)  # 16 s after the fetch, 8 s after the renewal
    assert queue.fetch("w2", 5, lease_s=10).reclaimed == 0
    advance_live(queue, clock, 2)
    assert queue.fetch("w2", 5, lease_s=10).reclaimed == 2


def test_lost_lease_without_retries_left_is_dead_lettered(queue: RedisQueue, clock: FakeClock) -> None:
    queue.submit_job("t", max_retries=0)
    d = queue.fetch("w1", 1, lease_s=5).deliveries[0]
    queue.extend([(d.job_id, d.token)], lease_s=5, started={d.token})
    advance_live(queue, clock, 5)
    assert queue.fetch("w2", 1, lease_s=5).deliveries == []
    [dead] = queue.dlq_list()
    assert dead.exc_type == "engine.brokers.redis.LeaseExpired"
    assert "lost its lease" in dead.reason and "retries exhausted (0 retries)" in dead.reason
    assert "worker w1" in dead.exc_message
    assert dead.attempts == 1
    check_consistent(queue)


def test_graceful_put_back_spends_no_attempt_and_keeps_order(queue: RedisQueue, raw: redis.Redis) -> None:
    queue.submit_many("t", [(i,) for i in range(5)])
    ds = queue.fetch("w1", 4, lease_s=10).deliveries
    assert queue.put_back([(d.job_id, d.token) for d in ds[1:]]) == 3
    assert queue.put_back([(ds[1].job_id, ds[1].token)]) == 0  # no longer leased
    assert raw.lrange(queue.base + "ready", 0, -1) == ["2", "3", "4", "5"]
    again = queue.fetch("w2", 10, lease_s=10).deliveries
    assert [(d.job_id, d.attempt) for d in again] == [(2, 1), (3, 1), (4, 1), (5, 1)]
    assert "failed" not in queue.counters()
    check_consistent(queue)


def test_forceful_put_back_counts_a_failed_attempt(queue: RedisQueue) -> None:
    queue.submit_many("t", [(1,)], max_retries=1)
    queue.submit_many("t", [(2,)], max_retries=0)
    ds = queue.fetch("w1", 2, lease_s=10).deliveries
    assert queue.put_back([(d.job_id, d.token) for d in ds], started=True) == 2
    assert [d.job_id for d in queue.fetch("w2", 10, lease_s=10).deliveries] == [1]
    [dead] = queue.dlq_list()
    assert dead.job_id == 2 and "abandoned by a forceful worker stop" in dead.reason
    assert queue.counters()["failed"] == 2


# -- fleet control ---------------------------------------------------------------------------------
def test_pause_stops_fetching_but_not_housekeeping(queue: RedisQueue, clock: FakeClock) -> None:
    queue.submit_many("t", [(1,), (2,)])
    d = queue.fetch("w", 1, lease_s=5).deliveries[0]
    queue.settle([Outcome.retry(d.job_id, d.token, due_at=WALL + 1, retry_no=1)])
    queue.set_paused(True)
    clock.advance(1)
    paused = queue.fetch("w", 10, lease_s=5)
    assert paused.paused and paused.deliveries == [] and paused.promoted == 1
    assert FleetView(queue).snapshot().state.value == "paused"
    queue.set_paused(False)
    assert [d.job_id for d in queue.fetch("w", 10, lease_s=5).deliveries] == [2, 1]


def test_limits_and_stop_requests_are_recorded(queue: RedisQueue) -> None:
    queue.set_limits(min_workers=2, max_workers=6)
    queue.request_stop(graceful=False)
    control = queue.control()
    assert (control["min_workers"], control["max_workers"]) == ("2", "6")
    assert control["limits_at"] == repr(WALL)
    assert control["stop"] == f"forceful:{WALL!r}"
    with pytest.raises(ConfigError, match=r"min_workers \(5\) must not exceed max_workers \(2\)"):
        queue.set_limits(min_workers=5, max_workers=2)


def test_queues_and_prefixes_are_isolated(redis_url: str, prefix: str, clock: FakeClock, raw: redis.Redis) -> None:
    a = RedisQueue(redis_url, prefix=prefix, queue="a", clock=clock)
    b = RedisQueue(redis_url, prefix=prefix, queue="b", clock=clock)
    try:
        a.submit("t", 1)
        a.submit("t", 2)
        b.submit("t", 3)
        assert [decode_payload(d.payload).args for d in b.fetch("w", 10, lease_s=5).deliveries] == [(3,)]
        assert len(a.fetch("w", 10, lease_s=5).deliveries) == 2
        keys = list(raw.scan_iter(match=f"{prefix}:*"))
        assert keys and all(k.startswith((f"{prefix}:{{a}}:", f"{prefix}:{{b}}:")) for k in keys)
        assert a.clear() > 0
        assert b.counters() == {"submitted": 1}
    finally:
        a.close()
        b.close()


# -- the invariant under random operations ---------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_job_is_in_exactly_one_place(queue: RedisQueue, clock: FakeClock, raw: redis.Redis, seed: int) -> None:
    """A seeded random walk over every operation: after each step, every job is in exactly one
    structure (or finished), and the counters add up."""
    rng = random.Random(seed)
    held: dict[str, list[tuple[int, str]]] = {"w1": [], "w2": []}
    finished: set[int] = set()
    submitted = 0
    for _ in range(150):
        op = rng.choice(["submit", "fetch", "ok", "retry", "dead", "putback", "abandon", "advance",
                         "requeue", "extend"])
        worker = rng.choice(["w1", "w2"])
        mine = held[worker]
        if op == "submit":
            submitted += len(queue.submit_many("t", [(i,) for i in range(rng.randint(1, 5))],
                                               max_retries=rng.randint(0, 2)))
        elif op == "fetch":
            mine.extend((d.job_id, d.token) for d in queue.fetch(worker, rng.randint(0, 4), lease_s=5).deliveries)
        elif op in ("ok", "retry", "dead") and mine:
            job_id, token = mine.pop(rng.randrange(len(mine)))
            if op == "ok":
                outcome = Outcome.ok(job_id, token)
            elif op == "retry":
                outcome = Outcome.retry(job_id, token, due_at=clock.time() + rng.uniform(0, 3), retry_no=1)
            else:
                outcome = Outcome.dead(job_id, token, entry=entry(1, clock.time()))
            if queue.settle([outcome]).accepted and op == "ok":
                assert job_id not in finished
                finished.add(job_id)
        elif op in ("putback", "abandon") and mine:
            queue.put_back(mine[:2], started=op == "abandon")
            del mine[:2]
        elif op == "advance":
            clock.advance(rng.choice([0.5, 2.0, 6.0]))
        elif op == "requeue" and rng.random() < 0.3:
            submitted += len(queue.dlq_requeue_all())
        elif op == "extend":
            queue.extend(mine, lease_s=5)
        # Every job is in exactly one structure.
        ready = raw.lrange(queue.base + "ready", 0, -1)
        places = [set(ready), set(raw.zrange(queue.base + "processing", 0, -1)),
                  set(raw.zrange(queue.base + "scheduled", 0, -1)), set(raw.zrange(queue.base + "dlq", 0, -1))]
        assert len(ready) == len(places[0]), "an id is twice on the ready list"
        for i in range(4):
            for j in range(i + 1, 4):
                assert not places[i] & places[j], f"ids in two places: {places[i] & places[j]}"
        snap = FleetView(queue).snapshot()
        assert snap.consistent, snap.counters
        assert snap.counters.submitted == submitted
        assert snap.counters.succeeded == len(finished)
        assert snap.counters.succeeded + snap.counters.dead_lettered + snap.unfinished == submitted
    assert json.loads(json.dumps(queue.counters()))  # plain ints


def test_recover_gives_back_leases_whose_fetch_reply_was_lost(queue: RedisQueue, raw: redis.Redis) -> None:
    queue.submit_many("t", [(i,) for i in range(4)])
    known = queue.fetch("w1", 1, lease_s=10).deliveries
    queue.fetch("w1", 2, lease_s=10)  # pretend this reply never arrived
    queue.fetch("w2", 1, lease_s=10)  # another worker's lease is left alone
    assert queue.recover("w1", [d.token for d in known]) == 2
    assert raw.lrange(queue.base + "ready", 0, -1) == ["2", "3"]
    assert [raw.hget(queue.base + f"job:{i}", "a") for i in (2, 3)] == ["0", "0"]
    assert raw.zrange(queue.base + "processing", 0, -1) == ["1", "4"]
    assert queue.recover("w1", [d.token for d in known]) == 0
    check_consistent(queue)
