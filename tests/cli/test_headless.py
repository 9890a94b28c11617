"""``tui-dispatch --headless``, run as a real subprocess: the summary, exit codes and Ctrl-C."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine import Counters, EngineState, JobState, Latency, Snapshot
from tests.cli.conftest import FAST, WAIT_S, cli_env, run_cli
from tui_dispatch.config import Settings
from tui_dispatch.headless import EXIT_DLQ, EXIT_INTERRUPTED, EXIT_LOST, EXIT_OK, summarise

FIXED_POOL = ["--min-workers", "4", "--max-workers", "4", "--no-autoscale"]
FLAKY = ["--failure-rate", "0.3", "--max-retries", "1", "--retry-base-s", "0"]


def check_adds_up(summary: dict[str, object], requested: int) -> dict[str, int]:
    c = summary["counters"]
    assert isinstance(c, dict)
    assert summary["requested"] == requested
    assert c["submitted"] == summary["submitted"]
    assert c["submitted"] == c["succeeded"] + c["dead_lettered"] + c["cancelled"]
    assert summary["lost"] == 0 and summary["lost_jobs"] == []
    assert summary["consistent"] is True
    return c


# -- the summary ---------------------------------------------------------------------------------


def test_json_summary_adds_up() -> None:
    result = run_cli("--headless", "--json", "--jobs-count", "300", *FAST, *FIXED_POOL, *FLAKY)
    assert result.code == EXIT_OK, result.stderr
    summary = result.json()
    c = check_adds_up(summary, 300)
    assert c["submitted"] == 300 and c["cancelled"] == 0
    assert c["dead_lettered"] > 0 and c["succeeded"] > 0  # seed 7 gives both outcomes
    # Every failed attempt was either retried or dead-lettered (no cancellations here).
    assert c["failed"] == c["retries"] + c["dead_lettered"]
    assert summary["interrupted"] == "none" and summary["exit_code"] == 0 and summary["outcome"] == "ok"
    assert summary["seed"] == 7 and summary["workload"] == "demo"
    assert summary["workers"] == {"min": 4, "max": 4, "peak": 4}
    assert summary["throughput_per_s"] == pytest.approx(
        (c["succeeded"] + c["dead_lettered"]) / summary["duration_s"], rel=1e-3)
    run_time = summary["run_time_s"]
    assert run_time["samples"] == 300 + c["retries"]  # one sample per attempt
    assert 0.0 < run_time["p50"] <= run_time["p95"] <= run_time["p99"]
    assert "headless run started: 300 demo jobs on 4-4 workers, seed 7" in result.stderr


def test_the_same_seed_gives_the_same_outcome() -> None:
    args = ("--headless", "--json", "--jobs-count", "200", *FAST, *FIXED_POOL, *FLAKY)
    first, again = run_cli(*args).json(), run_cli(*args).json()
    other = run_cli(*args, "--seed", "8").json()
    assert first["counters"] == again["counters"]
    assert first["counters"] != other["counters"]


def test_text_summary_adds_up() -> None:
    result = run_cli("--headless", "--jobs-count", "100", *FAST, *FIXED_POOL, *FLAKY)
    assert result.code == EXIT_OK, result.stderr
    numbers = {k: int(v) for k, v in re.findall(r"(submitted|succeeded|dead-lettered|cancelled|lost) (\d+)",
                                                  result.stdout)}
    assert numbers["submitted"] == 100 == numbers["succeeded"] + numbers["dead-lettered"] + numbers["cancelled"]
    assert numbers["lost"] == 0
    assert "result     ok (exit 0)" in result.stdout


def test_the_engine_metrics_line_is_logged_to_stderr() -> None:
    result = run_cli("--headless", "--jobs-count", "40", "--job-distribution", "fixed", "--job-mean-ms", "5",
                     "--min-workers", "1", "--max-workers", "1", "--log-interval-s", "0.05", "--seed", "1")
    assert result.code == EXIT_OK, result.stderr
    assert re.search(r"INFO engine: successful=\d+ failed=\d+ retries=\d+ total=40 ", result.stderr)
    assert "successful=" not in result.stdout  # stdout is only the summary


# -- exit codes ----------------------------------------------------------------------------------


def test_dead_letters_fail_the_run_only_with_fail_on_dlq(tmp_path: Path) -> None:
    args = ("--headless", "--json", "--jobs-count", "100", *FAST, *FIXED_POOL, *FLAKY)
    plain = run_cli(*args)
    strict = run_cli(*args, "--fail-on-dlq")
    assert plain.code == EXIT_OK
    assert strict.code == EXIT_DLQ, strict.stderr
    summary = strict.json()
    assert summary["counters"]["dead_lettered"] > 0 and summary["exit_code"] == EXIT_DLQ
    assert "dead-lettered (--fail-on-dlq)" in summary["outcome"]
    # The same from a config file, and a clean run passes even with the flag.
    config = tmp_path / "strict.toml"
    config.write_text("[headless]\nfail_on_dlq = true\ncount = 50\n", encoding="utf-8")
    assert run_cli(*args, "--config", str(config)).code == EXIT_DLQ
    clean = run_cli("--headless", "--json", "--config", str(config), *FAST, "--failure-rate", "0")
    assert clean.code == EXIT_OK and clean.json()["counters"]["submitted"] == 50


@dataclass
class _Handle:
    id: int
    name: str
    state: JobState


def _snapshot(counters: Counters, in_flight: int = 0) -> Snapshot:
    return Snapshot(
        taken_at=0.0, uptime_s=1.0, state=EngineState.STOPPED, counters=counters, backlog=0, scheduled=0,
        in_flight=in_flight, workers_total=0, workers_busy=0, workers_idle=0, workers_retiring=0,
        stuck_threads=0, min_workers=1, max_workers=2, utilisation=0.0, oldest_wait_s=0.0, dlq_size=0,
        throughput_per_s=0.0, run_time=Latency(0.1, 0.2, 0.3, 3), queue_wait=Latency(),
    )


def _summary(handles: list[_Handle], counters: Counters, *, in_flight: int = 0, interrupted: str = "none",
             fail_on_dlq: bool = False) -> dict[str, object]:
    s = summarise(settings=Settings(headless_jobs=len(handles), seed=1, fail_on_dlq=fail_on_dlq),
                  workload_name="demo", handles=handles, snapshot=_snapshot(counters, in_flight),  # type: ignore[arg-type]
                  reports=[], interrupted=interrupted, duration_s=2.0, peak_workers=2)
    return s.to_json()


def test_a_job_that_never_ended_is_lost_and_exits_1() -> None:
    handles = [_Handle(1, "a", JobState.SUCCEEDED), _Handle(2, "b", JobState.RUNNING),
               _Handle(3, "c", JobState.DEAD_LETTERED)]
    counters = Counters(submitted=3, succeeded=1, dead_lettered=1)
    summary = _summary(handles, counters, in_flight=1)
    assert (summary["lost"], summary["lost_jobs"], summary["exit_code"]) == (1, [2], EXIT_LOST)
    assert summary["outcome"] == "1 job(s) lost"
    # Lost beats interrupted and --fail-on-dlq.
    assert _summary(handles, counters, in_flight=1, interrupted="graceful", fail_on_dlq=True)["exit_code"] == EXIT_LOST


def test_counters_that_disagree_with_the_handles_exit_1() -> None:
    handles = [_Handle(1, "a", JobState.SUCCEEDED), _Handle(2, "b", JobState.SUCCEEDED)]
    fine = _summary(handles, Counters(submitted=2, succeeded=2))
    assert (fine["consistent"], fine["exit_code"]) == (True, EXIT_OK)
    # The engine says one was dead-lettered, the handles say both succeeded.
    wrong = _summary(handles, Counters(submitted=2, succeeded=1, dead_lettered=1))
    assert (wrong["lost"], wrong["consistent"], wrong["exit_code"]) == (0, False, EXIT_LOST)
    assert wrong["outcome"] == "counters do not add up"
    # Counters that do not add up on their own.
    short = _summary(handles, Counters(submitted=3, succeeded=2))
    assert (short["consistent"], short["exit_code"]) == (False, EXIT_LOST)


def test_interrupted_beats_fail_on_dlq() -> None:
    handles = [_Handle(1, "a", JobState.DEAD_LETTERED), _Handle(2, "b", JobState.CANCELLED)]
    counters = Counters(submitted=2, dead_lettered=1, cancelled=1)
    assert _summary(handles, counters, fail_on_dlq=True)["exit_code"] == EXIT_DLQ
    summary = _summary(handles, counters, interrupted="forceful", fail_on_dlq=True)
    assert summary["exit_code"] == EXIT_INTERRUPTED
    # A cancelled job the shutdown report does not list was running: it was abandoned.
    assert summary["abandoned"] == 1 and summary["abandoned_jobs"] == [[2, "b"]]


# -- Ctrl-C --------------------------------------------------------------------------------------

SLOW = ["--job-distribution", "fixed", "--min-workers", "2", "--max-workers", "2", "--no-autoscale",
        "--log-interval-s", "0", "--seed", "3", "--failure-rate", "0"]


def test_first_ctrl_c_drains_every_job_and_exits_130(start_cli) -> None:  # type: ignore[no-untyped-def]
    cli = start_cli("--headless", "--json", "--jobs-count", "8", "--job-mean-ms", "250", *SLOW)
    cli.wait_for_line("headless run started")
    cli.interrupt()
    notice = cli.wait_for_line("graceful shutdown")
    unfinished = int(re.search(r"finishing (\d+) queued", notice).group(1))  # type: ignore[union-attr]
    assert unfinished > 0  # the drain had work to do
    result = cli.finish()
    assert result.code == EXIT_INTERRUPTED, result.stderr
    summary = result.json()
    c = check_adds_up(summary, 8)
    assert summary["interrupted"] == "graceful"
    assert (c["submitted"], c["succeeded"], c["cancelled"]) == (8, 8, 0)  # drained, not dropped
    assert summary["outcome"] == "interrupted (graceful shutdown)" and summary["exit_code"] == 130


def test_second_ctrl_c_cancels_what_is_left_and_lists_it(start_cli) -> None:  # type: ignore[no-untyped-def]
    cli = start_cli("--headless", "--json", "--jobs-count", "1000", "--job-mean-ms", "20000", *SLOW)
    cli.wait_for_line("headless run started")
    cli.interrupt()
    cli.wait_for_line("graceful shutdown")
    started = time.monotonic()
    cli.interrupt()
    cli.wait_for_line("forceful shutdown")
    result = cli.finish()
    assert time.monotonic() - started < 10.0  # it did not wait for 20 s jobs
    assert result.code == EXIT_INTERRUPTED, result.stderr
    summary = result.json()
    c = check_adds_up(summary, 1000)
    assert summary["interrupted"] == "forceful"
    assert (c["submitted"], c["succeeded"], c["cancelled"]) == (1000, 0, 1000)
    # The two running demo jobs woke on their cancel token: nothing was abandoned.
    assert summary["abandoned"] == 0 and summary["abandoned_jobs"] == []
    listed = summary["cancelled_jobs"]
    assert len(listed) == 50 and all(name == "demo" for _, name in listed)  # ids listed up to 50


STUBBORN = """
    import time

    def stubborn():
        time.sleep(60)  # ignores its cancel token
