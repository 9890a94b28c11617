"""The engine against ``concurrent.futures.ThreadPoolExecutor`` (TPE) on the same workloads.

Workloads (the goals come from issue 2):

* **W1** 100,000 no-op jobs on 4 workers: throughput; goal engine ≥ 1.5× TPE. The engine is
  measured twice: one ``submit`` per job, and one ``submit_many`` for the whole batch.
* **W2** 2,000 jobs that each sleep 10 ms, on 100 workers: throughput against the ideal
  100 / 10 ms = 10,000 jobs/s; goal engine ≥ 0.95 of ideal.
* **W3** 20,000 jobs on 4 workers, 20 % of them (picked by a seeded ``random.Random``) fail once
  and then succeed, retry delay 0: goal engine ≥ 1.5× a TPE that resubmits failures. Two TPE
  baselines, and the ratio is given against each: resubmission from a done-callback (each job
  keeps one outer ``Future`` that settles after its last attempt, like the engine's handle), and
  a loop that waits for a whole round and then resubmits that round's failures.
* **MEM** 1,000,000 queued no-op jobs with their handles kept: bytes per job, from the RSS before
  and after submitting while no job can start (engine: ``pause()``; TPE: its 4 workers blocked on a
  ``threading.Event`` gate). Goal ≤ 1 KiB per job.

Method: every measured run is a fresh subprocess (``bench._util.run_child``), and the sides of a
workload take turns (engine first on even repetitions, TPE first on odd ones). A throughput run is
timed with ``time.perf_counter`` from building the executor, through submitting every job and
``concurrent.futures.wait`` on all handles, to the return of ``shutdown(wait=True)``. Ratios are
engine / baseline per repetition, then summarised as median and range (min–max).

Run: ``python -m bench engine_vs_tpe [--reps N] [--quick] [--json PATH]``.
"""

from __future__ import annotations

import gc
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ALL_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from bench._util import (
    Summary,
    check_reps,
    common_parser,
    machine_info,
    markdown_table,
    rss_kib,
    run_child,
    write_json,
)

MODULE = "engine_vs_tpe"
WAIT_TIMEOUT_S = 240.0  # every wait is bounded: a stuck run fails instead of hanging the bench

W1_JOBS, W1_WORKERS = 100_000, 4
W2_JOBS, W2_WORKERS, W2_SLEEP_S = 2_000, 100, 0.010
W2_IDEAL_JOBS_PER_S = W2_WORKERS / W2_SLEEP_S
W3_JOBS, W3_WORKERS, W3_FAIL_FRACTION, W3_SEED, W3_MAX_RETRIES = 20_000, 4, 0.20, 20240601, 3
MEM_JOBS, MEM_WORKERS = 1_000_000, 4


# --------------------------------------------------------------------------------------------
# The jobs. Module-level, so both sides run the very same function objects.


def noop() -> None:
    """W1 and MEM: a job that does nothing."""
    return


def sleeper(delay_s: float) -> None:
    """W2: a job that sleeps ``delay_s``."""
    time.sleep(delay_s)


class Flake(Exception):
    """W3: the first attempt of a chosen job raises this."""


def failing_set(n: int, fraction: float, seed: int) -> bytearray:
    """Flags (1 = fails its first attempt) for exactly ``round(n * fraction)`` jobs, seeded."""
    flags = bytearray(n)
    for i in random.Random(seed).sample(range(n), round(n * fraction)):
        flags[i] = 1
    return flags


def make_flaky(fails: bytearray) -> Callable[[int], int]:
    """W3's job: job ``i`` raises :class:`Flake` on its first attempt if ``fails[i]``, else returns ``i``.

    Job ``i`` never runs on two threads at once (a retry starts after the failed attempt ended),
    so the per-job flag needs no lock.
    """
    tried = bytearray(len(fails))

    def flaky(i: int) -> int:
        if fails[i] and not tried[i]:
            tried[i] = 1
            raise Flake(i)
        return i

    return flaky


def _check_all_succeeded(handles: Sequence[Future[Any]], expected: int) -> int:
    """How many handles succeeded; raises if any is unfinished or failed (run after timing)."""
    ok = sum(1 for h in handles if h.done() and not h.cancelled() and h.exception(timeout=0) is None)
    if ok != expected:
        raise RuntimeError(f"expected {expected} successful jobs, got {ok}")
    return ok


def _wait_all(handles: Sequence[Future[Any]]) -> None:
    _done, not_done = wait(handles, timeout=WAIT_TIMEOUT_S, return_when=ALL_COMPLETED)
    if not_done:
        raise RuntimeError(f"{len(not_done)} jobs not done after {WAIT_TIMEOUT_S:g} s")


