"""A :class:`~tui_dispatch.source.Source` over a Redis queue: the dashboard watches the fleet.

``tui-dispatch --redis URL`` builds one with :func:`make_fleet_source` and hands it to
``make_app``. Snapshots come from :class:`engine.fleet.FleetView` (one Lua read per poll);
commands go to Redis, so they work from any host:

* DLQ inspect / requeue / delete / purge act on the shared DLQ;
* bursts enqueue demo jobs (``demo.sleep``, run by ``tui-dispatch worker`` with its built-in
  demo tasks) into Redis;
* pause / resume pause the whole fleet (no worker fetches; running jobs finish);
* pool limits and shutdown are requests every running worker process applies with its next
  heartbeat.

Redis down: :meth:`FleetSource.snapshot` raises :class:`engine.BrokerUnavailable` with a
one-line message (the app shows it in its header) and does not touch Redis again until a
backoff delay has passed, so a dead Redis costs nothing. :meth:`FleetSource.notices` keeps
a short history of outages and recoveries for the screen and the log.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from collections.abc import Sequence

from engine import BrokerUnavailable, ConfigError, DeadLetter, Snapshot
from engine.brokers.redis import RedisQueue
from engine.clock import Clock, RealClock
from engine.fleet import FleetView, ProcessInfo
from engine.policy.backoff import backoff_delay

__all__ = ["FleetSource", "make_fleet_source", "DEMO_TASK"]

log = logging.getLogger("tui_dispatch.fleet")

DEMO_TASK = "demo.sleep"
"""The task a burst enqueues: ``demo.sleep(ms, fail_p)``, registered by the worker's demo tasks."""

_NOTICES_KEPT = 20


