"""What the burst keys (and the headless runner) submit: demo jobs, or the user's own.

Two workloads share one small interface, :class:`Workload`:

* :class:`DemoWorkload` submits demo jobs. Each one sleeps for a duration drawn from the
  configured distribution (``lognormal``, ``uniform`` or ``fixed``, with a mean and spread in
  ms) and fails with the configured probability; a *failing* burst fails with a high
  probability, so retries pile up and the DLQ fills.
* :class:`UserWorkload` submits the callable named by ``--jobs module:callable``:

  - a callable with **no required parameters is a job**: each job of a burst calls it once;
  - a callable with **exactly one required parameter is a job factory**: each burst calls it
    once with the burst size ``n`` and submits every callable in the iterable it returns
    (each called with no arguments, e.g. ``functools.partial(resize, path)``).

  A failing burst wraps the same jobs with injected failures (``failing_failure_rate``), so
  you can watch retries and the DLQ on your own work.

Determinism: a burst draws one 64-bit seed per job from the workload's seeded
``random.Random`` when it is submitted (under a lock, so concurrent bursts are safe). A demo
attempt derives its own ``random.Random`` from that seed and its attempt number, so the same
``--seed`` gives the same durations and the same failures whatever the thread scheduling.

Demo jobs sleep on their cancel token (:func:`engine.cancel_token`), so a forceful shutdown
stops them at once instead of waiting out the sleep.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import random
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from engine import Dispatcher, JobHandle, cancel_token, current_job
from tui_dispatch.config import Settings

__all__ = [
    "DemoFailure",
    "DemoWorkload",
    "InjectedFailure",
    "UserWorkload",
    "Workload",
    "WorkloadError",
    "make_workload",
    "resolve_target",
    "sample_duration_s",
]


class WorkloadError(ValueError):
    """A ``--jobs`` target that cannot be used, or a factory that returned something bad.

    ``str()`` is one line fit for the user.
    """


class DemoFailure(RuntimeError):
    """What a demo job raises when its attempt is drawn to fail."""


class InjectedFailure(RuntimeError):
    """What a failing burst of user jobs raises in place of running the job."""


class Workload(Protocol):
    """Something that submits bursts of jobs to a dispatcher.

    Implementations are thread-safe: bursts may be submitted from any thread, concurrently.
    """

    @property
    def name(self) -> str:
        """A short label for the workload (the job name shown in the dashboard)."""
        ...

    def burst(self, dispatcher: Dispatcher, n: int, *, failing: bool = False) -> list[JobHandle]:
        """Submit ``n`` jobs (a failing burst if ``failing``) and return their handles."""
        ...

    def submit_burst(self, dispatcher: Dispatcher, n: int, *, failing: bool = False) -> int:
        """Submit ``n`` jobs (a failing burst if ``failing``) and return how many were submitted."""
        ...


def _check_n(n: object) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise WorkloadError(f"burst size n must be an int >= 0; got {n!r}")
    return n


def _attempt() -> int:
    ctx = current_job()
    return ctx.attempt if ctx is not None else 1


def _attempt_rng(job_seed: int, attempt: int) -> random.Random:
    """The random source of one attempt of one job: a function of both, nothing else."""
    return random.Random((job_seed << 16) ^ attempt)


def sample_duration_s(distribution: str, mean_ms: float, spread_ms: float, rng: random.Random) -> float:
    """One demo job duration, in seconds.

    Args:
        distribution: ``"fixed"`` (always the mean), ``"uniform"`` (mean +/- spread, floored at
            0) or ``"lognormal"`` (the lognormal with this mean and standard deviation).
        mean_ms: the mean, in ms (>= 0).
        spread_ms: the spread, in ms (>= 0).
        rng: the random source.

    Returns:
        A duration >= 0, in seconds.

    Raises:
        WorkloadError: an unknown distribution.
    """
    if distribution == "fixed" or mean_ms <= 0.0 or spread_ms <= 0.0:
        if distribution not in ("fixed", "uniform", "lognormal"):
            raise WorkloadError(f"distribution must be one of fixed, uniform, lognormal; got {distribution!r}")
        return max(0.0, mean_ms) / 1000.0
    if distribution == "uniform":
        return rng.uniform(max(0.0, mean_ms - spread_ms), mean_ms + spread_ms) / 1000.0
    if distribution == "lognormal":
        sigma2 = math.log1p((spread_ms / mean_ms) ** 2)
        mu = math.log(mean_ms) - sigma2 / 2.0
        return rng.lognormvariate(mu, math.sqrt(sigma2)) / 1000.0
    raise WorkloadError(f"distribution must be one of fixed, uniform, lognormal; got {distribution!r}")


class _DemoJob:
    """One kind of demo job: sleep for a drawn duration, then fail with probability ``fail_p``.

    Called by a worker thread with the job's seed; returns the seconds it slept.
    """

    __slots__ = ("distribution", "fail_p", "label", "mean_ms", "spread_ms")

    def __init__(self, settings: Settings, fail_p: float, label: str) -> None:
        self.distribution = settings.job_distribution
        self.mean_ms = settings.job_mean_ms
        self.spread_ms = settings.job_spread_ms
        self.fail_p = fail_p
        self.label = label

    def __call__(self, job_seed: int) -> float:
        attempt = _attempt()
        rng = _attempt_rng(job_seed, attempt)
        duration_s = sample_duration_s(self.distribution, self.mean_ms, self.spread_ms, rng)
        fails = rng.random() < self.fail_p
        if duration_s > 0.0:
            token = cancel_token()
            if token.wait(duration_s):
                token.raise_if_cancelled()
        if fails:
            raise DemoFailure(f"demo job failed on attempt {attempt} (failure rate {self.fail_p:g})")
        return duration_s

    def __repr__(self) -> str:
        return (f"<demo job {self.label}: {self.distribution} {self.mean_ms:g}±{self.spread_ms:g} ms, "
                f"fails {self.fail_p:.0%}>")


class DemoWorkload:
    """Demo jobs with seeded durations and failures. Thread-safe.

    Args:
        settings: the distribution (``job_distribution``, ``job_mean_ms``, ``job_spread_ms``)
            and failure rates (``failure_rate``, ``failing_failure_rate``).
        rng: the source of the per-job seeds.
    """

    def __init__(self, settings: Settings, rng: random.Random) -> None:
        self._rng = rng
        self._rng_lock = threading.Lock()  # guards _rng: bursts may come from several threads
        self._normal = _DemoJob(settings, settings.failure_rate, "demo")
        self._failing = _DemoJob(settings, settings.failing_failure_rate, "demo-failing")

    @property
    def name(self) -> str:
        return "demo"

    def _seeds(self, n: int) -> list[tuple[int]]:
        with self._rng_lock:
            bits = self._rng.getrandbits
            return [(bits(64),) for _ in range(n)]

    def burst(self, dispatcher: Dispatcher, n: int, *, failing: bool = False) -> list[JobHandle]:
        """Submit ``n`` demo jobs and return their handles. Thread-safe.

        Raises:
            WorkloadError: a bad ``n``.
            engine.DispatcherClosed: the dispatcher is shutting down.
        """
        job = self._failing if failing else self._normal
        return dispatcher.submit_many(job, self._seeds(_check_n(n)), name=job.label)

    def submit_burst(self, dispatcher: Dispatcher, n: int, *, failing: bool = False) -> int:
        """Submit ``n`` demo jobs; returns how many were submitted. Thread-safe."""
        return len(self.burst(dispatcher, n, failing=failing))

    def __repr__(self) -> str:
        return f"DemoWorkload({self._normal!r}, failing={self._failing!r})"


# -- the user's own jobs ---------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe(obj: object) -> str:
    text = repr(obj)
    return f"{type(obj).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def resolve_target(target: str) -> Callable[..., Any]:
    """Import ``"package.module:attribute.path"`` and return the callable it names.

    The current directory is put on ``sys.path`` first (as ``python -m`` does), so a
    ``jobs.py`` next to you imports as ``jobs``.

    Raises:
        WorkloadError: the text is malformed, the module does not import, the attribute is
            missing, or it is not callable. The message is one line.
    """
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise WorkloadError(f"--jobs {target!r}: must be 'module:callable', e.g. 'myapp.jobs:resize'")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise WorkloadError(f"--jobs {target!r}: cannot import module {module_name!r} ({_one_line(str(exc))})") from None
    except (Exception, SystemExit) as exc:
        raise WorkloadError(
            f"--jobs {target!r}: importing module {module_name!r} raised "
            f"{type(exc).__name__}: {_one_line(str(exc))}"
        ) from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise WorkloadError(f"--jobs {target!r}: {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise WorkloadError(f"--jobs {target!r}: {attr_path!r} is not callable (it is {_describe(obj)})")
    return obj  # type: ignore[no-any-return]


def _required_params(fn: Callable[..., Any]) -> list[str] | None:
    """Names of the parameters a call must supply, or None if the signature is unknown."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    return [
        p.name for p in sig.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def _call(job: Callable[[], Any]) -> Any:
    """Run one job made by a factory (module-level, so it shows up plainly in tracebacks)."""
    return job()


