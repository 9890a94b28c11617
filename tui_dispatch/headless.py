"""``tui-dispatch --headless``: the same engine and workload, no screen, a summary at the end.

It submits ``--jobs-count`` jobs (in bursts of at most 10,000), waits for them all to end,
shuts the engine down and prints a summary: text, or one JSON object with ``--json``, on
stdout. Meanwhile stderr carries a Rich progress bar (only when stderr is a terminal), the
engine's periodic metrics line every ``--log-interval-s`` seconds, and one-line notices.

Ctrl-C
------
A signal handler must not do the work itself: it runs on the main thread at an arbitrary
point, possibly while the main thread holds a lock it would need. So the handler only counts
presses, and the main loop, which wakes at least every 0.1 s, acts on the count:

1. **First Ctrl-C: graceful.** Stop submitting and start ``Dispatcher.shutdown()`` on a
   helper thread: intake closes, and queued, scheduled and running jobs all finish.
2. **Second Ctrl-C: forceful.** Start ``Dispatcher.shutdown(cancel_futures=True)`` on another
   helper thread: queued and scheduled jobs are cancelled, running jobs are told through their
   cancel token and get ``--force-wait-s`` (default 1 s) before they are abandoned (counted as
   cancelled; their threads are left behind and do not delay the exit).
3. **Third Ctrl-C:** exit at once with status 130, without a summary.

After the first two the summary is still printed; it lists the cancelled and abandoned jobs.
``stderr`` says ``headless run started`` once the handler is installed and the first burst is
in, so a test (or a script) knows when a Ctrl-C will be handled this way.

Exit status
-----------
* 0 -- every submitted job ended succeeded, dead-lettered or cancelled, and the counters add
  up (``Snapshot.consistent``, and they agree with the job handles). A dead-lettered job is a
  *handled* failure, so by default it does not fail the run.
* 1 -- a job was lost: a handle not in a final state after shutdown, or counters that do not
  add up. This wins over every other status.
* 3 -- ``--fail-on-dlq`` was given and at least one job was dead-lettered.
* 130 -- the run was interrupted by Ctrl-C (graceful or forceful) and nothing was lost.

(Status 2, bad usage, comes from :mod:`tui_dispatch.cli` before a run starts.)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Any, Self, TextIO

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine import (
    Counters,
    Dispatcher,
    JobHandle,
    JobState,
    Latency,
    RealClock,
    ShutdownReport,
    Snapshot,
)
from tui_dispatch.config import Settings
from tui_dispatch.workload import Workload

__all__ = [
    "EXIT_DLQ",
    "EXIT_INTERRUPTED",
    "EXIT_LOST",
    "EXIT_OK",
    "Summary",
    "run_headless",
    "summarise",
]

EXIT_OK = 0
EXIT_LOST = 1
EXIT_DLQ = 3
EXIT_INTERRUPTED = 130

CHUNK = 10_000  # jobs per burst while submitting: Ctrl-C is noticed between bursts
TICK_S = 0.1  # how often the main loop looks at Ctrl-C and updates the progress bar
LISTED = 50  # cancelled/abandoned/lost jobs listed by id in the summary (the counts are exact)

_PREFIX = "tui-dispatch"


@dataclass(frozen=True, slots=True)
class Summary:
    """What a headless run did. ``to_json()`` is what ``--json`` prints.

    Attributes:
        requested: ``--jobs-count``.
        submitted: jobs actually submitted (fewer if Ctrl-C came during submission).
        counters: the engine's final counters.
        lost: submitted jobs not in a final state after shutdown.
        consistent: the engine's counters add up and agree with the job handles.
        interrupted: ``"none"``, ``"graceful"`` or ``"forceful"``.
        duration_s: from the first submission until every job had ended (or the shutdown did).
        throughput_per_s: jobs that succeeded or were dead-lettered, per second of ``duration_s``.
        run_time: run-time percentiles of the most recent attempts (``count`` samples).
        queue_wait: backlog-wait percentiles of the most recent attempts.
        peak_workers: the most workers seen at once.
        min_workers: the pool's lower bound.
        max_workers: the pool's upper bound.
        seed: the seed, to repeat the run.
        workload: the workload's name.
        cancelled_jobs: ``(id, name)`` of up to ``LISTED`` jobs cancelled by the shutdown.
        abandoned_jobs: ``(id, name)`` of up to ``LISTED`` running jobs the shutdown gave up on.
        lost_jobs: ids of up to ``LISTED`` lost jobs.
        abandoned: how many jobs were abandoned.
        fail_on_dlq: whether a dead-lettered job fails the run.
    """

    requested: int
    submitted: int
    counters: Counters
    lost: int
    consistent: bool
    interrupted: str
    duration_s: float
    throughput_per_s: float
    run_time: Latency
    queue_wait: Latency
    peak_workers: int
    min_workers: int
    max_workers: int
    seed: int | None
    workload: str
    cancelled_jobs: tuple[tuple[int, str], ...]
    abandoned_jobs: tuple[tuple[int, str], ...]
    lost_jobs: tuple[int, ...]
    abandoned: int
    fail_on_dlq: bool

    @property
    def exit_code(self) -> int:
        """The process exit status this run earns (see the module docstring)."""
        if self.lost or not self.consistent:
            return EXIT_LOST
        if self.interrupted != "none":
            return EXIT_INTERRUPTED
        if self.fail_on_dlq and self.counters.dead_lettered:
            return EXIT_DLQ
        return EXIT_OK

    @property
    def outcome(self) -> str:
        """One phrase explaining :attr:`exit_code`."""
        code = self.exit_code
        if code == EXIT_LOST:
            return f"{self.lost} job(s) lost" if self.lost else "counters do not add up"
        if code == EXIT_INTERRUPTED:
            return f"interrupted ({self.interrupted} shutdown)"
        if code == EXIT_DLQ:
            return f"{self.counters.dead_lettered} job(s) dead-lettered (--fail-on-dlq)"
        return "ok"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: the fields plus ``exit_code`` and ``outcome``."""
        return {
            "requested": self.requested,
            "submitted": self.submitted,
            "counters": asdict(self.counters),
            "lost": self.lost,
            "abandoned": self.abandoned,
            "consistent": self.consistent,
            "interrupted": self.interrupted,
            "duration_s": round(self.duration_s, 6),
            "throughput_per_s": round(self.throughput_per_s, 3),
            "run_time_s": _latency_json(self.run_time),
            "queue_wait_s": _latency_json(self.queue_wait),
            "workers": {"min": self.min_workers, "max": self.max_workers, "peak": self.peak_workers},
            "seed": self.seed,
            "workload": self.workload,
            "cancelled_jobs": [list(job) for job in self.cancelled_jobs],
            "abandoned_jobs": [list(job) for job in self.abandoned_jobs],
            "lost_jobs": list(self.lost_jobs),
            "exit_code": self.exit_code,
            "outcome": self.outcome,
        }

    def to_text(self) -> str:
        """A few aligned lines for people."""
        c = self.counters
        lines = [
            (f"{_PREFIX} headless: {self.submitted} of {self.requested} {self.workload} jobs "
             f"in {self.duration_s:.2f} s ({self.throughput_per_s:,.1f} jobs/s), seed {self.seed}"),
            (f"  jobs       submitted {c.submitted}  succeeded {c.succeeded}"
             f"  dead-lettered {c.dead_lettered}  cancelled {c.cancelled}  lost {self.lost}"),
            f"  attempts   failed {c.failed}  retries {c.retries}  timed out {c.timed_out}",
            f"  run time   {_latency_text(self.run_time)}",
            f"  queue wait {_latency_text(self.queue_wait)}",
            f"  workers    min {self.min_workers}  max {self.max_workers}  peak {self.peak_workers}",
        ]
        if self.cancelled_jobs:
            lines.append(f"  cancelled  {_jobs_text(self.cancelled_jobs, c.cancelled - self.abandoned)}")
        if self.abandoned_jobs:
            lines.append(f"  abandoned  {_jobs_text(self.abandoned_jobs, self.abandoned)}")
        if self.lost_jobs:
            lines.append(f"  lost ids   {', '.join(map(str, self.lost_jobs))}")
        lines.append(f"  result     {self.outcome} (exit {self.exit_code})")
        return "\n".join(lines) + "\n"


