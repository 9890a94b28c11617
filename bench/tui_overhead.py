"""What the dashboard costs the engine: W1 throughput with the dashboard attached vs without.

W1 is 100,000 no-op jobs on 4 workers, autoscaling off, submitted with ``submit_many`` and
waited for with ``Dispatcher.join``. The two sides run the very same code; on the dashboard
side a headless ``tui_dispatch`` app (``App.run_test``, 160x48) watches the engine through a
``LiveSource`` and polls it at its default rate while the jobs run. The clock covers submission
and the wait, not the app's start-up. A third side runs the dashboard with its
``gc.freeze()`` turned off, to show how much of its cost is the collector rescanning the
screen's objects.

Every run is a fresh interpreter (``bench._util.run_child``); the sides alternate (A B A B ...)
so a slow spell of the machine hits both. The goal is a ratio >= 0.9: the screen costs the
engine under 10 % of its throughput.

Usage::

    python -m bench.tui_overhead [--reps N] [--quick] [--json PATH] [--jobs N] [--cpu N]
    python -m bench tui_overhead

Runs on the main thread only.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench._util import (
    Summary,
    check_reps,
    common_parser,
    engine_revision,
    machine_info,
    markdown_table,
    run_child_undisturbed,
    write_json,
)

MODULE = "tui_overhead"
JOBS = 100_000
WORKERS = 4
TERMINAL = (160, 48)
GOAL = 0.9
WAIT_TIMEOUT_S = 300.0

__all__ = ["main", "w1_plain", "w1_with_dashboard"]


def noop() -> None:
    """The W1 job."""


def _pin(cpu: int | None) -> None:
    """Keep this process (and the threads it starts) on one CPU, if asked."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _make_dispatcher(workers: int) -> Any:
    from engine import Dispatcher

    return Dispatcher(min_workers=workers, max_workers=workers, autoscale=False, log_interval_s=0)


def _run_w1(dispatcher: Any, n: int) -> float:
    """Submit ``n`` no-op jobs, wait for all of them; returns the seconds it took."""
    before = dispatcher.snapshot(workers=False).counters.succeeded
    started = time.perf_counter()
    dispatcher.submit_many(noop, [()] * n)
    if not dispatcher.join(timeout_s=WAIT_TIMEOUT_S):
        raise RuntimeError(f"the dispatcher did not settle within {WAIT_TIMEOUT_S:g} s")
    elapsed = time.perf_counter() - started
    succeeded = dispatcher.snapshot(workers=False).counters.succeeded - before
    if succeeded != n:
        raise RuntimeError(f"expected {n} successful no-op jobs, got {succeeded}")
    return elapsed


# --------------------------------------------------------------------------------------------
# Child-side runs: each is called in a fresh interpreter by run_child and returns a dict.


def w1_plain(n: int, workers: int, cpu: int | None = None) -> dict[str, Any]:
    """W1 with nothing watching."""
    _pin(cpu)
    d = _make_dispatcher(workers)
    try:
        elapsed = _run_w1(d, n)
    finally:
        d.shutdown(wait=True)
    return {"elapsed_s": elapsed, "jobs_per_s": n / elapsed}


class _NoBursts:
    """The benchmark submits its own jobs; the burst keys are never pressed."""

    def submit_burst(self, dispatcher: Any, n: int, *, failing: bool = False) -> int:
        raise RuntimeError("no bursts in this benchmark")


def w1_with_dashboard(
    n: int, workers: int, cpu: int | None = None, freeze_gc: bool = True
) -> dict[str, Any]:
    """W1 while a headless dashboard polls the engine at its default rate.

    ``freeze_gc=False`` turns off the app's ``gc.freeze()`` of its own objects, to show what
    that buys.
    """
    _pin(cpu)
    import asyncio

    import anyio.to_thread

    from tui_dispatch.app import make_app
    from tui_dispatch.source import LiveSource

    d = _make_dispatcher(workers)
    source = LiveSource(d, _NoBursts())
    app = make_app(source, freeze_gc=freeze_gc)
    out: dict[str, Any] = {}

    async def run() -> None:
        async with app.run_test(headless=True, size=TERMINAL) as pilot:
            # Start the clock once the dashboard is up and steady: first polls done, painted.
            while app.polls < 2:
                await asyncio.sleep(0.01)
            await pilot.pause()
            await anyio.to_thread.run_sync(time.perf_counter)  # anyio imports its thread parts now
            polls_before = app.polls
            # The jobs are submitted and waited for on a worker thread, as the app's own burst
            # keys do, so the app's event loop keeps polling and painting meanwhile.
            elapsed = await anyio.to_thread.run_sync(_run_w1, d, n)
            out["elapsed_s"] = elapsed
            out["jobs_per_s"] = n / elapsed
            out["polls"] = app.polls - polls_before
            out["refresh_s"] = app.refresh_s
            snap = app.snapshot
            out["last_seen_succeeded"] = snap.counters.succeeded if snap is not None else 0

    try:
        asyncio.run(run())
    finally:
        source.close()
    return out


