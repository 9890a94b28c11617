"""The workers panel: one line per worker, rendered lazily so 500 workers cost what 20 do."""

from __future__ import annotations

from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.geometry import Size
from textual.reactive import var
from textual.scroll_view import ScrollView
from textual.strip import Strip

from engine import Snapshot, WorkerSnapshot, WorkerState
from tui_dispatch.widgets._format import clip, count, percent
from tui_dispatch.widgets._text import Titled

__all__ = ["WorkerList", "WorkersPanel", "worker_columns"]

_STATE_MARK = {
    WorkerState.BUSY: "● busy",
    WorkerState.IDLE: "○ idle",
    WorkerState.RETIRING: "◌ retiring",
}
_BAR = 6  # cells of the utilisation bar in wide layouts


def worker_columns(
    width: int, process_w: int = 0, id_w: int = 5
) -> tuple[int, int, int, int, int, int]:
    """How a row of ``width`` cells is cut: (id, state, process, job, done, util) widths.

    The job column takes what is left; below 52 cells the utilisation bar is dropped and
    only the percentage stays. ``process_w`` is the process column (fleet views only; 0 hides
    it), shrunk so that the job column keeps at least 12 cells when it can. ``id_w`` fits the
    largest worker id.
    """
    state_w, done_w = 11, 8
    util_w = 5 + (_BAR + 1 if width >= 52 else 0)
    rest = width - id_w - state_w - done_w - util_w
    process_w = max(0, min(process_w, rest - 12))
    job_w = max(4, rest - process_w)
    return id_w, state_w, process_w, job_w, done_w, util_w


