"""The engine against ``concurrent.futures.ThreadPoolExecutor`` (TPE) on the same workloads.

Workloads (the goals come from issue 2):

* **W1** 100,000 no-op jobs on 4 workers: throughput; goal engine >= 1.5x TPE. The engine is
  measured with one ``submit`` per job and with one ``submit_many`` for the whole batch.
* **W2** 2,000 jobs that each sleep 10 ms, on 100 workers: throughput against the ideal
  100 / 10 ms = 10,000 jobs/s; goal engine >= 0.95 of ideal. A reference side measures the floor
  of plain Python: 100 pre-started bare threads doing 20 sleeps each, with no executor at all.
* **W3** 20,000 jobs on 4 workers, 20 % of them (picked by a seeded ``random.Random``) fail once
  and then succeed, retry delay 0: goal engine >= 1.5x a TPE that resubmits failures. TPE
  resubmits either from a done-callback (each job keeps one outer ``Future`` that settles after
  its last attempt, like the engine's handle) or in rounds (wait for a whole round, then resubmit
  that round's failures).
* **MEM** 1,000,000 queued no-op jobs with their handles kept: bytes per job, from the RSS before
  and after submitting while no job can start (engine: ``pause()``; TPE: its 4 workers blocked on a
  ``threading.Event`` gate). Goal <= 1 KiB per job.

How a throughput run waits for all its jobs matters a lot, so each is measured both ways and
ratios only compare runs that wait the same way:

* ``wait()``: ``concurrent.futures.wait(handles)``, the same code for both executors;
* native: each executor's own way. Engine: ``Dispatcher.join()``. TPE: ``shutdown(wait=True)``
  alone (it drains the queue); TPE resubmitting from callbacks: a countdown latch the callbacks
  trip when the last job settles.

Method: every measured run is a fresh subprocess (``bench._util.run_child``), and the sides of a
workload take turns (the side order is reversed on odd repetitions). A throughput run is timed
with ``time.perf_counter`` from building the executor, through submitting every job and waiting for
all of them, to the return of ``shutdown(wait=True)``; imports happen before the clock starts.
Ratios are engine / baseline per repetition, summarised as median and range (min-max).

Run: ``python -m bench engine_vs_tpe [--reps N] [--quick] [--only W1] [--json PATH]``.
"""

from __future__ import annotations

import gc
import itertools
import os
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
    engine_revision,
    machine_info,
    markdown_table,
    rss_kib,
    run_child,
    run_child_undisturbed,
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
    """How many handles succeeded; raises unless it is ``expected`` (run after timing).

    An engine handle is read through its ``state``: ``Future.exception()`` would build the
    Condition that the handle otherwise never needs, and inflate the run's peak RSS.
    """
    ok = 0
    for h in handles:
        state = getattr(h, "state", None)
        if state is not None:
            ok += state == "succeeded"
        elif h.done() and not h.cancelled() and h.exception(timeout=0) is None:
            ok += 1
    if ok != expected:
        raise RuntimeError(f"expected {expected} successful jobs, got {ok}")
    return ok


def _wait_all(handles: Sequence[Future[Any]]) -> None:
    _done, not_done = wait(handles, timeout=WAIT_TIMEOUT_S, return_when=ALL_COMPLETED)
    if not_done:
        raise RuntimeError(f"{len(not_done)} jobs not done after {WAIT_TIMEOUT_S:g} s")


def _engine_factory(workers: int, **extra: Any) -> Callable[[], Any]:
    """A maker of the engine under test: a fixed pool, no autoscaling, no periodic log line.

    ``engine`` is imported here, before a run starts its clock (import time is not measured),
    and only in engine children, so a TPE child's heap never holds it.
    """
    from engine import Dispatcher

    return partial(Dispatcher, min_workers=workers, max_workers=workers, autoscale=False,
                   log_interval_s=0, **extra)


# --------------------------------------------------------------------------------------------
# Child-side runs: each is called in a fresh interpreter by run_child and returns a dict.


