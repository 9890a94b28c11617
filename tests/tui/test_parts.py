"""The dashboard's pure parts: FixedSource, the log feed, the panel text, the formatters."""

from __future__ import annotations

import dataclasses

import pytest

from engine import EngineState, JobNotFound, Latency, ScaleEvent, ScheduledRetry
from tui_dispatch.app import make_app
from tui_dispatch.scenarios import WALL_START, build_dead_letters, build_snapshot
from tui_dispatch.source import FixedSource
from tui_dispatch.widgets import History, LogFeed
from tui_dispatch.widgets._format import clip, count, duration, percent, uptime
from tui_dispatch.widgets.stats import latency_lines, queue_lines, retry_lines
from tui_dispatch.widgets.workers import worker_columns


# -- FixedSource ---------------------------------------------------------------------------------
def test_fixed_source_serves_its_history_then_stays() -> None:
    snaps = [build_snapshot(uptime_s=float(i)) for i in range(3)]
    source = FixedSource(snaps)
    assert not source.exhausted
    assert [source.snapshot() for _ in range(5)] == [
        snaps[0],
        snaps[1],
        snaps[2],
        snaps[2],
        snaps[2],
    ]
    assert source.exhausted
    assert source.snapshots_served == 5
    assert source.calls == []


def test_fixed_source_needs_a_snapshot() -> None:
    with pytest.raises(ValueError, match="snapshots must hold at least one Snapshot"):
        FixedSource([])


def test_fixed_source_records_commands_and_stays_consistent() -> None:
    import random

    dlq = build_dead_letters(random.Random(1), 4)
    source = FixedSource(build_snapshot(uptime_s=1.0, succeeded=10, dead=4), dlq)
    source.burst(5)
    source.burst(2, failing=True)
    source.pause()
    source.dlq_requeue(dlq[1].job_id)
    source.dlq_delete(dlq[0].job_id)
    source.set_limits(max_workers=12)
    assert source.calls == [
        ("burst", (5, False)),
        ("burst", (2, True)),
        ("pause", ()),
        ("dlq_requeue", (dlq[1].job_id,)),
        ("dlq_delete", (dlq[0].job_id,)),
        ("set_limits", (None, 12)),
    ]
    snap = source.snapshot()
    assert snap.state is EngineState.PAUSED
    assert (snap.backlog, snap.dlq_size, snap.max_workers) == (8, 2, 12)
    assert snap.consistent
    assert [e.job_id for e in source.dlq_list(0, 10)] == [dlq[2].job_id, dlq[3].job_id]
    with pytest.raises(JobNotFound):
        source.dlq_get(dlq[0].job_id)
    source.shutdown(graceful=False)
    snap = source.snapshot()
    assert snap.state is EngineState.STOPPED and snap.unfinished == 0 and snap.consistent


def test_fixed_source_rejects_bad_limits_by_name() -> None:
    source = FixedSource(build_snapshot(uptime_s=1.0, min_workers=2, max_workers=4))
    with pytest.raises(ValueError, match="min_workers=5, max_workers=4"):
        source.set_limits(min_workers=5)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"small_burst": 0}, "small_burst"),
        ({"large_burst": True}, "large_burst"),
        ({"failing_burst": 1.5}, "failing_burst"),
        ({"refresh_s": 0}, "refresh_s"),
        ({"refresh_s": 61}, "refresh_s"),
    ],
)
def test_make_app_rejects_bad_settings_by_name(kwargs: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=f"^{argument} must be"):
        make_app(FixedSource(build_snapshot(uptime_s=1.0)), **kwargs)  # type: ignore[arg-type]


