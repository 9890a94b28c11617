"""``tui-dispatch worker``: run a worker process for a Redis queue.

Usage::

    tui-dispatch worker --redis URL --tasks MODULE[:ATTR] [--queue NAME] [--prefix PREFIX]
                        [--min-workers N] [--max-workers N] [--no-autoscale] [--prefetch N]
                        [--lease-s S] [--heartbeat-s S] [--socket-timeout-s S] [--poll-s S]
                        [--retry-base-s S] [--retry-factor F]
                        [--retry-cap-s S] [--retry-jitter none|full|equal] [--log-level LEVEL]

(also ``python -m tui_dispatch.worker_cli ...``). ``--tasks`` names a module holding a
:class:`engine.TaskRegistry`: the attribute ``ATTR`` if given, else ``tasks``, else the only
registry in the module. The current directory is importable, as with ``python -m``. Without
``--tasks`` the worker runs the built-in demo tasks (``demo.sleep``), which the dashboard's
bursts enqueue.

SIGINT/SIGTERM: the first stops gracefully (jobs fetched but not started go back to the queue
without spending an attempt, running jobs finish, outcomes are flushed); a second one stops
forcefully (running jobs are given up on after a moment and go back to the queue). A stop
requested from the dashboard works the same way.

Exit status: 0 after a clean stop; 1 if outcomes could not be sent (Redis stayed down) or
running jobs were abandoned; 2 bad usage (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import random
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from types import FrameType, ModuleType

from engine import BrokerUnavailable, ConfigError, RetryPolicy, TaskRegistry, cancel_token
from engine.brokers.redis import RedisQueue
from engine.redis_worker import RedisWorker, StopReport, socket_timeout_for
from tui_dispatch.fleet_source import DEMO_TASK

__all__ = ["main", "build_parser", "load_tasks", "TasksError", "demo_tasks", "DemoFailure"]

PROG = "tui-dispatch worker"
EXIT_USAGE = 2
DEMO_TASKS_TARGET = "tui_dispatch.worker_cli:demo_tasks"

demo_tasks = TaskRegistry()
"""The built-in demo tasks: what ``tui-dispatch --redis URL`` bursts enqueue."""

_demo_rng = random.Random()  # demo failures only; guarded by _demo_lock
_demo_lock = threading.Lock()


class DemoFailure(RuntimeError):
    """What a demo job raises when its attempt is drawn to fail."""


@demo_tasks.task(DEMO_TASK)
def demo_sleep(ms: float, fail_p: float = 0.0) -> float:
    """Sleep ``ms`` milliseconds (cancellable), then fail with probability ``fail_p``."""
    if cancel_token().wait(max(0.0, float(ms)) / 1000.0):
        raise CancelledError("demo job cancelled")
    with _demo_lock:
        fail = _demo_rng.random() < float(fail_p)
    if fail:
        raise DemoFailure(f"demo failure (p={float(fail_p):g})")
    return float(ms)


class TasksError(ValueError):
    """A ``--tasks`` target that cannot be used. ``str()`` is one line for the user."""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The worker command's argument parser."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run a worker process: fetch jobs from a Redis queue and run them on a local "
                    "autoscaled thread pool.",
    )
    p.add_argument("--redis", required=True, metavar="URL",
                   help="redis://[[user]:password@]host[:port][/db], rediss:// for TLS, or unix:///path")
    p.add_argument("--tasks", default=DEMO_TASKS_TARGET, metavar="MODULE[:ATTR]",
                   help="module holding the TaskRegistry of the tasks this worker runs "
                        "(default: the built-in demo tasks the dashboard's bursts enqueue)")
    p.add_argument("--queue", default="default", help="queue name (default: %(default)s)")
    p.add_argument("--prefix", default="tui-dispatch", help="key prefix in Redis (default: %(default)s)")
    p.add_argument("--min-workers", type=_int_at_least(0), default=1, metavar="N",
                   help="threads at start and at least (default: %(default)s)")
    p.add_argument("--max-workers", type=_int_at_least(1), default=None, metavar="N",
                   help="threads at most (default: min(32, cpus + 4))")
    p.add_argument("--no-autoscale", action="store_true", help="keep the pool at --min-workers")
    p.add_argument("--prefetch", type=_int_at_least(0), default=None, metavar="N",
                   help="jobs fetched beyond the thread count (default: adaptive, about 50 ms of the "
                        "recent completion rate, from 2 x --max-workers up to 2000)")
    p.add_argument("--lease-s", type=_positive, default=30.0, metavar="S",
                   help="how long a job stays leased without a heartbeat (default: %(default)s)")
    p.add_argument("--heartbeat-s", type=_positive, default=1.0, metavar="S",
                   help="seconds between heartbeats; below --lease-s / 2 (default: %(default)s)")
    p.add_argument("--socket-timeout-s", type=_positive, default=None, metavar="S",
                   help="Redis read/write timeout; heartbeat + 2 x this must fit in --lease-s "
                        "(default: min(5, (lease - heartbeat) / 2))")
    p.add_argument("--poll-s", type=_positive, default=0.5, metavar="S",
                   help="longest idle wait on Redis before looking again (default: %(default)s)")
    p.add_argument("--retry-base-s", type=_non_negative, default=0.1, metavar="S",
                   help="first retry delay before jitter (default: %(default)s)")
    p.add_argument("--retry-factor", type=_positive, default=2.0, metavar="F",
                   help="growth per retry, >= 1 (default: %(default)s)")
    p.add_argument("--retry-cap-s", type=_non_negative, default=30.0, metavar="S",
                   help="largest retry delay before jitter (default: %(default)s)")
    p.add_argument("--retry-jitter", choices=("none", "full", "equal"), default="equal",
                   help="retry jitter (default: %(default)s)")
    p.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="(default: %(default)s)")
    p.add_argument("--log-interval-s", type=_non_negative, default=10.0, metavar="S",
                   help="seconds between metrics log lines, 0 for none (default: %(default)s)")
    return p


def load_tasks(target: str) -> TaskRegistry:
    """Import ``MODULE[:ATTR]`` and return its :class:`TaskRegistry`.

    Raises:
        TasksError: the module cannot be imported, or holds no (or several) registries.
    """
    module_name, _, attr = target.partition(":")
    if not module_name:
        raise TasksError(f"--tasks must be MODULE or MODULE:ATTR; got {target!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module: ModuleType = importlib.import_module(module_name)
    except Exception as exc:  # an import error of any kind is the user's to fix
        raise TasksError(f"--tasks: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    if attr:
        registry = getattr(module, attr, None)
        if not isinstance(registry, TaskRegistry):
            raise TasksError(f"--tasks: {module_name}.{attr} is not a TaskRegistry (got {type(registry).__name__})")
        return registry
    default = getattr(module, "tasks", None)
    if isinstance(default, TaskRegistry):
        return default
    found = {name: value for name, value in vars(module).items() if isinstance(value, TaskRegistry)}
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        raise TasksError(f"--tasks: module {module_name!r} has no TaskRegistry "
                         "(define `tasks = engine.TaskRegistry()` there, or pass MODULE:ATTR)")
    raise TasksError(f"--tasks: module {module_name!r} has several TaskRegistry objects "
                     f"({', '.join(sorted(found))}); pass MODULE:ATTR")


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """Run a worker until SIGINT/SIGTERM or a fleet stop request. Main thread only.

    Returns:
        The exit status (see the module docstring).
    """
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        tasks = load_tasks(args.tasks)
        retry = RetryPolicy(base_s=args.retry_base_s, factor=args.retry_factor, cap_s=args.retry_cap_s,
                            jitter=args.retry_jitter)
        socket_s = (args.socket_timeout_s if args.socket_timeout_s is not None
                    else max(0.01, socket_timeout_for(args.lease_s, args.heartbeat_s)))
        queue = RedisQueue(args.redis, queue=args.queue, prefix=args.prefix, socket_timeout_s=socket_s)
        worker = RedisWorker(
            queue, tasks, min_workers=args.min_workers,
            max_workers=args.max_workers if args.max_workers is not None else None,
            autoscale=not args.no_autoscale, retry=retry, lease_s=args.lease_s,
            heartbeat_s=args.heartbeat_s, prefetch=args.prefetch, poll_s=args.poll_s,
            log_interval_s=args.log_interval_s,
        )
    except (TasksError, ConfigError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("tui_dispatch.worker")
    if not len(tasks):
        log.warning("the registry from --tasks %s holds no tasks: every job will be dead-lettered", args.tasks)
    try:
        queue.ping()
    except BrokerUnavailable as exc:
        log.warning("%s; the worker starts anyway and keeps retrying with backoff", exc)

    signals = _Signals()
    signals.install()
    worker.start()
    log.info("worker %s: queue %r at %s, %d tasks (%s); Ctrl-C stops gracefully, twice forcefully",
             worker.worker_id, args.queue, queue.url, len(tasks), ", ".join(tasks.names()[:8]))
    try:
        while not signals.first.wait(0.25):
            asked = worker.wait_stop_requested(0)
            if asked is not None:
                if asked == "forceful":
                    signals.second.set()
                signals.first.set()
        reports: list[StopReport] = []
        graceful = not signals.second.is_set()
        stopper = threading.Thread(
            target=lambda: reports.append(worker.stop(graceful=graceful)), name="worker-stop", daemon=True,
        )
        log.info("stopping gracefully (again to stop forcefully)" if graceful else "stopping forcefully")
        stopper.start()
        escalated = not graceful
        while stopper.is_alive():
            stopper.join(0.2)
            if not escalated and (signals.second.is_set() or worker.wait_stop_requested(0) == "forceful"):
                escalated = True
                log.warning("stopping forcefully")
                threading.Thread(target=worker.stop, kwargs={"graceful": False}, name="worker-force",
                                 daemon=True).start()
    finally:
        signals.restore()
    report = reports[0] if reports else None
    if report is None:
        return 1
    return 0 if report.graceful and report.unflushed == 0 and report.abandoned == 0 else 1


class _Signals:
    """SIGINT/SIGTERM: the first sets ``first``, the next sets ``second``."""

    def __init__(self) -> None:
        self.first = threading.Event()
        self.second = threading.Event()
        self._old: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.first.is_set():
            self.second.set()
        self.first.set()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]


def _int_at_least(low: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}; got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}; got {text!r}")
        return value

    return convert


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0; got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0; got {text!r}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0; got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0; got {text!r}")
    return value


if __name__ == "__main__":
    sys.exit(main())
