"""The engine's error tree. Every error the engine raises derives from :class:`EngineError`."""

from __future__ import annotations

__all__ = [
    "EngineError",
    "ConfigError",
    "DispatcherClosed",
    "QueueFull",
    "JobNotFound",
    "UnknownTask",
    "JobTimeout",
    "Permanent",
    "RetryAfter",
    "BrokerUnavailable",
]


class EngineError(Exception):
    """Base class of every error raised by the engine."""


class ConfigError(EngineError, ValueError):
    """A bad argument or setting. Raised at once, naming the argument and what is allowed."""


class DispatcherClosed(EngineError, RuntimeError):
    """The dispatcher is shutting down or stopped and takes no new jobs."""


class QueueFull(EngineError):
    """The bounded intake (``max_queue``) stayed full for the whole blocking timeout."""


class JobNotFound(EngineError, KeyError):
    """No job (or dead-letter entry) with the given id."""

    def __str__(self) -> str:  # KeyError quotes its argument; a plain message reads better.
        return str(self.args[0]) if self.args else "job not found"


class UnknownTask(EngineError, LookupError):
    """A job names a task that is not registered."""


class JobTimeout(EngineError, TimeoutError):
    """A job ran past its ``timeout_s``. Its thread is abandoned and its late result discarded."""


class Permanent(EngineError):
    """Raise this (or a subclass) from a job to fail it at once, skipping any remaining retries.

    ``raise Permanent("bad input") from exc`` keeps the original cause in the traceback.
    """


class RetryAfter(EngineError):
    """Raise this from a job to retry it after exactly ``delay_s`` seconds, instead of the backoff.

    The attempt still counts against the job's retry limit.

    Args:
        delay_s: seconds to wait before the next attempt; must be finite and >= 0.
        message: an optional explanation, kept in the DLQ if this was the last attempt.
    """

    def __init__(self, delay_s: float, message: str = "") -> None:
        if not isinstance(delay_s, (int, float)) or isinstance(delay_s, bool):
            raise ConfigError(f"RetryAfter delay_s must be a number, got {delay_s!r}")
        if not (0 <= delay_s < float("inf")):
            raise ConfigError(f"RetryAfter delay_s must be finite and >= 0, got {delay_s!r}")
        super().__init__(message or f"retry requested in {delay_s:g}s")
        self.delay_s = float(delay_s)


class BrokerUnavailable(EngineError, ConnectionError):
    """The broker's backing store (e.g. Redis) cannot be reached right now."""


class RemoteJobError(EngineError):
    """A job that ran in another process failed for good (it is in the DLQ).

    The original exception cannot cross the process boundary (jobs and results are JSON,
    never pickles), so this carries what the worker recorded.

    Attributes:
        job_id: the job's id.
        exc_type: the qualified name of the exception the job raised (e.g. ``"builtins.ValueError"``).
        exc_message: its message.
        remote_traceback: the traceback text, as formatted in the worker.
        attempts: attempts made.
        reason: why it was not retried.
    """

    def __init__(self, job_id: int, exc_type: str, exc_message: str, *, remote_traceback: str = "",
                 attempts: int = 0, reason: str = "") -> None:
        short = exc_type.removeprefix("builtins.")
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        super().__init__(f"job {job_id} failed after {tries}: {short}: {exc_message}"
                         + (f" ({reason})" if reason else ""))
        self.job_id = job_id
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.remote_traceback = remote_traceback
        self.attempts = attempts
        self.reason = reason