def _engine(workers: int, **extra: Any) -> Any:
    from engine import Dispatcher  # imported in engine children only

    return Dispatcher(min_workers=workers, max_workers=workers, autoscale=False,
                      log_interval_s=0, **extra)


# --------------------------------------------------------------------------------------------
# Child-side runs: each is called in a fresh interpreter by run_child and returns a dict.


def w1_engine(n: int, workers: int, form: str) -> dict[str, Any]:
    """W1 on the engine; ``form`` is ``"submit"`` (one call per job) or ``"submit_many"``."""
    if form not in ("submit", "submit_many"):
        raise ValueError(f"form must be 'submit' or 'submit_many'; got {form!r}")
    started = time.perf_counter()
    d = _engine(workers)
    if form == "submit":
        handles = [d.submit(noop) for _ in range(n)]
    else:
        handles = d.submit_many(noop, [()] * n)
    _wait_all(handles)
    d.shutdown(wait=True)
    elapsed = time.perf_counter() - started
    return {"elapsed_s": elapsed, "jobs": _check_all_succeeded(handles, n)}


def w1_tpe(n: int, workers: int) -> dict[str, Any]:
    """W1 on ThreadPoolExecutor."""
    started = time.perf_counter()
    ex = ThreadPoolExecutor(max_workers=workers)
    futures = [ex.submit(noop) for _ in range(n)]
    _wait_all(futures)
    ex.shutdown(wait=True)
    elapsed = time.perf_counter() - started
    return {"elapsed_s": elapsed, "jobs": _check_all_succeeded(futures, n)}


def w2_engine(n: int, workers: int, sleep_s: float) -> dict[str, Any]:
    """W2 on the engine (one ``submit`` per job)."""
    started = time.perf_counter()
    d = _engine(workers)
    handles = [d.submit(sleeper, sleep_s) for _ in range(n)]
    _wait_all(handles)
    d.shutdown(wait=True)
    elapsed = time.perf_counter() - started
    return {"elapsed_s": elapsed, "jobs": _check_all_succeeded(handles, n)}


def w2_tpe(n: int, workers: int, sleep_s: float) -> dict[str, Any]:
    """W2 on ThreadPoolExecutor."""
    started = time.perf_counter()
    ex = ThreadPoolExecutor(max_workers=workers)
    futures = [ex.submit(sleeper, sleep_s) for _ in range(n)]
    _wait_all(futures)
    ex.shutdown(wait=True)
    elapsed = time.perf_counter() - started
    return {"elapsed_s": elapsed, "jobs": _check_all_succeeded(futures, n)}


def w3_engine(n: int, workers: int, fail_fraction: float, seed: int, max_retries: int,
              form: str) -> dict[str, Any]:
    """W3 on the engine: its own retries, delay 0, no jitter."""
    from engine import RetryPolicy

    if form not in ("submit", "submit_many"):
        raise ValueError(f"form must be 'submit' or 'submit_many'; got {form!r}")
    fails = failing_set(n, fail_fraction, seed)
    flaky = make_flaky(fails)
    retry = RetryPolicy(max_retries=max_retries, base_s=0.0, jitter="none")
    started = time.perf_counter()
    d = _engine(workers, retry=retry)
    if form == "submit":
        handles = [d.submit(flaky, i) for i in range(n)]
    else:
        handles = d.submit_many(flaky, [(i,) for i in range(n)])
    _wait_all(handles)
    d.shutdown(wait=True)
    elapsed = time.perf_counter() - started
    attempts = sum(h.attempts for h in handles)
    if attempts != n + sum(fails):
        raise RuntimeError(f"expected {n + sum(fails)} attempts, counted {attempts}")
    return {"elapsed_s": elapsed, "jobs": _check_all_succeeded(handles, n), "attempts": attempts}


def w3_tpe_callback(n: int, workers: int, fail_fraction: float, seed: int,
                    max_retries: int) -> dict[str, Any]:
    """W3 on ThreadPoolExecutor, resubmitting a failed attempt from its done-callback.

    Each job has one outer ``Future`` (what the caller keeps, like the engine's handle); each
    attempt is an inner TPE future whose callback either settles the outer one or resubmits.
    """
    fails = failing_set(n, fail_fraction, seed)
    flaky = make_flaky(fails)
    attempts = [0]  # only the GIL-atomic list item increment touches it

    started = time.perf_counter()
    ex = ThreadPoolExecutor(max_workers=workers)
    outers: list[Future[int]] = [Future() for _ in range(n)]

    def launch(i: int, attempt: int) -> None:
        attempts[0] += 1
        inner = ex.submit(flaky, i)
        inner.add_done_callback(partial(settle, i, attempt))

    def settle(i: int, attempt: int, inner: Future[int]) -> None:
        exc = inner.exception()
        if exc is None:
            outers[i].set_result(inner.result())
        elif attempt < max_retries:
            launch(i, attempt + 1)
        else:
            outers[i].set_exception(exc)

    for i in range(n):
        launch(i, 0)
    _wait_all(outers)
    ex.shutdown(wait=True)
    elapsed = time.perf_counter() - started
    return {"elapsed_s": elapsed, "jobs": _check_all_succeeded(outers, n), "attempts": attempts[0]}


