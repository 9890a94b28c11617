"""A live Redis for tests, shared by tests/redis and the engine suite's Redis runs.

The tests run against a real Redis (``TUI_DISPATCH_REDIS_URL``, default
``redis://127.0.0.1:6379/0``). When none answers they are skipped with the reason, unless
``TUI_DISPATCH_REQUIRE_REDIS=1`` (CI sets it): then every one of them fails instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

REDIS_URL = os.environ.get("TUI_DISPATCH_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE = os.environ.get("TUI_DISPATCH_REQUIRE_REDIS") == "1"

_checked: list[str | None] = []


def _redis_problem() -> str | None:
    if not _checked:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            client.ping()
            _checked.append(None)
        except redis.exceptions.RedisError as exc:
            _checked.append(f"Redis at {REDIS_URL} does not answer: {exc}")
        finally:
            client.close()
    return _checked[0]


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix:``; returns how many."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=5.0)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i:i + 1000])
        return len(keys)
    finally:
        client.close()


@pytest.fixture
def redis_url() -> str:
    """The URL of a Redis that answers (or skip / fail, see the module docstring)."""
    problem = _redis_problem()
    if problem is not None:
        if REQUIRE:
            pytest.fail(f"TUI_DISPATCH_REQUIRE_REDIS=1 but {problem}")
        pytest.skip(f"{problem} (set TUI_DISPATCH_REDIS_URL, or start redis-server)")
    return REDIS_URL


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = f"tdtest-{uuid.uuid4().hex[:12]}"
    yield name
    delete_prefix(redis_url, name)
