"""``tui-dispatch`` with no --headless: the settings reach the app, and the engine stops after it.

The Textual app itself is tested in tests/tui; here ``make_app`` is replaced by a stand-in that
drives the source the CLI built, so these tests check only the CLI's wiring.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from engine import EngineState
from tui_dispatch import cli
from tui_dispatch.source import LiveSource
from tui_dispatch.workload import DemoWorkload, UserWorkload


class _StandInApp:
    """Does, on run(), what a user would: look at the engine and press a burst key."""

    def __init__(self, source: LiveSource, seen: dict[str, Any]) -> None:
        self.source = source
        self.seen = seen
        self.return_code = 0

    def run(self) -> None:
        self.seen["snapshot"] = self.source.snapshot()
        self.seen["burst"] = self.source.burst(3)
        self.seen["state_during_run"] = self.source.dispatcher.state


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def make_app(source: LiveSource, **options: Any) -> _StandInApp:
        seen["source"] = source
        seen["options"] = options
        return _StandInApp(source, seen)

    monkeypatch.setattr("tui_dispatch.app.make_app", make_app)
    return seen


def test_the_dashboard_gets_the_settings_and_a_live_engine(launched: dict[str, Any]) -> None:
    code = cli.main(["--small-burst", "7", "--large-burst", "70", "--failing-burst", "9", "--refresh-s", "0.5",
                     "--min-workers", "2", "--max-workers", "3", "--seed", "1", "--log-interval-s", "0",
                     "--job-mean-ms", "0"])
    assert code == 0
    assert launched["options"] == {"refresh_s": 0.5, "small_burst": 7, "large_burst": 70, "failing_burst": 9}
    snap = launched["snapshot"]
    assert (snap.min_workers, snap.max_workers, snap.workers_total) == (2, 3, 2)
    assert launched["state_during_run"] is EngineState.RUNNING
    assert launched["burst"] == 3
    source = launched["source"]
    assert isinstance(source.workload, DemoWorkload)
    # After the app returns, the CLI shut the engine down.
    assert source.dispatcher.state is EngineState.STOPPED
    assert source.dispatcher.snapshot().consistent


def test_the_dashboard_runs_the_users_jobs(
    launched: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    (tmp_path / "dash_jobs.py").write_text(textwrap.dedent("""
        def work():
            return 1
    """), encoding="utf-8")
    try:
        assert cli.main(["--jobs", "dash_jobs:work", "--log-interval-s", "0"]) == 0
    finally:
        __import__("sys").modules.pop("dash_jobs", None)
    workload = launched["source"].workload
    assert isinstance(workload, UserWorkload) and workload.name == "work"
    assert launched["burst"] == 3


def test_a_bad_jobs_target_never_starts_the_dashboard(
    launched: dict[str, Any], capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["--jobs", "no_such_module_xyz:work"]) == 2
    assert "source" not in launched
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot import module 'no_such_module_xyz'" in err
