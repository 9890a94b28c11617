"""The one-line header: engine state, uptime, pool size and bounds, drain progress."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.markup import escape
from textual.reactive import var
from textual.widgets import ProgressBar

from engine import EngineState, Snapshot
from tui_dispatch.widgets._format import count, uptime
from tui_dispatch.widgets._text import LiveText

__all__ = ["EngineHeader"]

_MARK = {
    EngineState.RUNNING: "▶",
    EngineState.PAUSED: "‖",
    EngineState.DRAINING: "▼",
    EngineState.STOPPED: "■",
}


class EngineHeader(Horizontal):
    """Engine state, uptime, workers against min/max, and while draining, the drain progress.

    Attributes:
        drain_total: unfinished jobs when draining was first seen (the progress bar's total).
    """

    snapshot: var[Snapshot | None] = var(None, init=False)
    label: var[str] = var("", init=False)
    """What is being watched (the source's label) and the refresh rate."""
    error: var[str] = var("", init=False)
    """The last error reading the source, or "" when the last poll worked."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.drain_total = 0
        # Children are made here so that a snapshot arriving before they mount still lands.
        self._state = LiveText("connecting…", id="state")
        self._uptime = LiveText(id="uptime")
        self._pool = LiveText(id="pool")
        self._drain_bar = ProgressBar(total=None, show_eta=False, id="drain-bar")
        self._drain_left = LiveText(id="drain-left")
        self._drain = Horizontal(self._drain_bar, self._drain_left, id="drain")
        self._source_label = LiveText(id="source-label")

    def compose(self) -> ComposeResult:
        yield self._state
        yield self._uptime
        yield self._pool
        yield self._drain
        yield self._source_label

    def watch_label(self, label: str) -> None:
        self._show_label()

    def watch_error(self, error: str) -> None:
        self._show_label()

    def _show_label(self) -> None:
        widget = self._source_label
        if self.error:
            widget.show(f"[$text-error]⚠ {escape(self.error)}[/]")
        else:
            widget.show(escape(self.label))
        widget.set_class(bool(self.error), "-error")

    def watch_snapshot(self, snap: Snapshot | None) -> None:
        if snap is None:
            return
        state = self._state
        state.show(f"{_MARK[snap.state]} {snap.state.value.upper()}")
        for name in EngineState:
            state.set_class(snap.state is name, f"-{name.value}")
        self._uptime.show(f"up [b]{uptime(snap.uptime_s)}[/b]")
        self._pool.show(
            f"workers [b]{snap.workers_total}[/b] [dim](min {snap.min_workers} · max {snap.max_workers})[/dim]"
        )
        drain = self._drain
        draining = snap.state is EngineState.DRAINING
        drain.display = draining
        if draining:
            self.drain_total = max(self.drain_total, snap.unfinished)
            self._drain_bar.update(
                total=max(1, self.drain_total), progress=self.drain_total - snap.unfinished
            )
            self._drain_left.show(f"{count(snap.unfinished)} left")
        else:
            self.drain_total = 0
