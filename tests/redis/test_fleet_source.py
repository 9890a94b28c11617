"""FleetSource: the dashboard's view of a Redis fleet, its commands, and Redis outages."""

from __future__ import annotations

import pytest
import redis

from engine import BrokerUnavailable, ConfigError, EngineState, FakeClock, JobNotFound
from engine.brokers.redis import Outcome, RedisQueue, dead_letter_entry, decode_payload
from engine.fleet import FleetView
from tui_dispatch.fleet_source import DEMO_TASK, FleetSource, make_fleet_source
from tui_dispatch.source import Source
from tui_dispatch.worker_cli import demo_tasks


def test_it_is_a_source(queue: RedisQueue) -> None:
    source = FleetSource(queue, owns_queue=False)
    assert isinstance(source, Source)
    assert "redis fleet redis://" in source.label and "'default'" in source.label
    snap = source.snapshot()
    assert snap.state is EngineState.STOPPED and snap.consistent and source.connected and source.status() == ""


def test_bursts_enqueue_demo_jobs_the_demo_worker_knows(queue: RedisQueue) -> None:
    source = FleetSource(queue, owns_queue=False, seed=3, mean_ms=20, fail_p=0.1, failing_fail_p=0.8)
    assert source.burst(5) == 5
    assert source.burst(3, failing=True) == 3
    jobs = [decode_payload(d.payload) for d in queue.fetch("w", 10, lease_s=5).deliveries]
    assert {j.task for j in jobs} == {DEMO_TASK} and DEMO_TASK in demo_tasks
    assert [j.name for j in jobs] == ["demo"] * 5 + ["demo-failing"] * 3
    assert [j.args[1] for j in jobs] == [0.1] * 5 + [0.8] * 3
    assert all(j.args[0] >= 0 for j in jobs)
    with pytest.raises(ConfigError, match="burst size n must be an int >= 0"):
        source.burst(-1)


def test_commands_go_to_redis(queue: RedisQueue, raw: redis.Redis) -> None:
    source = FleetSource(queue, owns_queue=False)
    source.pause()
    assert source.snapshot().state is EngineState.PAUSED
    source.resume()
    assert "paused" not in queue.control()
    source.set_limits(max_workers=6)
    assert queue.control()["max_workers"] == "6" and "min_workers" not in queue.control()
    source.shutdown(graceful=True)
    assert queue.control()["stop"].startswith("graceful:")
    # The DLQ, from any host.
    queue.submit_many("t", [(1,), (2,), (3,)], max_retries=0)
    ds = queue.fetch("w", 3, lease_s=5).deliveries
    entry = dead_letter_entry(exc_type="E", exc_message="m", traceback="", attempts=1, reason="r",
                              last_failure_at=1.0)
    queue.settle([Outcome.dead(d.job_id, d.token, entry=entry) for d in ds])
    assert [e.job_id for e in source.dlq_list(0, 10)] == [1, 2, 3]
    assert source.dlq_get(2).exc_type == "E"
    source.dlq_requeue(1)
    source.dlq_delete(2)
    with pytest.raises(JobNotFound):
        source.dlq_delete(2)
    assert source.dlq_requeue_all() == 1
    assert source.dlq_purge() == 0
    assert raw.lrange(queue.base + "ready", 0, -1) == ["1", "3"]
    snap = source.snapshot()
    assert snap.counters.requeued == 2 and snap.dlq_size == 0 and snap.consistent


def test_an_outage_is_reported_and_retried_with_backoff(redis_url: str, prefix: str) -> None:
    clock = FakeClock(start=0.0)
    good = RedisQueue(redis_url, prefix=prefix, clock=clock)
    down = RedisQueue("redis://127.0.0.1:1/0", prefix=prefix, connect_timeout_s=0.2, socket_timeout_s=0.2)
    source = FleetSource(down, clock=clock, seed=1)
    calls = []
    real_snapshot = FleetView.snapshot

    def counting(view: FleetView) -> object:
        calls.append(view.queue)
        return real_snapshot(view)

    try:
        FleetView.snapshot = counting  # type: ignore[method-assign]
        with pytest.raises(BrokerUnavailable, match=r"Redis at redis://127\.0\.0\.1:1/0 is unavailable"):
            source.snapshot()
        assert len(calls) == 1 and not source.connected and "unavailable" in source.status()
        # Within the backoff delay nothing is sent: the same error, with when the next try is.
        with pytest.raises(BrokerUnavailable, match=r"retrying in \d+\.\ds"):
            source.snapshot()
        assert len(calls) == 1
        clock.advance(0.5)  # the first backoff is 0.25..0.5 s
        with pytest.raises(BrokerUnavailable):
            source.snapshot()
        assert len(calls) == 2
        # Redis is back: the next try after the backoff succeeds and says so.
        source.view.queue = source.queue = good
        clock.advance(10.0)
        assert source.snapshot().consistent
        assert source.connected and source.status() == ""
        notices = [text for _, text in source.notices()]
        assert len(notices) == 2
        assert notices[0].startswith("Redis unavailable: Redis at redis://127.0.0.1:1/0")
        assert notices[1].startswith("Redis reachable again after")
    finally:
        FleetView.snapshot = real_snapshot  # type: ignore[method-assign]
        good.close()
        down.close()


def test_make_fleet_source_names_a_bad_url() -> None:
    with pytest.raises(ConfigError, match="url must start with redis://"):
        make_fleet_source("localhost:6379")