class _Stopwatch:
    """``time.perf_counter`` marks for one run: the total and the time of each phase."""

    def __init__(self) -> None:
        self._marks: list[tuple[str, float]] = [("start", time.perf_counter())]

    def mark(self, phase: str) -> None:
        """End the phase called ``phase`` now."""
        self._marks.append((phase, time.perf_counter()))

    def result(self) -> dict[str, Any]:
        """``elapsed_s`` (first mark to last) and ``phases_s`` (seconds per phase)."""
        marks = self._marks
        phases = {name: t - marks[i][1] for i, (name, t) in enumerate(marks[1:])}
        return {"elapsed_s": marks[-1][1] - marks[0][1], "phases_s": phases}


def _check_form(form: str) -> None:
    if form not in ("submit", "submit_many"):
        raise ValueError(f"form must be 'submit' or 'submit_many'; got {form!r}")


def _check_until(until: str) -> None:
    if until not in ("wait", "native"):
        raise ValueError(f"until must be 'wait' or 'native'; got {until!r}")


def _engine_until(d: Any, handles: Sequence[Future[Any]], until: str) -> None:
    """Wait for every engine job: ``concurrent.futures.wait`` or ``Dispatcher.join``."""
    if until == "wait":
        _wait_all(handles)
    elif not d.join(timeout_s=WAIT_TIMEOUT_S):
        raise RuntimeError(f"the dispatcher did not settle within {WAIT_TIMEOUT_S:g} s")


def _tpe_until(futures: Sequence[Future[Any]], until: str) -> None:
    """Wait for every TPE job: ``concurrent.futures.wait``, or nothing (``shutdown`` drains)."""
    if until == "wait":
        _wait_all(futures)


def w1_engine(n: int, workers: int, form: str, until: str) -> dict[str, Any]:
    """W1 on the engine; ``form`` is ``"submit"`` (one call per job) or ``"submit_many"``."""
    _check_form(form)
    _check_until(until)
    make = _engine_factory(workers)
    watch = _Stopwatch()
    d = make()
    watch.mark("build")
    if form == "submit":
        handles = [d.submit(noop) for _ in range(n)]
    else:
        handles = d.submit_many(noop, [()] * n)
    watch.mark("submit")
    _engine_until(d, handles, until)
    watch.mark("wait")
    d.shutdown(wait=True)
    watch.mark("shutdown")
    return {**watch.result(), "jobs": _check_all_succeeded(handles, n)}


def w1_tpe(n: int, workers: int, until: str) -> dict[str, Any]:
    """W1 on ThreadPoolExecutor."""
    _check_until(until)
    watch = _Stopwatch()
    ex = ThreadPoolExecutor(max_workers=workers)
    watch.mark("build")
    futures = [ex.submit(noop) for _ in range(n)]
    watch.mark("submit")
    _tpe_until(futures, until)
    watch.mark("wait")
    ex.shutdown(wait=True)
    watch.mark("shutdown")
    return {**watch.result(), "jobs": _check_all_succeeded(futures, n)}


def w2_engine(n: int, workers: int, sleep_s: float, until: str) -> dict[str, Any]:
    """W2 on the engine (one ``submit`` per job)."""
    _check_until(until)
    make = _engine_factory(workers)
    watch = _Stopwatch()
    d = make()
    watch.mark("build")
    handles = [d.submit(sleeper, sleep_s) for _ in range(n)]
    watch.mark("submit")
    _engine_until(d, handles, until)
    watch.mark("wait")
    d.shutdown(wait=True)
    watch.mark("shutdown")
    return {**watch.result(), "jobs": _check_all_succeeded(handles, n)}


def w2_tpe(n: int, workers: int, sleep_s: float, until: str) -> dict[str, Any]:
    """W2 on ThreadPoolExecutor (it starts its threads lazily, inside the submit phase)."""
    _check_until(until)
    watch = _Stopwatch()
    ex = ThreadPoolExecutor(max_workers=workers)
    watch.mark("build")
    futures = [ex.submit(sleeper, sleep_s) for _ in range(n)]
    watch.mark("submit")
    _tpe_until(futures, until)
    watch.mark("wait")
    ex.shutdown(wait=True)
    watch.mark("shutdown")
    return {**watch.result(), "jobs": _check_all_succeeded(futures, n)}


