"""The demo and user workloads: seeded, deterministic, cancellable, and clear about bad targets."""

from __future__ import annotations

import random
import statistics
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import pytest

from engine import Dispatcher, JobHandle, JobState
from tui_dispatch.config import Settings
from tui_dispatch.workload import (
    DemoWorkload,
    UserWorkload,
    WorkloadError,
    make_workload,
    resolve_target,
    sample_duration_s,
)

WAIT_S = 10.0


@pytest.fixture
def make_dispatcher() -> Iterator[Callable[..., Dispatcher]]:
    """Real-clock dispatchers with a fixed pool and no log line; all shut down (forcefully) after."""
    made: list[Dispatcher] = []

    def make(settings: Settings, **options: Any) -> Dispatcher:
        kwargs = settings.dispatcher_kwargs(random.Random(1))
        kwargs.update(autoscale=False, log_interval_s=0, max_workers=settings.min_workers)
        kwargs.update(options)
        d = Dispatcher(**kwargs)
        made.append(d)
        return d

    yield make
    for d in made:
        d.shutdown(wait=True, cancel_futures=True)


def finish(handles: list[JobHandle]) -> None:
    _, pending = wait(handles, timeout=WAIT_S)
    assert not pending, f"{len(pending)} jobs did not finish within {WAIT_S}s"