class WorkerList(ScrollView, can_focus=True):
    """Every worker, one per line, with a pinned header line. Only visible lines are rendered.

    A new tuple of workers repaints only the visible lines whose worker changed, and a row
    already drawn for the same worker at the same width is reused, so 500 workers cost what
    the 30 or so on screen cost.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "workerlist--header",
        "workerlist--busy",
        "workerlist--idle",
        "workerlist--retiring",
        "workerlist--bar",
        "workerlist--bar-empty",
    }

    DEFAULT_CSS = """
    WorkerList {
        height: 1fr;
        scrollbar-size-vertical: 1;
    }
    WorkerList > .workerlist--header { color: $text-muted; text-style: bold; }
    WorkerList > .workerlist--busy { color: $text-success; }
    WorkerList > .workerlist--idle { color: $text-muted; }
    WorkerList > .workerlist--retiring { color: $text-warning; }
    WorkerList > .workerlist--bar { color: $primary; }
    WorkerList > .workerlist--bar-empty { color: $primary 25%; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._workers: tuple[WorkerSnapshot, ...] = ()
        self._process_w = 0  # width of the process column: 0 unless workers name their process
        self._id_w = 3  # width of the id column: the largest id's digits and a space
        self._rows: dict[tuple[WorkerSnapshot, int], Strip] = {}  # drawn rows, by (worker, width)
        self._styles: dict[str, Style] = {}  # component styles, until the styles change
        self.lines_rendered = 0
        """How many lines were painted so far (tests use it to check the list renders lazily)."""

    @property
    def shown(self) -> tuple[WorkerSnapshot, ...]:
        """The workers shown."""
        return self._workers

    def show(self, workers: tuple[WorkerSnapshot, ...]) -> None:
        """Show ``workers`` (UI thread only)."""
        if workers == self._workers:
            return
        old, self._workers = self._workers, workers
        longest = max((len(w.process) for w in workers if w.process), default=0)
        process_w = min(longest, 24) + 1 if longest else 0
        id_w = max(3, len(str(max((w.id for w in workers), default=0))) + 1)
        if len(old) != len(workers) or (process_w, id_w) != (self._process_w, self._id_w):
            self._process_w, self._id_w = process_w, id_w
            self._rows.clear()
            self.virtual_size = Size(self.size.width, len(workers) + 1)
            self.refresh()
            return
        top = self.scroll_offset.y
        for index in range(top, min(len(workers), top + self.size.height)):
            if workers[index] != old[index]:
                self.refresh_line(index + 1)  # line 0 is the pinned header
        if len(self._rows) > 4 * max(len(workers), 256):
            self._rows.clear()

    def render_line(self, y: int) -> Strip:
        self.lines_rendered += 1
        width = self.scrollable_content_region.width
        if y == 0:
            return self._header(width)
        index = self.scroll_offset.y + y - 1
        if index >= len(self._workers):
            return Strip.blank(width, self.rich_style)
        return self._row(self._workers[index], width)

    def _header(self, width: int) -> Strip:
        id_w, state_w, process_w, job_w, done_w, util_w = worker_columns(
            width, self._process_w, self._id_w
        )
        process = f"{'process':<{process_w}}"[:process_w]
        text = (
            f"{'id':>{id_w - 1}} {'state':<{state_w}}{process}{'job':<{job_w}}"
            f"{'done':>{done_w - 1}} {'util':<{util_w}}"
        )
        style = self.rich_style + self._style("header")
        return Strip([Segment(text.ljust(width)[:width], style)], width)

    def _row(self, worker: WorkerSnapshot, width: int) -> Strip:
        key = (worker, width)
        strip = self._rows.get(key)
        if strip is None:
            strip = self._rows[key] = self._draw_row(worker, width)
        return strip

    def _draw_row(self, worker: WorkerSnapshot, width: int) -> Strip:
        id_w, state_w, process_w, job_w, done_w, util_w = worker_columns(
            width, self._process_w, self._id_w
        )
        base = self.rich_style
        state_style = base + self._style(worker.state.value)
        if worker.job_id is not None:
            job = f"#{worker.job_id} {worker.job_name or ''}".rstrip()
        else:
            job = "—"
        segments = [
            Segment(f"{worker.id:>{id_w - 1}} ", base),
            Segment(_STATE_MARK[worker.state].ljust(state_w), state_style),
            Segment(clip(worker.process or "", process_w - 1).ljust(process_w), base),
            Segment(clip(job, job_w - 1).ljust(job_w), base),
            Segment(f"{count(worker.jobs_done):>{done_w - 1}} ", base),
        ]
        if util_w > 5:
            filled = round(max(0.0, min(1.0, worker.utilisation)) * _BAR)
            segments.append(Segment("█" * filled, base + self._style("bar")))
            segments.append(Segment("█" * (_BAR - filled), base + self._style("bar-empty")))
            segments.append(Segment(" ", base))
        segments.append(Segment(f"{percent(worker.utilisation):>4} ", base))
        strip = Strip(segments)
        return strip.adjust_cell_length(width, base)

    def _style(self, part: str) -> Style:
        style = self._styles.get(part)
        if style is None:
            style = self._styles[part] = self.get_component_rich_style(f"workerlist--{part}")
        return style

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles.clear()  # a new theme, or hover/focus: draw again with the new styles
        self._rows.clear()

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self._workers) + 1)


class WorkersPanel(Titled, Vertical):
    """The workers panel: a title with the counts, and the :class:`WorkerList`."""

    snapshot: var[Snapshot | None] = var(None, init=False)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.list = WorkerList(id="worker-list")

    def compose(self) -> ComposeResult:
        yield self.list

    def on_mount(self) -> None:
        self.set_titles("Workers")

    def watch_snapshot(self, snap: Snapshot | None) -> None:
        if snap is None:
            return
        title = (
            f"Workers {snap.workers_total}: {snap.workers_busy} busy {snap.workers_idle} idle"
            + (f" {snap.workers_retiring} retiring" if snap.workers_retiring else "")
        )
        stuck = f"{snap.stuck_threads} stuck · " if snap.stuck_threads else ""
        self.set_titles(title, f"{stuck}util {percent(snap.utilisation)}")
        self.list.show(snap.workers)
