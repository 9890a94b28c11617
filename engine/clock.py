"""Time, behind one small interface. This is the only engine module that reads the clock.

The engine's timer thread sleeps with :meth:`Clock.wait`, so a :class:`FakeClock` can wake it
when a test moves time forward: a 30 s backoff then costs no real time.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "RealClock", "FakeClock"]


@runtime_checkable
class Clock(Protocol):
    """What the engine needs from time. Implementations must be thread-safe."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; used for every delay and duration."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch; used only for timestamps shown to people."""
        ...

    def wait(self, cond: threading.Condition, timeout_s: float | None) -> None:
        """Wait on ``cond`` (held by the caller) for at most ``timeout_s`` clock seconds.

        May return early (on notify, or spuriously); callers re-check their state.
        """
        ...


class RealClock:
    """The system clock: :func:`time.monotonic` and :func:`time.time`."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def wait(self, cond: threading.Condition, timeout_s: float | None) -> None:
        cond.wait(None if timeout_s is None else max(0.0, timeout_s))

    def __repr__(self) -> str:
        return "RealClock()"


class FakeClock:
    """A clock that moves only when told to. For tests.

    Threads waiting through :meth:`wait` are woken by :meth:`advance`/:meth:`set`, whatever
    their timeout. A real-time safety bound (``max_real_wait_s``) keeps a forgotten waiter from
    hanging forever; it never changes what time it is.

    Args:
        start: the initial monotonic reading.
        wall_start: the wall-clock reading that corresponds to ``start``.
        max_real_wait_s: longest real time a single :meth:`wait` blocks.
    """

    def __init__(
        self, start: float = 0.0, *, wall_start: float = 1_767_225_600.0, max_real_wait_s: float = 1.0
    ) -> None:
        self._lock = threading.Lock()  # guards _now and _waiters
        self._now = float(start)
        self._wall_offset = float(wall_start) - float(start)
        self._max_real_wait_s = max_real_wait_s
        self._waiters: weakref.WeakSet[threading.Condition] = weakref.WeakSet()

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def time(self) -> float:
        with self._lock:
            return self._now + self._wall_offset

    def wait(self, cond: threading.Condition, timeout_s: float | None) -> None:
        with self._lock:
            self._waiters.add(cond)
        if timeout_s is not None and timeout_s <= 0:
            return
        cond.wait(self._max_real_wait_s)

    def advance(self, delta_s: float) -> float:
        """Move time forward by ``delta_s`` (>= 0) and wake every waiter. Returns the new time."""
        if delta_s < 0:
            raise ValueError(f"FakeClock.advance: delta_s must be >= 0, got {delta_s!r}")
        with self._lock:
            self._now += delta_s
            now = self._now
            waiters = list(self._waiters)
        for cond in waiters:
            with cond:
                cond.notify_all()
        return now

    def set(self, now: float) -> None:
        """Jump to ``now`` (not earlier than the current time) and wake every waiter."""
        self.advance(now - self.monotonic())

    def __repr__(self) -> str:
        return f"FakeClock(now={self.monotonic()!r})"
