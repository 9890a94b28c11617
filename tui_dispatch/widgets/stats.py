"""The summary panels: queue, throughput and latency, retries.

Each panel turns one :class:`engine.Snapshot` into a few lines of text. The text builders are
plain functions of the snapshot, so they are cheap and easy to test; the widgets only repaint
when the text changes.
"""

from __future__ import annotations

from collections import deque

from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical
from textual.markup import escape
from textual.reactive import var
from textual.widgets import Sparkline

from engine import Snapshot
from tui_dispatch.widgets._format import count, duration
from tui_dispatch.widgets._text import LiveText, Titled

__all__ = [
    "COUNTERS",
    "History",
    "QueuePanel",
    "RetriesPanel",
    "ThroughputPanel",
    "counter_values",
    "latency_lines",
    "queue_lines",
    "retry_lines",
]

HISTORY_POINTS = 60
"""Snapshots kept for each sparkline (60 polls: 15 s at the default refresh)."""


class History:
    """The recent values of one figure, one per distinct snapshot, padded with zeros.

    Snapshots with the same ``taken_at`` are the same picture of the engine, so polling a
    source that has not moved adds nothing.
    """

    def __init__(self, points: int = HISTORY_POINTS) -> None:
        self._values: deque[float] = deque([0.0] * points, maxlen=points)
        self._last_at: float | None = None

    def push(self, taken_at: float, value: float) -> bool:
        """Record ``value`` for the snapshot taken at ``taken_at``; False if already recorded."""
        if taken_at == self._last_at:
            return False
        self._last_at = taken_at
        self._values.append(value)
        return True

    @property
    def values(self) -> list[float]:
        """Oldest first."""
        return list(self._values)


def _pair(label: str, value: str) -> str:
    return f"{label} [b]{value}[/b]"


def queue_lines(snap: Snapshot) -> tuple[str, str]:
    """The queue panel's two lines of markup: the backlog now, and what else is waiting."""
    now = f"[b]{count(snap.backlog)}[/b] waiting"
    if snap.backlog:
        now += f" · oldest [b]{duration(snap.oldest_wait_s)}[/b]"
    more = " · ".join(
        (
            _pair("in flight", count(snap.in_flight)),
            _pair("retry wait", count(snap.scheduled)),
            _pair("DLQ", count(snap.dlq_size)),
        )
    )
    return now, more


def latency_lines(snap: Snapshot) -> str:
    """The p50/p95/p99 table of run time and queue wait, as fixed-width markup."""
    rows = [f"[dim]{'':<5}{'p50':>8}{'p95':>8}{'p99':>8}[/dim]"]
    for label, lat in (("run", snap.run_time), ("wait", snap.queue_wait)):
        rows.append(
            f"{label:<5}"
            + "".join(
                f"{duration(v):>8}" if lat.count else f"{'-':>8}"
                for v in (lat.p50, lat.p95, lat.p99)
            )
        )
    return "\n".join(rows)


COUNTERS: tuple[str, ...] = ("submitted", "succeeded", "failed", "retries", "dead", "cancelled")
"""The counters shown, in order."""


def counter_values(snap: Snapshot) -> tuple[str, ...]:
    """The counters' values, formatted, in the order of :data:`COUNTERS`."""
    c = snap.counters
    return tuple(
        count(v)
        for v in (c.submitted, c.succeeded, c.failed, c.retries, c.dead_lettered, c.cancelled)
    )


def retry_lines(snap: Snapshot) -> tuple[str, str]:
    """The retries panel: counts by retry number, then the retries due soonest."""
    if snap.retries_by_attempt:
        by_attempt = "by retry " + "  ".join(
            f"#{number} [b]{count(n)}[/b]" for number, n in snap.retries_by_attempt
        )
    else:
        by_attempt = "[dim]no retries yet[/dim]"
    if not snap.next_retries:
        return by_attempt, "[dim]nothing scheduled[/dim]"
    due = [f"[dim]{'due in':>7}  {'job':<8} attempt[/dim]"]
    for r in snap.next_retries:
        due.append(
            f"{duration(r.due_in_s):>7}  {'#' + str(r.job_id):<8} {r.attempt:>2} {escape(r.name)}"
        )
    if snap.scheduled > len(snap.next_retries):
        due.append(f"[dim]… and {count(snap.scheduled - len(snap.next_retries))} more[/dim]")
    return by_attempt, "\n".join(due)


class QueuePanel(Vertical):
    """Backlog depth now and over time, the retries waiting, the oldest wait."""

    snapshot: var[Snapshot | None] = var(None, init=False)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.history = History()
        self._now = LiveText(id="queue-now")
        self._spark = Sparkline(self.history.values, id="backlog-spark")
        self._more = LiveText(id="queue-more")

    def compose(self) -> ComposeResult:
        yield self._now
        yield self._spark
        yield self._more

    def on_mount(self) -> None:
        self.border_title = "Queue"

    def watch_snapshot(self, snap: Snapshot | None) -> None:
        if snap is None:
            return
        now, more = queue_lines(snap)
        self._now.show(now)
        self._more.show(more)
        if self.history.push(snap.taken_at, snap.backlog):
            self._spark.data = self.history.values


class ThroughputPanel(Vertical):
    """Jobs per second now and over time, latency percentiles, the counters."""

    snapshot: var[Snapshot | None] = var(None, init=False)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.history = History()
        self._rate = LiveText(id="rate")
        self._spark = Sparkline(self.history.values, id="rate-spark")
        self._latency = LiveText(id="latency")
        self._counters = {
            name: LiveText(id=f"count-{name}", classes="counter") for name in COUNTERS
        }

    def compose(self) -> ComposeResult:
        yield Horizontal(self._rate, self._spark, id="rate-row")
        yield self._latency
        yield Grid(*self._counters.values(), id="counters")

    def on_mount(self) -> None:
        self.border_title = "Throughput & latency"

    def watch_snapshot(self, snap: Snapshot | None) -> None:
        if snap is None:
            return
        self._rate.show(f"[b]{count(round(snap.throughput_per_s))}[/b] jobs/s")
        self._latency.show(latency_lines(snap))
        for name, value in zip(COUNTERS, counter_values(snap), strict=True):
            self._counters[name].show(f"{name} [b]{value}[/b]")
        if self.history.push(snap.taken_at, snap.throughput_per_s):
            self._spark.data = self.history.values


class RetriesPanel(Titled, Vertical):
    """Retries by retry number, and the retries due soonest."""

    snapshot: var[Snapshot | None] = var(None, init=False)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._counts = LiveText(id="retry-counts")
        self._next = LiveText(id="retry-next")

    def compose(self) -> ComposeResult:
        yield self._counts
        yield self._next

    def on_mount(self) -> None:
        self.border_title = "Retries"

    def watch_snapshot(self, snap: Snapshot | None) -> None:
        if snap is None:
            return
        by_attempt, due = retry_lines(snap)
        self._counts.show(by_attempt)
        self._next.show(due)
        self.set_titles(
            subtitle=f"{count(snap.scheduled)} scheduled · {count(snap.counters.retries)} total"
        )