class FleetSource:
    """What the dashboard watches when it watches a Redis fleet. Thread-safe.

    Args:
        queue: the queue to watch and drive; closed by :meth:`close` if ``owns_queue``.
        label: shown in the dashboard's header; default ``"redis fleet <url> queue <name>"``.
        burst_task: the task name a burst enqueues.
        mean_ms: the mean duration of a burst's demo jobs.
        fail_p: the failure probability of a normal burst's jobs.
        failing_fail_p: the failure probability of a failing burst's jobs.
        seed: seeds the durations drawn for bursts.
        clock: times the reconnect backoff; default :class:`RealClock`.
        owns_queue: close ``queue`` on :meth:`close`.
    """

    def __init__(
        self,
        queue: RedisQueue,
        *,
        label: str | None = None,
        burst_task: str = DEMO_TASK,
        mean_ms: float = 50.0,
        fail_p: float = 0.05,
        failing_fail_p: float = 0.9,
        seed: int | None = None,
        clock: Clock | None = None,
        owns_queue: bool = True,
    ) -> None:
        self.queue = queue
        self.label = label or f"redis fleet {queue.url} queue {queue.queue!r}"
        self.view = FleetView(queue, clock=clock)
        self._clock: Clock = clock if clock is not None else RealClock()
        self._burst_task = burst_task
        self._mean_ms = mean_ms
        self._fail_p = fail_p
        self._failing_fail_p = failing_fail_p
        self._owns_queue = owns_queue
        self._lock = threading.Lock()  # guards everything below
        self._rng = random.Random(seed)
        self._failures = 0
        self._retry_at = 0.0
        self._error: str = ""
        self._down_since: float | None = None
        self._notices: deque[tuple[float, str]] = deque(maxlen=_NOTICES_KEPT)
        self._last: Snapshot | None = None

    # -- reading ---------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The fleet now.

        Raises:
            BrokerUnavailable: Redis cannot be reached; the message says when the next try is.
        """
        now = self._clock.monotonic()
        with self._lock:
            if self._failures and now < self._retry_at:
                raise BrokerUnavailable(f"{self._error} (retrying in {self._retry_at - now:.1f}s)")
        try:
            snap = self.view.snapshot()
        except BrokerUnavailable as exc:
            self._failed(exc, now)
            raise
        self._recovered()
        with self._lock:
            self._last = snap
        return snap

    def _failed(self, exc: BrokerUnavailable, now: float) -> None:
        with self._lock:
            self._failures += 1
            delay = backoff_delay(self._failures, base_s=0.5, factor=2.0, cap_s=10.0, jitter="equal", rng=self._rng)
            self._retry_at = now + delay
            self._error = str(exc)
            first = self._down_since is None
            if first:
                self._down_since = self._clock.time()
                self._notices.append((self._down_since, f"Redis unavailable: {exc}"))
        if first:
            log.warning("fleet dashboard: %s; reconnecting with backoff", exc)

    def _recovered(self) -> None:
        with self._lock:
            if self._down_since is None:
                return
            down_for = self._clock.time() - self._down_since
            self._down_since = None
            self._failures = 0
            self._error = ""
            self._notices.append((self._clock.time(), f"Redis reachable again after {down_for:.1f}s"))
        log.warning("fleet dashboard: Redis reachable again after %.1fs", down_for)

    @property
    def connected(self) -> bool:
        """Whether the last read reached Redis."""
        with self._lock:
            return self._down_since is None

    def status(self) -> str:
        """``""`` when connected, else a one-line description of the outage."""
        with self._lock:
            return "" if self._down_since is None else self._error

    def notices(self) -> list[tuple[float, str]]:
        """Recent connection events, oldest first, as ``(wall-clock time, text)``."""
        with self._lock:
            return list(self._notices)

    def processes(self) -> list[ProcessInfo]:
        """Every worker process seen by the last snapshot (host:pid, state, last seen...)."""
        return list(self.view.processes)

    def dlq_list(self, offset: int = 0, limit: int = 100) -> Sequence[DeadLetter]:
        return self.queue.dlq_list(offset, limit)

    def dlq_get(self, job_id: int) -> DeadLetter:
        return self.queue.dlq_get(job_id)

    # -- commands --------------------------------------------------------------------------------
    def dlq_requeue(self, job_id: int) -> None:
        self.queue.dlq_requeue(job_id)

    def dlq_requeue_all(self) -> int:
        return len(self.queue.dlq_requeue_all())

    def dlq_delete(self, job_id: int) -> None:
        self.queue.dlq_delete(job_id)

    def dlq_purge(self) -> int:
        return self.queue.dlq_purge()

    def burst(self, n: int, *, failing: bool = False) -> int:
        """Enqueue ``n`` demo jobs into Redis; returns how many."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ConfigError(f"burst size n must be an int >= 0; got {n!r}")
        fail_p = self._failing_fail_p if failing else self._fail_p
        with self._lock:
            durations = [round(self._rng.expovariate(1.0 / self._mean_ms), 3) if self._mean_ms > 0 else 0.0
                         for _ in range(n)]
        ids = self.queue.submit_many(self._burst_task, [(ms, fail_p) for ms in durations],
                                     name="demo-failing" if failing else "demo")
        return len(ids)

    def pause(self) -> None:
        self.queue.set_paused(True)

    def resume(self) -> None:
        self.queue.set_paused(False)

    def set_limits(self, min_workers: int | None = None, max_workers: int | None = None) -> None:
        """Ask every worker process to move its pool to these bounds (per process)."""
        if min_workers is None and max_workers is None:
            return
        with self._lock:
            last = self._last
        processes = max(1, len([p for p in self.view.processes if p.live]))
        # The dashboard's figures are fleet-wide sums; each process gets its share.
        if last is not None and processes > 1:
            min_workers = None if min_workers is None else -(-min_workers // processes)
            max_workers = None if max_workers is None else max(1, -(-max_workers // processes))
        self.queue.set_limits(min_workers=min_workers, max_workers=max_workers)

    def shutdown(self, graceful: bool) -> None:
        """Ask every running worker process to stop (graceful or forceful)."""
        self.queue.request_stop(graceful)

    def close(self) -> None:
        if self._owns_queue:
            self.queue.close()

    def __repr__(self) -> str:
        return f"FleetSource({self.label!r})"


def make_fleet_source(url: str, *, queue: str = "default", prefix: str = "tui-dispatch",
                      seed: int | None = None) -> FleetSource:
    """The source ``tui-dispatch --redis URL`` watches.

    Raises:
        ConfigError: a bad URL, queue or prefix (one line, for the CLI to print).
    """
    return FleetSource(RedisQueue(url, queue=queue, prefix=prefix), seed=seed)