"""


def test_running_jobs_that_ignore_cancellation_are_abandoned_without_delaying_exit(
    start_cli, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    (tmp_path / "stubborn_jobs.py").write_text(textwrap.dedent(STUBBORN), encoding="utf-8")
    cli = start_cli("--headless", "--json", "--jobs-count", "5", "--jobs", "stubborn_jobs:stubborn",
                    "--force-wait-s", "0.2", *SLOW, cwd=tmp_path)
    cli.wait_for_line("headless run started: 5 stubborn jobs")
    cli.interrupt()
    cli.wait_for_line("graceful shutdown")
    started = time.monotonic()
    cli.interrupt()
    result = cli.finish()
    assert time.monotonic() - started < 10.0  # not held up by the sleeping threads
    assert result.code == EXIT_INTERRUPTED, result.stderr
    summary = result.json()
    c = check_adds_up(summary, 5)
    assert c["cancelled"] == 5
    assert summary["abandoned"] == 2
    assert [name for _, name in summary["abandoned_jobs"]] == ["stubborn", "stubborn"]
    assert len(summary["cancelled_jobs"]) == 3  # the queued ones
    assert "abandoned job" in result.stderr  # the engine's warning, through the log handler


def test_third_ctrl_c_exits_at_once_without_a_summary(start_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "stubborn_jobs.py").write_text(textwrap.dedent(STUBBORN), encoding="utf-8")
    cli = start_cli("--headless", "--json", "--jobs-count", "5", "--jobs", "stubborn_jobs:stubborn",
                    "--force-wait-s", "60", *SLOW, cwd=tmp_path)
    cli.wait_for_line("headless run started")
    cli.interrupt()
    cli.wait_for_line("graceful shutdown")
    cli.interrupt()
    cli.wait_for_line("forceful shutdown")  # now waiting up to 60 s for the stubborn jobs
    cli.interrupt()
    result = cli.finish(timeout_s=10.0)
    assert result.code == EXIT_INTERRUPTED
    assert result.stdout == ""
    assert "third Ctrl-C: exiting now, without a summary" in result.stderr


# -- a terminal gets a progress bar --------------------------------------------------------------


def test_a_terminal_gets_a_rich_progress_bar() -> None:
    import pty

    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tui_dispatch", "--headless", "--jobs-count", "50", *FAST],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary, env=cli_env(COLUMNS="120"),
    )
    os.close(secondary)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(primary, 4096)
            except OSError:  # EIO: the other side closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, name="pty-reader", daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT_S)
        reader.join(WAIT_S)
        os.close(primary)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0
    assert "50/50" in screen and "━" in screen  # Rich's bar, finished
    assert "result     ok (exit 0)" in out.decode()  # the summary still goes to stdout


# -- bad input, in a real process: one line, status 2, no traceback ------------------------------


def test_bad_input_in_a_real_process(tmp_path: Path) -> None:
    from tests.cli.conftest import assert_one_line_error

    assert_one_line_error(run_cli("--headless", "--jobs-cont", "5"),
                          "unrecognized argument --jobs-cont (did you mean --jobs-count?)")
    broken = tmp_path / "broken.toml"
    broken.write_text("[workers\n", encoding="utf-8")
    assert_one_line_error(run_cli("--headless", "--config", str(broken)), f"--config {broken}: invalid TOML")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[retry]\nmax_retry = 2\n", encoding="utf-8")
    assert_one_line_error(run_cli("--config", str(unknown)), "unknown key 'retry.max_retry'",
                          "did you mean 'max_retries'")
    assert_one_line_error(run_cli("--headless", "--jobs", "no_such_module_xyz:work"),
                          "--jobs 'no_such_module_xyz:work': cannot import module 'no_such_module_xyz'")
    (tmp_path / "exploding.py").write_text("raise ImportError('needs numpy')\n", encoding="utf-8")
    assert_one_line_error(run_cli("--headless", "--jobs", "exploding:run", cwd=tmp_path),
                          "importing module 'exploding' raised ImportError: needs numpy")


def test_peak_workers_counts_scaling_between_samples() -> None:
    from engine import ScaleEvent
    from tui_dispatch.headless import _peak
    from tui_dispatch.scenarios import build_snapshot

    up_then_down = (ScaleEvent(at=1.0, delta=3, workers_after=4, reason="up"),
                    ScaleEvent(at=2.0, delta=-3, workers_after=1, reason="down"))
    snap = build_snapshot(uptime_s=3.0, scale_events=up_then_down)
    assert snap.workers_total == 0  # the sample itself saw no worker
    assert _peak(2, snap) == 4
    assert _peak(7, snap) == 7
