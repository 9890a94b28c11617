"""What the dashboard watches: a :class:`Source` of engine snapshots and commands.

The app never touches a :class:`engine.Dispatcher` directly. It is handed a source through
``make_app(source, ...)`` (the toolong/posting pattern), polls :meth:`Source.snapshot` on a
timer and sends the user's commands back through the same object. Three kinds exist:

* :class:`LiveSource` wraps an in-process :class:`engine.Dispatcher` and a workload that knows
  how to submit bursts of jobs to it;
* :class:`FixedSource` serves fixed, seeded values for tests and screenshots: no threads, no
  time, and a record of every command it received;
* ``tui_dispatch.fleet_source.FleetSource`` watches a fleet of worker processes through Redis.

Every method of a source may be called from any thread. The app reads (``snapshot``,
``dlq_list``) on its poll thread and runs commands in Textual thread workers, never on its
UI thread.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from engine import (
    DeadLetter,
    Dispatcher,
    EngineState,
    JobNotFound,
    ShutdownReport,
    Snapshot,
)

__all__ = ["Call", "FixedSource", "LiveSource", "Source", "Workload"]

Call = tuple[str, tuple[Any, ...]]
"""One recorded command: the method's name and its arguments, e.g. ``("burst", (100, False))``."""


@runtime_checkable
class Source(Protocol):
    """What the dashboard needs from an engine. Every method is thread-safe.

    Attributes:
        label: a short description shown in the header, e.g. ``"in-memory engine"``.
    """

    label: str

    def snapshot(self) -> Snapshot:
        """The engine's state now. Cheap; called once per refresh."""
        ...

    def dlq_list(self, offset: int = 0, limit: int = 100) -> Sequence[DeadLetter]:
        """One page of the dead-letter queue, oldest first."""
        ...

    def dlq_get(self, job_id: int) -> DeadLetter:
        """One DLQ entry. Raises :class:`engine.JobNotFound` if it is not in the DLQ."""
        ...

    def dlq_requeue(self, job_id: int) -> None:
        """Send one DLQ entry back to the backlog. Raises :class:`engine.JobNotFound`."""
        ...

    def dlq_requeue_all(self) -> int:
        """Send every DLQ entry back to the backlog; returns how many."""
        ...

    def dlq_delete(self, job_id: int) -> None:
        """Drop one DLQ entry. Raises :class:`engine.JobNotFound`."""
        ...

    def dlq_purge(self) -> int:
        """Drop every DLQ entry; returns how many."""
        ...

    def burst(self, n: int, *, failing: bool = False) -> int:
        """Submit ``n`` jobs (that always fail, if ``failing``); returns how many were accepted.

        May take a while for large ``n``: call it from a worker thread.
        """
        ...

    def pause(self) -> None:
        """Stop handing jobs to workers; running jobs finish."""
        ...

    def resume(self) -> None:
        """Start handing jobs to workers again."""
        ...

    def set_limits(self, min_workers: int | None = None, max_workers: int | None = None) -> None:
        """Change the pool's bounds (``None`` keeps a bound as it is)."""
        ...

    def shutdown(self, graceful: bool) -> None:
        """Start shutting the engine down and return at once.

        Graceful: stop intake and finish every queued, scheduled and running job (the snapshot
        says ``draining``, then ``stopped``). Forceful: cancel what waits, give running jobs a
        moment, abandon the rest. A forceful call after a graceful one escalates it.
        """
        ...

    def close(self) -> None:
        """Release the source. The app never calls it: whoever made the source does."""
        ...


class Workload(Protocol):
    """Something that knows which jobs a burst submits (see ``tui_dispatch.workload``)."""

    def submit_burst(self, dispatcher: Dispatcher, n: int, *, failing: bool = False) -> int:
        """Submit ``n`` jobs to ``dispatcher``; returns how many were accepted."""
        ...


