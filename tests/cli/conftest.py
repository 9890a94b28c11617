"""Helpers for the CLI tests: run ``python -m tui_dispatch`` as a real subprocess, read its
output line by line with bounded waits, and never leave a process or a reader thread behind."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

WAIT_S = 30.0  # the bound on every wait for a subprocess (generous: CI machines are slow)
REPO = Path(__file__).resolve().parents[2]

# Fast demo jobs for every run unless a test says otherwise.
FAST = ["--job-distribution", "fixed", "--job-mean-ms", "1", "--log-interval-s", "0", "--seed", "7"]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess: no inherited Rich/colour forcing, the repo importable."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(REPO)
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.splitlines()


def run_cli(*args: str, cwd: Path | None = None, timeout_s: float = WAIT_S) -> Result:
    """Run ``python -m tui_dispatch ARGS`` to completion (bounded) and capture its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "tui_dispatch", *args],
        check=False, capture_output=True, text=True, timeout=timeout_s, cwd=cwd or REPO, env=cli_env(),
        stdin=subprocess.DEVNULL,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


class Running:
    """A ``tui-dispatch`` subprocess whose stderr is read line by line on a helper thread."""

    def __init__(self, *args: str, cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tui_dispatch", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=cwd or REPO, env=cli_env(),
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._stdout: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_stderr, name="cli-stderr-reader", daemon=True),
            threading.Thread(target=self._read_stdout, name="cli-stdout-reader", daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        self._stdout.append(self.proc.stdout.read())

    def wait_for_line(self, needle: str, timeout_s: float = WAIT_S) -> str:
        """Block (bounded) until a stderr line containing ``needle`` arrives; return it."""

        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no stderr line containing {needle!r} within {timeout_s}s; saw {self.seen}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"process ended before printing {needle!r}; stderr was {self.seen}")
            self.seen.append(line)
            if needle in line:
                return line

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def finish(self, timeout_s: float = WAIT_S) -> Result:
        """Wait (bounded) for the exit; return the status, all of stdout and all of stderr."""
        code = self.proc.wait(timeout=timeout_s)
        for reader in self._readers:
            reader.join(timeout_s)
            assert not reader.is_alive(), "the process exited but its pipe stayed open"
        while True:
            line = self._lines.get_nowait()
            if line is None:
                break
            self.seen.append(line)
        return Result(code, "".join(self._stdout), "\n".join(self.seen))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT_S)
        for reader in self._readers:
            reader.join(WAIT_S)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def start_cli() -> Iterator[Any]:
    """Start ``tui-dispatch`` subprocesses; each is killed (if still running) after the test."""
    started: list[Running] = []

    def start(*args: str, cwd: Path | None = None) -> Running:
        running = Running(*args, cwd=cwd)
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


def assert_one_line_error(result: Result, *needles: str) -> str:
    """Exit 2, nothing on stdout, exactly one stderr line naming the problem, no traceback."""
    assert result.code == 2, (result.code, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr_lines
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("tui-dispatch: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    assert result.stdout == ""
    return line