class _WithFailures:
    """Run a job, except that each attempt first fails with probability ``fail_p``."""

    __slots__ = ("fail_p", "inner", "label")

    def __init__(self, inner: Callable[..., Any], fail_p: float, label: str) -> None:
        self.inner = inner
        self.fail_p = fail_p
        self.label = label

    def __call__(self, job_seed: int, *args: Any) -> Any:
        attempt = _attempt()
        if _attempt_rng(job_seed, attempt).random() < self.fail_p:
            raise InjectedFailure(f"injected failure on attempt {attempt} (failure rate {self.fail_p:g})")
        return self.inner(*args)


class UserWorkload:
    """The user's job or job factory, named by ``--jobs module:callable``. Thread-safe.

    Args:
        target: ``"module:callable"``.
        settings: ``failing_failure_rate`` for failing bursts.
        rng: the source of the per-job seeds used by failure injection.

    Raises:
        WorkloadError: the target does not import, is not callable, or takes more than one
            required parameter.
    """

    def __init__(self, target: str, settings: Settings, rng: random.Random) -> None:
        self.target = target
        self._fn = resolve_target(target)
        required = _required_params(self._fn)
        if required is not None and len(required) > 1:
            raise WorkloadError(
                f"--jobs {target!r}: a job takes no required arguments and a job factory takes one "
                f"(the burst size); this one requires {len(required)}: {', '.join(required)}"
            )
        self.is_factory = required is not None and len(required) == 1
        self._name = target.partition(":")[2]
        self._fail_p = settings.failing_failure_rate
        self._rng = rng
        self._rng_lock = threading.Lock()  # guards _rng

    @property
    def name(self) -> str:
        return self._name

    def _jobs_from_factory(self, n: int) -> list[Callable[[], Any]]:
        try:
            made = self._fn(n)
            jobs = list(made) if isinstance(made, Iterable) else None
        except Exception as exc:
            raise WorkloadError(
                f"--jobs {self.target!r}: the factory raised {type(exc).__name__}: {_one_line(str(exc))}"
            ) from exc
        if jobs is None:
            raise WorkloadError(
                f"--jobs {self.target!r}: a job factory must return an iterable of callables; "
                f"got {type(made).__name__}"
            )
        for index, job in enumerate(jobs):
            if not callable(job):
                raise WorkloadError(
                    f"--jobs {self.target!r}: the factory's item {index} is not callable "
                    f"(it is {_describe(job)})"
                )
        return jobs

    def burst(self, dispatcher: Dispatcher, n: int, *, failing: bool = False) -> list[JobHandle]:
        """Submit a burst of the user's jobs and return their handles. Thread-safe.

        A plain job is submitted ``n`` times. A factory is called with ``n`` and everything it
        returns is submitted. With ``failing``, each attempt first fails with probability
        ``failing_failure_rate``.

        Raises:
            WorkloadError: a bad ``n``, or the factory raised or returned something unusable.
            engine.DispatcherClosed: the dispatcher is shutting down.
        """
        _check_n(n)
        if self.is_factory:
            fn: Callable[..., Any] = _call
            arg_tuples: list[tuple[Any, ...]] = [(job,) for job in self._jobs_from_factory(n)]
        else:
            fn, arg_tuples = self._fn, [()] * n
        if not failing:
            return dispatcher.submit_many(fn, arg_tuples, name=self._name)
        label = f"{self._name} (failing)"
        with self._rng_lock:
            bits = self._rng.getrandbits
            seeded = [(bits(64), *args) for args in arg_tuples]
        return dispatcher.submit_many(_WithFailures(fn, self._fail_p, label), seeded, name=label)

    def submit_burst(self, dispatcher: Dispatcher, n: int, *, failing: bool = False) -> int:
        """Submit a burst; returns how many jobs were submitted. Thread-safe."""
        return len(self.burst(dispatcher, n, failing=failing))

    def __repr__(self) -> str:
        kind = "factory" if self.is_factory else "job"
        return f"UserWorkload({self.target!r}, {kind})"


def make_workload(settings: Settings, rng: random.Random) -> DemoWorkload | UserWorkload:
    """The workload the settings ask for: the user's ``--jobs`` target, else the demo.

    Raises:
        WorkloadError: a ``--jobs`` target that cannot be used.
    """
    if settings.jobs_target:
        return UserWorkload(settings.jobs_target, settings, rng)
    return DemoWorkload(settings, rng)