def w3_tpe_rounds(n: int, workers: int, fail_fraction: float, seed: int,
                  max_retries: int) -> dict[str, Any]:
    """W3 on ThreadPoolExecutor, in rounds: submit, wait for all, resubmit the failures."""
    fails = failing_set(n, fail_fraction, seed)
    flaky = make_flaky(fails)
    attempts = 0
    started = time.perf_counter()
    ex = ThreadPoolExecutor(max_workers=workers)
    final: list[Future[int] | None] = [None] * n
    pending = list(range(n))
    for _round in range(max_retries + 1):
        if not pending:
            break
        futures = [ex.submit(flaky, i) for i in pending]
        attempts += len(futures)
        _wait_all(futures)
        failed = []
        for i, f in zip(pending, futures, strict=True):
            final[i] = f
            if f.exception() is not None:
                failed.append(i)
        pending = failed
    ex.shutdown(wait=True)
    elapsed = time.perf_counter() - started
    handles = [f for f in final if f is not None]
    return {"elapsed_s": elapsed, "jobs": _check_all_succeeded(handles, n), "attempts": attempts}


def mem_engine(n: int, workers: int, form: str) -> dict[str, Any]:
    """MEM on the engine: RSS growth while ``n`` jobs sit in the paused backlog."""
    if form not in ("submit", "submit_many"):
        raise ValueError(f"form must be 'submit' or 'submit_many'; got {form!r}")
    d = _engine(workers)
    d.pause()
    gc.collect()
    before = rss_kib()
    started = time.perf_counter()
    if form == "submit":
        handles = [d.submit(noop) for _ in range(n)]
    else:
        handles = d.submit_many(noop, [()] * n)
    submit_s = time.perf_counter() - started
    gc.collect()
    after = rss_kib()
    queued = d.snapshot().backlog
    report = d.shutdown(wait=True, cancel_futures=True)
    if len(handles) != n:
        raise RuntimeError(f"expected {n} handles, got {len(handles)}")
    return {"jobs": n, "rss_before_kib": before, "rss_after_kib": after,
            "bytes_per_job": (after - before) * 1024 / n, "submit_s": submit_s,
            "backlog_seen": queued, "cancelled": len(report.cancelled)}


def mem_tpe(n: int, workers: int) -> dict[str, Any]:
    """MEM on ThreadPoolExecutor: RSS growth while ``n`` jobs queue behind blocked workers."""
    gate = threading.Event()
    running = threading.Semaphore(0)

    def blocker() -> None:
        running.release()
        gate.wait(WAIT_TIMEOUT_S)

    ex = ThreadPoolExecutor(max_workers=workers)
    blockers = [ex.submit(blocker) for _ in range(workers)]
    for _ in range(workers):  # every worker thread is now parked on the gate
        if not running.acquire(timeout=WAIT_TIMEOUT_S):
            raise RuntimeError("TPE workers did not start")
    gc.collect()
    before = rss_kib()
    started = time.perf_counter()
    futures = [ex.submit(noop) for _ in range(n)]
    submit_s = time.perf_counter() - started
    gc.collect()
    after = rss_kib()
    queued = ex._work_queue.qsize()  # a sanity check that nothing ran
    ex.shutdown(wait=False, cancel_futures=True)
    gate.set()
    ex.shutdown(wait=True)
    cancelled = sum(1 for f in futures if f.cancelled())
    _wait_all(blockers)
    return {"jobs": n, "rss_before_kib": before, "rss_after_kib": after,
            "bytes_per_job": (after - before) * 1024 / n, "submit_s": submit_s,
            "backlog_seen": queued, "cancelled": cancelled}


# --------------------------------------------------------------------------------------------
# Parent side: which runs make a workload, how they are summarised.


@dataclass(frozen=True)
class Side:
    """One contender in a workload: a label and the child function that measures it."""

    label: str
    function: str
    kwargs: dict[str, Any]
    engine: bool


