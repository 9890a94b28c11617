"""The fleet view: a whole Redis queue and its worker processes, as one :class:`engine.Snapshot`.

A dashboard polls :meth:`FleetView.snapshot` exactly as it polls a local dispatcher. One Lua
read returns the counters, the four depths (ready, processing, scheduled, DLQ), recent latency
samples and every live heartbeat, so the snapshot is self-consistent
(``snapshot.consistent`` holds: every submitted job is succeeded, dead-lettered or still in
one of the structures).

Mapping to the snapshot:

* ``backlog`` = the ready list, ``in_flight`` = leased jobs (including ones a process has
  fetched but not started), ``scheduled`` = retries waiting, ``dlq_size`` = the DLQ;
* ``workers`` = one :class:`WorkerSnapshot` per thread of every process that sent a heartbeat
  within its TTL, with ``process="host:pid"`` and ``last_seen_s``; processes silent for more
  than ``stale_after_heartbeats`` heartbeats are shown but not counted as live;
* ``state``: paused (fleet-wide pause), running (some live process), or stopped (none);
* ``throughput_per_s`` from successive polls of this view.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from engine.brokers.redis import FleetState, RedisQueue
from engine.clock import Clock, RealClock
from engine.metrics import (
    Counters,
    DeadLetter,
    EngineState,
    ScaleEvent,
    ScheduledRetry,
    Snapshot,
    WorkerSnapshot,
    WorkerState,
    percentiles,
)

__all__ = ["FleetView", "ProcessInfo", "snapshot_from_state"]

_THROUGHPUT_WINDOW_S = 5.0


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One worker process, as its last heartbeat described it.

    Attributes:
        worker_id: its id in the fleet.
        process: ``host:pid``.
        state: running, stopping, ...
        last_seen_s: seconds since its last heartbeat.
        live: whether that is recent enough to count it.
        connected: whether it could reach Redis at its last heartbeat.
        threads: its thread count.
        leased: jobs it holds.
    """

    worker_id: str
    process: str
    state: str
    last_seen_s: float
    live: bool
    connected: bool
    threads: int
    leased: int


def snapshot_from_state(
    state: FleetState, *, throughput_per_s: float = 0.0, stale_after_heartbeats: float = 3.0
) -> tuple[Snapshot, list[ProcessInfo]]:
    """Turn one raw :class:`FleetState` into a snapshot and a per-process list. Pure.

    Args:
        state: what :meth:`RedisQueue.fleet_state` returned.
        throughput_per_s: finished jobs per second, measured by the caller between reads.
        stale_after_heartbeats: a process silent for more heartbeat intervals than this is
            shown but not counted as live.
    """
    now = state.taken_at
    c = state.counters
    workers: list[WorkerSnapshot] = []
    processes: list[ProcessInfo] = []
    busy = idle = retiring = stuck = 0
    low = high = 0
    util_sum = 0.0
    live_n = draining = 0
    earliest_start: float | None = None
    events: list[ScaleEvent] = []
    for hb in sorted(state.workers, key=lambda h: (h.get("process", ""), h.get("id", ""))):
        last_seen = _float(hb.get("last_seen"), now)
        age = max(0.0, now - last_seen)
        interval = _float(hb.get("heartbeat_s"), 1.0)
        live = age <= stale_after_heartbeats * interval + 1.0
        process = hb.get("process") or hb.get("id") or "?"
        threads = _threads(hb.get("threads", "[]"))
        processes.append(ProcessInfo(
            worker_id=hb.get("id", "?"), process=process, state=hb.get("state", "?"), last_seen_s=age,
            live=live, connected=hb.get("connected") == "1", threads=len(threads),
            leased=int(_float(hb.get("leased"), 0)),
        ))
        for row in threads:
            wid, wstate, job_id, job_name, jobs_done, util, busy_for = row
            try:
                st = WorkerState(wstate)
            except ValueError:
                st = WorkerState.IDLE
            busy_for = float(busy_for or 0.0) + (age if st is WorkerState.BUSY else 0.0)
            workers.append(WorkerSnapshot(
                id=int(wid), state=st, job_id=job_id, job_name=job_name, jobs_done=int(jobs_done),
                utilisation=float(util), busy_for_s=busy_for, process=process, last_seen_s=age,
            ))
            if live:
                if st is WorkerState.BUSY:
                    busy += 1
                elif st is WorkerState.RETIRING:
                    retiring += 1
                else:
                    idle += 1
        if not live:
            continue
        live_n += 1
        if hb.get("state") != "running":
            draining += 1
        stuck += int(_float(hb.get("stuck"), 0))
        low += int(_float(hb.get("min_workers"), 0))
        high += int(_float(hb.get("max_workers"), 0))
        util_sum += _float(hb.get("utilisation"), 0.0)
        started = _float(hb.get("started_at"), now)
        earliest_start = started if earliest_start is None else min(earliest_start, started)
        for ev in _json_list(hb.get("scale_events", "[]")):
            try:
                at, delta, after, reason = ev
                events.append(ScaleEvent(at=float(at), delta=int(delta), workers_after=int(after),
                                         reason=f"{process}: {reason}"))
            except (TypeError, ValueError):
                continue
    if state.control.get("paused") == "1":
        engine_state = EngineState.PAUSED
    elif live_n == 0:
        engine_state = EngineState.STOPPED
    elif draining == live_n:
        engine_state = EngineState.DRAINING
    else:
        engine_state = EngineState.RUNNING
    retries_by = sorted(
        (int(k.split(":", 1)[1]), v) for k, v in c.items() if k.startswith("retry:") and k[6:].isdigit()
    )
    events.sort(key=lambda e: e.at)
    snap = Snapshot(
        taken_at=now,
        uptime_s=0.0 if earliest_start is None else max(0.0, now - earliest_start),
        state=engine_state,
        counters=Counters(
            submitted=c.get("submitted", 0), succeeded=c.get("succeeded", 0), failed=c.get("failed", 0),
            retries=c.get("retries", 0), dead_lettered=c.get("dead_lettered", 0),
            cancelled=c.get("cancelled", 0), timed_out=c.get("timed_out", 0), requeued=c.get("requeued", 0),
            dlq_evicted=c.get("dlq_evicted", 0),
            scale_ups=sum(int(_float(h.get("scale_ups"), 0)) for h in state.workers),
            scale_downs=sum(int(_float(h.get("scale_downs"), 0)) for h in state.workers),
        ),
        backlog=state.backlog,
        scheduled=state.scheduled,
        in_flight=state.in_flight,
        workers_total=busy + idle + retiring,
        workers_busy=busy,
        workers_idle=idle,
        workers_retiring=retiring,
        stuck_threads=stuck,
        min_workers=low,
        max_workers=high,
        utilisation=util_sum / live_n if live_n else 0.0,
        oldest_wait_s=0.0 if state.oldest_enqueued_at is None else max(0.0, now - state.oldest_enqueued_at),
        dlq_size=state.dlq_size,
        throughput_per_s=throughput_per_s,
        run_time=percentiles(state.run_samples),
        queue_wait=percentiles(state.wait_samples),
        workers=tuple(workers),
        retries_by_attempt=tuple(retries_by),
        next_retries=tuple(
            ScheduledRetry(job_id=job_id, name=name, attempt=attempts + 1, due_in_s=max(0.0, due - now))
            for job_id, due, name, attempts in state.next_retries
        ),
        scale_events=tuple(events[-20:]),
    )
    return snap, processes


