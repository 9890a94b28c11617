"""The log panel: periodic metrics lines, scaling events and state changes, bounded in length."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.reactive import var
from textual.widgets import Static

from engine import EngineState, ScaleEvent, Snapshot, format_log_line
from tui_dispatch.widgets._format import uptime

__all__ = ["MAX_LINES", "METRICS_EVERY_S", "EventLog", "LogFeed"]

METRICS_EVERY_S = 10.0
"""A metrics line is logged each time the engine's uptime enters a new period of this length."""

MAX_LINES = 1000
"""Lines the log panel keeps; older ones scroll away for good."""

_SEEN_EVENTS = 200


class LogFeed:
    """Turns successive snapshots into new log lines, each said once.

    Lines are stamped with the engine's uptime (``+0:01:40``), never the local clock, so the
    same snapshots always give the same lines. Pure: no widgets, no time.
    """

    def __init__(self, metrics_every_s: float = METRICS_EVERY_S) -> None:
        self.metrics_every_s = metrics_every_s
        self._last_period: int | None = None
        self._last_state: EngineState | None = None
        self._seen: set[ScaleEvent] = set()
        self._seen_order: deque[ScaleEvent] = deque()

    def lines(self, snap: Snapshot) -> list[tuple[str, str]]:
        """The new ``(kind, text)`` lines for ``snap``; kind is "metrics", "scale" or "state"."""
        out: list[tuple[str, str]] = []
        started_at = snap.taken_at - snap.uptime_s  # wall-clock time the engine started
        for event in snap.scale_events:
            if event in self._seen:
                continue
            self._remember(event)
            verb = "up" if event.delta > 0 else "down"
            text = (
                f"+{uptime(event.at - started_at)} scaled {verb} by {abs(event.delta)} "
                f"to {event.workers_after} workers: {event.reason}"
            )
            out.append(("scale", text))
        if snap.state is not self._last_state:
            if self._last_state is not None:
                out.append(
                    (
                        "state",
                        f"+{uptime(snap.uptime_s)} engine {self._last_state.value} → {snap.state.value}",
                    )
                )
            self._last_state = snap.state
        period = int(snap.uptime_s // self.metrics_every_s) if self.metrics_every_s > 0 else 0
        if period != self._last_period:
            self._last_period = period
            out.append(("metrics", f"+{uptime(snap.uptime_s)} {format_log_line(snap)}"))
        return out

    def _remember(self, event: ScaleEvent) -> None:
        self._seen.add(event)
        self._seen_order.append(event)
        if len(self._seen_order) > _SEEN_EVENTS:
            self._seen.discard(self._seen_order.popleft())


_STYLE = {"metrics": "", "scale": "bold", "state": "bold italic", "notice": "bold yellow"}


class EventLog(VerticalScroll):
    """The log panel: the lines of a :class:`LogFeed`, at most ``MAX_LINES`` of them.

    Lines are wrapped when they are drawn, not when they are written, so they re-wrap when the
    panel changes size and the same lines always look the same. It follows the newest line
    until the user scrolls up.
    """

    snapshot: var[Snapshot | None] = var(None, init=False)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.feed = LogFeed()
        self._lines: deque[Text] = deque(maxlen=MAX_LINES)
        self._body = Static("", id="log-body")
        self._notices_seen: set[tuple[float, str]] = set()

    def compose(self) -> ComposeResult:
        yield self._body

    def on_mount(self) -> None:
        self.border_title = "Log"
        self.anchor()  # follow the newest line until the user scrolls up

    @property
    def lines(self) -> list[Text]:
        """The lines kept, oldest first."""
        return list(self._lines)

    def add_notices(self, notices: tuple[tuple[float, str], ...], snap: Snapshot) -> None:
        """Log the source's ``(wall time, text)`` notes (a fleet's Redis outages), each once."""
        started_at = snap.taken_at - snap.uptime_s
        new = [(at, text) for at, text in notices if (at, text) not in self._notices_seen]
        for at, text in new:
            self._notices_seen.add((at, text))
        self._append([("notice", f"+{uptime(max(0.0, at - started_at))} {text}") for at, text in new])

    def watch_snapshot(self, snap: Snapshot | None) -> None:
        if snap is None:
            return
        self._append(self.feed.lines(snap))

    def _append(self, new: list[tuple[str, str]]) -> None:
        if not new:
            return
        for kind, line in new:
            stamp, _, rest = line.partition(" ")
            self._lines.append(Text.assemble((stamp, "dim"), " ", (rest, _STYLE[kind])))
        self._body.update(Text("\n").join(self._lines))