@dataclass(frozen=True)
class Workload:
    """A workload: its sides, the baseline label, what is measured and the goal."""

    key: str
    title: str
    kind: str  # "throughput" or "memory"
    sides: tuple[Side, ...]
    baselines: tuple[str, ...]  # labels of the baseline sides; ratios are given against each
    goal: str
    ideal_jobs_per_s: float | None = None
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def workloads() -> list[Workload]:
    """The four workloads of issue 2, sized as it specifies."""
    w1 = {"n": W1_JOBS, "workers": W1_WORKERS}
    w2 = {"n": W2_JOBS, "workers": W2_WORKERS, "sleep_s": W2_SLEEP_S}
    w3 = {"n": W3_JOBS, "workers": W3_WORKERS, "fail_fraction": W3_FAIL_FRACTION,
          "seed": W3_SEED, "max_retries": W3_MAX_RETRIES}
    mem = {"n": MEM_JOBS, "workers": MEM_WORKERS}
    return [
        Workload("W1", "100,000 no-op jobs, 4 workers", "throughput", (
            Side("engine submit", "w1_engine", {**w1, "form": "submit"}, True),
            Side("engine submit_many", "w1_engine", {**w1, "form": "submit_many"}, True),
            Side("TPE", "w1_tpe", w1, False),
        ), ("TPE",), "engine ≥ 1.5× TPE"),
        Workload("W2", "2,000 jobs × 10 ms sleep, 100 workers", "throughput", (
            Side("engine submit", "w2_engine", w2, True),
            Side("TPE", "w2_tpe", w2, False),
        ), ("TPE",), "engine ≥ 0.95 of ideal 10,000 jobs/s", ideal_jobs_per_s=W2_IDEAL_JOBS_PER_S),
        Workload("W3", "20,000 jobs, 20% fail once, retry delay 0, 4 workers", "throughput", (
            Side("engine submit", "w3_engine", {**w3, "form": "submit"}, True),
            Side("engine submit_many", "w3_engine", {**w3, "form": "submit_many"}, True),
            Side("TPE resubmit (callback)", "w3_tpe_callback", w3, False),
            Side("TPE resubmit (rounds)", "w3_tpe_rounds", w3, False),
        ), ("TPE resubmit (callback)", "TPE resubmit (rounds)"), "engine ≥ 1.5× TPE resubmitting"),
        Workload("MEM", "1,000,000 queued no-op jobs, handles kept", "memory", (
            Side("engine submit", "mem_engine", {**mem, "form": "submit"}, True),
            Side("engine submit_many", "mem_engine", {**mem, "form": "submit_many"}, True),
            Side("TPE", "mem_tpe", mem, False),
        ), ("TPE",), "engine ≤ 1 KiB (1024 B) per job"),
    ]


def _value(workload: Workload, run: dict[str, Any]) -> float:
    """The headline number of one run: jobs/s, or bytes per job."""
    if workload.kind == "memory":
        return float(run["bytes_per_job"])
    return float(run["jobs"]) / float(run["elapsed_s"])


def run_workload(workload: Workload, reps: int, *, log: Callable[[str], None],
                 baselines_only: bool = False) -> None:
    """Measure every side ``reps`` times, each run in a fresh subprocess, alternating the order."""
    sides = tuple(s for s in workload.sides if not baselines_only or not s.engine)
    for side in sides:
        workload.runs[side.label] = []
    for rep in range(reps):
        order = sides if rep % 2 == 0 else tuple(reversed(sides))
        for side in order:
            result = run_child(MODULE, side.function, side.kwargs)
            workload.runs[side.label].append(result)
            log(f"{workload.key} rep {rep + 1}/{reps} {side.label}: "
                f"{_value(workload, result):,.1f} {'B/job' if workload.kind == 'memory' else 'jobs/s'}")


