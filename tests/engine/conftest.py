"""Engine test helpers: a fake clock, a seeded rng, gates, bounded waits, and dispatchers that are
always shut down."""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from engine import Dispatcher, FakeClock, RemoteJobError, TaskRegistry
from engine.brokers.redis import RedisBroker
from tests.redis_support import prefix, redis_url
from tests.waiting import wait_until

__all__ = ["prefix", "redis_url"]  # fixtures, for the both_brokers runs on Redis

WAIT_S = 5.0  # the bound on every wait in these tests


def eventually(predicate: Callable[[], Any], timeout_s: float = WAIT_S, what: str = "") -> Any:
    """Wait (bounded) until ``predicate()`` is truthy; return its value. Fails the test on timeout."""
    return wait_until(predicate, timeout_s, what, poll_s=0.002)


class Gate:
    """Jobs that block until released, and let the test wait until N of them have started."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.entered = 0
        self._open = threading.Event()

    def job(self, value: Any = None) -> Any:
        with self._cond:
            self.entered += 1
            self._cond.notify_all()
        if not self._open.wait(WAIT_S * 2):
            raise RuntimeError("gate never opened")
        return value

    def wait_entered(self, n: int, timeout_s: float = WAIT_S) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.entered >= n, timeout_s):
                pytest.fail(f"only {self.entered} of {n} gated jobs started within {timeout_s}s")

    def open(self) -> None:
        self._open.set()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=100.0, wall_start=1_700_000_000.0, max_real_wait_s=0.05)


@pytest.fixture
def rng() -> random.Random:
    return random.Random(20261204)


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.open()  # never leave a worker blocked


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``both_brokers`` run twice: on the in-memory broker and on Redis."""
    if "broker_kind" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_brokers"):
        metafunc.parametrize("broker_kind", ["memory", pytest.param("redis", marks=pytest.mark.redis)])


@pytest.fixture
def broker_kind() -> str:
    """Which broker ``make_dispatcher`` builds on: "memory", unless the test is marked both_brokers."""
    return "memory"


@pytest.fixture
def tasks(gate: Gate) -> TaskRegistry:
    """The registry a Redis dispatcher runs from; a test registers the functions it submits."""
    registry = TaskRegistry()
    for fn in (pow, abs, dict):
        registry.register(fn.__name__, fn)
    registry.register("gate.job", gate.job)
    return registry


@pytest.fixture
def make_dispatcher(
    request: pytest.FixtureRequest, broker_kind: str, clock: FakeClock, rng: random.Random, gate: Gate,
    tasks: TaskRegistry,
) -> Iterator[Callable[..., Dispatcher]]:
    """Build dispatchers on the fake clock (fixed pool, no log line by default); all are shut down.

    On Redis (``broker_kind == "redis"``), under the test's own key prefix, with ``tasks``, no
    prefetch (a job waits in Redis until a thread is free, as it waits in memory) and short
    polls; ``dlq_max`` goes to the broker.
    """
    made: list[Dispatcher] = []
    if broker_kind == "redis":  # set up here, so the keys are deleted after the dispatchers stop
        url, key_prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("prefix")

    def make(**options: Any) -> Dispatcher:
        options.setdefault("clock", clock)
        options.setdefault("rng", rng)
        options.setdefault("log_interval_s", 0)
        options.setdefault("autoscale", False)
        if broker_kind == "redis":
            options.setdefault("tasks", tasks)
            options["broker"] = RedisBroker(url, prefix=key_prefix, dlq_max=options.pop("dlq_max", None),
                                            prefetch=0, poll_s=0.05)
        d = Dispatcher(**options)
        made.append(d)
        return d

    yield make
    gate.open()
    for d in made:
        stop(d, clock)


def failed_with(handle: Any, exc_type: type[BaseException], match: str = "") -> BaseException:
    """Wait for ``handle`` to fail; check it failed with ``exc_type`` (in memory) or with a
    RemoteJobError naming that type (on Redis, where exceptions cross as text)."""
    exc = handle.exception(timeout=WAIT_S)
    if isinstance(exc, RemoteJobError):
        assert exc.exc_type.rsplit(".", 1)[-1] == exc_type.__name__, exc
        text = exc.exc_message
    else:
        assert isinstance(exc, exc_type), exc
        text = str(exc)
    assert re.search(match, text), (match, text)
    return exc


def stop(d: Dispatcher, clock: FakeClock, *, cancel_futures: bool = True) -> Any:
    """Shut ``d`` down from a helper thread while moving the fake clock, so force_wait_s elapses."""
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(d.shutdown(wait=True, cancel_futures=cancel_futures)))
    t.start()
    deadline = time.monotonic() + WAIT_S
    while t.is_alive() and time.monotonic() < deadline:
        clock.advance(0.5)
        t.join(0.01)
    assert not t.is_alive(), "shutdown did not finish"
    return result[0]