def _latency_json(lat: Latency) -> dict[str, float | int]:
    return {"p50": round(lat.p50, 6), "p95": round(lat.p95, 6), "p99": round(lat.p99, 6), "samples": lat.count}


def _duration_text(seconds: float) -> str:
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def _latency_text(lat: Latency) -> str:
    if not lat.count:
        return "no samples"
    return (f"p50 {_duration_text(lat.p50)}  p95 {_duration_text(lat.p95)}  p99 {_duration_text(lat.p99)}"
            f"  ({lat.count} recent attempts)")


def _jobs_text(jobs: tuple[tuple[int, str], ...], total: int) -> str:
    shown = ", ".join(f"{job_id} ({name})" for job_id, name in jobs)
    more = total - len(jobs)
    return f"{total}: {shown}" + (f", and {more} more" if more > 0 else "")


def summarise(
    *,
    settings: Settings,
    workload_name: str,
    handles: list[JobHandle],
    snapshot: Snapshot,
    reports: list[ShutdownReport],
    interrupted: str,
    duration_s: float,
    peak_workers: int,
) -> Summary:
    """Judge a finished run from its job handles and the engine's final snapshot.

    The handles are the independent witness: every one must be final, and their tallies must
    match the engine's counters. Thread-safe (pure, given a stopped engine).
    """
    tally = {state: 0 for state in JobState}
    not_final: list[int] = []
    cancelled_ids: set[int] = set()
    for handle in handles:
        state = handle.state
        tally[state] += 1
        if not state.final:
            not_final.append(handle.id)
        elif state is JobState.CANCELLED:
            cancelled_ids.add(handle.id)
    c = snapshot.counters
    agrees = (
        c.submitted == len(handles)
        and c.succeeded == tally[JobState.SUCCEEDED]
        and c.dead_lettered == tally[JobState.DEAD_LETTERED]
        and c.cancelled == tally[JobState.CANCELLED]
    )
    # Concurrent graceful and forceful shutdowns each return a report; the engine keeps the
    # first to complete, so take the union. Cancelled-by-shutdown ids are complete in every
    # report; any other cancelled job was running and abandoned.
    shutdown_cancelled: dict[int, str] = {}
    abandoned: dict[int, str] = {}
    for report in reports:
        shutdown_cancelled.update(report.cancelled)
        abandoned.update(report.abandoned)
    names = {h.id: h.name for h in handles if h.id in cancelled_ids}
    for job_id in sorted(cancelled_ids - shutdown_cancelled.keys() - abandoned.keys()):
        abandoned[job_id] = names[job_id]
    finished = c.succeeded + c.dead_lettered
    return Summary(
        requested=settings.headless_jobs,
        submitted=len(handles),
        counters=c,
        lost=len(not_final),
        consistent=snapshot.consistent and agrees and snapshot.unfinished == 0,
        interrupted=interrupted,
        duration_s=duration_s,
        throughput_per_s=finished / duration_s if duration_s > 0 else 0.0,
        run_time=snapshot.run_time,
        queue_wait=snapshot.queue_wait,
        peak_workers=peak_workers,
        min_workers=snapshot.min_workers,
        max_workers=snapshot.max_workers,
        seed=settings.seed,
        workload=workload_name,
        cancelled_jobs=tuple(sorted(shutdown_cancelled.items()))[:LISTED],
        abandoned_jobs=tuple(sorted(abandoned.items()))[:LISTED],
        lost_jobs=tuple(not_final[:LISTED]),
        abandoned=len(abandoned),
        fail_on_dlq=settings.fail_on_dlq,
    )


