"""Fixtures shared by every test: no thread may outlive its test."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import settings

# Property tests explore a fixed, derived set of examples: the same on every run and in CI.
settings.register_profile("repeatable", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("repeatable")

THREAD_GRACE_S = 5.0


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Fail the test if a thread it started is still alive a bounded moment after it ends."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_GRACE_S
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra:
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"threads outlived the test: {sorted(t.name for t in extra)}")
        extra[0].join(0.05)