class LiveSource:
    """A :class:`Source` over an in-process :class:`engine.Dispatcher`. Thread-safe.

    Args:
        dispatcher: the engine to watch and drive. The source does not own it until
            :meth:`close`, which shuts it down if nobody has yet.
        workload: submits the bursts.
        label: shown in the dashboard's header.
    """

    def __init__(
        self, dispatcher: Dispatcher, workload: Workload, *, label: str = "in-memory engine"
    ) -> None:
        self.label = label
        self.dispatcher = dispatcher
        self.workload = workload
        self._lock = threading.Lock()  # guards _threads and report
        self._threads: list[threading.Thread] = []
        self.report: ShutdownReport | None = None
        """The shutdown report, once a shutdown started through this source has finished."""

    # -- reading ---------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        return self.dispatcher.snapshot()

    def dlq_list(self, offset: int = 0, limit: int = 100) -> Sequence[DeadLetter]:
        return self.dispatcher.dlq_list(offset, limit)

    def dlq_get(self, job_id: int) -> DeadLetter:
        return self.dispatcher.dlq_get(job_id)

    # -- commands --------------------------------------------------------------------------------
    def dlq_requeue(self, job_id: int) -> None:
        self.dispatcher.dlq_requeue(job_id)

    def dlq_requeue_all(self) -> int:
        return len(self.dispatcher.dlq_requeue_all())

    def dlq_delete(self, job_id: int) -> None:
        self.dispatcher.dlq_delete(job_id)

    def dlq_purge(self) -> int:
        return self.dispatcher.dlq_purge()

    def burst(self, n: int, *, failing: bool = False) -> int:
        return self.workload.submit_burst(self.dispatcher, n, failing=failing)

    def pause(self) -> None:
        self.dispatcher.pause()

    def resume(self) -> None:
        self.dispatcher.resume()

    def set_limits(self, min_workers: int | None = None, max_workers: int | None = None) -> None:
        self.dispatcher.set_limits(min_workers=min_workers, max_workers=max_workers)

    def shutdown(self, graceful: bool) -> None:
        thread = threading.Thread(
            target=self._shutdown,
            args=(graceful,),
            name=f"tui-dispatch-shutdown-{'graceful' if graceful else 'forceful'}",
            daemon=True,
        )
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _shutdown(self, graceful: bool) -> None:
        report = self.dispatcher.shutdown(wait=True, cancel_futures=not graceful)
        with self._lock:
            if self.report is None or not graceful:
                self.report = report

    def close(self, timeout_s: float = 10.0) -> None:
        """Shut the engine down forcefully unless it is stopped already, and wait for it.

        Args:
            timeout_s: how long to wait for the shutdown threads.
        """
        if self.dispatcher.state is not EngineState.STOPPED:
            self.shutdown(graceful=False)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout_s)

    def __repr__(self) -> str:
        return f"LiveSource({self.label!r})"


