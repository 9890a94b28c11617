"""The live dashboard: a Textual app watching a :class:`~tui_dispatch.source.Source`.

Build it with :func:`make_app`::

    source = LiveSource(dispatcher, workload)
    make_app(source).run()
    source.close()

How it stays responsive at any job rate:

* It polls ``source.snapshot()`` on a timer, on one poll thread, and never starts a poll while
  the previous one runs. One snapshot is one repaint; nothing happens per job.
* The DLQ panel holds one page (``source.dlq_list(offset, limit)``), fetched in the same
  poll only when the DLQ changed or the user paged.
* Every command (bursts, pause, DLQ edits, shutdown) runs in a thread worker, so a burst of
  100,000 jobs or a slow store never blocks the screen.

The app does not own the source: whoever made it closes it after ``run()`` returns.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Grid
from textual.reactive import var
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer
from textual.worker import Worker, WorkerState

from engine import DeadLetter, EngineState, Snapshot
from tui_dispatch.screens import ConfirmScreen, DetailChoice, DlqDetailScreen, HelpScreen
from tui_dispatch.source import Source
from tui_dispatch.widgets import (
    DlqPanel,
    EngineHeader,
    EventLog,
    QueuePanel,
    RetriesPanel,
    ThroughputPanel,
    WorkersPanel,
)
from tui_dispatch.widgets._format import count

__all__ = ["COMMANDS", "REFRESH_STEPS_S", "Command", "DashboardApp", "make_app"]

REFRESH_STEPS_S: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.0)
"""The refresh intervals the ``t`` key cycles through."""


@dataclass(frozen=True, slots=True)
class Command:
    """One user command: its keys, its action, and how the footer, help and palette name it."""

    keys: str
    key_display: str
    action: str
    footer: str
    title: str
    show: bool = True


COMMANDS: tuple[Command, ...] = (
    Command("b", "b", "burst('small')", "Burst", "Small burst of jobs"),
    Command("B", "B", "burst('large')", "Big burst", "Large burst of jobs"),
    Command("f", "f", "burst('failing')", "Failing", "Failing burst (jobs that always fail)"),
    Command("p", "p", "toggle_pause", "Pause", "Pause / resume dispatch"),
    Command("plus,equals_sign", "+", "raise_max", "Max+", "Raise max workers by one"),
    Command("minus", "-", "lower_max", "Max-", "Lower max workers by one"),
    Command("r", "r", "requeue_selected", "Requeue", "Requeue the selected dead letter"),
    Command("R", "R", "requeue_all", "Requeue all", "Requeue every dead letter", show=False),
    Command(
        "d,delete", "d", "delete_selected", "Delete", "Delete the selected dead letter", show=False
    ),
    Command("X", "X", "purge", "Purge", "Purge the dead-letter queue", show=False),
    Command(
        "left_square_bracket", "[", "dlq_page(-1)", "Prev page", "Previous DLQ page", show=False
    ),
    Command("right_square_bracket", "]", "dlq_page(1)", "Next page", "Next DLQ page", show=False),
    Command("s", "s", "shutdown(True)", "Drain", "Graceful shutdown: finish every job, then stop"),
    Command(
        "K", "K", "shutdown(False)", "Kill", "Forceful shutdown: cancel waiting jobs, stop now"
    ),
    Command("t", "t", "cycle_refresh", "Refresh", "Change the refresh rate"),
    Command("question_mark", "?", "help", "Help", "Show every key"),
    Command("q", "q", "quit", "Quit", "Quit (asks first when jobs are pending)"),
)
"""Every command the dashboard has. Bindings, the help screen and the palette all come from it."""

_HELP_EXTRA: tuple[tuple[str, str], ...] = (
    ("enter", "Open the selected dead letter, with its traceback"),
    ("tab", "Next panel: workers, DLQ table, log"),
    ("ctrl+p", "Command palette: every command, by name"),
)


@dataclass(frozen=True, slots=True)
class _Poll:
    """What one poll brought back."""

    snapshot: Snapshot
    dlq_generation: int
    dlq_offset: int
    dlq_page: tuple[DeadLetter, ...] | None  # None: the DLQ did not change, no page was read
    notices: tuple[tuple[float, str], ...] = ()  # the source's connection notes, if it keeps any


class DashboardApp(App[None]):
    """The dashboard. Build it with :func:`make_app`; every method runs on the UI thread.

    Args:
        source: what to watch and drive.
        refresh_s: seconds between polls.
        small_burst: jobs submitted by ``b``.
        large_burst: jobs submitted by ``B``.
        failing_burst: always-failing jobs submitted by ``f``.
        freeze_gc: once the screen is built, ``gc.freeze()`` its objects until the app
            unmounts (see :meth:`_freeze_heap`); turn it off if your program manages the
            collector itself.
    """

    CSS_PATH = "app.tcss"
    TITLE = "tui-dispatch"
    # Two or three columns; short terminals drop the panels' side borders. (Textual types these
    # as instance variables, so a ClassVar annotation would not type-check.)
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]  # noqa: RUF012
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]  # noqa: RUF012
    BINDINGS: ClassVar[list[BindingType]] = [
        *(
            Binding(c.keys, c.action, c.footer, show=c.show, key_display=c.key_display)
            for c in COMMANDS
        ),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    snapshot: var[Snapshot | None] = var(None, init=False)
    """The latest snapshot; every panel shows a part of it."""
    refresh_s: var[float] = var(0.25, init=False)
    """Seconds between polls."""

    def __init__(
        self,
        source: Source,
        *,
        refresh_s: float = 0.25,
        small_burst: int = 100,
        large_burst: int = 10_000,
        failing_burst: int = 100,
        freeze_gc: bool = True,
    ) -> None:
        for name, value in (
            ("small_burst", small_burst),
            ("large_burst", large_burst),
            ("failing_burst", failing_burst),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1; got {value!r}")
        if (
            isinstance(refresh_s, bool)
            or not isinstance(refresh_s, int | float)
            or not 0 < refresh_s <= 60
        ):
            raise ValueError(f"refresh_s must be a number of seconds in (0, 60]; got {refresh_s!r}")
        super().__init__()
        self.source = source
        self.bursts = {"small": small_burst, "large": large_burst, "failing": failing_burst}
        self.set_reactive(DashboardApp.refresh_s, float(refresh_s))
        self._timer: Timer | None = None
        self._poll_pool: ThreadPoolExecutor | None = None  # the poll thread, while mounted
        self._freeze_gc = freeze_gc
        self._heap_frozen = False  # see _freeze_heap
        self._polling = False  # a poll is in flight
        self._poll_again = False  # ... and another was asked for meanwhile
        self._dlq_generation = 0  # bumped whenever the DLQ page must be read again
        self._dlq_shown_generation = -1
        self._dlq_key: tuple[int, ...] | None = None
        self._pending_max: int | None = None  # max_workers asked for, not yet in a snapshot
        self._command_done: dict[Worker[Any], Callable[[Any], str]] = {}
        # The main screen's widgets, kept so that a modal screen on top does not hide them.
        self.header = EngineHeader(id="header")
        self.dlq = DlqPanel(id="dlq")
        self.event_log = EventLog(id="log")
        self._panels = (
            QueuePanel(id="queue"),
            ThroughputPanel(id="throughput"),
            RetriesPanel(id="retries"),
            WorkersPanel(id="workers"),
        )
        self.polls = 0
        """Polls completed (successful or not)."""

    # ==========================================================================================
    # Layout
    # ==========================================================================================
    def compose(self) -> ComposeResult:
        yield self.header
        with Grid(id="panels"):
            yield from self._panels
            yield self.dlq
            yield self.event_log
        yield Footer()

    def on_mount(self) -> None:
        self._show_label()
        # One long-lived thread does every read of the source, so a slow store never blocks
        # the screen, and two polls can never overlap.
        self._poll_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tui-dispatch-poll")
        self._timer = self.set_interval(self.refresh_s, self.poll, name="poll")
        self.poll()
        if self._freeze_gc:
            self.call_after_refresh(self._freeze_heap)

    def _freeze_heap(self) -> None:
        """Move the objects alive now (widgets, styles, CSS: long-lived) out of the collector's way.

        The engine's job churn triggers many garbage collections; without this, every full one
        would rescan the screen's tens of thousands of objects, which costs the engine several
        percent of its throughput. Undone when the app unmounts.
        """
        gc.collect()
        gc.freeze()
        self._heap_frozen = True

    def on_unmount(self) -> None:
        if self._heap_frozen:
            gc.unfreeze()
            self._heap_frozen = False
        if self._poll_pool is not None:
            self._poll_pool.shutdown(wait=True, cancel_futures=True)

    def _show_label(self) -> None:
        self.header.label = f"{self.source.label} · {self.refresh_s:g}s"

    # ==========================================================================================
    # Polling
    # ==========================================================================================
    def poll(self) -> None:
        """Read the source now, unless a poll is in flight (then poll again right after it)."""
        if self._polling:
            self._poll_again = True
            return
        if self._poll_pool is None:  # not mounted yet: on_mount polls
            return
        self._polling = True
        # An async worker on the UI thread: Textual cancels it on exit, and a bug in it is
        # reported like any other instead of vanishing with a stray task.
        self.run_worker(self._poll_loop(), name="poll", group="poll")

    @property
    def polling(self) -> bool:
        """Whether a poll is in flight, or asked for while one was."""
        return self._polling or self._poll_again

    async def _poll_loop(self) -> None:
        """Poll, and poll again as long as someone asked for it meanwhile. UI thread."""
        assert self._poll_pool is not None
        try:
            while True:
                self._poll_again = False
                dlq = self.dlq
                want_page = self._dlq_shown_generation != self._dlq_generation
                fetch = partial(
                    self._fetch,
                    dlq.page_offset,
                    dlq.page_size,
                    self._dlq_generation,
                    None if want_page else self._dlq_key,
                )
                try:
                    result = await asyncio.wrap_future(self._poll_pool.submit(fetch))
                except Exception as error:  # the source failed: say so, keep polling
                    self._poll_failed(error)
                else:
                    self._poll_done(result)
                self.polls += 1
                if not self._poll_again:
                    break
        finally:
            self._polling = False

    def _fetch(
        self, offset: int, limit: int, generation: int, shown_key: tuple[int, ...] | None
    ) -> _Poll:
        """One poll, on the poll thread: the snapshot, and the DLQ page if it changed."""
        snap = self.source.snapshot()
        notices = getattr(self.source, "notices", None)  # optional: a fleet's outages and recoveries
        noted = tuple(notices()) if callable(notices) else ()
        if _dlq_key(snap) == shown_key:
            return _Poll(snap, generation, offset, None, noted)
        size = snap.dlq_size
        if offset >= size:  # entries went away under the page: show the last page
            offset = max(0, (size - 1) // limit * limit)
        page = tuple(self.source.dlq_list(offset, limit)) if size else ()
        return _Poll(snap, generation, offset, page, noted)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "command":
            self._command_state(event.worker, event.state)

    def _poll_done(self, result: _Poll) -> None:
        self.header.error = ""
        if result.dlq_page is not None:
            self.dlq.show_page(result.dlq_offset, result.dlq_page, result.snapshot.dlq_size)
            self._dlq_key = _dlq_key(result.snapshot)
            self._dlq_shown_generation = result.dlq_generation
        if result.notices:
            self.event_log.add_notices(result.notices, result.snapshot)
        self.snapshot = result.snapshot

    def _poll_failed(self, error: BaseException) -> None:
        self.header.error = f"cannot read {self.source.label}: {error}"

    def watch_snapshot(self, snap: Snapshot | None) -> None:
        if snap is None:
            return
        if self._pending_max == snap.max_workers:
            self._pending_max = None
        self.header.snapshot = snap
        for panel in self._panels:
            panel.snapshot = snap
        self.event_log.snapshot = snap

    def watch_refresh_s(self, refresh_s: float) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_interval(refresh_s, self.poll, name="poll")
        self._show_label()

    # ==========================================================================================
    # Commands: each runs in a thread worker; its outcome is a notification and a fresh poll
    # ==========================================================================================
    def run_command(
        self, name: str, call: Callable[[], Any], done: Callable[[Any], str] | None = None
    ) -> Worker[Any]:
        """Run ``call`` (a source method) in a thread worker, then notify and poll.

        Args:
            name: what it is, for the error message ("purge failed: ...").
            call: the work, run off the UI thread.
            done: turns the call's result into the success message (default: none shown).
        """
        worker: Worker[Any] = self.run_worker(
            call, name=name, group="command", thread=True, exit_on_error=False
        )
        self._command_done[worker] = done or (lambda _result: "")
        return worker

    def _command_state(self, worker: Worker[Any], state: WorkerState) -> None:
        if state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        done = self._command_done.pop(worker, None)
        if state is WorkerState.SUCCESS and done is not None:
            message = done(worker.result)
            if message:
                self.notify(message, timeout=3)
        elif state is WorkerState.ERROR:
            self._pending_max = None
            error = worker.error
            self.notify(f"{worker.name} failed: {error}", severity="error", timeout=6)
        self._dlq_generation += 1
        self.poll()

    def action_burst(self, kind: str) -> None:
        """Submit a burst of jobs ("small", "large" or "failing") from a thread worker."""
        n = self.bursts[kind]
        failing = kind == "failing"
        label = "failing jobs" if failing else "jobs"
        self.run_command(
            f"{kind} burst",
            partial(self.source.burst, n, failing=failing),
            lambda accepted: f"submitted {count(accepted)} {label}",
        )

    def action_toggle_pause(self) -> None:
        """Pause a running engine, resume a paused one."""
        snap = self.snapshot
        if snap is None:
            return
        if snap.state is EngineState.RUNNING:
            self.run_command("pause", self.source.pause, lambda _: "dispatch paused")
        elif snap.state is EngineState.PAUSED:
            self.run_command("resume", self.source.resume, lambda _: "dispatch resumed")
        else:
            self.notify(f"the engine is {snap.state.value}; nothing to pause", severity="warning")

    def action_raise_max(self) -> None:
        """One more worker allowed."""
        snap = self.snapshot
        if snap is None:
            return
        current = self._pending_max if self._pending_max is not None else snap.max_workers
        self._pending_max = current + 1
        self.run_command(
            "raise max workers",
            partial(self.source.set_limits, max_workers=current + 1),
            lambda _: f"max workers {current + 1}",
        )

    def action_lower_max(self) -> None:
        """One worker fewer allowed (min follows max down; never below one)."""
        snap = self.snapshot
        if snap is None:
            return
        current = self._pending_max if self._pending_max is not None else snap.max_workers
        target = current - 1
        if target < 1:
            self.notify("max workers is already 1", severity="warning")
            return
        self._pending_max = target
        low = target if snap.min_workers > target else None
        self.run_command(
            "lower max workers",
            partial(self.source.set_limits, min_workers=low, max_workers=target),
            lambda _: f"max workers {target}",
        )

    # -- the DLQ -------------------------------------------------------------------------------
    def _selected(self) -> DeadLetter | None:
        entry = self.dlq.selected
        if entry is None:
            self.notify("no dead letter selected", severity="warning")
        return entry

    def action_requeue_selected(self) -> None:
        """Send the selected dead letter back to the backlog."""
        entry = self._selected()
        if entry is not None:
            self._requeue(entry)

    def _requeue(self, entry: DeadLetter) -> None:
        self.run_command(
            "requeue",
            partial(self.source.dlq_requeue, entry.job_id),
            lambda _: f"requeued job #{entry.job_id}",
        )

    def action_delete_selected(self) -> None:
        """Drop the selected dead letter."""
        entry = self._selected()
        if entry is not None:
            self._delete(entry)

    def _delete(self, entry: DeadLetter) -> None:
        self.run_command(
            "delete",
            partial(self.source.dlq_delete, entry.job_id),
            lambda _: f"deleted job #{entry.job_id}",
        )

    def action_requeue_all(self) -> None:
        """Requeue every dead letter, after asking."""
        size = self.dlq.total
        if not size:
            self.notify("the DLQ is empty", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_command(
                    "requeue all",
                    self.source.dlq_requeue_all,
                    lambda n: f"requeued {count(n)} jobs",
                )

        self.push_screen(
            ConfirmScreen(f"Requeue all [b]{count(size)}[/b] dead letters?", yes="Requeue all"),
            answered,
        )

    def action_purge(self) -> None:
        """Drop every dead letter, after asking."""
        size = self.dlq.total
        if not size:
            self.notify("the DLQ is empty", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_command(
                    "purge", self.source.dlq_purge, lambda n: f"purged {count(n)} dead letters"
                )

        self.push_screen(
            ConfirmScreen(
                f"Purge all [b]{count(size)}[/b] dead letters? They cannot be requeued afterwards.",
                yes="Purge",
            ),
            answered,
        )

    def action_dlq_page(self, delta: int) -> None:
        """Show the next (``delta`` 1) or previous (-1) page of the DLQ."""
        dlq = self.dlq
        last_start = max(0, (dlq.total - 1) // dlq.page_size * dlq.page_size)
        offset = min(max(0, dlq.page_offset + delta * dlq.page_size), last_start)
        if offset != dlq.page_offset:
            dlq.page_offset = offset
            self._dlq_generation += 1
            self.poll()

    def action_dlq_detail(self) -> None:
        """Open the selected dead letter."""
        entry = self._selected()
        if entry is not None:
            self._open_detail(entry)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "dlq-table":
            self.action_dlq_detail()

    def _open_detail(self, entry: DeadLetter) -> None:
        def chosen(choice: DetailChoice) -> None:
            if choice == "requeue":
                self._requeue(entry)
            elif choice == "delete":
                self._delete(entry)

        self.push_screen(DlqDetailScreen(entry), chosen)

    # -- shutting down, quitting -------------------------------------------------------------
    def action_shutdown(self, graceful: bool) -> None:
        """Start a graceful (drain) or forceful shutdown of the engine, after asking."""
        snap = self.snapshot
        if snap is not None and snap.state is EngineState.STOPPED:
            self.notify("the engine is already stopped", severity="warning")
            return
        pending = count(snap.unfinished) if snap is not None else "all"
        if graceful:
            question = (
                f"Drain the engine? It takes no new jobs, finishes the [b]{pending}[/b] "
                "unfinished ones, then stops."
            )
            yes, done = "Drain", "draining: finishing every job, then stopping"
        else:
            question = (
                "Stop the engine now? Queued and scheduled jobs are cancelled; running jobs get "
                "a moment to finish, then are abandoned."
            )
            yes, done = "Stop now", "stopping now"

        def answered(ok: bool | None) -> None:
            if ok:
                self.run_command(
                    "graceful shutdown" if graceful else "forceful shutdown",
                    partial(self.source.shutdown, graceful),
                    lambda _: done,
                )

        self.push_screen(ConfirmScreen(question, yes=yes), answered)

    async def action_quit(self) -> None:
        """Quit; when jobs are still pending, ask first (they are lost with the process)."""
        snap = self.snapshot
        if snap is None or snap.state is EngineState.STOPPED or snap.unfinished == 0:
            self.exit()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.exit()

        self.push_screen(
            ConfirmScreen(
                f"[b]{count(snap.unfinished)}[/b] jobs are still pending. Quit anyway?", yes="Quit"
            ),
            answered,
        )

    def action_cycle_refresh(self) -> None:
        """Poll at the next rate in :data:`REFRESH_STEPS_S` (wrapping round)."""
        later = [step for step in REFRESH_STEPS_S if step > self.refresh_s]
        self.refresh_s = later[0] if later else REFRESH_STEPS_S[0]
        self.notify(f"refreshing every {self.refresh_s:g}s", timeout=2)

    def action_help(self) -> None:
        """Show every key."""
        rows = [(c.key_display, c.title) for c in COMMANDS] + list(_HELP_EXTRA)
        self.push_screen(HelpScreen(rows))

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for c in COMMANDS:
            if c.action == "quit":
                continue  # Textual's own "Quit" entry already runs action_quit
            yield SystemCommand(
                c.title, f"key: {c.key_display}", partial(self.run_action, c.action)
            )
        yield SystemCommand("Open dead letter", "key: enter on a DLQ row", self.action_dlq_detail)


def _dlq_key(snap: Snapshot) -> tuple[int, ...]:
    """Figures that change whenever the DLQ's content does (size alone misses add+delete)."""
    c = snap.counters
    return (snap.dlq_size, c.dead_lettered, c.requeued, c.dlq_evicted)


def make_app(
    source: Source,
    *,
    refresh_s: float = 0.25,
    small_burst: int = 100,
    large_burst: int = 10_000,
    failing_burst: int = 100,
    freeze_gc: bool = True,
) -> DashboardApp:
    """The dashboard over ``source``; call ``.run()`` on it. See :class:`DashboardApp`.

    Raises:
        ValueError: a burst size below 1, or a refresh interval outside (0, 60] seconds.
    """
    return DashboardApp(
        source,
        refresh_s=refresh_s,
        small_burst=small_burst,
        large_burst=large_burst,
        failing_burst=failing_burst,
        freeze_gc=freeze_gc,
    )
