"""The in-memory broker: a deque, a heap and an ordered dict. The embedded default."""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Sequence

from engine.brokers.base import Broker
from engine.errors import ConfigError
from engine.jobs import JobHandle
from engine.metrics import DeadLetter

__all__ = ["MemoryBroker"]


class MemoryBroker(Broker):
    """Backlog, retry schedule and DLQ in this process's memory.

    Removal (cancel) is lazy: a removed job is flagged and skipped when it reaches the front,
    so cancelling one of 100,000 queued jobs costs O(1).

    Args:
        dlq_max: the most DLQ entries kept; the oldest are evicted beyond it. ``None``: no cap.
    """

    def __init__(self, dlq_max: int | None = None) -> None:
        if dlq_max is not None and (not isinstance(dlq_max, int) or isinstance(dlq_max, bool) or dlq_max < 1):
            raise ConfigError(f"dlq_max must be None or an int >= 1; got {dlq_max!r}")
        self.dlq_max = dlq_max
        self._backlog: deque[JobHandle] = deque()
        self._backlog_skipped = 0  # flagged jobs still physically in _backlog
        self._heap: list[tuple[float, int, JobHandle]] = []
        self._heap_skipped = 0
        self._seq = itertools.count()
        self._dlq: OrderedDict[int, tuple[DeadLetter, JobHandle]] = OrderedDict()

    # -- backlog ---------------------------------------------------------------------------------
    def push(self, job: JobHandle) -> None:
        job._skip = False
        job._slot = "backlog"
        self._backlog.append(job)

    def pop(self) -> JobHandle | None:
        backlog = self._backlog
        while backlog:
            job = backlog.popleft()
            if not job._skip:
                job._slot = None
                return job
            self._backlog_skipped -= 1
        return None

    def backlog_len(self) -> int:
        return len(self._backlog) - self._backlog_skipped

    def oldest_enqueued_at(self) -> float | None:
        backlog = self._backlog
        while backlog and backlog[0]._skip:
            backlog.popleft()
            self._backlog_skipped -= 1
        return backlog[0]._enqueued_at if backlog else None

    # -- schedule --------------------------------------------------------------------------------
    def schedule(self, job: JobHandle, due_at: float) -> None:
        job._skip = False
        job._slot = "schedule"
        heapq.heappush(self._heap, (due_at, next(self._seq), job))

    def pop_due(self, now: float) -> list[JobHandle]:
        heap, due = self._heap, []
        while heap and heap[0][0] <= now:
            job = heapq.heappop(heap)[2]
            if job._skip:
                self._heap_skipped -= 1
            else:
                job._slot = None
                due.append(job)
        return due

    def next_due(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2]._skip:
            heapq.heappop(heap)
            self._heap_skipped -= 1
        return heap[0][0] if heap else None

    def scheduled_len(self) -> int:
        return len(self._heap) - self._heap_skipped

    def peek_scheduled(self, limit: int) -> list[tuple[float, JobHandle]]:
        live = (entry for entry in heapq.nsmallest(limit + self._heap_skipped, self._heap) if not entry[2]._skip)
        return [(due, job) for due, _, job in itertools.islice(live, limit)]

    # -- removal ---------------------------------------------------------------------------------
    def discard(self, job: JobHandle) -> bool:
        if job._skip or job._slot is None:
            return False
        if job._slot == "backlog":
            self._backlog_skipped += 1
        else:
            self._heap_skipped += 1
        job._skip = True
        job._slot = None
        return True

    def drain(self) -> list[JobHandle]:
        jobs = [job for job in self._backlog if not job._skip]
        jobs.extend(job for _, _, job in sorted(self._heap, key=lambda e: (e[0], e[1])) if not job._skip)
        for job in jobs:
            job._slot = None
        self._backlog.clear()
        self._heap.clear()
        self._backlog_skipped = self._heap_skipped = 0
        return jobs

    # -- DLQ -------------------------------------------------------------------------------------
    def dead_letter(self, job: JobHandle, entry: DeadLetter) -> list[DeadLetter]:
        self._dlq[entry.job_id] = (entry, job)
        evicted: list[DeadLetter] = []
        if self.dlq_max is not None:
            while len(self._dlq) > self.dlq_max:
                evicted.append(self._dlq.popitem(last=False)[1][0])
        return evicted

    def dlq_len(self) -> int:
        return len(self._dlq)

    def dlq_list(self, offset: int, limit: int) -> Sequence[DeadLetter]:
        values = self._dlq.values()
        return [entry for entry, _ in itertools.islice(values, offset, offset + limit)]

    def dlq_get(self, job_id: int) -> DeadLetter | None:
        found = self._dlq.get(job_id)
        return found[0] if found else None

    def dlq_take(self, job_id: int) -> tuple[DeadLetter, JobHandle] | None:
        return self._dlq.pop(job_id, None)

    def dlq_take_all(self) -> list[tuple[DeadLetter, JobHandle]]:
        taken = list(self._dlq.values())
        self._dlq.clear()
        return taken
