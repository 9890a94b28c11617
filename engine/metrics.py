"""Metrics: immutable snapshots of the engine, and the periodic log line.

One thing crosses from the engine to any UI: a :class:`Snapshot`. It is a frozen dataclass
of plain values, taken under the dispatcher's lock, so every figure in it agrees with every
other. In particular::

    submitted == succeeded + dead_lettered + cancelled + in_flight + backlog + scheduled

(``submitted`` counts requeues from the DLQ as new submissions.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "EngineState",
    "WorkerState",
    "Counters",
    "Latency",
    "WorkerSnapshot",
    "ScheduledRetry",
    "ScaleEvent",
    "DeadLetter",
    "Snapshot",
    "percentiles",
    "format_log_line",
]


class EngineState(StrEnum):
    """The dispatcher's life cycle."""

    RUNNING = "running"
    PAUSED = "paused"
    DRAINING = "draining"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


class WorkerState(StrEnum):
    """What one worker thread is doing."""

    IDLE = "idle"
    BUSY = "busy"
    RETIRING = "retiring"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Counters:
    """Monotonic counters since the dispatcher started.

    Attributes:
        submitted: jobs accepted, including requeues from the DLQ.
        succeeded: jobs that returned a result.
        failed: failed *attempts* (a job retried twice then succeeding adds 2).
        retries: retries scheduled.
        dead_lettered: jobs moved to the DLQ.
        cancelled: jobs cancelled before they finished (by ``cancel()`` or a forceful shutdown).
        timed_out: attempts that ran past their ``timeout_s``.
        requeued: DLQ entries sent back to the backlog.
        dlq_evicted: DLQ entries dropped because the DLQ was at its cap.
        scale_ups: workers added by scaling.
        scale_downs: workers retired by scaling.
    """

    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    dead_lettered: int = 0
    cancelled: int = 0
    timed_out: int = 0
    requeued: int = 0
    dlq_evicted: int = 0
    scale_ups: int = 0
    scale_downs: int = 0


@dataclass(frozen=True, slots=True)
class Latency:
    """Percentiles, in seconds, over the most recent ``count`` samples (0 samples: all zero)."""

    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    count: int = 0


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """One worker thread.

    Attributes:
        id: the worker's number, unique within its process, never reused.
        state: idle, busy or retiring.
        job_id: the job it runs, if busy.
        job_name: that job's name.
        jobs_done: attempts it has finished (any outcome).
        utilisation: busy fraction of its lifetime so far (0..1).
        busy_for_s: how long the current job has run (0 when idle).
        process: ``"host:pid"`` of its process, for fleet views; ``None`` in-process.
        last_seen_s: seconds since its process last reported (fleet views only).
    """

    id: int
    state: WorkerState
    job_id: int | None
    job_name: str | None
    jobs_done: int
    utilisation: float
    busy_for_s: float = 0.0
    process: str | None = None
    last_seen_s: float | None = None


@dataclass(frozen=True, slots=True)
class ScheduledRetry:
    """A job waiting for its retry: ``attempt`` is the number of the attempt it will make."""

    job_id: int
    name: str
    attempt: int
    due_in_s: float


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    """One change to the pool size, and why."""

    at: float
    delta: int
    workers_after: int
    reason: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A job that failed for good, as kept in the dead-letter queue.

    Attributes:
        job_id: the job's id (kept when it is requeued).
        name: the job's name.
        task: the registered task name, or ``None`` for a plain callable.
        args_repr: the arguments, as a truncated repr.
        exc_type: the last exception's qualified type name.
        exc_message: the last exception's message.
        traceback: the last exception's full formatted traceback.
        attempts: attempts made.
        first_failure_at: wall-clock time of the first failed attempt.
        last_failure_at: wall-clock time of the last failed attempt.
        reason: why it was dead-lettered (``"retries exhausted"``, ``"not retryable"``, ...).
    """

    job_id: int
    name: str
    task: str | None
    args_repr: str
    exc_type: str
    exc_message: str
    traceback: str
    attempts: int
    first_failure_at: float
    last_failure_at: float
    reason: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A self-consistent picture of the engine at one moment.

    Attributes:
        taken_at: wall-clock time of the snapshot.
        uptime_s: seconds since the dispatcher started.
        state: running, paused, draining or stopped.
        counters: the monotonic counters.
        backlog: jobs waiting for a worker.
        scheduled: jobs waiting for a retry.
        in_flight: jobs handed to a worker and not yet finished.
        workers_total: live workers (busy + idle + retiring).
        workers_busy: workers running a job.
        workers_idle: workers waiting for a job.
        workers_retiring: workers finishing their last job before they exit.
        stuck_threads: abandoned threads still running a timed-out job.
        min_workers: the pool's lower bound.
        max_workers: the pool's upper bound.
        utilisation: busy fraction of worker time over the last autoscale interval (0..1).
        oldest_wait_s: age of the oldest job in the backlog (0 when empty).
        dlq_size: entries in the dead-letter queue now.
        throughput_per_s: finished jobs per second over the last few seconds.
        run_time: run-time percentiles of recent attempts.
        queue_wait: backlog-wait percentiles of recent attempts.
        workers: every worker, by id.
        retries_by_attempt: ``(retry number, retries scheduled)`` pairs, ascending.
        next_retries: the retries due soonest, soonest first (at most 10).
        scale_events: the most recent scaling events, oldest first (at most 20).
    """

    taken_at: float
    uptime_s: float
    state: EngineState
    counters: Counters
    backlog: int
    scheduled: int
    in_flight: int
    workers_total: int
    workers_busy: int
    workers_idle: int
    workers_retiring: int
    stuck_threads: int
    min_workers: int
    max_workers: int
    utilisation: float
    oldest_wait_s: float
    dlq_size: int
    throughput_per_s: float
    run_time: Latency = field(default_factory=Latency)
    queue_wait: Latency = field(default_factory=Latency)
    workers: tuple[WorkerSnapshot, ...] = ()
    retries_by_attempt: tuple[tuple[int, int], ...] = ()
    next_retries: tuple[ScheduledRetry, ...] = ()
    scale_events: tuple[ScaleEvent, ...] = ()

    @property
    def unfinished(self) -> int:
        """Jobs not yet in a final state: in flight, in the backlog or waiting for a retry."""
        return self.in_flight + self.backlog + self.scheduled

    @property
    def consistent(self) -> bool:
        """Whether the counters add up: every submitted job is in exactly one place."""
        c = self.counters
        return c.submitted == c.succeeded + c.dead_lettered + c.cancelled + self.unfinished


def percentiles(samples: Iterable[float]) -> Latency:
    """p50/p95/p99 of ``samples`` by the nearest-rank method."""
    ordered = sorted(samples)
    n = len(ordered)
    if n == 0:
        return Latency()

    def rank(p: float) -> float:
        index = math.ceil(round(p * n, 9)) - 1  # nearest rank: the ceil(p*n)-th smallest
        return ordered[max(0, min(n - 1, index))]

    return Latency(p50=rank(0.50), p95=rank(0.95), p99=rank(0.99), count=n)


def format_log_line(snap: Snapshot) -> str:
    """The periodic metrics line: the seed's figures plus the backlog."""
    c = snap.counters
    return (
        f"successful={c.succeeded} failed={c.failed} retries={c.retries} total={c.submitted} "
        f"dead={c.dead_lettered} active_workers={snap.workers_busy}/{snap.workers_total} "
        f"backlog={snap.backlog} scheduled={snap.scheduled} rate={snap.throughput_per_s:.0f}/s"
    )
