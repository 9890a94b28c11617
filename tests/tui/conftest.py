"""Helpers for the dashboard's tests (the root conftest already checks for leaked threads)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from textual.pilot import Pilot


async def wait_until(
    pilot: Pilot[None], predicate: Callable[[], bool], timeout_s: float = 5.0
) -> None:
    """Let the app run until ``predicate()`` holds; fail after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await pilot.pause(0.01)


async def quiesce(pilot: Pilot[None]) -> None:
    """Wait for every worker (commands, polls) to finish, then for the screen to catch up."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


@pytest.fixture
def anyio_backend() -> str:
    """Textual runs on asyncio; async tests here run through anyio's pytest plugin on it."""
    return "asyncio"