def w2_bare(n: int, workers: int, sleep_s: float) -> dict[str, Any]:
    """W2's floor: ``workers`` pre-started bare threads run ``n / workers`` sleeps each.

    No executor, no futures, no thread start-up in the timing: how close plain Python threads
    get to the ideal on this machine. The clock starts when a barrier releases them and stops
    when the last one is joined.
    """
    per_thread, extra = divmod(n, workers)
    if extra:
        raise ValueError(f"n must be a multiple of workers; got n={n}, workers={workers}")
    barrier = threading.Barrier(workers + 1)

    def run() -> None:
        barrier.wait(WAIT_TIMEOUT_S)
        for _ in range(per_thread):
            sleeper(sleep_s)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    barrier.wait(WAIT_TIMEOUT_S)
    watch = _Stopwatch()
    for t in threads:
        t.join(WAIT_TIMEOUT_S)
    watch.mark("run")
    if any(t.is_alive() for t in threads):
        raise RuntimeError(f"bare threads still running after {WAIT_TIMEOUT_S:g} s")
    return {**watch.result(), "jobs": n}


def w3_engine(n: int, workers: int, fail_fraction: float, seed: int, max_retries: int,
              form: str, until: str) -> dict[str, Any]:
    """W3 on the engine: its own retries, delay 0, no jitter."""
    from engine import RetryPolicy

    _check_form(form)
    _check_until(until)
    fails = failing_set(n, fail_fraction, seed)
    flaky = make_flaky(fails)
    make = _engine_factory(workers, retry=RetryPolicy(max_retries=max_retries, base_s=0.0, jitter="none"))
    watch = _Stopwatch()
    d = make()
    watch.mark("build")
    if form == "submit":
        handles = [d.submit(flaky, i) for i in range(n)]
    else:
        handles = d.submit_many(flaky, [(i,) for i in range(n)])
    watch.mark("submit")
    _engine_until(d, handles, until)
    watch.mark("wait")
    d.shutdown(wait=True)
    watch.mark("shutdown")
    attempts = sum(h.attempts for h in handles)
    if attempts != n + sum(fails):
        raise RuntimeError(f"expected {n + sum(fails)} attempts, counted {attempts}")
    return {**watch.result(), "jobs": _check_all_succeeded(handles, n), "attempts": attempts}


def w3_tpe_callback(n: int, workers: int, fail_fraction: float, seed: int,
                    max_retries: int, until: str) -> dict[str, Any]:
    """W3 on ThreadPoolExecutor, resubmitting a failed attempt from its done-callback.

    Each job has one outer ``Future`` (what the caller keeps, like the engine's handle); each
    attempt is an inner TPE future whose callback either settles the outer one or resubmits.
    ``until="native"`` waits on a latch that the callback settling the last job trips.
    """
    _check_until(until)
    fails = failing_set(n, fail_fraction, seed)
    flaky = make_flaky(fails)
    attempt_ids = itertools.count(1)  # next() on a count is atomic in CPython
    settled_ids = itertools.count(1)
    all_settled = threading.Event()

    def settled() -> None:
        if next(settled_ids) == n:
            all_settled.set()

    watch = _Stopwatch()
    ex = ThreadPoolExecutor(max_workers=workers)
    outers: list[Future[int]] = [Future() for _ in range(n)]
    watch.mark("build")

    def launch(i: int, attempt: int) -> None:
        next(attempt_ids)
        inner = ex.submit(flaky, i)
        inner.add_done_callback(partial(settle, i, attempt))

    def settle(i: int, attempt: int, inner: Future[int]) -> None:
        exc = inner.exception()
        if exc is None:
            outers[i].set_result(inner.result())
            settled()
        elif attempt < max_retries:
            launch(i, attempt + 1)
        else:
            outers[i].set_exception(exc)
            settled()

    for i in range(n):
        launch(i, 0)
    watch.mark("submit")
    if until == "wait":
        _wait_all(outers)
    elif not all_settled.wait(WAIT_TIMEOUT_S):
        raise RuntimeError(f"TPE jobs did not settle within {WAIT_TIMEOUT_S:g} s")
    watch.mark("wait")
    ex.shutdown(wait=True)
    watch.mark("shutdown")
    attempts = next(attempt_ids) - 1
    if attempts != n + sum(fails):
        raise RuntimeError(f"expected {n + sum(fails)} attempts, counted {attempts}")
    return {**watch.result(), "jobs": _check_all_succeeded(outers, n), "attempts": attempts}


