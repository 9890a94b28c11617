"""Fixtures for the Redis tests: a live Redis and a private key prefix per test (from
tests/redis_support.py, which says when they skip or fail), a fake clock."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from engine import Dispatcher, FakeClock, RetryPolicy, TaskRegistry
from engine.brokers.redis import RedisBroker, RedisQueue
from engine.redis_dispatcher import RedisDispatcher
from engine.redis_worker import RedisWorker, socket_timeout_for
from tests.redis_support import prefix, redis_url
from tests.waiting import wait_until

__all__ = ["prefix", "redis_url"]  # fixtures, shared with the engine suite's Redis runs

WAIT_S = 10.0  # the bound on every wait in these tests


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.redis)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=100.0, wall_start=1_700_000_000.0, max_real_wait_s=0.05)


@pytest.fixture
def queue(redis_url: str, prefix: str, clock: FakeClock) -> Iterator[RedisQueue]:
    """A queue under the test's prefix, on the fake clock."""
    q = RedisQueue(redis_url, prefix=prefix, clock=clock)
    yield q
    q.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client, to look at and tamper with keys directly."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def eventually(predicate: Callable[[], Any], timeout_s: float = WAIT_S, what: str = "") -> Any:
    """Wait (bounded) until ``predicate()`` is truthy; return its value. Fails the test on timeout."""
    return wait_until(predicate, timeout_s, what, poll_s=0.01)


def advance_live(queue: RedisQueue, clock: FakeClock, seconds: float) -> None:
    """Advance the fake clock while the rest of the fleet stays in touch with Redis.

    A silence of the whole fleet longer than half a lease reads as a Redis outage, during
    which leases are not allowed to run down (see ``touch`` in redis_lib.lua). Tests of a
    dead worker's lease expiring must therefore show the rest of the fleet alive: this renews
    a lease nobody holds every second of fake time.
    """
    whole = int(seconds)
    for _ in range(whole):
        clock.advance(1.0)
        queue.extend([(0, "fleet-alive")], lease_s=10.0)
    if seconds > whole:
        clock.advance(seconds - whole)
        queue.extend([(0, "fleet-alive")], lease_s=10.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server with an append-only file, so a restart keeps the data."""

    def __init__(self, directory: str) -> None:
        self.port = _free_port()
        self.dir = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.exceptions.RedisError:
                return False

        eventually(up, what=f"redis-server on port {self.port} to answer")
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            client = redis.Redis.from_url(self.url)
            try:
                client.shutdown()  # persists the append-only file, then exits
            except redis.exceptions.ConnectionError:
                pass
            finally:
                client.close()
            self.proc.wait(10)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        if os.environ.get("TUI_DISPATCH_REQUIRE_REDIS") == "1":
            pytest.fail("TUI_DISPATCH_REQUIRE_REDIS=1 but redis-server is not on PATH")
        pytest.skip("redis-server is not on PATH")
    directory = tempfile.mkdtemp(prefix="tdtest-redis-")
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()
    if server.proc is not None and server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait(10)
    shutil.rmtree(directory, ignore_errors=True)


MakeWorker = Callable[..., tuple[RedisWorker, RedisQueue]]


@pytest.fixture
def make_worker(redis_url: str, prefix: str) -> Iterator[MakeWorker]:
    """Workers with short intervals; every one is stopped (forcefully) after the test."""
    made: list[tuple[RedisWorker, RedisQueue]] = []

    def make(tasks: TaskRegistry, *, max_retries: int = 3, clock: Any = None, **options: Any) -> tuple[RedisWorker, RedisQueue]:
        settings: dict[str, Any] = dict(min_workers=2, max_workers=2, autoscale=False, lease_s=5.0,
                                        heartbeat_s=0.1, poll_s=0.1, log_interval_s=0,
                                        retry=RetryPolicy(base_s=0.001, cap_s=0.01), clock=clock)
        settings.update(options)
        queue = RedisQueue(redis_url, prefix=prefix, max_retries=max_retries, clock=clock,
                           socket_timeout_s=socket_timeout_for(settings["lease_s"], settings["heartbeat_s"]))
        worker = RedisWorker(queue, tasks, **settings)
        made.append((worker, queue))
        return worker, queue

    yield make
    for worker, queue in made:
        worker.stop(graceful=False, timeout_s=5)
        queue.close()


MakeDispatcher = Callable[..., RedisDispatcher]


@pytest.fixture
def make_dispatcher(request: pytest.FixtureRequest, redis_url: str, prefix: str) -> Iterator[MakeDispatcher]:
    """Dispatchers on Redis under the test's prefix, with short polls, running the test module's
    ``tasks`` by default; ``broker_options`` go to the RedisBroker. All are stopped (forcefully)."""
    made: list[RedisDispatcher] = []

    def make(broker_options: dict[str, Any] | None = None, **options: Any) -> RedisDispatcher:
        opts = {"poll_s": 0.05, "heartbeat_s": 0.1, **(broker_options or {})}
        broker = RedisBroker(redis_url, prefix=prefix, **opts)
        options.setdefault("tasks", request.module.tasks)
        options.setdefault("log_interval_s", 0)
        options.setdefault("autoscale", False)
        d = Dispatcher(broker=broker, **options)
        assert isinstance(d, RedisDispatcher)
        made.append(d)
        return d

    yield make
    for d in made:
        d.shutdown(cancel_futures=True)
