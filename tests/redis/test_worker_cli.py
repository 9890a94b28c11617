"""``tui-dispatch worker`` (tui_dispatch.worker_cli): arguments, --tasks, signals, fleet stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from engine import TaskRegistry
from engine.brokers.redis import RedisQueue
from tests.redis.conftest import eventually
from tui_dispatch import worker_cli
from tui_dispatch.fleet_source import DEMO_TASK
from tui_dispatch.worker_cli import TasksError, load_tasks, main

ROOT = Path(__file__).resolve().parents[2]


def test_load_tasks_finds_the_registry() -> None:
    assert load_tasks("tests.redis.fleet_tasks").names() == ("flaky", "gated")
    assert load_tasks("tests.redis.fleet_tasks:tasks") is load_tasks("tests.redis.fleet_tasks")
    assert DEMO_TASK in load_tasks(worker_cli.DEMO_TASKS_TARGET)


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        ("no_such_module_xyz", "cannot import 'no_such_module_xyz': ModuleNotFoundError"),
        ("tests.redis.fleet_tasks:nope", "tests.redis.fleet_tasks.nope is not a TaskRegistry"),
        ("json", "module 'json' has no TaskRegistry"),
        (":x", "--tasks must be MODULE or MODULE:ATTR"),
    ],
)
def test_load_tasks_names_the_problem(target: str, needle: str) -> None:
    with pytest.raises(TasksError) as info:
        load_tasks(target)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--redis", "http://x"], "url must start with redis://"),
        (["--redis", "redis://127.0.0.1:1", "--tasks", "no_such_module_xyz"], "cannot import"),
        (["--redis", "redis://127.0.0.1:1", "--lease-s", "1", "--heartbeat-s", "1"],
         "heartbeat_s (1) must be below lease_s / 2"),
        (["--redis", "redis://127.0.0.1:1", "--lease-s", "4", "--heartbeat-s", "1", "--socket-timeout-s", "2"],
         "socket_timeout_s (2) is too long for lease_s (4)"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tui-dispatch worker: error: ") and needle in err and err.count("\n") == 1


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--redis", "redis://x", "--min-workers", "-1"]) == 2
    assert "argument --min-workers: must be an int >= 0; got '-1'" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "--redis URL" in capsys.readouterr().out


def _worker(redis_url: str, prefix: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tui_dispatch.worker_cli", "--redis", redis_url, "--prefix", prefix,
             "--min-workers", "2", "--max-workers", "2", "--heartbeat-s", "0.1", "--poll-s", "0.1",
             "--log-interval-s", "0", *args],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=out, stderr=subprocess.STDOUT,
        )


def test_demo_worker_runs_bursts_and_stops_on_sigint(redis_url: str, prefix: str, tmp_path: Path) -> None:
    queue = RedisQueue(redis_url, prefix=prefix, max_retries=0)
    proc = _worker(redis_url, prefix, tmp_path / "w.log")
    try:
        queue.submit_many(DEMO_TASK, [(1.0, 0.0)] * 20)
        eventually(lambda: queue.counters().get("succeeded") == 20, what="20 demo jobs")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        queue.close()
    log = (tmp_path / "w.log").read_text()
    assert "stopping gracefully" in log and "stopped: StopReport(graceful=True" in log


def test_a_second_signal_stops_forcefully(redis_url: str, prefix: str, tmp_path: Path, raw: redis.Redis) -> None:
    queue = RedisQueue(redis_url, prefix=prefix, max_retries=1)
    proc = _worker(redis_url, prefix, tmp_path / "w.log")
    try:
        queue.submit(DEMO_TASK, 60_000.0, 0.0)  # a minute long, but it obeys its cancel token
        eventually(lambda: raw.zcard(queue.base + "processing") == 1 and "started" in
                   (tmp_path / "w.log").read_text(), what="the long job to be fetched")
        proc.send_signal(signal.SIGTERM)
        eventually(lambda: "stopping gracefully" in (tmp_path / "w.log").read_text(), what="the graceful stop")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 1  # not a clean stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        queue.close()
    log = (tmp_path / "w.log").read_text()
    assert "stopping forcefully" in log
    # The cancelled attempt failed and was scheduled for a retry: nothing lost.
    assert raw.zcard(queue.base + "scheduled") + raw.llen(queue.base + "ready") == 1
    assert raw.hget(queue.base + "stats", "failed") == "1"


def test_a_fleet_stop_request_stops_the_process(redis_url: str, prefix: str, tmp_path: Path) -> None:
    queue = RedisQueue(redis_url, prefix=prefix)
    proc = _worker(redis_url, prefix, tmp_path / "w.log")
    try:
        eventually(lambda: "started" in (tmp_path / "w.log").read_text(), what="the worker to start")
        eventually(lambda: queue.fleet_state().workers, what="its first heartbeat")
        queue.request_stop(graceful=True)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        queue.close()
    assert "the fleet asked for a graceful stop" in (tmp_path / "w.log").read_text()
    assert isinstance(worker_cli.demo_tasks, TaskRegistry)
