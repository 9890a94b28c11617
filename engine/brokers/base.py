"""The broker interface: the backlog, the retry schedule and the dead-letter queue.

The dispatcher owns the threads; a broker owns where jobs wait. Every method is called with
the dispatcher's lock held, so an implementation needs no lock of its own and must never block
or call back into the dispatcher. The in-memory broker is the embedded default; a broker for a
shared store (Redis) keeps the same three structures there and is fed and drained in batches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from engine.jobs import JobHandle
from engine.metrics import DeadLetter

__all__ = ["Broker", "SharedBroker"]


class Broker(ABC):
    """Where jobs wait. Not thread-safe by itself: the dispatcher serialises every call."""

    # -- the backlog: jobs ready to run, oldest first ------------------------------------------
    @abstractmethod
    def push(self, job: JobHandle) -> None:
        """Append a ready job to the backlog."""

    @abstractmethod
    def pop(self) -> JobHandle | None:
        """Take the oldest ready job, or ``None`` when the backlog is empty."""

    @abstractmethod
    def backlog_len(self) -> int:
        """Jobs in the backlog."""

    @abstractmethod
    def oldest_enqueued_at(self) -> float | None:
        """Monotonic enqueue time of the oldest job in the backlog, or ``None`` when empty."""

    # -- the retry schedule: jobs waiting for a due time ---------------------------------------
    @abstractmethod
    def schedule(self, job: JobHandle, due_at: float) -> None:
        """Hold ``job`` until monotonic time ``due_at``."""

    @abstractmethod
    def pop_due(self, now: float) -> list[JobHandle]:
        """Take every scheduled job due at or before ``now``, in due order."""

    @abstractmethod
    def next_due(self) -> float | None:
        """The earliest due time, or ``None`` when nothing is scheduled."""

    @abstractmethod
    def scheduled_len(self) -> int:
        """Jobs waiting for a retry."""

    @abstractmethod
    def peek_scheduled(self, limit: int) -> list[tuple[float, JobHandle]]:
        """The ``limit`` soonest ``(due_at, job)`` pairs, soonest first, without taking them."""

    # -- removal, for cancel and forceful shutdown ---------------------------------------------
    @abstractmethod
    def discard(self, job: JobHandle) -> bool:
        """Remove a job from the backlog or the schedule; False if it is in neither."""

    @abstractmethod
    def drain(self) -> list[JobHandle]:
        """Remove and return every job in the backlog and the schedule."""

    # -- the dead-letter queue, oldest first -----------------------------------------------------
    @abstractmethod
    def dead_letter(self, job: JobHandle, entry: DeadLetter) -> list[DeadLetter]:
        """Store a failed job; returns the entries evicted to stay within the cap."""

    @abstractmethod
    def dlq_len(self) -> int:
        """Entries in the DLQ."""

    @abstractmethod
    def dlq_list(self, offset: int, limit: int) -> Sequence[DeadLetter]:
        """Entries ``offset .. offset+limit``, oldest first."""

    @abstractmethod
    def dlq_get(self, job_id: int) -> DeadLetter | None:
        """One entry, or ``None``."""

    @abstractmethod
    def dlq_take(self, job_id: int) -> tuple[DeadLetter, JobHandle] | None:
        """Remove one entry, returning it with the job it came from (to requeue or drop)."""

    @abstractmethod
    def dlq_take_all(self) -> list[tuple[DeadLetter, JobHandle]]:
        """Remove every entry, oldest first."""


class SharedBroker(ABC):
    """A broker whose jobs live in a store that many processes share (Redis).

    Unlike a :class:`Broker`, it is not called under the dispatcher's lock: its structures are
    changed by atomic operations in the store, and the jobs are registered task names with JSON
    arguments. ``Dispatcher(broker=shared_broker, ...)`` builds the dispatcher this broker
    names with :meth:`dispatcher_class`, which keeps the :class:`~engine.Dispatcher` API.
    """

    @abstractmethod
    def dispatcher_class(self) -> type:
        """The :class:`~engine.Dispatcher` subclass that runs on this broker."""