def w3_tpe_rounds(n: int, workers: int, fail_fraction: float, seed: int,
                  max_retries: int) -> dict[str, Any]:
    """W3 on ThreadPoolExecutor, in rounds: submit, ``wait()`` for all, resubmit the failures."""
    fails = failing_set(n, fail_fraction, seed)
    flaky = make_flaky(fails)
    attempts = 0
    watch = _Stopwatch()
    ex = ThreadPoolExecutor(max_workers=workers)
    watch.mark("build")
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
    watch.mark("rounds")
    ex.shutdown(wait=True)
    watch.mark("shutdown")
    if attempts != n + sum(fails):
        raise RuntimeError(f"expected {n + sum(fails)} attempts, counted {attempts}")
    handles = [f for f in final if f is not None]
    return {**watch.result(), "jobs": _check_all_succeeded(handles, n), "attempts": attempts}


def mem_engine(n: int, workers: int, form: str) -> dict[str, Any]:
    """MEM on the engine: RSS growth while ``n`` jobs sit in the paused backlog."""
    _check_form(form)
    d = _engine_factory(workers)()
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
    if len(handles) != n or queued != n:
        raise RuntimeError(f"expected {n} handles and queued jobs, got {len(handles)} and {queued}")
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
    if queued != n:
        raise RuntimeError(f"expected {n} queued jobs, got {queued}")
    return {"jobs": n, "rss_before_kib": before, "rss_after_kib": after,
            "bytes_per_job": (after - before) * 1024 / n, "submit_s": submit_s,
            "backlog_seen": queued, "cancelled": cancelled}


# --------------------------------------------------------------------------------------------
# Parent side: which runs make a workload, how they are summarised.


WAIT = "wait()"
NATIVE = "native"


@dataclass(frozen=True)
class Side:
    """One contender in a workload: a label, the child function that measures it, and how it
    waits for all its jobs (``group``: ratios only compare sides of the same group)."""

    label: str
    function: str
    kwargs: dict[str, Any]
    engine: bool
    group: str


@dataclass(frozen=True)
class Workload:
    """A workload: its sides, what is measured and the goal."""

    key: str
    title: str
    kind: str  # "throughput" or "memory"
    sides: tuple[Side, ...]
    goal: str
    ideal_jobs_per_s: float | None = None
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def baselines(self, group: str) -> list[str]:
        """Labels of the TPE sides in ``group``."""
        return [s.label for s in self.sides if not s.engine and s.group == group]