class FixedSource:
    """A :class:`Source` serving fixed values, for tests and screenshots. Thread-safe.

    It starts no thread and reads no clock. :meth:`snapshot` serves ``snapshots`` in order and
    then keeps serving the last one, so a scenario can give the dashboard a short history
    (for its sparklines) followed by a steady state. Commands are recorded in :attr:`calls` and
    applied to the last snapshot as a toy model of what the engine would do (``pause`` makes
    it ``paused``, ``burst(n)`` adds ``n`` to the backlog, a DLQ delete removes the entry...),
    keeping the snapshot's counters consistent.

    Args:
        snapshots: one snapshot, or a non-empty sequence of them, oldest first.
        dead_letters: the DLQ's entries, oldest first.
        label: shown in the dashboard's header.

    Raises:
        ValueError: if ``snapshots`` is empty.
    """

    def __init__(
        self,
        snapshots: Snapshot | Sequence[Snapshot],
        dead_letters: Sequence[DeadLetter] = (),
        *,
        label: str = "fixed state",
    ) -> None:
        history = [snapshots] if isinstance(snapshots, Snapshot) else list(snapshots)
        if not history:
            raise ValueError("FixedSource: snapshots must hold at least one Snapshot; got none")
        self.label = label
        self._lock = threading.Lock()  # guards everything below
        self._history = history
        self._served = 0
        self._dlq: list[DeadLetter] = list(dead_letters)
        self.calls: list[Call] = []
        """Every command received, in order (reads such as ``snapshot`` are not recorded)."""
        self.dlq_reads: list[tuple[int, int]] = []
        """The ``(offset, limit)`` of every :meth:`dlq_list` call."""
        self.closed = False

    # -- reading ---------------------------------------------------------------------------------
    @property
    def exhausted(self) -> bool:
        """Whether every snapshot in the history has been served at least once."""
        with self._lock:
            return self._served >= len(self._history)

    @property
    def last(self) -> Snapshot:
        """The snapshot served once the history is used up (without serving it)."""
        with self._lock:
            return self._history[-1]

    @property
    def snapshots_served(self) -> int:
        """How many times :meth:`snapshot` was called."""
        with self._lock:
            return self._served

    def snapshot(self) -> Snapshot:
        with self._lock:
            index = min(self._served, len(self._history) - 1)
            self._served += 1
            return self._history[index]

    def dlq_list(self, offset: int = 0, limit: int = 100) -> Sequence[DeadLetter]:
        with self._lock:
            self.dlq_reads.append((offset, limit))
            return tuple(self._dlq[offset : offset + limit])

    def dlq_get(self, job_id: int) -> DeadLetter:
        with self._lock:
            return self._dlq[self._index(job_id)]

    # -- commands --------------------------------------------------------------------------------
    def dlq_requeue(self, job_id: int) -> None:
        with self._lock:
            self.calls.append(("dlq_requeue", (job_id,)))
            del self._dlq[self._index(job_id)]
            self._requeued(1)

    def dlq_requeue_all(self) -> int:
        with self._lock:
            self.calls.append(("dlq_requeue_all", ()))
            n = len(self._dlq)
            self._dlq.clear()
            self._requeued(n)
            return n

    def dlq_delete(self, job_id: int) -> None:
        with self._lock:
            self.calls.append(("dlq_delete", (job_id,)))
            del self._dlq[self._index(job_id)]
            self._edit(dlq_size=len(self._dlq))

    def dlq_purge(self) -> int:
        with self._lock:
            self.calls.append(("dlq_purge", ()))
            n = len(self._dlq)
            self._dlq.clear()
            self._edit(dlq_size=0)
            return n

    def burst(self, n: int, *, failing: bool = False) -> int:
        with self._lock:
            self.calls.append(("burst", (n, failing)))
            last = self._history[-1]
            counters = dataclasses.replace(last.counters, submitted=last.counters.submitted + n)
            self._edit(counters=counters, backlog=last.backlog + n)
            return n

    def pause(self) -> None:
        with self._lock:
            self.calls.append(("pause", ()))
            if self._history[-1].state is EngineState.RUNNING:
                self._edit(state=EngineState.PAUSED)

    def resume(self) -> None:
        with self._lock:
            self.calls.append(("resume", ()))
            if self._history[-1].state is EngineState.PAUSED:
                self._edit(state=EngineState.RUNNING)

    def set_limits(self, min_workers: int | None = None, max_workers: int | None = None) -> None:
        with self._lock:
            self.calls.append(("set_limits", (min_workers, max_workers)))
            last = self._history[-1]
            low = last.min_workers if min_workers is None else min_workers
            high = last.max_workers if max_workers is None else max_workers
            if not 0 <= low <= high or high < 1:
                raise ValueError(
                    f"set_limits: need 0 <= min_workers <= max_workers and max_workers >= 1; "
                    f"got min_workers={low}, max_workers={high}"
                )
            self._edit(min_workers=low, max_workers=high)

    def shutdown(self, graceful: bool) -> None:
        with self._lock:
            self.calls.append(("shutdown", (graceful,)))
            last = self._history[-1]
            if graceful and last.unfinished:
                self._edit(state=EngineState.DRAINING)
                return
            lost = last.unfinished
            counters = dataclasses.replace(last.counters, cancelled=last.counters.cancelled + lost)
            self._edit(
                state=EngineState.STOPPED,
                counters=counters,
                backlog=0,
                scheduled=0,
                in_flight=0,
                next_retries=(),
            )

    def close(self) -> None:
        with self._lock:
            self.calls.append(("close", ()))
            self.closed = True

    # -- helpers (called with _lock held) --------------------------------------------------------
    def _index(self, job_id: int) -> int:
        for i, entry in enumerate(self._dlq):
            if entry.job_id == job_id:
                return i
        raise JobNotFound(job_id)

    def _requeued(self, n: int) -> None:
        last = self._history[-1]
        c = last.counters
        counters = dataclasses.replace(c, submitted=c.submitted + n, requeued=c.requeued + n)
        self._edit(counters=counters, backlog=last.backlog + n, dlq_size=len(self._dlq))

    def _edit(self, **changes: Any) -> None:
        self._history[-1] = dataclasses.replace(self._history[-1], **changes)

    def __repr__(self) -> str:
        return f"FixedSource({self.label!r})"