# --------------------------------------------------------------------------------------------
# Parent side


def main(argv: Sequence[str] | None = None) -> int:
    """Run both sides ``--reps`` times, alternating, and print the ratio. Main thread only."""
    parser = common_parser(
        "W1 throughput with the dashboard attached (headless, default refresh) vs without.",
        prog=f"python -m bench {MODULE}",
    )
    parser.add_argument("--jobs", type=int, default=JOBS, help=f"jobs per run (default {JOBS:,})")
    parser.add_argument(
        "--cpu",
        type=int,
        default=None,
        metavar="N",
        help="run both sides on CPU N only. On a small shared VM, handing the GIL between "
        "CPUs makes unpinned runs swing by 2x with the neighbours' load; one CPU measures "
        "what the dashboard itself costs (default: not pinned)",
    )
    parser.add_argument(
        "--max-others",
        type=float,
        default=0.10,
        metavar="FRACTION",
        help="repeat a run (up to 3 tries) when other processes used more than this share of "
        "the CPUs during it; 1 turns the check off (default 0.10)",
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    reps = check_reps(args, parser)
    if args.jobs < 1:
        parser.error(f"--jobs must be an integer >= 1; got {args.jobs}")
    max_others = 1.0 if args.max_others >= 1 else args.max_others

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        log(f"warning: load average {load_before[0]:.2f}: other processes will disturb the numbers")
    if args.cpu is not None and args.cpu not in os.sched_getaffinity(0):
        parser.error(
            f"--cpu must be one of the CPUs this process may use: {sorted(os.sched_getaffinity(0))}"
        )
    base = {"n": args.jobs, "workers": WORKERS, "cpu": args.cpu}
    sides = [  # (key, label, child function, kwargs); the first is the baseline
        ("alone", "engine alone", "w1_plain", base),
        ("dashboard", "engine + dashboard", "w1_with_dashboard", base),
        (
            "dashboard_no_freeze",
            "engine + dashboard, gc.freeze off",
            "w1_with_dashboard",
            {**base, "freeze_gc": False},
        ),
    ]
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in sides}
    started = time.perf_counter()
    for rep in range(1, reps + 1):
        for key, label, function, kwargs in sides:
            result = run_child_undisturbed(MODULE, function, kwargs, max_others=max_others)
            runs[key].append(result)
            log(
                f"rep {rep}/{reps} {label}: {result['jobs_per_s']:,.0f} jobs/s "
                f"(others {result['others_cpu']:.0%}, tries {result['tries']})"
            )
    rates = {key: Summary.of([r["jobs_per_s"] for r in runs[key]]) for key in runs}
    alone = rates["alone"].median
    ratio = rates["dashboard"].median / alone
    results = {
        "module": MODULE,
        "command": " ".join(sys.orig_argv),
        "machine": machine_info(),
        "reps": reps,
        "jobs": args.jobs,
        "workers": WORKERS,
        "terminal": TERMINAL,
        "cpu": args.cpu,
        "engine_rev": engine_revision(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "wall_s": time.perf_counter() - started,
        "jobs_per_s": {key: rates[key].to_dict() for key in rates},
        "ratio_of_medians": {key: rates[key].median / alone for key in rates},
        "goal": GOAL,
        "meets_goal": ratio >= GOAL,
        "polls_per_run": [r["polls"] for r in runs["dashboard"]],
        "raw": runs,
    }
    if args.json != "-":
        table = markdown_table(
            ["side", "jobs/s median (min-max)", "vs alone", "runs"],
            [
                [label, rates[key].fmt(), f"{rates[key].median / alone:.3f}", str(rates[key].n)]
                for key, label, *_ in sides
            ],
        )
        pinned = "" if args.cpu is None else f", every run on CPU {args.cpu}"
        print(f"W1: {args.jobs:,} no-op jobs, {WORKERS} workers, autoscale off{pinned}")
        print(table)
        print(
            f"ratio (dashboard / alone): {ratio:.3f}; goal >= {GOAL}: "
            f"{'met' if ratio >= GOAL else 'NOT met'}; dashboard polls per run "
            f"{results['polls_per_run']} at every {runs['dashboard'][0]['refresh_s']:g}s"
        )
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