def workloads() -> list[Workload]:
    """The four workloads of issue 2, sized as it specifies."""
    w1 = {"n": W1_JOBS, "workers": W1_WORKERS}
    w2 = {"n": W2_JOBS, "workers": W2_WORKERS, "sleep_s": W2_SLEEP_S}
    w3 = {"n": W3_JOBS, "workers": W3_WORKERS, "fail_fraction": W3_FAIL_FRACTION,
          "seed": W3_SEED, "max_retries": W3_MAX_RETRIES}
    mem = {"n": MEM_JOBS, "workers": MEM_WORKERS}
    wait_, native = {"until": "wait"}, {"until": "native"}
    return [
        Workload("W1", "100,000 no-op jobs, 4 workers", "throughput", (
            Side("engine submit + wait()", "w1_engine", {**w1, "form": "submit", **wait_}, True, WAIT),
            Side("engine submit_many + wait()", "w1_engine", {**w1, "form": "submit_many", **wait_}, True, WAIT),
            Side("TPE + wait()", "w1_tpe", {**w1, **wait_}, False, WAIT),
            Side("engine submit + join()", "w1_engine", {**w1, "form": "submit", **native}, True, NATIVE),
            Side("engine submit_many + join()", "w1_engine", {**w1, "form": "submit_many", **native}, True, NATIVE),
            Side("TPE + shutdown()", "w1_tpe", {**w1, **native}, False, NATIVE),
        ), "engine >= 1.5x TPE"),
        Workload("W2", "2,000 jobs x 10 ms sleep, 100 workers", "throughput", (
            Side("engine submit + wait()", "w2_engine", {**w2, **wait_}, True, WAIT),
            Side("TPE + wait()", "w2_tpe", {**w2, **wait_}, False, WAIT),
            Side("engine submit + join()", "w2_engine", {**w2, **native}, True, NATIVE),
            Side("TPE + shutdown()", "w2_tpe", {**w2, **native}, False, NATIVE),
            Side("bare threads, pre-started (floor)", "w2_bare", w2, False, "reference"),
        ), "engine >= 0.95 of ideal 10,000 jobs/s", ideal_jobs_per_s=W2_IDEAL_JOBS_PER_S),
        Workload("W3", "20,000 jobs, 20% fail once, retry delay 0, 4 workers", "throughput", (
            Side("engine submit + wait()", "w3_engine", {**w3, "form": "submit", **wait_}, True, WAIT),
            Side("engine submit_many + wait()", "w3_engine", {**w3, "form": "submit_many", **wait_}, True, WAIT),
            Side("TPE callback-resubmit + wait()", "w3_tpe_callback", {**w3, **wait_}, False, WAIT),
            Side("TPE rounds-resubmit + wait()", "w3_tpe_rounds", w3, False, WAIT),
            Side("engine submit + join()", "w3_engine", {**w3, "form": "submit", **native}, True, NATIVE),
            Side("engine submit_many + join()", "w3_engine", {**w3, "form": "submit_many", **native}, True, NATIVE),
            Side("TPE callback-resubmit + latch", "w3_tpe_callback", {**w3, **native}, False, NATIVE),
        ), "engine >= 1.5x TPE resubmitting"),
        Workload("MEM", "1,000,000 queued no-op jobs, handles kept", "memory", (
            Side("engine submit", "mem_engine", {**mem, "form": "submit"}, True, "queued"),
            Side("engine submit_many", "mem_engine", {**mem, "form": "submit_many"}, True, "queued"),
            Side("TPE", "mem_tpe", mem, False, "queued"),
        ), "engine <= 1 KiB (1024 B) per job"),
    ]


def _value(workload: Workload, run: dict[str, Any]) -> float:
    """The headline number of one run: jobs/s, or bytes per job."""
    if workload.kind == "memory":
        return float(run["bytes_per_job"])
    return float(run["jobs"]) / float(run["elapsed_s"])


def run_workload(workload: Workload, reps: int, *, log: Callable[[str], None],
                 baselines_only: bool = False, max_others: float | None = 0.10,
                 cpus: Sequence[int] | None = None, tries: int = 3) -> None:
    """Measure every side ``reps`` times, each run in a fresh subprocess, alternating the order.

    With ``max_others`` set, a run during which other processes used more than that share of
    the CPUs is repeated (up to ``tries`` runs; the least disturbed is kept).
    """
    sides = tuple(s for s in workload.sides if not baselines_only or not s.engine)
    for side in sides:
        workload.runs[side.label] = []
    for rep in range(reps):
        order = sides if rep % 2 == 0 else tuple(reversed(sides))
        for side in order:
            if max_others is None:
                result = run_child(MODULE, side.function, side.kwargs, cpus=cpus)
            else:
                result = run_child_undisturbed(MODULE, side.function, side.kwargs,
                                               max_others=max_others, cpus=cpus, tries=tries)
            workload.runs[side.label].append(result)
            unit = "B/job" if workload.kind == "memory" else "jobs/s"
            log(f"{workload.key} rep {rep + 1}/{reps} {side.label}: {_value(workload, result):,.1f} {unit}"
                f" (others used {result['others_cpu']:.0%} of the CPUs; try {result.get('tries', 1)})")


