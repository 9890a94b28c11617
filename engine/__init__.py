"""tui-dispatch's engine: a thread-based job dispatcher with retries, a DLQ and autoscaling.

Everything public is importable from here::

    from engine import Dispatcher, RetryPolicy

    with Dispatcher(min_workers=2, max_workers=16) as dispatcher:
        handle = dispatcher.submit(pow, 2, 10)
        assert handle.result(timeout=5) == 1024
"""

from __future__ import annotations

from engine.brokers import Broker, MemoryBroker, SharedBroker
from engine.clock import Clock, FakeClock, RealClock
from engine.dispatcher import Dispatcher, ShutdownReport
from engine.errors import (
    BrokerUnavailable,
    ConfigError,
    DispatcherClosed,
    EngineError,
    JobNotFound,
    JobTimeout,
    Permanent,
    QueueFull,
    RemoteJobError,
    RetryAfter,
    UnknownTask,
)
from engine.jobs import (
    CancelToken,
    JobContext,
    JobHandle,
    JobOptions,
    JobState,
    TaskRegistry,
    cancel_token,
    current_job,
)
from engine.metrics import (
    Counters,
    DeadLetter,
    EngineState,
    Latency,
    ScaleEvent,
    ScheduledRetry,
    Snapshot,
    WorkerSnapshot,
    WorkerState,
    format_log_line,
)
from engine.policy import (
    AutoscalePolicy,
    RetryPolicy,
    ScaleDecision,
    ScaleStats,
    backoff_delay,
    decide_scale,
)

__all__ = [
    "AutoscalePolicy",
    "Broker",
    "BrokerUnavailable",
    "CancelToken",
    "Clock",
    "ConfigError",
    "Counters",
    "DeadLetter",
    "Dispatcher",
    "DispatcherClosed",
    "EngineError",
    "EngineState",
    "FakeClock",
    "JobContext",
    "JobHandle",
    "JobNotFound",
    "JobOptions",
    "JobState",
    "JobTimeout",
    "Latency",
    "MemoryBroker",
    "Permanent",
    "QueueFull",
    "RealClock",
    "RemoteJobError",
    "RetryAfter",
    "RetryPolicy",
    "ScaleDecision",
    "ScaleEvent",
    "ScaleStats",
    "ScheduledRetry",
    "SharedBroker",
    "ShutdownReport",
    "Snapshot",
    "TaskRegistry",
    "UnknownTask",
    "WorkerSnapshot",
    "WorkerState",
    "backoff_delay",
    "cancel_token",
    "current_job",
    "decide_scale",
    "format_log_line",
]
