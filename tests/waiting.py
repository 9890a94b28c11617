"""The one bounded wait the tests share: poll an observable condition until it holds or time runs out."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str = "", poll_s: float = 0.002) -> Any:
    """Return ``predicate()`` once it is truthy; fail the test after ``timeout_s`` real seconds."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what or predicate}")
        pause.wait(poll_s)