def summarise(workload: Workload) -> dict[str, Any]:
    """Per side: value, ratio to each same-group baseline (paired by repetition), peak RSS, goal."""
    sides: dict[str, Any] = {}
    for side in workload.sides:
        runs = workload.runs.get(side.label)
        if not runs:
            continue
        values = [_value(workload, r) for r in runs]
        entry: dict[str, Any] = {
            "engine": side.engine,
            "group": side.group,
            "values": values,
            "value": Summary.of(values).to_dict(),
            "peak_rss_kib": Summary.of([r["peak_rss_kib"] for r in runs]).to_dict(),
            "others_cpu": Summary.of([r.get("others_cpu", 0.0) for r in runs]).to_dict(),
            "tries": sum(r.get("tries", 1) for r in runs),
        }
        if workload.kind == "memory":
            entry["submit_s"] = Summary.of([r["submit_s"] for r in runs]).to_dict()
        else:
            entry["elapsed_s"] = Summary.of([r["elapsed_s"] for r in runs]).to_dict()
            entry["phases_s"] = {phase: Summary.of([r["phases_s"][phase] for r in runs]).to_dict()
                                 for phase in runs[0]["phases_s"]}
        if side.engine:
            entry["ratio_to"] = {
                b: Summary.of([v / _value(workload, br)
                               for v, br in zip(values, workload.runs[b], strict=True)]).to_dict()
                for b in workload.baselines(side.group) if workload.runs.get(b)
            }
        if workload.ideal_jobs_per_s:
            entry["fraction_of_ideal"] = Summary.of(
                [v / workload.ideal_jobs_per_s for v in values]).to_dict()
        entry["goal_met"] = _goal_met(workload, entry) if side.engine else None
        sides[side.label] = entry
    return {"title": workload.title, "kind": workload.kind, "goal": workload.goal, "sides": sides}


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
    return label.split(" + ")[0].removeprefix("TPE ")


