"""Worker processes (``python -m tui_dispatch.worker_cli``) sharing one Redis queue: a 20,000-job
drain with planned failures, a worker killed with SIGKILL mid-job, and a Redis restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from engine import BrokerUnavailable
from engine.brokers.redis import RedisQueue
from engine.fleet import FleetView
from tests.redis.conftest import RedisServer, eventually
from tests.redis.fleet_tasks import failures_planned
from tui_dispatch.fleet_source import FleetSource

ROOT = Path(__file__).resolve().parents[2]

Spawn = Callable[..., list[subprocess.Popen[bytes]]]


@pytest.fixture
def spawn(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[Spawn]:
    """Start worker processes; each one still running at the end is killed (by its own pid)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(n: int, queue_url: str, *args: str) -> list[subprocess.Popen[bytes]]:
        env = dict(os.environ, TDTEST_REDIS_URL=redis_url, TDTEST_PREFIX=prefix, PYTHONPATH=str(ROOT))
        started = []
        for _ in range(n):
            log = open(tmp_path / f"worker-{len(procs)}.log", "wb")
            proc = subprocess.Popen(
                [sys.executable, "-m", "tui_dispatch.worker_cli", "--redis", queue_url,
                 "--tasks", "tests.redis.fleet_tasks", "--prefix", prefix, "--log-interval-s", "0", *args],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
            log.close()
            procs.append(proc)
            started.append(proc)
        return started

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def worker_log(tmp_path: Path, i: int) -> str:
    return (tmp_path / f"worker-{i}.log").read_text(errors="replace")


def stop(procs: list[subprocess.Popen[bytes]], timeout_s: float = 15.0) -> list[int]:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    return [proc.wait(timeout_s) for proc in procs]


def drained(queue: RedisQueue, total: int) -> Callable[[], bool]:
    def check() -> bool:
        snap = FleetView(queue).snapshot()
        return snap.counters.submitted == total and snap.unfinished == 0
    return check


def test_three_processes_drain_20000_jobs_with_planned_failures(
    spawn: Spawn, redis_url: str, prefix: str, raw: redis.Redis, tmp_path: Path
) -> None:
    seed, n = 20260101, 20_000
    queue = RedisQueue(redis_url, prefix=prefix, max_retries=2)
    try:
        queue.submit_many("flaky", [(i, seed) for i in range(n)])
        procs = spawn(3, redis_url, "--min-workers", "4", "--max-workers", "4", "--no-autoscale",
                      "--retry-base-s", "0.001", "--retry-cap-s", "0.01", "--heartbeat-s", "0.2")
        eventually(drained(queue, n), timeout_s=40, what=f"{n} jobs to finish")
        assert stop(procs) == [0, 0, 0], [worker_log(tmp_path, i)[-2000:] for i in range(3)]

        plan = {i: failures_planned(i, seed) for i in range(n)}
        doomed = {i for i, f in plan.items() if f >= 3}
        done = {int(k): int(v) for k, v in raw.hgetall(f"{prefix}:test:done").items()}
        tries = {int(k): int(v) for k, v in raw.hgetall(f"{prefix}:test:tries").items()}
        # Each job either succeeded exactly once or is in the DLQ, never both, none lost.
        assert set(done) == set(range(n)) - doomed
        assert set(done.values()) == {1}
        dead = {e.job_id - 1 for e in queue.dlq_list(0, n)}  # job ids are 1-based, in submit order
        assert dead == doomed and len(doomed) > 500
        assert tries == {i: min(plan[i] + 1, 3) for i in range(n)}
        snap = FleetView(queue).snapshot()
        c = snap.counters
        assert snap.consistent
        assert (c.submitted, c.succeeded, c.dead_lettered) == (n, n - len(doomed), len(doomed))
        assert c.failed == sum(tries.values()) - (n - len(doomed))
        assert c.retries == c.failed - len(doomed)
        assert snap.backlog == snap.in_flight == snap.scheduled == 0 and snap.dlq_size == len(doomed)
        # All three processes took part.
        logs = [worker_log(tmp_path, i) for i in range(3)]
        assert all("stopped: StopReport(graceful=True" in text for text in logs), logs
    finally:
        queue.close()


def test_a_worker_killed_mid_job_loses_nothing(spawn: Spawn, redis_url: str, prefix: str, raw: redis.Redis) -> None:
    seed, n = 7, 300
    queue = RedisQueue(redis_url, prefix=prefix, max_retries=2)
    try:
        queue.submit("gated", "g")
        procs = spawn(3, redis_url, "--min-workers", "2", "--max-workers", "2", "--no-autoscale",
                      "--lease-s", "1.0", "--heartbeat-s", "0.2", "--poll-s", "0.2",
                      "--retry-base-s", "0.001", "--retry-cap-s", "0.01")
        started = f"{prefix}:test:started"
        first = eventually(lambda: raw.lindex(started, 0), what="the gated job to start")
        victim = int(first.split(":")[1])
        queue.submit_many("flaky", [(i, seed) for i in range(n)])
        eventually(lambda: raw.hget(queue.base + "job:1", "r") == "1", what="a heartbeat to report it running")
        os.kill(victim, signal.SIGKILL)  # mid-job: it is blocked on the gate
        survivors = [p for p in procs if p.pid != victim]
        assert len(survivors) == 2
        second = eventually(lambda: raw.lindex(started, 1), what="another worker to rerun the gated job")
        assert int(second.split(":")[1]) in {p.pid for p in survivors}
        raw.lpush(f"{prefix}:test:gate:g", "open")
        eventually(drained(queue, n + 1), timeout_s=20, what="every job to finish")
        assert stop(survivors) == [0, 0]

        doomed = {i for i in range(n) if failures_planned(i, seed) >= 3}
        done = raw.hgetall(f"{prefix}:test:done")
        assert done.pop("g") == "1"
        # At least once: jobs the dead worker had prefetched ran elsewhere; none was lost.
        assert {int(k) for k in done} == set(range(n)) - doomed
        snap = FleetView(queue).snapshot()
        c = snap.counters
        assert snap.consistent and c.submitted == n + 1
        assert c.succeeded == n + 1 - len(doomed) and c.dead_lettered == len(doomed)
        assert c.retries >= 1 and c.failed >= 1  # the killed attempt counted, and was retried
    finally:
        queue.close()




def test_workers_and_dashboard_survive_a_redis_restart(
    spawn: Spawn, private_redis: RedisServer, prefix: str, raw: redis.Redis, tmp_path: Path
) -> None:
    seed, n = 11, 2000
    queue = RedisQueue(private_redis.url, prefix=prefix, max_retries=2, connect_timeout_s=0.5, socket_timeout_s=2)
    source = FleetSource(RedisQueue(private_redis.url, prefix=prefix, connect_timeout_s=0.5, socket_timeout_s=1))
    try:
        queue.submit_many("flaky", [(i, seed) for i in range(n)])
        procs = spawn(2, private_redis.url, "--min-workers", "2", "--max-workers", "2", "--no-autoscale",
                      "--lease-s", "10", "--heartbeat-s", "0.2", "--poll-s", "0.2",
                      "--retry-base-s", "0.001", "--retry-cap-s", "0.01")
        eventually(lambda: source.snapshot().counters.succeeded >= 200, what="some progress before the restart")
        private_redis.stop()
        with pytest.raises(BrokerUnavailable, match="unavailable"):
            source.snapshot()
        assert "unavailable" in source.status()
        # Workers notice while Redis is down (the log says so), and keep running.
        eventually(lambda: all("Redis unavailable" in worker_log(tmp_path, i) for i in range(2)),
                   what="both workers to log the outage")
        assert all(p.poll() is None for p in procs)
        private_redis.start()

        def snapshot_again() -> bool:
            try:
                return source.snapshot() is not None
            except BrokerUnavailable:
                return False

        eventually(snapshot_again, timeout_s=15, what="the dashboard to reconnect")
        eventually(drained(queue, n), timeout_s=30, what="every job to finish after the restart")
        assert stop(procs) == [0, 0]
        assert all("Redis reachable again" in worker_log(tmp_path, i) for i in range(2))
        notices = [text for _, text in source.notices()]
        assert notices[0].startswith("Redis unavailable") and notices[-1].startswith("Redis reachable again")
        assert source.status() == ""

        doomed = {i for i in range(n) if failures_planned(i, seed) >= 3}
        done = raw.hgetall(f"{prefix}:test:done")
        assert {int(k) for k in done} == set(range(n)) - doomed  # none lost (at least once)
        snap = FleetView(queue).snapshot()
        assert snap.consistent
        assert (snap.counters.succeeded, snap.counters.dead_lettered) == (n - len(doomed), len(doomed))
    finally:
        queue.close()
        source.close()
