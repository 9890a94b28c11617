"""Fixed, seeded engine states for snapshot tests and screenshots.

Both ``tests/tui/test_snapshots.py`` and ``python -m tui_dispatch.screenshots`` render these, so
the README's pictures are exactly what CI checks. Every value comes from a seeded
``random.Random`` and fixed times: no clock is read, nothing moves.

A scenario serves a short history of snapshots (one second apart) and then stays on the last
one, so the sparklines and the log have something to show. :func:`settle` polls the app until
it has seen the whole history.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from textual.pilot import Pilot

from engine import (
    Counters,
    DeadLetter,
    EngineState,
    Latency,
    ScaleEvent,
    ScheduledRetry,
    Snapshot,
    WorkerSnapshot,
    WorkerState,
)
from tui_dispatch.app import DashboardApp, make_app
from tui_dispatch.source import FixedSource

__all__ = [
    "SCENARIOS",
    "SMALL",
    "WALL_START",
    "WIDE",
    "Scenario",
    "build_dead_letters",
    "build_snapshot",
    "build_workers",
    "settle",
]

WIDE = (160, 48)
SMALL = (80, 24)
WALL_START = 1_767_225_600.0
"""Wall-clock time the scenario engines started: 2026-01-01 00:00:00 UTC."""

_JOB_NAMES = ("demo.sleep", "demo.io", "demo.crunch", "demo.flaky")


def build_workers(
    rng: random.Random, n: int, busy: int, retiring: int = 0, *, first_job: int = 1
) -> tuple[WorkerSnapshot, ...]:
    """``n`` workers: ``busy`` of them (chosen at random) running a job, ``retiring`` retiring."""
    busy_ids = set(rng.sample(range(1, n + 1), busy))
    idle_ids = [i for i in range(1, n + 1) if i not in busy_ids]
    retiring_ids = set(idle_ids[-retiring:]) if retiring else set()
    workers = []
    for worker_id in range(1, n + 1):
        done = rng.randint(40, 4000)
        if worker_id in busy_ids:
            workers.append(
                WorkerSnapshot(
                    id=worker_id,
                    state=WorkerState.BUSY,
                    job_id=first_job + rng.randint(0, 9999),
                    job_name=rng.choice(_JOB_NAMES),
                    jobs_done=done,
                    utilisation=rng.uniform(0.55, 0.99),
                    busy_for_s=rng.uniform(0.001, 0.4),
                )
            )
        else:
            workers.append(
                WorkerSnapshot(
                    id=worker_id,
                    state=WorkerState.RETIRING if worker_id in retiring_ids else WorkerState.IDLE,
                    job_id=None,
                    job_name=None,
                    jobs_done=done,
                    utilisation=rng.uniform(0.05, 0.5),
                )
            )
    return tuple(workers)


_TRACEBACK = """\
Traceback (most recent call last):
  File "engine/dispatcher.py", line 590, in _worker_main
    result = job.fn(*job.args, **(job.kwargs or {{}}))
             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "tui_dispatch/workload.py", line 57, in {func}
    return _step(n, attempt)
           ^^^^^^^^^^^^^^^^^
  File "tui_dispatch/workload.py", line 44, in _step
    raise {exc}({message!r})
{exc_path}: {message}
"""

_FAILURES = (
    (
        "DemoFailure",
        "tui_dispatch.workload.DemoFailure",
        "demo.flaky",
        "job {n} failed on purpose (p=0.05)",
    ),
    ("TimeoutError", "TimeoutError", "demo.io", "upstream did not answer within 2.0s (job {n})"),
    (
        "ValueError",
        "ValueError",
        "demo.crunch",
        "cannot parse record {n}: expected 5 fields, got 3",
    ),
)


def build_dead_letters(rng: random.Random, n: int, *, first_id: int = 1000) -> list[DeadLetter]:
    """``n`` dead letters with realistic tracebacks, oldest first."""
    entries = []
    at = WALL_START + 5.0
    for i in range(n):
        exc, exc_path, name, template = _FAILURES[rng.randrange(len(_FAILURES))]
        job_id = first_id + i * 7 + rng.randrange(7)
        message = template.format(n=job_id)
        attempts = 4 if exc != "ValueError" else 1
        first = at
        at += rng.uniform(0.01, 0.4)
        entries.append(
            DeadLetter(
                job_id=job_id,
                name=name,
                task=None,
                args_repr=f"({job_id},)",
                exc_type=exc_path,
                exc_message=message,
                traceback=_TRACEBACK.format(
                    func=name.split(".")[1] + "_job", exc=exc, exc_path=exc_path, message=message
                ),
                attempts=attempts,
                first_failure_at=first,
                last_failure_at=at,
                reason="retries exhausted" if attempts > 1 else "not retryable",
            )
        )
    return entries


def build_snapshot(
    *,
    uptime_s: float,
    state: EngineState = EngineState.RUNNING,
    succeeded: int = 0,
    failed: int = 0,
    retries: int = 0,
    dead: int = 0,
    cancelled: int = 0,
    backlog: int = 0,
    scheduled: int = 0,
    workers: tuple[WorkerSnapshot, ...] = (),
    min_workers: int = 1,
    max_workers: int = 8,
    dlq_size: int | None = None,
    throughput_per_s: float = 0.0,
    oldest_wait_s: float = 0.0,
    run_time: Latency | None = None,
    queue_wait: Latency | None = None,
    retries_by_attempt: tuple[tuple[int, int], ...] = (),
    next_retries: tuple[ScheduledRetry, ...] = (),
    scale_events: tuple[ScaleEvent, ...] = (),
    requeued: int = 0,
) -> Snapshot:
    """A consistent snapshot: ``submitted`` is derived so that every job is somewhere."""
    busy = sum(w.state is WorkerState.BUSY for w in workers)
    retiring = sum(w.state is WorkerState.RETIRING for w in workers)
    in_flight = busy
    submitted = succeeded + dead + cancelled + in_flight + backlog + scheduled
    utilisation = sum(w.utilisation for w in workers) / len(workers) if workers else 0.0
    return Snapshot(
        taken_at=WALL_START + uptime_s,
        uptime_s=uptime_s,
        state=state,
        counters=Counters(
            submitted=submitted,
            succeeded=succeeded,
            failed=failed,
            retries=retries,
            dead_lettered=dead,
            cancelled=cancelled,
            requeued=requeued,
            scale_ups=sum(e.delta for e in scale_events if e.delta > 0),
            scale_downs=-sum(e.delta for e in scale_events if e.delta < 0),
        ),
        backlog=backlog,
        scheduled=scheduled,
        in_flight=in_flight,
        workers_total=len(workers),
        workers_busy=busy,
        workers_idle=len(workers) - busy - retiring,
        workers_retiring=retiring,
        stuck_threads=0,
        min_workers=min_workers,
        max_workers=max_workers,
        utilisation=utilisation,
        oldest_wait_s=oldest_wait_s if backlog else 0.0,
        dlq_size=dead if dlq_size is None else dlq_size,
        throughput_per_s=throughput_per_s,
        run_time=run_time or Latency(),
        queue_wait=queue_wait or Latency(),
        workers=workers,
        retries_by_attempt=retries_by_attempt,
        next_retries=next_retries,
        scale_events=scale_events,
    )


_RUN = Latency(p50=0.0021, p95=0.0087, p99=0.0193, count=4096)
_WAIT = Latency(p50=0.0004, p95=0.118, p99=0.342, count=4096)


def _ramp(steps: int, start: float, peak: float, end: float) -> list[float]:
    """Up from ``start`` to ``peak`` over the first two thirds, then to ``end``."""
    up = max(1, steps * 2 // 3)
    values = [start + (peak - start) * (i / up) for i in range(up)]
    down = steps - up
    values += [peak + (end - peak) * ((i + 1) / down) for i in range(down)]
    return values


def _scale_ups(start_workers: int, target: int, t0: float) -> tuple[ScaleEvent, ...]:
    events, workers, at = [], start_workers, t0
    while workers < target:
        step = min(target - workers, max(1, workers))
        workers += step
        events.append(
            ScaleEvent(
                at=WALL_START + at,
                delta=step,
                workers_after=workers,
                reason=f"backlog {step * 600} > {workers - step} workers x 4",
            )
        )
        at += 1.0
    return tuple(events)


# -- the scenarios --------------------------------------------------------------------------------
def idle() -> FixedSource:
    """Up for a while; a burst came and went; four idle workers."""
    rng = random.Random(1)
    workers = tuple(
        WorkerSnapshot(
            id=i, state=WorkerState.IDLE, job_id=None, job_name=None, jobs_done=25, utilisation=0.04
        )
        for i in range(1, 5)
    )
    rates = _ramp(20, 0.0, 380.0, 0.0)
    history = [
        build_snapshot(
            uptime_s=100.0 + i,
            succeeded=100 * (i // 3 + 1) if i < 18 else 700,
            failed=rng.randint(0, 1) if i < 18 else 9,
            retries=9 if i >= 18 else 0,
            workers=workers,
            min_workers=4,
            max_workers=8,
            throughput_per_s=rate,
            run_time=_RUN,
            queue_wait=_WAIT,
            retries_by_attempt=((1, 7), (2, 2)) if i >= 18 else (),
        )
        for i, rate in enumerate(rates)
    ]
    return FixedSource(history, label="in-memory engine")


def under_load(n_workers: int = 16, busy: int = 12, seed: int = 2) -> FixedSource:
    """A big burst in progress: the backlog drains, most workers busy, a few dead letters."""
    rng = random.Random(seed)
    workers = build_workers(
        rng, n_workers, busy, retiring=1 if n_workers > busy + 1 else 0, first_job=40_000
    )
    events = _scale_ups(2, n_workers, 3.0)
    backlogs = _ramp(30, 9000.0, 41_000.0, 8400.0)
    rates = _ramp(30, 2000.0, 12_800.0, 11_900.0)
    dlq = build_dead_letters(random.Random(seed + 100), 3, first_id=512)
    history = []
    done = 0
    for i, (backlog, rate) in enumerate(zip(backlogs, rates, strict=True)):
        done += int(rate)
        history.append(
            build_snapshot(
                uptime_s=20.0 + i,
                succeeded=done,
                failed=210 + i * 7,
                retries=200 + i * 7,
                dead=3,
                backlog=int(backlog),
                scheduled=14,
                workers=workers,
                min_workers=2,
                max_workers=max(16, n_workers),
                throughput_per_s=rate,
                oldest_wait_s=3.4 + (backlog / 12_000),
                run_time=_RUN,
                queue_wait=_WAIT,
                retries_by_attempt=((1, 160 + i * 5), (2, 38 + i * 2), (3, 9)),
                next_retries=tuple(
                    ScheduledRetry(
                        job_id=40_100 + k * 13,
                        name="demo.flaky",
                        attempt=2,
                        due_in_s=0.05 + 0.07 * k,
                    )
                    for k in range(4)
                ),
                scale_events=events,
            )
        )
    return FixedSource(history, dlq, label="in-memory engine")


def big_pool() -> FixedSource:
    """500 workers, most of them busy."""
    return under_load(n_workers=500, busy=431, seed=5)


def fleet() -> FixedSource:
    """A Redis fleet: three worker processes on two hosts, watched from a third."""
    source = under_load(n_workers=12, busy=9, seed=8)
    processes = ("app-1:4121", "app-1:4188", "app-2:977")
    history = []
    while not source.exhausted:
        snap = source.snapshot()
        workers = tuple(
            dataclasses.replace(w, process=processes[(w.id - 1) // 4], last_seen_s=0.4)
            for w in snap.workers
        )
        history.append(dataclasses.replace(snap, workers=workers, max_workers=24, min_workers=6))
    return FixedSource(
        history, source.dlq_list(0, 100), label="redis://127.0.0.1:6379/0 queue 'default'"
    )


def retries_pending() -> FixedSource:
    """A failing burst: many retries scheduled, attempts climbing, due times ahead."""
    rng = random.Random(3)
    workers = build_workers(rng, 8, 5, first_job=7000)
    next_retries = tuple(
        ScheduledRetry(
            job_id=7000 + rng.randrange(1000),
            name=rng.choice(("demo.flaky", "demo.io")),
            attempt=attempt,
            due_in_s=due,
        )
        for attempt, due in sorted(
            ((rng.choice((2, 2, 3, 4)), rng.uniform(0.0, 3.2)) for _ in range(10)),
            key=lambda p: p[1],
        )
    )
    history = []
    for i in range(20):
        history.append(
            build_snapshot(
                uptime_s=61.0 + i,
                succeeded=1900 + 40 * i,
                failed=420 + 25 * i,
                retries=380 + 22 * i,
                dead=40 + i,
                backlog=60 + 3 * i,
                scheduled=180 + 4 * i,
                workers=workers,
                min_workers=2,
                max_workers=8,
                throughput_per_s=55.0 + 3 * (i % 5),
                oldest_wait_s=0.8,
                run_time=Latency(p50=0.041, p95=0.12, p99=0.31, count=2048),
                queue_wait=Latency(p50=0.2, p95=1.9, p99=3.1, count=2048),
                retries_by_attempt=((1, 260 + 14 * i), (2, 92 + 6 * i), (3, 28 + 2 * i)),
                next_retries=next_retries,
            )
        )
    dlq = build_dead_letters(random.Random(33), history[-1].dlq_size, first_id=7000)
    return FixedSource(history, dlq, label="in-memory engine")


def dlq_populated(size: int = 1234) -> FixedSource:
    """A quiet engine with a big dead-letter queue."""
    rng = random.Random(4)
    workers = build_workers(rng, 4, 0)
    history = [
        build_snapshot(
            uptime_s=600.0 + i,
            succeeded=48_766,
            failed=size * 3 + 200,
            retries=size * 3,
            dead=size,
            workers=workers,
            min_workers=4,
            max_workers=8,
            run_time=_RUN,
            queue_wait=_WAIT,
            retries_by_attempt=((1, size + 180), (2, size + 12), (3, size)),
        )
        for i in range(3)
    ]
    return FixedSource(
        history, build_dead_letters(random.Random(44), size), label="in-memory engine"
    )


def draining() -> FixedSource:
    """A graceful shutdown under way: intake closed, the backlog going down."""
    rng = random.Random(6)
    workers = build_workers(rng, 8, 8, first_job=20_000)
    history = []
    for i, left in enumerate((5000, 4300, 3600, 2900, 2200, 1800)):
        history.append(
            build_snapshot(
                uptime_s=300.0 + i,
                state=EngineState.DRAINING,
                succeeded=95_000 + (5000 - left),
                failed=300,
                retries=290,
                dead=10,
                backlog=left - 8 - 12,
                scheduled=12,
                workers=workers,
                min_workers=8,
                max_workers=8,
                throughput_per_s=700.0,
                oldest_wait_s=2.5,
                run_time=_RUN,
                queue_wait=_WAIT,
                retries_by_attempt=((1, 250), (2, 40)),
            )
        )
    return FixedSource(history, build_dead_letters(random.Random(66), 10), label="in-memory engine")


def stopped() -> FixedSource:
    """After a forceful shutdown: no workers, everything accounted for."""
    history = [
        build_snapshot(
            uptime_s=912.0 + i,
            state=EngineState.STOPPED,
            succeeded=99_120,
            failed=1300,
            retries=1260,
            dead=40,
            cancelled=840,
            min_workers=2,
            max_workers=16,
            run_time=_RUN,
            queue_wait=_WAIT,
            retries_by_attempt=((1, 900), (2, 260), (3, 100)),
        )
        for i in range(2)
    ]
    return FixedSource(history, build_dead_letters(random.Random(77), 40), label="in-memory engine")


@dataclass(frozen=True)
class Scenario:
    """One fixed state of the dashboard, at one terminal size.

    Attributes:
        name: used for the screenshot's file name (``screenshots/<name>.svg``).
        build: makes a fresh source for the state.
        size: terminal (columns, rows).
        keys: keys pressed once the app has settled (e.g. ``"?"`` for the help screen).
        theme: a Textual theme name, or ``None`` for the default.
    """

    name: str
    build: Callable[[], FixedSource]
    size: tuple[int, int] = WIDE
    keys: tuple[str, ...] = ()
    theme: str | None = None
    description: str = field(default="", compare=False)

    def app(self) -> DashboardApp:
        """A fresh app over a fresh source for this scenario."""
        app = make_app(self.build())
        if self.theme is not None:
            app.theme = self.theme
        return app


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("idle", idle, description="idle engine, wide terminal"),
        Scenario("idle-80x24", idle, SMALL, description="idle engine, 80x24"),
        Scenario("under-load", under_load, description="a large burst: busy and idle workers"),
        Scenario("under-load-80x24", under_load, SMALL, description="under load, 80x24"),
        Scenario(
            "under-load-light",
            under_load,
            theme="textual-light",
            description="under load, light theme",
        ),
        Scenario("retries", retries_pending, description="retries pending"),
        Scenario("dlq", dlq_populated, keys=("tab",), description="DLQ populated, table focused"),
        Scenario(
            "dlq-80x24", dlq_populated, SMALL, keys=("tab",), description="DLQ populated, 80x24"
        ),
        Scenario(
            "dlq-detail",
            dlq_populated,
            keys=("tab", "down", "down", "enter"),
            description="DLQ entry with traceback",
        ),
        Scenario("draining", draining, description="graceful shutdown in progress"),
        Scenario("stopped", stopped, description="engine stopped"),
        Scenario("help", idle, keys=("question_mark",), description="the ? help screen"),
        Scenario(
            "help-80x24", idle, SMALL, keys=("question_mark",), description="help screen, 80x24"
        ),
        Scenario("500-workers", big_pool, description="500 workers"),
        Scenario("fleet", fleet, description="a Redis fleet of three worker processes"),
    )
}
"""Every scenario, by name."""


async def settle(pilot: Pilot[None], timeout_s: float = 10.0) -> None:
    """Poll until the app has shown the source's whole history, then let it repaint.

    Drives :meth:`DashboardApp.poll` directly instead of waiting for the timer, so a scenario
    settles in a few milliseconds and its header still shows the default refresh rate.

    Raises:
        TimeoutError: the app did not catch up within ``timeout_s``.
    """
    app = pilot.app
    assert isinstance(app, DashboardApp)
    source = app.source
    assert isinstance(source, FixedSource)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        idle = not app.polling
        if idle and source.exhausted and app.snapshot is source.last:
            break
        if loop.time() > deadline:
            raise TimeoutError(f"the app did not settle within {timeout_s}s")
        if idle:
            app.poll()
        await asyncio.sleep(0.001)
    await app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


def scenario_names() -> Sequence[str]:
    """Scenario names, in display order."""
    return tuple(SCENARIOS)