class FleetView:
    """Reads a Redis queue's fleet into :class:`Snapshot` objects. Thread-safe.

    Args:
        queue: the queue to watch.
        clock: the clock that times throughput between polls; default :class:`RealClock`.
        stale_after_heartbeats: see :func:`snapshot_from_state`.
    """

    def __init__(self, queue: RedisQueue, *, clock: Clock | None = None, stale_after_heartbeats: float = 3.0) -> None:
        self.queue = queue
        self._clock: Clock = clock if clock is not None else RealClock()
        self._stale = stale_after_heartbeats
        self._lock = threading.Lock()  # guards _samples and processes
        self._samples: deque[tuple[float, int]] = deque()
        self.processes: list[ProcessInfo] = []
        """Every worker process seen by the last :meth:`snapshot`."""

    def snapshot(self) -> Snapshot:
        """The fleet now. Thread-safe; one Redis round trip.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        state = self.queue.fleet_state()
        now = self._clock.monotonic()
        done = sum(state.counters.get(k, 0) for k in ("succeeded", "dead_lettered", "cancelled"))
        with self._lock:
            samples = self._samples
            samples.append((now, done))
            while len(samples) > 2 and samples[1][0] <= now - _THROUGHPUT_WINDOW_S:
                samples.popleft()
            first, last = samples[0], samples[-1]
            rate = (last[1] - first[1]) / (last[0] - first[0]) if last[0] > first[0] else 0.0
        snap, processes = snapshot_from_state(state, throughput_per_s=max(0.0, rate),
                                              stale_after_heartbeats=self._stale)
        with self._lock:
            self.processes = processes
        return snap

    # -- the DLQ, from any host ------------------------------------------------------------------
    def dlq_list(self, offset: int = 0, limit: int = 100) -> list[DeadLetter]:
        """See :meth:`RedisQueue.dlq_list`."""
        return self.queue.dlq_list(offset, limit)

    def dlq_get(self, job_id: int) -> DeadLetter:
        """See :meth:`RedisQueue.dlq_get`."""
        return self.queue.dlq_get(job_id)


def _float(text: Any, default: float) -> float:
    try:
        return float(text) if text not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _json_list(text: str) -> list[Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def _threads(text: str) -> list[list[Any]]:
    rows = []
    for row in _json_list(text):
        if isinstance(row, list) and len(row) == 7:
            rows.append(row)
    return rows