def render(results: dict[str, Any]) -> str:
    """The readable tables: results per side, time per phase, then the notes."""
    headers = ["workload", "side", "median (min-max)", "engine / TPE: median (min-max)",
               "goal", "peak RSS MiB"]
    rows: list[list[str]] = []
    for key, w in results["workloads"].items():
        for label, s in w["sides"].items():
            unit = " B/job" if w["kind"] == "memory" else " jobs/s"
            result = _fmt(s["value"], ",.0f", unit)
            ratios = s.get("ratio_to")
            several = ratios is not None and len(ratios) > 1
            if ratios:
                ratio = "; ".join((f"vs {_short(b)} " if several else "") + _fmt(r, ".2f", "x")
                                  for b, r in ratios.items())
            elif s["engine"]:
                ratio = ""
            else:
                ratio = "(reference)" if s["group"] == "reference" else "(baseline)"
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
    phase_rows = [
        [key, label, ", ".join(f"{phase} {p['median'] * 1000:,.1f}" for phase, p in side["phases_s"].items())]
        for key, w in results["workloads"].items() if w["kind"] == "throughput"
        for label, side in w["sides"].items()
    ]
    lines = [markdown_table(headers, rows), ""]
    if phase_rows:
        lines += ["Where the time goes (median ms per phase):", "",
                  markdown_table(["workload", "side", "phases"], phase_rows), ""]
    for key, w in results["workloads"].items():
        lines.append(f"{key}: {w['title']}. Goal: {w['goal']}.")
    lines.append("Ratios compare sides that wait for their jobs the same way: wait() = "
                 "concurrent.futures.wait on all handles; native = engine join(), TPE "
                 "shutdown(wait=True) or a latch.")
    others = [r.get("others_cpu", 0.0) for runs in results["raw"].values() for side in runs.values() for r in side]
    tries = [r.get("tries", 1) for runs in results["raw"].values() for side in runs.values() for r in side]
    if others:
        limit = results.get("max_others", 1.0)
        still = sum(1 for o in others if o > limit)
        lines.append(f"Other processes used {Summary.of(others).fmt('.1%')} of the CPUs during the kept runs "
                     f"(median, range); {sum(tries) - len(tries)} disturbed runs were repeated; "
                     f"{still} of {len(others)} kept runs stayed above {limit:.0%}.")
    m = results["machine"]
    if results.get("cpus") is not None:
        lines.append(f"Every run was pinned to CPU(s) {','.join(map(str, results['cpus']))}.")
    lines.append(f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['python']}, {m['platform']}; "
                 f"load average {results['load_before'][0]:.2f} before, "
                 f"{results['load_after'][0]:.2f} after.")
    lines.append(f"{results['reps']} repetitions per side, each run in a fresh subprocess, sides "
                 f"alternating order; peak RSS is the median of the runs' VmHWM. "
                 f"Engine at {results['engine_rev']}. Wall time {results['wall_s']:.0f} s.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the workloads and print the table (and/or JSON). Main thread only."""
    parser = common_parser("Engine vs concurrent.futures.ThreadPoolExecutor on the same workloads.",
                           prog=f"python -m bench {MODULE}")
    parser.add_argument("--only", action="append", choices=["W1", "W2", "W3", "MEM"],
                        help="run only this workload (repeatable)")
    parser.add_argument("--max-others", type=float, default=0.10, metavar="FRACTION",
                        help="repeat a run (up to 3 tries) when other processes used more than this "
                             "share of the CPUs during it; 1 turns the check off (default 0.10)")
    parser.add_argument("--tries", type=int, default=3, metavar="N",
                        help="runs at most per measurement when other processes disturb it (default 3)")
    parser.add_argument("--cpus", metavar="LIST", default=None,
                        help="pin every run to these CPUs, e.g. '0' or '0,1' (default: all)")
    parser.add_argument("--baselines-only", action="store_true",
                        help="run only the ThreadPoolExecutor sides (checks the harness without the engine)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    reps = check_reps(args, parser)
    if args.tries < 1:
        parser.error(f"--tries must be an integer >= 1; got {args.tries}")
    if not 0 < args.max_others <= 1:
        parser.error(f"--max-others must be a fraction in (0, 1]; got {args.max_others}")
    cpus: list[int] | None = None
    if args.cpus is not None:
        try:
            cpus = sorted({int(c) for c in args.cpus.split(",")})
        except ValueError:
            parser.error(f"--cpus must be a comma-separated list of CPU numbers; got {args.cpus!r}")
        usable = sorted(os.sched_getaffinity(0))
        if not set(cpus) <= set(usable):
            parser.error(f"--cpus must name usable CPUs ({','.join(map(str, usable))}); got {args.cpus!r}")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    chosen = [w for w in workloads() if not args.only or w.key in args.only]
    engine_rev_before = engine_revision()
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        log(f"warning: load average {load_before[0]:.2f}: other processes will disturb the numbers")
    started = time.perf_counter()
    for workload in chosen:
        run_workload(workload, reps, log=log, baselines_only=args.baselines_only,
                     max_others=None if args.max_others >= 1 else args.max_others, cpus=cpus,
                     tries=args.tries)
    results = {
        "module": MODULE,
        "command": " ".join(sys.orig_argv),
        "machine": machine_info(),
        "reps": reps,
        "max_others": args.max_others,
        "cpus": cpus,
        "engine_rev": engine_rev_before,
        "engine_rev_after": engine_revision(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "wall_s": time.perf_counter() - started,
        "workloads": {w.key: summarise(w) for w in chosen},
        "raw": {w.key: w.runs for w in chosen},
    }
    if results["engine_rev_after"].partition(" ")[2] != engine_rev_before.partition(" ")[2]:
        log(f"warning: the engine changed during the run ({engine_rev_before} -> "
            f"{results['engine_rev_after']}); do not record these numbers")
    if args.json != "-":
        print(render(results))
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