def summarise(workload: Workload) -> dict[str, Any]:
    """Per side: value, ratio to each baseline (paired by repetition), peak RSS, goal verdict."""
    base_values = {b: [_value(workload, r) for r in workload.runs[b]] for b in workload.baselines}
    sides: dict[str, Any] = {}
    for side in workload.sides:
        runs = workload.runs.get(side.label)
        if not runs:
            continue
        values = [_value(workload, r) for r in runs]
        entry: dict[str, Any] = {
            "engine": side.engine,
            "values": values,
            "value": Summary.of(values).to_dict(),
            "peak_rss_kib": Summary.of([r["peak_rss_kib"] for r in runs]).to_dict(),
        }
        if workload.kind == "memory":
            entry["submit_s"] = Summary.of([r["submit_s"] for r in runs]).to_dict()
        else:
            entry["elapsed_s"] = Summary.of([r["elapsed_s"] for r in runs]).to_dict()
        if side.engine:
            entry["ratio_to"] = {
                b: Summary.of([v / bv for v, bv in zip(values, bvs, strict=True)]).to_dict()
                for b, bvs in base_values.items()
            }
        if workload.ideal_jobs_per_s:
            entry["fraction_of_ideal"] = Summary.of(
                [v / workload.ideal_jobs_per_s for v in values]).to_dict()
        entry["goal_met"] = _goal_met(workload, entry) if side.engine else None
        sides[side.label] = entry
    return {"title": workload.title, "kind": workload.kind, "baselines": list(workload.baselines),
            "goal": workload.goal, "sides": sides}


def _goal_met(workload: Workload, entry: dict[str, Any]) -> dict[str, bool] | bool:
    """The verdict on the median: per baseline for the ratio goals, else one bool."""
    if workload.key in ("W1", "W3"):
        return {b: bool(r["median"] >= 1.5) for b, r in entry["ratio_to"].items()}
    if workload.key == "W2":
        return bool(entry["fraction_of_ideal"]["median"] >= 0.95)
    return bool(entry["value"]["median"] <= 1024.0)


def _fmt(summary: dict[str, Any], spec: str, unit: str = "") -> str:
    return Summary(summary["median"], summary["low"], summary["high"], summary["n"]).fmt(spec, unit)


def _short(label: str) -> str:
    return label.removeprefix("TPE resubmit ").strip("()") if label.startswith("TPE resubmit") else label


def render(results: dict[str, Any]) -> str:
    """The readable table: one row per side of each workload, then the notes."""
    headers = ["workload", "side", "median (min–max)", "engine / baseline: median (min–max)",
               "goal", "peak RSS MiB"]
    rows: list[list[str]] = []
    for key, w in results["workloads"].items():
        several = len(w["baselines"]) > 1
        for label, s in w["sides"].items():
            unit = " B/job" if w["kind"] == "memory" else " jobs/s"
            result = _fmt(s["value"], ",.0f", unit)
            if "ratio_to" in s:
                ratio = "; ".join((f"vs {_short(b)} " if several else "") + _fmt(r, ".2f", "×")
                                  for b, r in s["ratio_to"].items())
            else:
                ratio = "(baseline)"
            goal_bits = []
            if "fraction_of_ideal" in s:
                goal_bits.append(_fmt(s["fraction_of_ideal"], ".3f", " of ideal"))
            met = s["goal_met"]
            if isinstance(met, dict):
                goal_bits.append("; ".join((f"vs {_short(b)} " if several else "")
                                           + ("met" if ok else "MISSED") for b, ok in met.items()))
            elif met is not None:
                goal_bits.append("met" if met else "MISSED")
            rss = s["peak_rss_kib"]["median"] / 1024
            rows.append([key, label, result, ratio, " ".join(goal_bits), f"{rss:,.0f}"])
    lines = [markdown_table(headers, rows), ""]
    for key, w in results["workloads"].items():
        lines.append(f"{key}: {w['title']}. Goal: {w['goal']}. Baseline: {', '.join(w['baselines'])}.")
    m = results["machine"]
    lines.append(f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['python']}, {m['platform']}.")
    lines.append(f"{results['reps']} repetitions per side, each run in a fresh subprocess, sides "
                 f"alternating order; peak RSS is the median of the runs' VmHWM. "
                 f"Wall time {results['wall_s']:.0f} s.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the workloads and print the table (and/or JSON). Main thread only."""
    parser = common_parser("Engine vs concurrent.futures.ThreadPoolExecutor on the same workloads.")
    parser.add_argument("--only", action="append", choices=["W1", "W2", "W3", "MEM"],
                        help="run only this workload (repeatable)")
    parser.add_argument("--baselines-only", action="store_true",
                        help="run only the ThreadPoolExecutor sides (checks the harness without the engine)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    reps = check_reps(args, parser)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    chosen = [w for w in workloads() if not args.only or w.key in args.only]
    started = time.perf_counter()
    for workload in chosen:
        run_workload(workload, reps, log=log, baselines_only=args.baselines_only)
    results = {
        "module": MODULE,
        "command": " ".join(sys.orig_argv),
        "machine": machine_info(),
        "reps": reps,
        "wall_s": time.perf_counter() - started,
        "workloads": {w.key: summarise(w) for w in chosen},
        "raw": {w.key: w.runs for w in chosen},
    }
    if args.json != "-":
        print(render(results))
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