class _CtrlC:
    """Counts SIGINTs. The handler only counts (and on the third, exits); the main loop acts."""

    def __init__(self) -> None:
        self.presses = 0

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.presses += 1
        if self.presses >= 3:
            os.write(2, f"{_PREFIX}: third Ctrl-C: exiting now, without a summary\n".encode())
            os._exit(EXIT_INTERRUPTED)


class _Output:
    """Where notices, log lines and the progress bar go: stderr, through Rich on a terminal."""

    def __init__(self, stderr: TextIO, total: int) -> None:
        self.stderr = stderr
        self.console = Console(file=stderr, stderr=True)
        self.progress: Progress | None = None
        self.task_id: Any = None
        if self.console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]{task.fields[phase]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self.task_id = self.progress.add_task("jobs", total=total, phase="running", detail="")
            handler: logging.Handler = RichHandler(console=self.console, show_path=False)
        else:
            handler = logging.StreamHandler(stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler = handler
        self._engine_log = logging.getLogger("engine")
        self._old_level = self._engine_log.level

    def __enter__(self) -> Self:
        self._engine_log.addHandler(self.handler)
        self._engine_log.setLevel(logging.INFO)
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.progress is not None:
            self.progress.stop()
        self._engine_log.removeHandler(self.handler)
        self._engine_log.setLevel(self._old_level)

    def say(self, message: str) -> None:
        """One notice line on stderr."""
        if self.progress is not None:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            self.stderr.write(message + "\n")
            self.stderr.flush()

    def update(self, snap: Snapshot, phase: str) -> None:
        if self.progress is None:
            return
        c = snap.counters
        detail = (f"ok {c.succeeded}  dlq {c.dead_lettered}  cancelled {c.cancelled}  retries {c.retries}  "
                  f"workers {snap.workers_total}/{snap.max_workers}  backlog {snap.backlog}  "
                  f"{snap.throughput_per_s:,.0f}/s")
        self.progress.update(self.task_id, completed=c.succeeded + c.dead_lettered + c.cancelled,
                             phase=phase, detail=detail)


def _in_background(fn: Callable[[], ShutdownReport], reports: list[ShutdownReport], name: str) -> threading.Thread:
    def target() -> None:
        reports.append(fn())

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def run_headless(
    settings: Settings,
    workload: Workload,
    engine_rng: Any,
    *,
    json_output: bool = False,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    install_signals: bool = True,
) -> int:
    """Run ``settings.headless_jobs`` jobs with no screen, print the summary, return the exit status.

    Call from the main thread if ``install_signals`` (the default): it installs a SIGINT
    handler for the run and restores the previous one afterwards.

    Args:
        settings: the engine, workload and run settings (``seed`` as given; it is reported).
        workload: what to submit.
        engine_rng: the dispatcher's ``random.Random`` (retry jitter).
        json_output: print the summary as one JSON object instead of text.
        stdout: where the summary goes (default ``sys.stdout``).
        stderr: where progress, log lines and notices go (default ``sys.stderr``).
        install_signals: handle Ctrl-C as the module docstring describes.

    Returns:
        The exit status (see the module docstring).
    """
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    clock = RealClock()
    ctrl_c = _CtrlC()
    previous: Any = None
    if install_signals:
        previous = signal.signal(signal.SIGINT, ctrl_c.handler)
    total = settings.headless_jobs
    try:
        with _Output(err, total) as output:
            dispatcher = Dispatcher(**settings.dispatcher_kwargs(engine_rng))
            handles: list[JobHandle] = []
            reports: list[ShutdownReport] = []
            shutdowns: list[threading.Thread] = []
            phase = "running"
            peak = 0
            started = clock.monotonic()
            announced = False
            clean = False
            try:
                while len(handles) < total and ctrl_c.presses == 0:
                    burst = workload.burst(dispatcher, min(CHUNK, total - len(handles)))
                    handles += burst
                    if not announced:
                        announced = True
                        output.say(
                            f"{_PREFIX}: headless run started: {total} {workload.name} jobs on "
                            f"{settings.min_workers}-{settings.max_workers} workers, seed {settings.seed}; "
                            "Ctrl-C drains, twice cancels"
                        )
                    snap = dispatcher.snapshot(workers=False)
                    peak = _peak(peak, snap)
                    output.update(snap, phase)
                    if not burst:  # a job factory that made nothing: don't spin
                        output.say(f"{_PREFIX}: the workload submitted no jobs; stopping at {len(handles)}")
                        break
                finished_at: float | None = None
                while True:
                    if ctrl_c.presses >= 1 and phase == "running":
                        phase = "draining"
                        snap = dispatcher.snapshot(workers=False)
                        output.say(
                            f"{_PREFIX}: Ctrl-C: graceful shutdown, finishing {snap.unfinished} queued, "
                            "scheduled and running jobs (Ctrl-C again to cancel them)"
                        )
                        shutdowns.append(_in_background(dispatcher.shutdown, reports, "headless-drain"))
                    if ctrl_c.presses >= 2 and phase == "draining":
                        phase = "cancelling"
                        output.say(
                            f"{_PREFIX}: Ctrl-C again: forceful shutdown, cancelling queued and scheduled "
                            f"jobs; running jobs get {settings.force_wait_s:g} s (Ctrl-C a third time "
                            "to exit at once)"
                        )
                        shutdowns.append(_in_background(
                            lambda: dispatcher.shutdown(cancel_futures=True), reports, "headless-force"))
                    if phase == "running":
                        if dispatcher.join(timeout_s=TICK_S):
                            finished_at = clock.monotonic()
                            break
                    else:
                        shutdowns[-1].join(TICK_S)
                        if not all(t.is_alive() for t in shutdowns):  # one finished: all are done
                            break
                    snap = dispatcher.snapshot(workers=False)
                    peak = _peak(peak, snap)
                    output.update(snap, phase)
                clean = True
            finally:
                # Normal end: nothing is left, so this returns at once. After Ctrl-C it returns
                # the report of the shutdown already under way, once it has completed. On an
                # error (a job factory that raised), drop what is queued rather than run it.
                reports.append(dispatcher.shutdown(wait=True, cancel_futures=not clean))
                for thread in shutdowns:
                    thread.join(timeout=10.0)
            ended = finished_at if finished_at is not None else clock.monotonic()
            final = dispatcher.snapshot(workers=False)
            output.update(final, "done" if phase == "running" else phase)
        summary = summarise(
            settings=settings,
            workload_name=workload.name,
            handles=handles,
            snapshot=final,
            reports=reports,
            interrupted={"running": "none", "draining": "graceful"}.get(phase, "forceful"),
            duration_s=ended - started,
            peak_workers=_peak(peak, final),
        )
        if json_output:
            out.write(json.dumps(summary.to_json(), indent=2) + "\n")
        else:
            out.write(summary.to_text())
        out.flush()
        return summary.exit_code
    finally:
        if install_signals:
            signal.signal(signal.SIGINT, previous)


def _peak(peak: int, snap: Snapshot) -> int:
    """The most workers seen so far: sampled sizes, and each scaling event's result in between."""
    return max(peak, snap.workers_total, *(event.workers_after for event in snap.scale_events))