def eventually(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    pause = threading.Event()
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out waiting for {what}")
        pause.wait(0.002)


# -- durations -------------------------------------------------------------------------------------


def test_fixed_and_zero_durations_are_exact() -> None:
    rng = random.Random(1)
    assert sample_duration_s("fixed", 40.0, 25.0, rng) == 0.040
    assert sample_duration_s("lognormal", 0.0, 25.0, rng) == 0.0
    assert sample_duration_s("uniform", 30.0, 0.0, rng) == 0.030


def test_uniform_durations_stay_in_range_and_floor_at_zero() -> None:
    rng = random.Random(2)
    samples = [sample_duration_s("uniform", 10.0, 30.0, rng) for _ in range(2000)]
    assert min(samples) >= 0.0 and max(samples) <= 0.040
    assert min(samples) < 0.002 and max(samples) > 0.038  # the whole range is used


def test_lognormal_durations_have_the_configured_mean_and_spread() -> None:
    rng = random.Random(3)
    samples = [sample_duration_s("lognormal", 50.0, 30.0, rng) * 1000 for _ in range(40_000)]
    assert statistics.fmean(samples) == pytest.approx(50.0, rel=0.03)
    assert statistics.stdev(samples) == pytest.approx(30.0, rel=0.08)
    assert min(samples) > 0.0


def test_an_unknown_distribution_is_refused() -> None:
    with pytest.raises(WorkloadError, match="distribution must be one of"):
        sample_duration_s("normal", 10.0, 1.0, random.Random(1))


# -- demo jobs ---------------------------------------------------------------------------------


def _outcomes(make_dispatcher: Callable[..., Dispatcher], settings: Settings, seed: int) -> list[tuple[str, int]]:
    d = make_dispatcher(settings)
    handles = DemoWorkload(settings, random.Random(seed)).burst(d, 200)
    finish(handles)
    snap = d.snapshot()
    assert snap.consistent and snap.counters.submitted == 200
    return [(h.state.value, h.attempts) for h in handles]


def test_demo_outcomes_depend_only_on_the_seed(make_dispatcher: Callable[..., Dispatcher]) -> None:
    settings = Settings(min_workers=4, max_workers=4, failure_rate=0.5, job_mean_ms=0.0, max_retries=2,
                        retry_base_s=0.0)
    first = _outcomes(make_dispatcher, settings, seed=11)
    again = _outcomes(make_dispatcher, settings, seed=11)
    other = _outcomes(make_dispatcher, settings, seed=12)
    assert first == again  # same seed: same failures, whatever the thread scheduling
    assert first != other
    dead = sum(1 for state, _ in first if state == "dead_lettered")
    assert 0 < dead < 200  # p=0.5 per attempt, 3 attempts: about 1 in 8 is dead-lettered
    assert all(attempts == 3 for state, attempts in first if state == "dead_lettered")


def test_a_failing_burst_fills_the_dlq_with_demo_failures(make_dispatcher: Callable[..., Dispatcher]) -> None:
    settings = Settings(min_workers=2, max_workers=2, failing_failure_rate=1.0, failure_rate=0.0,
                        job_mean_ms=0.0, max_retries=1, retry_base_s=0.0)
    d = make_dispatcher(settings)
    workload = DemoWorkload(settings, random.Random(5))
    assert workload.submit_burst(d, 7, failing=True) == 7
    assert workload.submit_burst(d, 3) == 3
    assert d.join(timeout_s=WAIT_S)
    snap = d.snapshot()
    assert (snap.counters.dead_lettered, snap.counters.succeeded, snap.counters.failed) == (7, 3, 14)
    letters = d.dlq_list(limit=100)
    assert {e.name for e in letters} == {"demo-failing"}
    assert all(e.exc_type.endswith("DemoFailure") and e.attempts == 2 for e in letters)


def test_demo_jobs_stop_sleeping_when_a_forceful_shutdown_cancels_them(
    make_dispatcher: Callable[..., Dispatcher],
) -> None:
    settings = Settings(min_workers=1, max_workers=1, job_distribution="fixed", job_mean_ms=60_000.0)
    d = make_dispatcher(settings, force_wait_s=WAIT_S)
    handles = DemoWorkload(settings, random.Random(1)).burst(d, 3)
    # attempts turns 1 when the worker starts the attempt (state RUNNING comes earlier, at hand-off).
    eventually(lambda: handles[0].attempts == 1, "the first demo job to start")
    started = time.monotonic()
    report = d.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - started < WAIT_S / 2  # it did not wait out the 60 s sleep
    assert report.abandoned == ()  # the running job woke on its cancel token and ended
    assert [h.state for h in handles] == [JobState.CANCELLED] * 3


def test_bursts_refuse_a_bad_size(make_dispatcher: Callable[..., Dispatcher]) -> None:
    settings = Settings()
    d = make_dispatcher(settings)
    with pytest.raises(WorkloadError, match="burst size n must be an int >= 0; got -1"):
        DemoWorkload(settings, random.Random(1)).burst(d, -1)


# -- the user's jobs -------------------------------------------------------------------------------


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write a module into a fresh directory made the cwd; returns its (unique) import name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # resolve_target may add the cwd
    names: list[str] = []

    def write(source: str) -> str:
        name = f"userjobs_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


USER_JOBS = """
    import functools
    import threading

    calls = []
    lock = threading.Lock()
    LIMIT = 3

    def work():
        with lock:
            calls.append("work")
        return "done"

    def record(i):
        with lock:
            calls.append(i)
        return i * 10

    def make(n):
        return [functools.partial(record, i) for i in range(n)]

    def make_nothing_useful(n):
        return 42

    def make_bad_item(n):
        return [work, "not callable"]

    def make_raises(n):
        raise ValueError("no jobs today")

    def two(a, b):
        return a + b

    class Jobs:
        @staticmethod
        def nested():
            return "nested"
"""


@pytest.mark.parametrize(
    ("attr", "needle"),
    [
        ("missing", "has no attribute 'missing'"),
        ("LIMIT", "'LIMIT' is not callable (it is int 3)"),
        ("two", "a job takes no required arguments and a job factory takes one (the burst size); this one requires 2: a, b"),
    ],
)
def test_unusable_targets_are_refused_in_one_line(user_module: Callable[[str], str], attr: str, needle: str) -> None:
    name = user_module(USER_JOBS)
    with pytest.raises(WorkloadError) as info:
        UserWorkload(f"{name}:{attr}", Settings(), random.Random(1))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_module_that_does_not_import_is_refused(user_module: Callable[[str], str]) -> None:
    with pytest.raises(WorkloadError, match=r"cannot import module 'no_such_module_xyz' \(No module named"):
        resolve_target("no_such_module_xyz:work")
    broken = user_module("raise RuntimeError('boom\\non two lines')\n")
    with pytest.raises(WorkloadError) as info:
        resolve_target(f"{broken}:work")
    assert str(info.value) == f"--jobs '{broken}:work': importing module '{broken}' raised RuntimeError: boom on two lines"
    syntax = user_module("def broken(:\n")
    with pytest.raises(WorkloadError, match="raised SyntaxError"):
        resolve_target(f"{syntax}:broken")


def test_a_plain_job_is_submitted_n_times(
    user_module: Callable[[str], str], make_dispatcher: Callable[..., Dispatcher],
) -> None:
    name = user_module(USER_JOBS)
    settings = Settings(min_workers=2, max_workers=2)
    workload = make_workload(dataclass_replace(settings, jobs_target=f"{name}:work"), random.Random(1))
    assert isinstance(workload, UserWorkload) and not workload.is_factory and workload.name == "work"
    d = make_dispatcher(settings)
    handles = workload.burst(d, 5)
    finish(handles)
    assert [h.result() for h in handles] == ["done"] * 5
    assert {h.name for h in handles} == {"work"}
    assert sys.modules[name].calls == ["work"] * 5


def test_a_factory_is_called_with_the_burst_size_and_its_jobs_are_submitted(
    user_module: Callable[[str], str], make_dispatcher: Callable[..., Dispatcher],
) -> None:
    name = user_module(USER_JOBS)
    workload = UserWorkload(f"{name}:make", Settings(), random.Random(1))
    assert workload.is_factory
    d = make_dispatcher(Settings(min_workers=2, max_workers=2))
    handles = workload.burst(d, 4)
    finish(handles)
    assert [h.result() for h in handles] == [0, 10, 20, 30]
    assert sorted(sys.modules[name].calls) == [0, 1, 2, 3]


def test_a_dotted_attribute_path_resolves(user_module: Callable[[str], str]) -> None:
    name = user_module(USER_JOBS)
    assert resolve_target(f"{name}:Jobs.nested")() == "nested"


@pytest.mark.parametrize(
    ("attr", "needle"),
    [
        ("make_nothing_useful", "a job factory must return an iterable of callables; got int"),
        ("make_bad_item", r"the factory's item 1 is not callable \(it is str 'not callable'\)"),
        ("make_raises", "the factory raised ValueError: no jobs today"),
    ],
)
def test_a_factory_that_returns_something_unusable_is_reported(
    user_module: Callable[[str], str], make_dispatcher: Callable[..., Dispatcher], attr: str, needle: str,
) -> None:
    name = user_module(USER_JOBS)
    workload = UserWorkload(f"{name}:{attr}", Settings(), random.Random(1))
    d = make_dispatcher(Settings())
    with pytest.raises(WorkloadError, match=needle):
        workload.burst(d, 2)
    assert d.snapshot().counters.submitted == 0


def test_a_failing_burst_of_user_jobs_injects_failures_before_the_job_runs(
    user_module: Callable[[str], str], make_dispatcher: Callable[..., Dispatcher],
) -> None:
    name = user_module(USER_JOBS)
    settings = Settings(min_workers=2, max_workers=2, failing_failure_rate=1.0, max_retries=1, retry_base_s=0.0)
    workload = UserWorkload(f"{name}:make", settings, random.Random(1))
    d = make_dispatcher(settings)
    handles = workload.burst(d, 3, failing=True)
    finish(handles)
    assert [h.state for h in handles] == [JobState.DEAD_LETTERED] * 3
    assert {e.exc_type.rsplit(".", 1)[-1] for e in d.dlq_list()} == {"InjectedFailure"}
    assert {h.name for h in handles} == {"make (failing)"}
    assert sys.modules[name].calls == []  # the user's job never ran


def dataclass_replace(settings: Settings, **changes: Any) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, **changes)


def test_make_workload_defaults_to_the_demo() -> None:
    assert isinstance(make_workload(Settings(), random.Random(1)), DemoWorkload)
