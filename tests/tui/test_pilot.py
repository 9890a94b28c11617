"""Every key and command of the dashboard, driven through Textual's pilot against a FixedSource.

Each test presses a key (or clicks, or uses the command palette) and checks both the command the
source received and what the screen shows afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from textual.binding import Binding
from textual.command import CommandList, CommandPalette
from textual.widgets import DataTable, Label, ProgressBar
from textual.widgets._footer import FooterKey

from engine import DispatcherClosed, EngineState, Snapshot
from tui_dispatch.app import COMMANDS, REFRESH_STEPS_S, DashboardApp, make_app
from tui_dispatch.scenarios import (
    WIDE,
    build_dead_letters,
    build_snapshot,
    dlq_populated,
    idle,
    settle,
    stopped,
    under_load,
)
from tui_dispatch.screens import ConfirmScreen, DlqDetailScreen, HelpScreen
from tui_dispatch.source import FixedSource
from tui_dispatch.widgets import PAGE_SIZE, DlqPanel, EngineHeader, EventLog, WorkerList
from tui_dispatch.widgets._text import LiveText

from .conftest import quiesce, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@asynccontextmanager
async def running(
    source: FixedSource, size: tuple[int, int] = WIDE, **kwargs: Any
) -> AsyncIterator[Any]:
    app = make_app(source, **kwargs)
    record_notifications(app)
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        yield pilot


def commands(source: FixedSource) -> list[tuple[str, tuple[Any, ...]]]:
    return [c for c in source.calls if c[0] != "close"]


def header_state(app: DashboardApp) -> str:
    return app.query_one("#state", LiveText).markup


def record_notifications(app: DashboardApp) -> None:
    """Keep every message the app notifies in ``app.notes`` (besides showing it)."""
    notes: list[str] = []
    show = app.notify

    def notify(message: str, **kwargs: Any) -> None:
        notes.append(message)
        show(message, **kwargs)

    app.notify = notify  # type: ignore[method-assign]
    app.notes = notes  # type: ignore[attr-defined]


def toasts(app: DashboardApp) -> list[str]:
    return list(app.notes)  # type: ignore[attr-defined]


# -- polling -------------------------------------------------------------------------------------
async def test_the_app_shows_what_the_source_serves() -> None:
    source = under_load()
    async with running(source) as pilot:
        app = pilot.app
        assert app.snapshot is source.last
        assert "RUNNING" in header_state(app)
        workers = app.query_one(WorkerList)
        assert workers.shown == source.last.workers
        assert app.query_one(DlqPanel).total == 3
        assert [e.job_id for e in app.query_one(DlqPanel).entries] == [
            e.job_id for e in source.dlq_list(0, 3)
        ]


async def test_a_poll_never_starts_while_the_previous_one_runs() -> None:
    class SlowSource(FixedSource):
        def __init__(self) -> None:
            super().__init__(build_snapshot(uptime_s=1.0))
            self.gate = threading.Event()
            self.active = 0
            self.most_active = 0
            self.calls_started = 0
            self._count_lock = threading.Lock()

        def snapshot(self) -> Snapshot:
            with self._count_lock:
                self.active += 1
                self.calls_started += 1
                self.most_active = max(self.most_active, self.active)
            try:
                assert self.gate.wait(5.0), "the test never opened the gate"
                return super().snapshot()
            finally:
                with self._count_lock:
                    self.active -= 1

    source = SlowSource()
    app = make_app(source, refresh_s=0.1)
    async with app.run_test(size=WIDE) as pilot:
        await wait_until(pilot, lambda: source.calls_started == 1)
        await pilot.pause(0.5)  # five timer ticks while the first poll is stuck
        assert source.calls_started == 1
        source.gate.set()
        await wait_until(pilot, lambda: app.polls >= 3)
        assert source.most_active == 1


async def test_a_failing_source_shows_an_error_and_polling_goes_on() -> None:
    class FlakySource(FixedSource):
        failing = True

        def snapshot(self) -> Snapshot:
            if self.failing:
                raise ConnectionError("redis went away")
            return super().snapshot()

    source = FlakySource(build_snapshot(uptime_s=3.0))
    app = make_app(source, refresh_s=0.1)
    async with app.run_test(size=WIDE) as pilot:
        header = app.query_one(EngineHeader)
        await wait_until(pilot, lambda: "redis went away" in header.error)
        assert app.is_running
        source.failing = False
        await wait_until(pilot, lambda: header.error == "" and app.snapshot is not None)
        assert "RUNNING" in header_state(app)


# -- bursts --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "expected"),
    [("b", ("burst", (7, False))), ("B", ("burst", (70, False))), ("f", ("burst", (5, True)))],
)
async def test_burst_keys_submit_their_burst(
    key: str, expected: tuple[str, tuple[Any, ...]]
) -> None:
    source = idle()
    before = source.last.counters.submitted
    async with running(source, small_burst=7, large_burst=70, failing_burst=5) as pilot:
        await pilot.press(key)
        await quiesce(pilot)
        assert commands(source) == [expected]
        n = expected[1][0]
        assert pilot.app.snapshot.counters.submitted == before + n
        assert any(f"submitted {n}" in t for t in toasts(pilot.app))


async def test_a_burst_runs_off_the_ui_thread() -> None:
    class ThreadSource(FixedSource):
        burst_thread: int | None = None

        def burst(self, n: int, *, failing: bool = False) -> int:
            self.burst_thread = threading.get_ident()
            return super().burst(n, failing=failing)

    source = ThreadSource(build_snapshot(uptime_s=1.0))
    async with running(source) as pilot:
        await pilot.press("b")
        await quiesce(pilot)
        assert source.burst_thread is not None
        assert source.burst_thread != threading.get_ident()  # the test runs on the UI thread


async def test_a_failed_command_is_reported_not_raised() -> None:
    class ClosedSource(FixedSource):
        def burst(self, n: int, *, failing: bool = False) -> int:
            raise DispatcherClosed("the dispatcher is shut down")

    source = ClosedSource(build_snapshot(uptime_s=1.0))
    async with running(source) as pilot:
        await pilot.press("b")
        await quiesce(pilot)
        assert pilot.app.is_running
        assert any(
            "small burst failed: the dispatcher is shut down" in t for t in toasts(pilot.app)
        )


# -- pause, pool bounds --------------------------------------------------------------------------
async def test_p_pauses_then_resumes() -> None:
    source = idle()
    async with running(source) as pilot:
        await pilot.press("p")
        await quiesce(pilot)
        assert commands(source) == [("pause", ())]
        assert "PAUSED" in header_state(pilot.app)
        await pilot.press("p")
        await quiesce(pilot)
        assert commands(source) == [("pause", ()), ("resume", ())]
        assert "RUNNING" in header_state(pilot.app)


async def test_plus_and_minus_move_max_workers() -> None:
    source = idle()  # min 4, max 8
    async with running(source) as pilot:
        await pilot.press("plus", "plus")
        await quiesce(pilot)
        assert commands(source) == [("set_limits", (None, 9)), ("set_limits", (None, 10))]
        assert pilot.app.snapshot.max_workers == 10
        await pilot.press("minus")
        await quiesce(pilot)
        assert commands(source)[-1] == ("set_limits", (None, 9))
        assert "max 9" in pilot.app.query_one("#pool", LiveText).markup


async def test_minus_takes_min_workers_down_with_max() -> None:
    source = FixedSource(build_snapshot(uptime_s=1.0, min_workers=3, max_workers=3))
    async with running(source) as pilot:
        await pilot.press("minus")
        await quiesce(pilot)
        assert commands(source) == [("set_limits", (2, 2))]


async def test_minus_stops_at_one_worker() -> None:
    source = FixedSource(build_snapshot(uptime_s=1.0, min_workers=1, max_workers=1))
    async with running(source) as pilot:
        await pilot.press("minus")
        await quiesce(pilot)
        assert commands(source) == []
        assert any("already 1" in t for t in toasts(pilot.app))


# -- the DLQ -------------------------------------------------------------------------------------
async def focus_dlq(pilot: Any) -> DataTable[str]:
    table: DataTable[str] = pilot.app.query_one("#dlq-table", DataTable)
    table.focus()
    await pilot.pause()
    return table


async def test_r_requeues_the_selected_dead_letter() -> None:
    source = dlq_populated(30)
    second = source.dlq_list(1, 1)[0]
    async with running(source) as pilot:
        await focus_dlq(pilot)
        await pilot.press("down", "r")
        await quiesce(pilot)
        assert commands(source) == [("dlq_requeue", (second.job_id,))]
        assert pilot.app.query_one(DlqPanel).total == 29
        assert second.job_id not in [e.job_id for e in pilot.app.query_one(DlqPanel).entries]


async def test_d_deletes_the_selected_dead_letter() -> None:
    source = dlq_populated(30)
    first = source.dlq_list(0, 1)[0]
    async with running(source) as pilot:
        await pilot.press("d")
        await quiesce(pilot)
        assert commands(source) == [("dlq_delete", (first.job_id,))]
        assert pilot.app.snapshot.dlq_size == 29


async def test_r_with_an_empty_dlq_says_so() -> None:
    source = idle()
    async with running(source) as pilot:
        await pilot.press("r", "d")
        await quiesce(pilot)
        assert commands(source) == []
        assert any("no dead letter selected" in t for t in toasts(pilot.app))


@pytest.mark.parametrize(("key", "call"), [("R", "dlq_requeue_all"), ("X", "dlq_purge")])
async def test_bulk_dlq_commands_ask_first(key: str, call: str) -> None:
    source = dlq_populated(30)
    async with running(source) as pilot:
        await pilot.press(key)
        await pilot.pause()
        assert isinstance(pilot.app.screen, ConfirmScreen)
        assert "30" in str(pilot.app.screen.query_one("#question", Label).render())
        await pilot.press("n")
        await quiesce(pilot)
        assert commands(source) == []
        await pilot.press(key)
        await pilot.pause()
        await pilot.press("y")
        await quiesce(pilot)
        assert commands(source) == [(call, ())]
        assert pilot.app.query_one(DlqPanel).total == 0
        assert pilot.app.query_one("#dlq-table", DataTable).row_count == 0


async def test_enter_opens_the_detail_with_the_traceback() -> None:
    source = dlq_populated(30)
    third = source.dlq_list(2, 1)[0]
    async with running(source) as pilot:
        await focus_dlq(pilot)
        await pilot.press("down", "down", "enter")
        await pilot.pause()
        screen = pilot.app.screen
        assert isinstance(screen, DlqDetailScreen)
        assert screen.entry == third
        shown = str(screen.query_one("#traceback").render())
        assert "Traceback (most recent call last):" in shown
        assert third.exc_message in shown
        await pilot.press("escape")
        await quiesce(pilot)
        assert not isinstance(pilot.app.screen, DlqDetailScreen)
        assert commands(source) == []


@pytest.mark.parametrize(("key", "call"), [("r", "dlq_requeue"), ("d", "dlq_delete")])
async def test_the_detail_screen_requeues_and_deletes(key: str, call: str) -> None:
    source = dlq_populated(30)
    first = source.dlq_list(0, 1)[0]
    async with running(source) as pilot:
        await focus_dlq(pilot)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(pilot.app.screen, DlqDetailScreen)
        await pilot.press(key)
        await quiesce(pilot)
        assert commands(source) == [(call, (first.job_id,))]
        assert not isinstance(pilot.app.screen, DlqDetailScreen)


async def test_the_dlq_is_read_a_page_at_a_time_even_with_100_000_entries() -> None:
    entries = build_dead_letters_fast(100_000)
    source = FixedSource(build_snapshot(uptime_s=5.0, dead=100_000, succeeded=1), entries)
    async with running(source) as pilot:
        app = pilot.app
        dlq = app.query_one(DlqPanel)
        table = app.query_one("#dlq-table", DataTable)
        assert dlq.total == 100_000
        assert table.row_count == PAGE_SIZE
        assert "1\u2013100" in str(dlq.border_title)
        await pilot.press("right_square_bracket", "right_square_bracket")
        await quiesce(pilot)
        assert dlq.page_offset == 2 * PAGE_SIZE
        assert dlq.entries[0] == entries[200]
        await pilot.press("left_square_bracket")
        await quiesce(pilot)
        assert dlq.page_offset == PAGE_SIZE
        await pilot.press("left_square_bracket", "left_square_bracket")
        await quiesce(pilot)
        assert dlq.page_offset == 0
        assert source.dlq_reads, "the DLQ was never read"
        assert all(limit == PAGE_SIZE for _offset, limit in source.dlq_reads)
        # Polls of an unchanged DLQ do not read it again.
        reads = len(source.dlq_reads)
        polls = app.polls
        for _ in range(5):
            app.poll()
            await quiesce(pilot)
        assert app.polls >= polls + 5
        assert len(source.dlq_reads) == reads


def build_dead_letters_fast(n: int) -> list[Any]:
    """``n`` distinct dead letters sharing one template (fast to build)."""
    template = build_dead_letters(__import__("random").Random(9), 1)[0]
    import dataclasses

    return [dataclasses.replace(template, job_id=i) for i in range(1, n + 1)]


async def test_a_click_selects_a_dlq_row() -> None:
    source = dlq_populated(30)
    fourth = source.dlq_list(3, 1)[0]
    async with running(source) as pilot:
        table = pilot.app.query_one("#dlq-table", DataTable)
        assert await pilot.click(table, offset=(2, 4))  # header is row 0 of the widget
        await pilot.pause()
        assert table.cursor_row == 3
        await pilot.press("r")
        await quiesce(pilot)
        assert commands(source) == [("dlq_requeue", (fourth.job_id,))]


async def test_clicking_a_footer_key_runs_it() -> None:
    source = idle()
    async with running(source) as pilot:
        key = next(k for k in pilot.app.query(FooterKey) if k.key == "b")
        assert await pilot.click(key)
        await quiesce(pilot)
        assert commands(source) == [("burst", (100, False))]


# -- shutdown, quit ------------------------------------------------------------------------------
async def test_s_drains_after_asking_and_shows_progress() -> None:
    source = under_load()
    async with running(source) as pilot:
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(pilot.app.screen, ConfirmScreen)
        await pilot.press("y")
        await quiesce(pilot)
        assert commands(source) == [("shutdown", (True,))]
        assert "DRAINING" in header_state(pilot.app)
        assert pilot.app.query_one("#drain").display
        bar = pilot.app.query_one("#drain-bar", ProgressBar)
        assert bar.total == source.last.unfinished


async def test_drain_progress_counts_down_the_unfinished_jobs() -> None:
    snaps = [
        build_snapshot(
            uptime_s=10.0 + i, state=EngineState.DRAINING, backlog=left, succeeded=1000 - left
        )
        for i, left in enumerate((1000, 600, 250))
    ]
    async with running(FixedSource(snaps)) as pilot:
        bar = pilot.app.query_one("#drain-bar", ProgressBar)
        assert (bar.total, bar.progress) == (1000, 750)
        assert "250 left" in pilot.app.query_one("#drain-left", LiveText).markup


async def test_capital_k_stops_now_after_asking() -> None:
    source = under_load()
    async with running(source) as pilot:
        await pilot.press("K")
        await pilot.pause()
        assert isinstance(pilot.app.screen, ConfirmScreen)
        await pilot.press("escape")
        await quiesce(pilot)
        assert commands(source) == []
        await pilot.press("K")
        await pilot.pause()
        await pilot.press("y")
        await quiesce(pilot)
        assert commands(source) == [("shutdown", (False,))]
        assert "STOPPED" in header_state(pilot.app)


async def test_shutdown_of_a_stopped_engine_is_refused() -> None:
    source = stopped()
    async with running(source) as pilot:
        await pilot.press("s")
        await quiesce(pilot)
        assert not isinstance(pilot.app.screen, ConfirmScreen)
        assert commands(source) == []


async def test_q_asks_first_when_jobs_are_pending() -> None:
    source = under_load()
    async with running(source) as pilot:
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(pilot.app.screen, ConfirmScreen)
        assert "jobs are still pending" in str(
            pilot.app.screen.query_one("#question", Label).render()
        )
        await pilot.press("n")
        await pilot.pause()
        assert pilot.app.is_running
        await pilot.press("q")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert not pilot.app.is_running
    assert source.closed is False  # the app never closes the source: its owner does


async def test_q_quits_at_once_when_nothing_is_pending() -> None:
    source = idle()
    async with running(source) as pilot:
        await pilot.press("q")
        await pilot.pause()
        assert not pilot.app.is_running


# -- refresh rate, help, palette -----------------------------------------------------------------
async def test_t_cycles_the_refresh_rate() -> None:
    source = idle()
    async with running(source) as pilot:
        app = pilot.app
        seen = [app.refresh_s]
        for _ in range(len(REFRESH_STEPS_S)):
            await pilot.press("t")
            seen.append(app.refresh_s)
        assert seen == [0.25, 0.5, 1.0, 2.0, 0.1, 0.25]
        assert app._timer is not None and app._timer._interval == 0.25
        assert "0.25s" in app.query_one(EngineHeader).label


async def test_the_refresh_timer_polls_at_the_chosen_rate() -> None:
    source = idle()
    app = make_app(source, refresh_s=0.05)
    async with app.run_test(size=WIDE) as pilot:
        await wait_until(pilot, lambda: app.polls >= 5)
        assert app._timer is not None and app._timer._interval == 0.05


async def test_question_mark_shows_every_key() -> None:
    source = idle()
    async with running(source) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        screen = pilot.app.screen
        assert isinstance(screen, HelpScreen)
        keys = [row[0] for row in screen.rows]
        assert keys[: len(COMMANDS)] == [c.key_display for c in COMMANDS]
        assert {"enter", "ctrl+p"} <= set(keys)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(pilot.app.screen, HelpScreen)


def test_every_command_has_an_action_and_a_binding() -> None:
    bound = {b.action for b in DashboardApp.BINDINGS if isinstance(b, Binding)}
    for c in COMMANDS:
        assert c.action in bound
        name = c.action.split("(")[0]
        assert callable(getattr(DashboardApp, f"action_{name}")), name


@pytest.mark.parametrize(
    ("query", "expected"),
    [("Small burst", ("burst", (100, False))), ("Failing burst", ("burst", (100, True)))],
)
async def test_the_command_palette_runs_commands(
    query: str, expected: tuple[str, tuple[Any, ...]]
) -> None:
    source = idle()
    async with running(source) as pilot:
        await pilot.press("ctrl+p")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, CommandPalette))
        await pilot.press(*query)
        hits = pilot.app.screen.query_one(CommandList)

        def found() -> bool:  # the palette searches asynchronously
            return hits.option_count > 0 and query in str(hits.get_option_at_index(0).prompt)

        await wait_until(pilot, found)
        await pilot.press("enter")
        await wait_until(pilot, lambda: bool(commands(source)))
        await quiesce(pilot)
        assert commands(source) == [expected]


async def test_the_palette_lists_every_command() -> None:
    source = idle()
    async with running(source) as pilot:
        titles = {c.title for c in pilot.app.get_system_commands(pilot.app.screen)}
        assert {c.title for c in COMMANDS if c.action != "quit"} <= titles
        assert "Quit" in titles  # Textual's own entry, which runs our action_quit


# -- the log -------------------------------------------------------------------------------------
async def test_the_log_has_metrics_lines_and_each_scale_event_once() -> None:
    source = under_load()
    async with running(source) as pilot:
        log = pilot.app.query_one(EventLog)
        text = "\n".join(line.plain for line in log.lines)
        assert text.count("scaled up by 2 to 4 workers") == 1
        assert text.count("scaled up by 8 to 16 workers") == 1
        assert "successful=" in text and "backlog=" in text
        lines_before = len(log.lines)
        for _ in range(5):
            pilot.app.poll()
            await quiesce(pilot)
        assert len(log.lines) == lines_before  # same snapshot again: nothing new to say


# -- 500 workers ---------------------------------------------------------------------------------
async def test_500_workers_stay_responsive_and_render_only_visible_lines() -> None:
    import dataclasses
    import time

    source = under_load(n_workers=500, busy=431, seed=5)
    async with running(source) as pilot:
        app = pilot.app
        workers = app.query_one(WorkerList)
        assert len(workers.shown) == 500
        # Twenty fresh 500-worker snapshots, each a full repaint, well within a few seconds.
        start = time.perf_counter()
        base = source.last
        for i in range(20):
            snap = dataclasses.replace(
                base,
                taken_at=base.taken_at + 1 + i,
                uptime_s=base.uptime_s + 1 + i,
                workers=tuple(
                    dataclasses.replace(w, jobs_done=w.jobs_done + i) for w in base.workers
                ),
            )
            workers.lines_rendered = 0
            app.snapshot = snap
            await pilot.pause()
            assert workers.lines_rendered <= 3 * workers.size.height  # not 500
        elapsed = time.perf_counter() - start
        assert elapsed < 10.0, f"20 repaints of 500 workers took {elapsed:.2f}s"
        # Every worker can be reached: scroll to the end with the keyboard.
        workers.focus()
        await pilot.press("end")
        await pilot.pause()
        last_line = str(workers.render_line(workers.size.height - 1).text)
        assert last_line.strip().startswith("500 ")


async def test_the_screen_is_frozen_out_of_the_gc_only_while_it_runs() -> None:
    import gc

    assert gc.get_freeze_count() == 0
    source = idle()
    async with running(source) as pilot:
        await wait_until(pilot, lambda: gc.get_freeze_count() > 0)
    assert gc.get_freeze_count() == 0
    app = make_app(idle(), freeze_gc=False)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        assert gc.get_freeze_count() == 0


# -- LiveText ------------------------------------------------------------------------------------
async def test_live_text_grows_after_a_reflow_that_beat_its_own_layout_request() -> None:
    """New lines get their height even when a screen reflow ran while a layout was pending.

    This is the window the first poll hit at 80x24 on Python 3.12+: the latency table kept the
    one-line height of its empty text.
    """
    from textual.app import App, ComposeResult

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield LiveText(id="text")

    async with One().run_test(size=(40, 10)) as pilot:
        text = pilot.app.query_one("#text", LiveText)
        assert text.size.height == 1
        text.refresh(layout=True)  # a layout request still pending when the screen reflows
        pilot.app.screen._refresh_layout()
        text.show("one\ntwo\nthree")
        await pilot.pause()
        await pilot.pause()
        assert text.size.height == 3


class _NoticingSource(FixedSource):
    """A fixed source that, like the Redis fleet source, keeps connection notices."""

    def __init__(self, base: FixedSource, notices: list[tuple[float, str]]) -> None:
        super().__init__(base.snapshot(), label="fleet with notices")
        self._notices = notices

    def notices(self) -> list[tuple[float, str]]:
        return list(self._notices)


async def test_a_sources_connection_notices_reach_the_log_once() -> None:
    base = idle()
    snap = base.snapshot()
    started = snap.taken_at - snap.uptime_s
    source = _NoticingSource(base, [(started + 5, "Redis unreachable: connection refused"),
                                    (started + 9, "Redis reachable again after 4.0s")])
    async with running(source) as pilot:
        app = pilot.app
        await wait_until(pilot, lambda: app.polls >= 3)
        texts = [line.plain for line in app.event_log.lines]
    noticed = [t for t in texts if "Redis" in t]
    assert noticed == ["+0:00:05 Redis unreachable: connection refused", "+0:00:09 Redis reachable again after 4.0s"]