# -- the log feed ----------------------------------------------------------------------------------
def test_the_log_feed_says_each_thing_once() -> None:
    event = ScaleEvent(at=WALL_START + 3.0, delta=2, workers_after=4, reason="backlog 1200 > 8")
    feed = LogFeed(metrics_every_s=10.0)
    first = feed.lines(build_snapshot(uptime_s=5.0, scale_events=(event,)))
    assert [kind for kind, _ in first] == ["scale", "metrics"]
    assert first[0][1] == "+0:00:03 scaled up by 2 to 4 workers: backlog 1200 > 8"
    assert first[1][1].startswith("+0:00:05 successful=0 failed=0 retries=0 total=0")
    assert feed.lines(build_snapshot(uptime_s=9.9, scale_events=(event,))) == []
    down = ScaleEvent(at=WALL_START + 12.0, delta=-1, workers_after=3, reason="idle")
    later = feed.lines(
        build_snapshot(uptime_s=12.5, state=EngineState.DRAINING, scale_events=(event, down))
    )
    assert [text for _, text in later] == [
        "+0:00:12 scaled down by 1 to 3 workers: idle",
        "+0:00:12 engine running \u2192 draining",
        later[2][1],
    ]
    assert later[2][0] == "metrics"


def test_history_ignores_repeated_snapshots() -> None:
    history = History(points=4)
    assert history.values == [0.0] * 4
    assert history.push(1.0, 5.0) and history.push(2.0, 7.0)
    assert not history.push(2.0, 9.0)
    assert history.values == [0.0, 0.0, 5.0, 7.0]


# -- panel text ----------------------------------------------------------------------------------
def test_queue_and_latency_text() -> None:
    snap = build_snapshot(
        uptime_s=1.0,
        backlog=12_345,
        scheduled=7,
        oldest_wait_s=3.21,
        run_time=Latency(p50=0.0021, p95=0.0087, p99=0.0193, count=10),
    )
    now, more = queue_lines(snap)
    assert now == "[b]12,345[/b] waiting · oldest [b]3.2s[/b]"
    assert more == "in flight [b]0[/b] · retry wait [b]7[/b] · DLQ [b]0[/b]"
    table = latency_lines(snap).splitlines()
    assert table[1] == "run  " + "   2.1ms" + "   8.7ms" + "  19.3ms"
    assert table[2] == "wait " + "       -" * 3  # no samples yet


def test_retry_text_escapes_names_and_counts_the_rest() -> None:
    retries = tuple(
        ScheduledRetry(job_id=i, name="odd[name]", attempt=2, due_in_s=0.5) for i in range(10)
    )
    snap = build_snapshot(
        uptime_s=1.0, scheduled=25, retries_by_attempt=((1, 30), (2, 5)), next_retries=retries
    )
    by_attempt, due = retry_lines(snap)
    assert by_attempt == "by retry #1 [b]30[/b]  #2 [b]5[/b]"
    assert "odd\\[name]" in due
    assert due.splitlines()[-1] == "[dim]… and 15 more[/dim]"


def test_worker_columns_fill_the_width() -> None:
    for width in (30, 51, 52, 80, 200):
        for process_w in (0, 17):
            columns = worker_columns(width, process_w)
            assert sum(columns) == max(width, sum(columns))
    assert worker_columns(52)[5] > worker_columns(51)[5]  # the bar appears at 52 cells
    assert worker_columns(80)[2] == 0
    assert worker_columns(80, 17)[2] == 17  # a fleet view's process column
    assert worker_columns(60, 25)[3] == 12  # ... which leaves the job column 12 cells


def test_formatters() -> None:
    assert count(1234567) == "1,234,567"
    assert [duration(s) for s in (0.0004, 0.0123, 4.25, 185, 7260)] == [
        "400µs",
        "12.3ms",
        "4.2s",
        "3m05s",
        "2h01m",
    ]
    assert uptime(3725.9) == "1:02:05"
    assert percent(0.634) == "63%" and percent(1.7) == "100%"
    assert clip("demo.crunch", 6) == "demo.…" and clip("abc", 6) == "abc" and clip("x", 0) == ""


def test_scenarios_are_seeded() -> None:
    import random

    a = build_dead_letters(random.Random(3), 5)
    b = build_dead_letters(random.Random(3), 5)
    assert a == b
    assert dataclasses.replace(a[0], job_id=0) != a[0]
