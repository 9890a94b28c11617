"""The dispatcher: worker threads, round-robin hand-off, retries, the DLQ, autoscaling, shutdown.

Threads
-------
* **Workers** run jobs. An idle worker waits on its own Condition (built on the dispatcher's
  lock) until a job is handed to it; a worker that finishes a job takes the next one straight
  from the backlog without waiting.
* **The timer** (one thread) wakes at the next due time: retries falling due, attempts passing
  their timeout, autoscale evaluations, throughput samples and the periodic log line. It sleeps
  through the injected :class:`~engine.clock.Clock`, so tests drive it with a fake clock.
* **Callers** submit, cancel, inspect and shut down from any thread.

Locking
-------
``self._lock`` guards every field below marked *(lock)*: the broker, the workers and their
states, the counters and the samples. It is held only for bookkeeping, never while a job,
a callback or a log handler runs. Futures are completed after the lock is released.

Round-robin
-----------
Jobs go to idle workers in cyclic order of worker id, starting after the last worker that was
handed a job. A busy worker that finishes takes the oldest waiting job itself, so no job waits
while any worker is idle, and when all workers are idle the assignment order is strictly cyclic.
"""

from __future__ import annotations

import atexit
import bisect
import dataclasses
import difflib
import functools
import heapq
import itertools
import logging
import math
import os
import random
import reprlib
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from dataclasses import dataclass
from typing import Any, TypeVar

from engine.brokers.base import Broker, SharedBroker
from engine.brokers.memory import MemoryBroker
from engine.clock import Clock, RealClock
from engine.errors import (
    ConfigError,
    DispatcherClosed,
    JobNotFound,
    JobTimeout,
    Permanent,
    QueueFull,
    RetryAfter,
)
from engine.jobs import JobHandle, JobOptions, JobState, TaskRegistry, _current, check_json_args
from engine.metrics import (
    Counters,
    DeadLetter,
    EngineState,
    Latency,
    ScaleEvent,
    ScheduledRetry,
    Snapshot,
    WorkerSnapshot,
    WorkerState,
    format_log_line,
    percentiles,
)
from engine.policy.autoscale import AutoscalePolicy, ScaleMemory, ScaleStats, decide_scale
from engine.policy.backoff import RetryPolicy

__all__ = ["Dispatcher", "ShutdownReport"]

_Completion = tuple[JobHandle, str, Any, "BaseException | None"]  # what a future completes with

T = TypeVar("T")

log = logging.getLogger("engine")

_SAMPLES = 2048  # latency samples kept for percentiles
_THROUGHPUT_WINDOW_S = 5.0
_SAMPLE_EVERY_S = 0.25
_SCALE_EVENTS_KEPT = 20
_ARGS_REPR = reprlib.Repr()
_ARGS_REPR.maxstring = 80
_ARGS_REPR.maxother = 80
_ARGS_REPR.maxlevel = 3
_ARGS_REPR_MAX = 200

_OPTIONS = (
    "min_workers", "max_workers", "retry", "autoscale", "max_queue", "dlq_max", "default_timeout_s",
    "log_interval_s", "tasks", "broker", "clock", "rng", "force_wait_s", "name", "logger",
)


@dataclass(frozen=True, slots=True)
class ShutdownReport:
    """What a shutdown did.

    Attributes:
        forceful: whether queued and scheduled jobs were cancelled (asked for, or escalated to).
        escalated: whether a graceful shutdown ran out of ``timeout_s`` and turned forceful.
        completed: whether every worker has stopped (False for ``wait=False``).
        cancelled: ``(job_id, name)`` of every job cancelled by this shutdown.
        abandoned: ``(job_id, name)`` of every running job it stopped waiting for. Their threads
            may still be running; their results will be discarded. They count as cancelled.
        duration_s: how long the call took, on the dispatcher's clock.
    """

    forceful: bool
    escalated: bool
    completed: bool
    cancelled: tuple[tuple[int, str], ...]
    abandoned: tuple[tuple[int, str], ...]
    duration_s: float


class _Worker:
    """One worker thread's bookkeeping. Every field is guarded by the dispatcher's lock."""

    __slots__ = (
        "id", "cond", "thread", "job", "state", "jobs_done", "busy_s", "busy_since",
        "started_at", "retiring", "abandoned",
    )

    def __init__(self, worker_id: int, lock: threading.Lock, now: float) -> None:
        self.id = worker_id
        self.cond = threading.Condition(lock)
        self.thread: threading.Thread | None = None
        self.job: JobHandle | None = None  # handed to it, or running
        self.state = WorkerState.IDLE
        self.jobs_done = 0
        self.busy_s = 0.0  # total busy time of finished attempts
        self.busy_since: float | None = None
        self.started_at = now
        self.retiring = False  # exit once the current job is done
        self.abandoned = False  # timed out or given up on: discard whatever it returns


class Dispatcher(Executor):
    """A thread-pool job dispatcher with retries, a dead-letter queue and autoscaling.

    It is a :class:`concurrent.futures.Executor`: ``submit``, ``map`` and ``shutdown`` behave as
    the standard library documents, and ``loop.run_in_executor(dispatcher, fn)`` works.

    Args:
        min_workers: the fewest workers (>= 0); the pool starts at this size. Default 1.
        max_workers: the most workers (>= max(1, min_workers)). Default ``min(32, cpus + 4)``.
        retry: the default :class:`RetryPolicy` (3 retries, 0.1 s base, x2, 30 s cap, equal jitter).
        autoscale: an :class:`AutoscalePolicy`, ``True`` for the default one, or ``False`` to
            keep the pool at ``min_workers``.
        max_queue: the most jobs waiting in the backlog; ``None`` for no bound.
        dlq_max: the most dead-letter entries kept; the oldest are evicted (and counted) beyond.
        default_timeout_s: per-attempt timeout for jobs that set none; ``None`` for no limit.
        log_interval_s: seconds between metrics log lines on the ``engine`` logger; 0 turns it off.
        tasks: the :class:`TaskRegistry` used by :meth:`submit_task`.
        broker: where jobs wait; default a :class:`MemoryBroker` with ``dlq_max``. A
            :class:`~engine.brokers.redis.RedisBroker` makes a dispatcher on a Redis queue
            shared by a fleet (:class:`~engine.redis_dispatcher.RedisDispatcher`; the same
            API, with the differences its docstring lists).
        clock: the time source; default :class:`RealClock`.
        rng: the source of retry jitter; default ``random.Random()``.
        force_wait_s: how long a forceful shutdown waits for running jobs before abandoning them.
        name: a prefix for thread names.
        logger: where log lines go; default ``logging.getLogger("engine")``.

    Raises:
        ConfigError: any bad argument, or an unknown one, with what is allowed.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Dispatcher:
        # A shared broker (Redis) names its own subclass: Dispatcher(broker=RedisBroker(url)).
        broker = kwargs.get("broker")
        if cls is Dispatcher and isinstance(broker, SharedBroker):
            cls = broker.dispatcher_class()
        return super().__new__(cls)

    def __init__(
        self,
        *,
        min_workers: int = 1,
        max_workers: int | None = None,
        retry: RetryPolicy | None = None,
        autoscale: AutoscalePolicy | bool = True,
        max_queue: int | None = None,
        dlq_max: int | None = None,
        default_timeout_s: float | None = None,
        log_interval_s: float = 10.0,
        tasks: TaskRegistry | None = None,
        broker: Broker | SharedBroker | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        force_wait_s: float = 1.0,
        name: str = "dispatch",
        logger: logging.Logger | None = None,
        **unknown: object,
    ) -> None:
        _refuse_unknown(unknown)
        if max_workers is None:
            max_workers = max(min_workers, min(32, (os.cpu_count() or 1) + 4))
        _check_limits(min_workers, max_workers)
        retry, clock, rng = _defaults(retry, clock, rng)
        if autoscale is True:
            autoscale = AutoscalePolicy()
        elif autoscale is False:
            autoscale = AutoscalePolicy(enabled=False)
        elif not isinstance(autoscale, AutoscalePolicy):
            raise ConfigError(f"autoscale must be an AutoscalePolicy, True or False; got {autoscale!r}")
        if max_queue is not None and (not _is_int(max_queue) or max_queue < 1):
            raise ConfigError(f"max_queue must be None or an int >= 1; got {max_queue!r}")
        _check_timeout("default_timeout_s", default_timeout_s)
        if not _is_number(log_interval_s) or log_interval_s < 0:
            raise ConfigError(f"log_interval_s must be a number >= 0 (0 turns it off); got {log_interval_s!r}")
        if not _is_number(force_wait_s) or force_wait_s < 0:
            raise ConfigError(f"force_wait_s must be a number >= 0; got {force_wait_s!r}")
        if tasks is not None and not isinstance(tasks, TaskRegistry):
            raise ConfigError(f"tasks must be a TaskRegistry; got {tasks!r}")
        if broker is None:
            broker = MemoryBroker(dlq_max=dlq_max)
        elif not isinstance(broker, Broker):
            raise ConfigError(f"broker must be an engine.brokers.Broker; got {broker!r}")
        elif dlq_max is not None:
            raise ConfigError("dlq_max is a MemoryBroker setting; pass it to the broker you give")

        self._retry = retry
        self._autoscale = autoscale
        self._max_queue = max_queue
        self._default_timeout_s = default_timeout_s
        self._log_interval_s = float(log_interval_s)
        self._tasks = tasks
        self._clock = clock
        self._now = clock.monotonic
        self._rng = rng
        self._force_wait_s = float(force_wait_s)
        self._name = name
        self._log = logger or log
        self._default_options = JobOptions(None, retry, default_timeout_s)
        self._options_cache: dict[tuple[Any, ...], JobOptions] = {}

        self._lock = threading.Lock()  # guards everything marked (lock) below
        self._broker = broker  # (lock)
        self._min_workers = min_workers  # (lock)
        self._max_workers = max_workers  # (lock)
        self._workers: dict[int, _Worker] = {}  # (lock) live workers, by id
        self._idle: list[int] = []  # (lock) ids of idle workers, ascending
        self._rr_last = -1  # (lock) id of the worker that was handed the last job
        self._worker_ids = itertools.count(1)
        self._job_ids = itertools.count(1)
        self._in_flight = 0  # (lock) jobs handed to a worker and not finished
        self._stuck = 0  # (lock) abandoned threads still running
        self._paused = False  # (lock)
        self._closed = False  # (lock) intake stopped
        self._forced = False  # (lock) forceful shutdown in progress: no more retries
        self._timer_done = False  # (lock) the timer thread has exited
        self._delivering = 0  # (lock) outcomes recorded whose futures are still being completed
        self._retired_busy_s = 0.0  # (lock) busy time of workers that have left the pool
        self._stopped = False  # (lock) workers told to exit
        self._report: ShutdownReport | None = None  # (lock)
        self._forced_cancelled: list[tuple[int, str]] = []  # (lock) jobs a forceful shutdown cancelled
        self._forced_abandoned: list[tuple[int, str]] = []  # (lock) running jobs it gave up on
        self._deferred_logs: list[tuple[int, str, tuple[Any, ...]]] = []  # (lock) to emit once unlocked
        self._c_submitted = self._c_succeeded = self._c_failed = self._c_retries = 0  # (lock)
        self._c_dead = self._c_cancelled = self._c_timed_out = self._c_requeued = 0  # (lock)
        self._c_evicted = self._c_scale_ups = self._c_scale_downs = 0  # (lock)
        self._retries_by_attempt: dict[int, int] = {}  # (lock)
        self._run_samples: deque[float] = deque(maxlen=_SAMPLES)  # (lock)
        self._wait_samples: deque[float] = deque(maxlen=_SAMPLES)  # (lock)
        self._done_samples: deque[tuple[float, int]] = deque()  # (lock) (time, finished jobs)
        self._scale_events: deque[ScaleEvent] = deque(maxlen=_SCALE_EVENTS_KEPT)  # (lock)
        self._scale_memory = ScaleMemory()  # (lock)
        self._util_mark: tuple[float, float] | None = None  # (lock) (time, total busy) at last tick
        self._utilisation = 0.0  # (lock)
        self._timeouts: list[tuple[float, int, _Worker, JobHandle, int]] = []  # (lock) heap
        self._timeout_seq = itertools.count()
        self._space = threading.Condition(self._lock)  # backlog dropped below max_queue
        self._settled = threading.Condition(self._lock)  # unfinished reached 0, or a thread exited
        self._timer_cond = threading.Condition(self._lock)  # wakes the timer thread

        self._started_at = clock.monotonic()
        self._next_scale_at = self._started_at + autoscale.interval_s
        self._next_sample_at = self._started_at
        self._next_log_at = self._started_at + self._log_interval_s
        with self._lock:
            for cond in (self._timer_cond, self._settled):
                self._clock.wait(cond, 0)  # register with a fake clock before anyone advances it
            new = [self._add_worker_locked() for _ in range(min_workers)]
            self._timer = threading.Thread(target=self._timer_main, name=f"{name}-timer", daemon=True)
        for worker in new:
            self._start_worker(worker)
        self._timer.start()
        _live_dispatchers.add(self)

    # ==========================================================================================
    # Submitting
    # ==========================================================================================
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> JobHandle:
        """Run ``fn(*args, **kwargs)`` in a worker, with the default options. Thread-safe.

        Returns:
            The job's handle, a :class:`concurrent.futures.Future`.

        Raises:
            DispatcherClosed: after shutdown started.
            QueueFull: the bounded backlog stayed full (blocks while full, without a time limit;
                use :meth:`submit_job` for a bounded wait).
            ConfigError: ``fn`` is not callable.
        """
        if not callable(fn):
            raise ConfigError(f"submit: fn must be callable; got {fn!r}")
        job = JobHandle(self, 0, fn, args, kwargs or None, _name_of(fn), self._default_options)
        self._enqueue((job,), block=True, block_timeout_s=None)
        return job

    def submit_job(
        self,
        fn: Callable[..., Any],
        /,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
        timeout_s: float | None = None,
        block: bool = True,
        block_timeout_s: float | None = None,
    ) -> JobHandle:
        """Submit one job with per-job options. Thread-safe.

        Args:
            fn: the callable.
            args: positional arguments.
            kwargs: keyword arguments.
            name: a label for metrics and the DLQ; default the callable's name.
            retry: a retry policy for this job instead of the dispatcher's.
            max_retries: shorthand for the dispatcher's policy with another ``max_retries``.
            timeout_s: per-attempt timeout; default the dispatcher's ``default_timeout_s``.
            block: when the backlog is full, wait for room (True) or raise at once (False).
            block_timeout_s: the longest wait for room, in real seconds (like ``Future.result``);
                ``None`` waits as long as it takes.

        Raises:
            DispatcherClosed: after shutdown started.
            QueueFull: the backlog stayed full.
            ConfigError: a bad argument.
        """
        if not callable(fn):
            raise ConfigError(f"submit_job: fn must be callable; got {fn!r}")
        options = self._options(name, retry, max_retries, timeout_s)
        job = JobHandle(self, 0, fn, tuple(args), dict(kwargs) if kwargs else None,
                        options.name or _name_of(fn), options)
        self._enqueue((job,), block=block, block_timeout_s=block_timeout_s)
        return job

    def submit_many(
        self,
        fn: Callable[..., Any],
        arg_tuples: Iterable[Iterable[Any]],
        /,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
        timeout_s: float | None = None,
    ) -> list[JobHandle]:
        """Submit ``fn(*args)`` for each ``args`` in ``arg_tuples``, in one batch. Thread-safe.

        All jobs are accepted together, or none (a full bounded backlog raises :class:`QueueFull`
        without waiting).

        Raises:
            DispatcherClosed: after shutdown started.
            QueueFull: the batch does not fit in the bounded backlog.
            ConfigError: a bad argument.
        """
        if not callable(fn):
            raise ConfigError(f"submit_many: fn must be callable; got {fn!r}")
        options = self._options(name, retry, max_retries, timeout_s)
        job_name = options.name or _name_of(fn)
        jobs = [JobHandle(self, 0, fn, tuple(args), None, job_name, options) for args in arg_tuples]
        self._enqueue(jobs, block=False, block_timeout_s=None)
        return jobs

    def submit_task(self, task: str, /, *args: Any, **kwargs: Any) -> JobHandle:
        """Submit a registered task by name with JSON arguments. Thread-safe.

        This is the form that can cross a process boundary: only the name and the JSON
        arguments describe the job.

        Raises:
            UnknownTask: ``task`` is not registered in ``tasks``.
            ConfigError: no registry was given, or an argument is not plain JSON.
            DispatcherClosed: after shutdown started.
        """
        if self._tasks is None:
            raise ConfigError("submit_task needs Dispatcher(tasks=TaskRegistry(...))")
        self._tasks.get(task)  # raises UnknownTask at once
        check_json_args(task, args, kwargs)
        job = JobHandle(self, 0, None, args, kwargs or None, task, self._default_options, task=task)
        self._enqueue((job,), block=True, block_timeout_s=None)
        return job

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """:meth:`concurrent.futures.Executor.map`; without a bounded backlog the calls go in one batch."""
        if timeout is not None or self._max_queue is not None:  # the standard way: one blocking submit each
            return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)
        jobs = self.submit_many(fn, zip(*iterables, strict=False))

        def results() -> Iterator[T]:
            try:
                for job in jobs:
                    yield job.result()
            finally:
                for job in jobs:
                    job.cancel()

        return results()

    def _options(
        self, name: str | None, retry: RetryPolicy | None, max_retries: int | None, timeout_s: float | None
    ) -> JobOptions:
        key = (name, retry, max_retries, timeout_s)
        options = self._options_cache.get(key)
        if options is not None:
            return options
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"name must be a str; got {name!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigError(f"retry must be a RetryPolicy; got {retry!r}")
        policy = retry or self._retry
        if max_retries is not None:
            if retry is not None:
                raise ConfigError("give either retry or max_retries, not both")
            if not _is_int(max_retries) or max_retries < 0:
                raise ConfigError(f"max_retries must be an int >= 0; got {max_retries!r}")
            from dataclasses import replace

            policy = replace(policy, max_retries=max_retries)
        _check_timeout("timeout_s", timeout_s)
        options = JobOptions(name, policy, self._default_timeout_s if timeout_s is None else timeout_s)
        if len(self._options_cache) < 256:
            self._options_cache[key] = options
        return options

    def _enqueue(self, jobs: Iterable[JobHandle], *, block: bool, block_timeout_s: float | None) -> None:
        jobs = jobs if isinstance(jobs, (list, tuple)) else list(jobs)
        count = len(jobs)
        if block_timeout_s is not None and (not _is_number(block_timeout_s) or block_timeout_s < 0):
            raise ConfigError(f"block_timeout_s must be None or a number >= 0; got {block_timeout_s!r}")
        with self._lock:
            if self._closed:
                raise DispatcherClosed("the dispatcher is shut down and takes no new jobs")
            if self._max_queue is not None:
                self._wait_for_room_locked(count, block, block_timeout_s)
            now = self._now()
            push = self._broker.push
            next_id = self._job_ids.__next__
            for job in jobs:
                job.id = next_id()
                job._enqueued_at = now
                push(job)
            self._c_submitted += count
            if self._idle and not self._paused:
                self._dispatch_locked()

    def _wait_for_room_locked(self, count: int, block: bool, timeout_s: float | None) -> None:
        limit = self._max_queue
        assert limit is not None
        if count > limit:
            raise QueueFull(f"a batch of {count} jobs cannot fit in max_queue={limit}")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._broker.backlog_len() + count > limit:
            if not block or (deadline is not None and time.monotonic() >= deadline):
                raise QueueFull(
                    f"the backlog is full ({self._broker.backlog_len()}/{limit} jobs)"
                    + ("" if not block else f" and stayed full for {timeout_s:g}s")
                )
            self._space.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if self._closed:
                raise DispatcherClosed("the dispatcher shut down while submit waited for room")

    # ==========================================================================================
    # Hand-off (lock held)
    # ==========================================================================================
    def _dispatch_locked(self) -> None:
        """Hand backlog jobs to idle workers in round-robin order."""
        idle, pop = self._idle, self._broker.pop
        while idle:
            job = pop()
            if job is None:
                break
            index = bisect.bisect_right(idle, self._rr_last)
            worker_id = idle.pop(index if index < len(idle) else 0)
            self._rr_last = worker_id
            worker = self._workers[worker_id]
            self._start_job_locked(worker, job)
            worker.cond.notify()
        if self._max_queue is not None:
            self._space.notify_all()

    def _start_job_locked(self, worker: _Worker, job: JobHandle) -> None:
        worker.job = job
        worker.state = WorkerState.BUSY
        self._in_flight += 1
        job._job_state = JobState.RUNNING
        job._state = RUNNING

    # ==========================================================================================
    # Workers
    # ==========================================================================================
    def _add_worker_locked(self) -> _Worker:
        worker = _Worker(next(self._worker_ids), self._lock, self._now())
        self._workers[worker.id] = worker
        bisect.insort(self._idle, worker.id)
        worker.thread = threading.Thread(
            target=self._worker_main, args=(worker,), name=f"{self._name}-worker-{worker.id}", daemon=True
        )
        return worker

    def _start_worker(self, worker: _Worker) -> None:
        assert worker.thread is not None
        try:
            worker.thread.start()
        except RuntimeError as exc:  # can't start new thread: give the slot, and any job, back
            self._emit(logging.ERROR, "could not start worker %d: %s", worker.id, exc)
            with self._lock:
                job = worker.job
                if job is not None:  # handed over before the thread existed: back to the backlog
                    worker.job = None
                    self._in_flight -= 1
                    job._job_state = JobState.QUEUED
                    job._state = PENDING
                    self._broker.push(job)
                self._remove_worker_locked(worker)
                if not self._paused:
                    self._dispatch_locked()

    def _remove_worker_locked(self, worker: _Worker) -> None:
        if self._workers.get(worker.id) is worker:
            del self._workers[worker.id]
            self._retired_busy_s += worker.busy_s
        index = bisect.bisect_left(self._idle, worker.id)
        if index < len(self._idle) and self._idle[index] == worker.id:
            self._idle.pop(index)
        self._settled.notify_all()
        if self._stopped:
            self._timer_cond.notify()

    def _worker_main(self, worker: _Worker) -> None:
        lock, now, broker = self._lock, self._now, self._broker
        tasks = self._tasks
        lock.acquire()
        try:
            while True:
                job = worker.job
                if (job is None and worker.state is not WorkerState.IDLE and not worker.retiring
                        and not self._paused and not self._stopped):
                    job = broker.pop()  # just finished one: take the next without waiting
                    if job is not None:
                        self._start_job_locked(worker, job)
                        if self._max_queue is not None:
                            self._space.notify_all()
                if job is None:
                    if worker.retiring or self._stopped:
                        return
                    if worker.state is not WorkerState.IDLE:
                        worker.state = WorkerState.IDLE
                        bisect.insort(self._idle, worker.id)
                    worker.cond.wait()
                    continue

                # -- run one attempt --------------------------------------------------------
                job.attempts += 1
                attempt = job.attempts
                start = now()
                self._wait_samples.append(start - job._enqueued_at)
                worker.busy_since = start
                timeout_s = job.options.timeout_s
                if timeout_s is not None:
                    self._push_timeout_locked(start + timeout_s, worker, job, attempt)
                logs = self._take_logs_locked()
                lock.release()
                if logs:
                    self._emit_all(logs)
                _current.handle, _current.attempt = job, attempt
                exc: BaseException | None = None
                result: Any = None
                try:
                    fn = job.fn
                    if fn is None:
                        fn = tasks.get(job.task or "") if tasks is not None else _no_registry(job.task)
                    kwargs = job.kwargs
                    result = fn(*job.args, **kwargs) if kwargs else fn(*job.args)
                except BaseException as caught:  # a job can never kill its worker
                    exc = caught
                _current.handle = None
                end = now()
                failure = None if exc is None else self._judge(job, exc, attempt)
                lock.acquire()

                # -- record the outcome -----------------------------------------------------
                if worker.abandoned:  # timed out or abandoned while it ran: nobody wants this
                    return
                self._run_samples.append(end - start)
                worker.jobs_done += 1
                worker.busy_s += end - start
                worker.busy_since = None
                worker.job = None
                worker.state = WorkerState.RETIRING if worker.retiring else WorkerState.BUSY
                self._in_flight -= 1
                if exc is None:
                    self._c_succeeded += 1
                    job._job_state = JobState.SUCCEEDED
                    finished: _Completion | None = (job, FINISHED, result, None)
                else:
                    assert failure is not None
                    finished = self._fail_locked(job, exc, failure)
                # Deliver the outcome before taking another job: callbacks and waiters run on
                # this thread, and nothing of the next job (its start, its timeout) waits on them.
                if finished is not None and not finished[0]._complete_quietly(*finished[1:]):
                    self._deliver_unlocked(finished)
                self._notify_if_settled_locked()
        finally:
            if worker.abandoned:
                self._stuck -= 1  # an abandoned thread has finally come back
                self._settled.notify_all()
            else:
                self._remove_worker_locked(worker)
            lock.release()

    def _deliver_unlocked(self, finished: _Completion) -> None:
        """Complete a future whose waiters or callbacks may run user code: lock held on entry and exit,
        released in between. ``join`` waits for these deliveries too."""
        self._delivering += 1
        logs = self._take_logs_locked()
        self._lock.release()
        try:
            finished[0]._complete(finished[1], finished[2], finished[3])
            self._emit_all(logs)
        finally:
            self._lock.acquire()
            self._delivering -= 1

    def _notify_if_settled_locked(self) -> None:
        """Wake ``join`` and shutdown when nothing is left unfinished or undelivered."""
        if self._in_flight == 0 and self._delivering == 0 and self._unfinished_locked() == 0:
            self._settled.notify_all()

    def _push_timeout_locked(self, deadline: float, worker: _Worker, job: JobHandle, attempt: int) -> None:
        timeouts = self._timeouts
        heapq.heappush(timeouts, (deadline, next(self._timeout_seq), worker, job, attempt))
        if len(timeouts) > 2 * len(self._workers) + 64:  # drop finished attempts so they can be freed
            live = [e for e in timeouts if e[2].job is e[3] and e[3].attempts == e[4] and not e[2].abandoned]
            heapq.heapify(live)
            self._timeouts = live
        self._timer_cond.notify()

    # ==========================================================================================
    # Logging that can never hurt the engine
    # ==========================================================================================
    def _take_logs_locked(self) -> list[tuple[int, str, tuple[Any, ...]]] | None:
        if not self._deferred_logs:
            return None
        logs, self._deferred_logs = self._deferred_logs, []
        return logs

    def _emit_all(self, logs: list[tuple[int, str, tuple[Any, ...]]] | None) -> None:
        for level, message, args in logs or ():
            self._emit(level, message, *args)

    def _emit(self, level: int, message: str, *args: Any, exc_info: bool = False) -> None:
        """Log without ever raising: a broken handler must not break a worker or the timer."""
        try:
            self._log.log(level, message, *args, exc_info=exc_info)
        except Exception:
            pass

    # ==========================================================================================
    # Failure: retry or dead-letter
    # ==========================================================================================
    def _judge(
        self, job: JobHandle, exc: BaseException, attempt: int
    ) -> tuple[float | None, DeadLetter | None]:
        """Decide, without the lock, what a failed attempt leads to.

        Returns:
            ``(retry_delay_s, None)`` to retry, or ``(None, entry)`` to dead-letter.
        """
        wall = self._clock.time()
        policy = job.options.retry
        retries_left = policy.max_retries - (attempt - 1)
        if retries_left > 0 and policy.should_retry(exc):
            if isinstance(exc, RetryAfter):
                return exc.delay_s, None
            return -1.0, None  # the backoff delay is drawn under the lock, so the rng stays ordered
        if isinstance(exc, Permanent):
            reason = "not retryable: raised Permanent"
        elif not isinstance(exc, policy.retry_on):
            reason = f"not retryable: {type(exc).__name__} is not in retry_on"
        else:
            reason = f"retries exhausted ({policy.max_retries} retries)"
        return None, self._dead_letter_entry(job, exc, reason, wall)

    def _dead_letter_entry(self, job: JobHandle, exc: BaseException, reason: str, wall: float) -> DeadLetter:
        try:
            tb = "".join(traceback.format_exception(exc))
        except Exception as tb_exc:  # a broken __str__ must not break the worker
            tb = f"<traceback unavailable: {tb_exc!r}>"
        try:
            message = str(exc)
        except Exception:
            message = "<unprintable exception>"
        return DeadLetter(
            job_id=job.id,
            name=job.name,
            task=job.task,
            args_repr=_args_repr(job.args, job.kwargs),
            exc_type=_qualname(type(exc)),
            exc_message=message,
            traceback=tb,
            attempts=job.attempts,
            first_failure_at=job._first_failure_at if job._first_failure_at is not None else wall,
            last_failure_at=wall,
            reason=reason,
        )

    def _fail_locked(
        self, job: JobHandle, exc: BaseException, failure: tuple[float | None, DeadLetter | None]
    ) -> _Completion | None:
        """Apply a failed attempt's outcome. Returns the completion to deliver, if any."""
        self._c_failed += 1
        wall = self._clock.time()
        if job._first_failure_at is None:
            job._first_failure_at = wall
        job._last_failure_at = wall
        delay, entry = failure
        if delay is not None:
            if self._forced:  # a forceful shutdown schedules nothing new
                self._cancel_locked(job)
                self._forced_cancelled.append((job.id, job.name))
                return (job, CANCELLED_AND_NOTIFIED, None, None)
            retry_no = job.attempts  # the attempt that just failed is retry number attempts-1
            if delay < 0:
                delay = job.options.retry.delay(retry_no, self._rng)
            self._c_retries += 1
            self._retries_by_attempt[retry_no] = self._retries_by_attempt.get(retry_no, 0) + 1
            job._state = PENDING
            now = self._now()
            if delay <= 0:  # due at once: straight back to the backlog, no trip through the timer
                job._job_state = JobState.QUEUED
                job._enqueued_at = now
                self._broker.push(job)
                if self._idle and not self._paused:
                    self._dispatch_locked()
                return None
            job._job_state = JobState.SCHEDULED
            self._broker.schedule(job, now + delay)
            self._timer_cond.notify()
            return None
        assert entry is not None
        self._c_dead += 1
        job._job_state = JobState.DEAD_LETTERED
        evicted = self._broker.dead_letter(job, entry)
        if evicted:
            self._c_evicted += len(evicted)
            for old in evicted:
                self._deferred_logs.append((
                    logging.WARNING, "DLQ full: evicted job %d (%s, %s: %s)",
                    (old.job_id, old.name, old.exc_type, old.exc_message),
                ))
        return (job, FINISHED, None, exc)

    # ==========================================================================================
    # Cancel
    # ==========================================================================================
    def _cancel_locked(self, job: JobHandle) -> None:
        """Mark a job cancelled. Its future reads as cancelled at once (the stdlib's first phase,
        CANCELLED); waiters are told when the caller completes it, after releasing the lock."""
        job._job_state = JobState.CANCELLED
        job._state = CANCELLED
        self._c_cancelled += 1

    def _cancel_handle(self, job: JobHandle) -> bool:
        with self._lock:
            if job._job_state is JobState.CANCELLED:
                return True
            if job._job_state not in (JobState.QUEUED, JobState.SCHEDULED) or not self._broker.discard(job):
                return False
            self._cancel_locked(job)
            self._notify_if_settled_locked()
            if self._max_queue is not None:
                self._space.notify_all()
        job._complete(CANCELLED_AND_NOTIFIED, None, None)
        return True

    # ==========================================================================================
    # The timer thread
    # ==========================================================================================
    def _timer_main(self) -> None:
        lock = self._lock
        with lock:
            while True:
                if self._stopped:  # nothing is left for the timer once workers are told to stop
                    break
                now = self._now()
                after: list[Callable[[], None]] = []
                try:
                    expired = self._tick_locked(now, after)
                    if expired:
                        self._time_out_locked(expired, after)
                except Exception:  # the timer must outlive any bug in one tick
                    self._deferred_logs.append((logging.ERROR, "dispatcher timer tick failed:\n%s",
                                                (traceback.format_exc(),)))
                logs = self._take_logs_locked()
                if after or logs:
                    lock.release()
                    try:
                        for action in after:
                            try:
                                action()
                            except Exception:
                                self._emit(logging.ERROR, "dispatcher timer action failed", exc_info=True)
                        self._emit_all(logs)
                    finally:
                        lock.acquire()
                    continue
                wake = self._next_wake_locked()
                if self._stopped:  # nothing is left for the timer once workers are told to stop
                    break
                self._clock.wait(self._timer_cond, None if wake is None else wake - self._now())
            self._timer_done = True
            self._settled.notify_all()

    def _next_wake_locked(self) -> float | None:
        candidates = [self._next_sample_at, self._next_scale_at]
        if self._log_interval_s > 0:
            candidates.append(self._next_log_at)
        due = self._broker.next_due()
        if due is not None:
            candidates.append(due)
        if self._timeouts:
            candidates.append(self._timeouts[0][0])
        if self._stopped:
            return None  # only waiting for workers to exit; each one wakes us as it goes
        return min(candidates)

    def _tick_locked(self, now: float, after: list[Callable[[], None]]) -> list[tuple[_Worker, JobHandle, int]]:
        """Everything due at ``now``. Returns the attempts past their timeout, for the caller to
        handle with :meth:`_time_out_locked`."""
        # Retries falling due go back to the backlog.
        due = self._broker.pop_due(now)
        if due:
            push = self._broker.push
            for job in due:
                job._job_state = JobState.QUEUED
                job._enqueued_at = now
                push(job)
            if not self._paused:
                self._dispatch_locked()
        # Throughput samples.
        if now >= self._next_sample_at:
            self._done_samples.append((now, self._c_succeeded + self._c_dead + self._c_cancelled))
            while len(self._done_samples) > 2 and self._done_samples[1][0] <= now - _THROUGHPUT_WINDOW_S:
                self._done_samples.popleft()
            self._next_sample_at = now + _SAMPLE_EVERY_S
        # Autoscaling.
        if now >= self._next_scale_at and not self._stopped:
            self._autoscale_locked(now, after)
            self._next_scale_at = now + self._autoscale.interval_s
        # The periodic log line.
        if self._log_interval_s > 0 and now >= self._next_log_at:
            line = format_log_line(self._snapshot_locked(now, workers=False))
            after.append(lambda: self._emit(logging.INFO, "%s", line))
            self._next_log_at = now + self._log_interval_s
        # Attempts past their timeout.
        expired = []
        timeouts = self._timeouts
        while timeouts and timeouts[0][0] <= now:
            _, _, worker, job, attempt = heapq.heappop(timeouts)
            if worker.job is job and job.attempts == attempt and not worker.abandoned:
                expired.append((worker, job, attempt))
        return expired

    def _time_out_locked(self, expired: list[tuple[_Worker, JobHandle, int]], after: list[Callable[[], None]]) -> None:
        """Fail attempts that ran past their timeout. Lock held on entry and exit; released while
        the DLQ entries are built, since that runs user code (argument reprs, exception text)."""
        prepared = []
        self._lock.release()
        try:
            for worker, job, attempt in expired:
                timeout_s = job.options.timeout_s or 0.0
                exc = JobTimeout(f"job {job.id} ({job.name}) ran past its timeout of {timeout_s:g}s")
                failure = self._judge(job, exc, attempt)
                thread = worker.thread
                frame = sys._current_frames().get(thread.ident) if thread is not None and thread.ident else None
                if failure[1] is not None and frame is not None:
                    stack = "".join(traceback.format_stack(frame))
                    failure = (None, dataclasses.replace(
                        failure[1], traceback=f"{failure[1].traceback}Stack of the abandoned thread when it timed out:\n{stack}"
                    ))
                prepared.append((worker, job, attempt, exc, failure, timeout_s))
        finally:
            self._lock.acquire()
        for worker, job, attempt, exc, failure, timeout_s in prepared:
            if worker.job is not job or job.attempts != attempt or worker.abandoned:
                continue  # it finished while the entry was being built
            self._c_timed_out += 1
            self._abandon_worker_locked(worker, after)
            job._cancel_token(f"timed out after {timeout_s:g}s")
            finished = self._fail_locked(job, exc, failure)
            if finished is not None:
                after.append(functools.partial(finished[0]._complete, finished[1], finished[2], finished[3]))
            self._deferred_logs.append((
                logging.WARNING, "job %d (%s) timed out after %gs; its thread is abandoned",
                (job.id, job.name, timeout_s),
            ))
        self._notify_if_settled_locked()

    def _abandon_worker_locked(self, worker: _Worker, after: list[Callable[[], None]]) -> None:
        """Give up on a worker whose job overran: it leaves the pool, and a fresh one takes its place."""
        worker.abandoned = True
        self._stuck += 1
        self._in_flight -= 1
        job = worker.job
        worker.job = None
        if job is not None and worker.busy_since is not None:
            worker.busy_s += self._now() - worker.busy_since
        if self._workers.get(worker.id) is worker:
            del self._workers[worker.id]
            self._retired_busy_s += worker.busy_s
        if not self._stopped and not worker.retiring:
            fresh = self._add_worker_locked()
            after.append(lambda: self._start_worker(fresh))
            if not self._paused:
                self._dispatch_locked()
        self._notify_if_settled_locked()

    # ==========================================================================================
    # Autoscaling and limits
    # ==========================================================================================
    def _live_counts_locked(self) -> tuple[int, int]:
        """(workers not retiring, idle workers)."""
        active = sum(1 for w in self._workers.values() if not w.retiring)
        return active, len(self._idle)

    def _autoscale_locked(self, now: float, after: list[Callable[[], None]]) -> None:
        busy_total = self._retired_busy_s + sum(
            w.busy_s + (now - w.busy_since if w.busy_since is not None else 0.0) for w in self._workers.values()
        )
        mark = self._util_mark
        active, idle = self._live_counts_locked()
        if mark is not None and now > mark[0] and active:
            self._utilisation = max(0.0, min(1.0, (busy_total - mark[1]) / ((now - mark[0]) * active)))
        self._util_mark = (now, busy_total)
        stats = ScaleStats(
            now=now, workers=active, idle=idle, backlog=self._broker.backlog_len(),
            utilisation=self._utilisation, min_workers=self._min_workers, max_workers=self._max_workers,
        )
        decision, self._scale_memory = decide_scale(stats, self._autoscale, self._scale_memory)
        if decision.delta:
            self._apply_scale_locked(decision.delta, decision.reason, after)

    def _apply_scale_locked(self, delta: int, reason: str, after: list[Callable[[], None]]) -> None:
        if self._stopped:
            return
        if delta > 0:
            new = [self._add_worker_locked() for _ in range(delta)]
            after.extend(functools.partial(self._start_worker, w) for w in new)
            self._c_scale_ups += delta
            if not self._paused:
                self._dispatch_locked()
        else:
            retired = 0
            for worker_id in reversed(list(self._idle)):  # newest idle workers first
                if retired == -delta:
                    break
                self._idle.remove(worker_id)
                worker = self._workers[worker_id]
                worker.retiring = True
                worker.state = WorkerState.RETIRING
                worker.cond.notify()
                retired += 1
            if retired < -delta:  # only when a lowered max_workers forces it: busy ones retire after their job
                for worker in sorted(self._workers.values(), key=lambda w: -w.id):
                    if retired == -delta:
                        break
                    if not worker.retiring:
                        worker.retiring = True
                        worker.state = WorkerState.RETIRING
                        retired += 1
            delta = -retired
            self._c_scale_downs += retired
        if delta:
            active, _ = self._live_counts_locked()
            event = ScaleEvent(at=self._clock.time(), delta=delta, workers_after=active, reason=reason)
            self._scale_events.append(event)
            verb = "up" if delta > 0 else "down"
            self._deferred_logs.append(
                (logging.INFO, "scaled %s by %d to %d workers: %s", (verb, abs(delta), active, reason))
            )

    def set_limits(self, min_workers: int | None = None, max_workers: int | None = None) -> None:
        """Change the pool's bounds; the pool moves inside them at once. Thread-safe.

        Lowering ``max_workers`` below the pool size retires idle workers now and busy ones
        after their current job; no running job is interrupted.

        Raises:
            ConfigError: bad or inconsistent bounds.
        """
        after: list[Callable[[], None]] = []
        with self._lock:
            lo = self._min_workers if min_workers is None else min_workers
            hi = self._max_workers if max_workers is None else max_workers
            _check_limits(lo, hi)
            self._min_workers, self._max_workers = lo, hi
            active, _ = self._live_counts_locked()
            if active < lo:
                self._apply_scale_locked(lo - active, f"min_workers raised to {lo}", after)
            elif active > hi:
                self._apply_scale_locked(hi - active, f"max_workers lowered to {hi}", after)
            self._scale_memory = ScaleMemory(last_change_at=self._now()) if after else self._scale_memory
            self._timer_cond.notify()
            logs = self._take_logs_locked()
        for action in after:
            action()
        self._emit_all(logs)

    @property
    def min_workers(self) -> int:
        """The pool's lower bound. Thread-safe."""
        with self._lock:
            return self._min_workers

    @property
    def max_workers(self) -> int:
        """The pool's upper bound. Thread-safe."""
        with self._lock:
            return self._max_workers

    # ==========================================================================================
    # Pause and resume
    # ==========================================================================================
    def pause(self) -> None:
        """Stop handing jobs to workers; running jobs finish, submissions still queue. Thread-safe.

        Raises:
            DispatcherClosed: the dispatcher is shutting down (a drain cannot be paused).
        """
        with self._lock:
            if self._closed:
                raise DispatcherClosed("the dispatcher is shutting down; a drain cannot be paused")
            self._paused = True

    def resume(self) -> None:
        """Hand jobs to workers again. Thread-safe."""
        with self._lock:
            self._paused = False
            self._dispatch_locked()

    @property
    def paused(self) -> bool:
        """Whether dispatch is paused. Thread-safe."""
        return self._paused

    @property
    def state(self) -> EngineState:
        """running, paused, draining or stopped. Thread-safe."""
        with self._lock:
            return self._state_locked()

    def _state_locked(self) -> EngineState:
        if self._stopped and not self._workers:
            return EngineState.STOPPED
        if self._closed:
            return EngineState.DRAINING
        return EngineState.PAUSED if self._paused else EngineState.RUNNING

    # ==========================================================================================
    # Metrics
    # ==========================================================================================
    def snapshot(self, *, workers: bool = True) -> Snapshot:
        """An immutable, self-consistent picture of the engine. Thread-safe.

        Args:
            workers: include the per-worker list (O(workers) to build).
        """
        with self._lock:
            snap = self._snapshot_locked(self._now(), workers=workers, latency=False)
            run_samples, wait_samples = list(self._run_samples), list(self._wait_samples)
        # Percentiles sort thousands of samples: do it after releasing the lock.
        return dataclasses.replace(snap, run_time=percentiles(run_samples), queue_wait=percentiles(wait_samples))

    def _unfinished_locked(self) -> int:
        return self._in_flight + self._broker.backlog_len() + self._broker.scheduled_len()

    def _snapshot_locked(self, now: float, *, workers: bool, latency: bool = True) -> Snapshot:
        broker = self._broker
        oldest = broker.oldest_enqueued_at()
        busy = idle = retiring = 0
        worker_snaps: list[WorkerSnapshot] = []
        for w in self._workers.values():
            state = w.state
            if w.retiring:
                retiring += 1
            elif state is WorkerState.IDLE:
                idle += 1
            else:
                busy += 1
            if workers:
                running = now - w.busy_since if w.busy_since is not None else 0.0
                alive = max(now - w.started_at, 1e-9)
                job = w.job
                worker_snaps.append(
                    WorkerSnapshot(
                        id=w.id,
                        state=WorkerState.RETIRING if w.retiring else state,
                        job_id=job.id if job is not None else None,
                        job_name=job.name if job is not None else None,
                        jobs_done=w.jobs_done,
                        utilisation=min(1.0, (w.busy_s + running) / alive),
                        busy_for_s=running,
                    )
                )
        samples = self._done_samples
        if len(samples) >= 2 and samples[-1][0] > samples[0][0]:
            throughput = (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])
        else:
            throughput = 0.0
        next_retries = tuple(
            ScheduledRetry(job_id=job.id, name=job.name, attempt=job.attempts + 1, due_in_s=max(0.0, due - now))
            for due, job in broker.peek_scheduled(10)
        )
        return Snapshot(
            taken_at=self._clock.time(),
            uptime_s=now - self._started_at,
            state=self._state_locked(),
            counters=Counters(
                submitted=self._c_submitted, succeeded=self._c_succeeded, failed=self._c_failed,
                retries=self._c_retries, dead_lettered=self._c_dead, cancelled=self._c_cancelled,
                timed_out=self._c_timed_out, requeued=self._c_requeued, dlq_evicted=self._c_evicted,
                scale_ups=self._c_scale_ups, scale_downs=self._c_scale_downs,
            ),
            backlog=broker.backlog_len(),
            scheduled=broker.scheduled_len(),
            in_flight=self._in_flight,
            workers_total=len(self._workers),
            workers_busy=busy,
            workers_idle=idle,
            workers_retiring=retiring,
            stuck_threads=self._stuck,
            min_workers=self._min_workers,
            max_workers=self._max_workers,
            utilisation=self._utilisation,
            oldest_wait_s=0.0 if oldest is None else max(0.0, now - oldest),
            dlq_size=broker.dlq_len(),
            throughput_per_s=throughput,
            run_time=percentiles(self._run_samples) if latency else Latency(),
            queue_wait=percentiles(self._wait_samples) if latency else Latency(),
            workers=tuple(worker_snaps),
            retries_by_attempt=tuple(sorted(self._retries_by_attempt.items())),
            next_retries=next_retries,
            scale_events=tuple(self._scale_events),
        )

    # ==========================================================================================
    # The dead-letter queue
    # ==========================================================================================
    def dlq_list(self, offset: int = 0, limit: int = 100) -> list[DeadLetter]:
        """DLQ entries ``offset .. offset+limit``, oldest first. Thread-safe.

        Raises:
            ConfigError: a negative offset or a limit below 1.
        """
        if not _is_int(offset) or offset < 0:
            raise ConfigError(f"offset must be an int >= 0; got {offset!r}")
        if not _is_int(limit) or limit < 1:
            raise ConfigError(f"limit must be an int >= 1; got {limit!r}")
        with self._lock:
            return list(self._broker.dlq_list(offset, limit))

    def dlq_get(self, job_id: int) -> DeadLetter:
        """One DLQ entry. Thread-safe.

        Raises:
            JobNotFound: no entry with that id.
        """
        with self._lock:
            entry = self._broker.dlq_get(job_id)
        if entry is None:
            raise JobNotFound(f"no dead-lettered job with id {job_id!r}")
        return entry

    def dlq_requeue(self, job_id: int) -> JobHandle:
        """Send one DLQ entry back to the backlog with fresh attempts. Thread-safe.

        The job keeps its id and gets a new handle (the old one has already failed).

        Raises:
            JobNotFound: no entry with that id.
            DispatcherClosed: after shutdown started.
        """
        with self._lock:
            if self._closed:
                raise DispatcherClosed("the dispatcher is shut down and takes no requeues")
            taken = self._broker.dlq_take(job_id)
            if taken is None:
                raise JobNotFound(f"no dead-lettered job with id {job_id!r}")
            return self._requeue_locked(taken[1])

    def dlq_requeue_all(self) -> list[JobHandle]:
        """Send every DLQ entry back to the backlog with fresh attempts, oldest first. Thread-safe.

        Raises:
            DispatcherClosed: after shutdown started.
        """
        with self._lock:
            if self._closed:
                raise DispatcherClosed("the dispatcher is shut down and takes no requeues")
            return [self._requeue_locked(job) for _, job in self._broker.dlq_take_all()]

    def _requeue_locked(self, old: JobHandle) -> JobHandle:
        job = JobHandle(self, old.id, old.fn, old.args, old.kwargs, old.name, old.options, task=old.task)
        job._enqueued_at = self._now()
        self._broker.push(job)
        self._c_submitted += 1
        self._c_requeued += 1
        if self._idle and not self._paused:
            self._dispatch_locked()
        return job

    def dlq_delete(self, job_id: int) -> DeadLetter:
        """Remove one DLQ entry for good, returning it. Thread-safe.

        Raises:
            JobNotFound: no entry with that id.
        """
        with self._lock:
            taken = self._broker.dlq_take(job_id)
        if taken is None:
            raise JobNotFound(f"no dead-lettered job with id {job_id!r}")
        return taken[0]

    def dlq_purge(self) -> int:
        """Remove every DLQ entry; returns how many. Thread-safe."""
        with self._lock:
            return len(self._broker.dlq_take_all())

    # ==========================================================================================
    # Waiting and shutting down
    # ==========================================================================================
    def join(self, timeout_s: float | None = None) -> bool:
        """Wait until no job is queued, scheduled or running. Thread-safe; not from a job.

        Args:
            timeout_s: the longest wait in real seconds (like ``Future.result``); ``None``
                waits as long as it takes.

        Returns:
            True if everything finished, False on timeout.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            while self._unfinished_locked() > 0 or self._delivering > 0:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._settled.wait(remaining)
            return True

    def shutdown(  # type: ignore[override]  # returns a report where Executor returns None
        self, wait: bool = True, *, cancel_futures: bool = False, timeout_s: float | None = None
    ) -> ShutdownReport:
        """Stop the dispatcher. Thread-safe and idempotent.

        * Graceful (default): stop intake (``submit`` raises :class:`DispatcherClosed`), then
          finish every running, queued and scheduled job. With ``timeout_s``, escalate to
          forceful when the time runs out.
        * Forceful (``cancel_futures=True``): stop intake, cancel every queued and scheduled job
          (their handles raise ``CancelledError``), tell running jobs through their cancel token,
          wait up to ``force_wait_s`` for them, then abandon the rest (counted as cancelled).

        Args:
            wait: block until done. With False, return at once and let the shutdown proceed.
            cancel_futures: forceful, as above.
            timeout_s: with a graceful shutdown, the longest wait before escalating.

        Returns:
            A :class:`ShutdownReport` (for ``wait=False``, the state when the call returned).
        """
        if timeout_s is not None and (not _is_number(timeout_s) or timeout_s < 0):
            raise ConfigError(f"timeout_s must be None or a number >= 0; got {timeout_s!r}")
        if wait and _current_handle() is not None and not cancel_futures:
            raise RuntimeError(
                "shutdown(wait=True) from inside a running job would wait for that job itself; "
                "use shutdown(wait=False) there"
            )
        started = self._now()
        cancelled: list[JobHandle] = []
        with self._lock:
            if self._report is not None and self._report.completed:
                return self._report
            self._closed = True
            self._paused = False
            self._space.notify_all()
            if cancel_futures:
                cancelled = self._force_locked()
            else:
                self._dispatch_locked()
            self._timer_cond.notify()
        for job in cancelled:
            job._complete(CANCELLED_AND_NOTIFIED, None, None)
        if not wait:
            threading.Thread(
                target=self._finish_shutdown, args=(cancel_futures, timeout_s, started),
                name=f"{self._name}-shutdown", daemon=True,
            ).start()
            with self._lock:
                return ShutdownReport(
                    forceful=cancel_futures, escalated=False, completed=False,
                    cancelled=tuple(self._forced_cancelled), abandoned=(), duration_s=0.0,
                )
        return self._finish_shutdown(cancel_futures, timeout_s, started)

    def _force_locked(self) -> list[JobHandle]:
        """Cancel everything that has not started; tell running jobs to stop. Lock held.

        Returns:
            The cancelled jobs, whose futures the caller completes once the lock is released.
        """
        self._forced = True
        jobs = self._broker.drain()
        for worker in self._workers.values():
            job = worker.job
            if job is None:
                continue
            if worker.busy_since is None:  # handed over, not started: cancel it like a queued job
                worker.job = None
                self._in_flight -= 1
                jobs.append(job)
            else:
                job._cancel_token("forceful shutdown")
        for job in jobs:
            self._cancel_locked(job)
            self._forced_cancelled.append((job.id, job.name))
        self._settled.notify_all()
        return jobs

    def _finish_shutdown(self, forceful: bool, timeout_s: float | None, started: float) -> ShutdownReport:
        escalated = False
        abandoned: list[JobHandle] = []
        cancelled_late: list[JobHandle] = []
        with self._lock:
            if not forceful:
                deadline = None if timeout_s is None else started + timeout_s
                while self._unfinished_locked() > 0:
                    remaining = None if deadline is None else deadline - self._now()
                    if remaining is not None and remaining <= 0:
                        break
                    self._clock.wait(self._settled, remaining)
                if self._unfinished_locked() > 0:
                    escalated = forceful = True
                    cancelled = self._force_locked()
                    self._deferred_logs.append((logging.WARNING,
                        "graceful shutdown ran out of %gs; cancelling %d queued or scheduled jobs",
                        (timeout_s or 0.0, len(cancelled)),
                    ))
                    self._lock.release()
                    try:
                        for job in cancelled:
                            job._complete(CANCELLED_AND_NOTIFIED, None, None)
                    finally:
                        self._lock.acquire()
            if forceful:
                deadline = self._now() + self._force_wait_s
                while self._in_flight > 0 and self._now() < deadline:
                    self._clock.wait(self._settled, deadline - self._now())
                self._stopped = True  # from here on, nothing replaces an abandoned worker
                cancelled_late = self._force_locked()  # anything handed over since, not yet started
                for worker in list(self._workers.values()):
                    running = worker.job
                    if running is None:
                        continue
                    job = running
                    self._abandon_worker_locked(worker, [])
                    self._cancel_locked(job)
                    self._forced_abandoned.append((job.id, job.name))
                    abandoned.append(job)
            self._stopped = True
            for worker in self._workers.values():
                worker.cond.notify()
            self._timer_cond.notify()
            logs = self._take_logs_locked()
        self._emit_all(logs)
        for job in cancelled_late:
            job._complete(CANCELLED_AND_NOTIFIED, None, None)
        for job in abandoned:
            job._complete(CANCELLED_AND_NOTIFIED, None, None)
            self._emit(logging.WARNING, "abandoned job %d (%s), still running at forceful shutdown", job.id, job.name)
        # Idle workers and the timer exit promptly now; wait for them (never for abandoned threads).
        me = threading.current_thread()  # a done-callback may shut down from a worker or the timer
        with self._lock:
            while (any(w.thread is not me for w in self._workers.values())
                   or (not self._timer_done and self._timer is not me)):
                self._settled.wait(1.0)  # woken by each exiting thread; the bound is only a safety net
            report = ShutdownReport(
                forceful=forceful or self._forced,
                escalated=escalated,
                completed=True,
                cancelled=tuple(self._forced_cancelled),
                abandoned=tuple(self._forced_abandoned),
                duration_s=self._now() - started,
            )
            if self._report is None or not self._report.completed:
                self._report = report
            report = self._report
        _live_dispatchers.discard(self)
        return report

    def _exit(self) -> None:
        """At interpreter exit (like ThreadPoolExecutor): finish what was submitted."""
        snap = self.snapshot(workers=False)
        if snap.unfinished:
            log.warning("interpreter exiting: draining %d unfinished jobs of %r", snap.unfinished, self)
        self.shutdown(wait=True)

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True)

    def __repr__(self) -> str:
        s = self.snapshot(workers=False)
        return (
            f"<Dispatcher {s.state.value} workers={s.workers_total} backlog={s.backlog} "
            f"scheduled={s.scheduled} in_flight={s.in_flight}>"
        )


# ==============================================================================================
# Helpers
# ==============================================================================================
_live_dispatchers: weakref.WeakSet[Dispatcher] = weakref.WeakSet()


def _shutdown_at_exit() -> None:
    """Like ThreadPoolExecutor: at interpreter exit, finish what was submitted."""
    for dispatcher in list(_live_dispatchers):
        try:
            dispatcher._exit()
        except Exception:  # one dispatcher's failure must not keep the others running
            log.exception("interpreter exiting: shutting down %r failed", dispatcher)


# Run before the interpreter stops allowing new threads (3.12+ refuses them in atexit handlers),
# as concurrent.futures.thread does; plain atexit where that hook does not exist.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_shutdown_at_exit)
else:  # pragma: no cover
    atexit.register(_shutdown_at_exit)


def _current_handle() -> JobHandle | None:
    handle: JobHandle | None = getattr(_current, "handle", None)
    return handle


def _no_registry(task: str | None) -> Callable[..., Any]:
    raise ConfigError(f"job names task {task!r} but the dispatcher has no TaskRegistry")


def _name_of(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


def _qualname(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"


def _args_repr(args: tuple[Any, ...], kwargs: Mapping[str, Any] | None) -> str:
    try:
        parts = [_ARGS_REPR.repr(a) for a in args]
        parts += [f"{k}={_ARGS_REPR.repr(v)}" for k, v in (kwargs or {}).items()]
        text = "(" + ", ".join(parts) + ")"
    except Exception as exc:  # a broken __repr__ must not break the worker
        text = f"<unrepresentable arguments: {exc!r}>"
    return text if len(text) <= _ARGS_REPR_MAX else text[: _ARGS_REPR_MAX - 3] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_limits(min_workers: object, max_workers: object) -> None:
    if not _is_int(min_workers) or min_workers < 0:  # type: ignore[operator]
        raise ConfigError(f"min_workers must be an int >= 0; got {min_workers!r}")
    if not _is_int(max_workers) or max_workers < 1:  # type: ignore[operator]
        raise ConfigError(f"max_workers must be an int >= 1; got {max_workers!r}")
    if min_workers > max_workers:  # type: ignore[operator]
        raise ConfigError(f"min_workers ({min_workers}) must not exceed max_workers ({max_workers})")


def _refuse_unknown(unknown: Mapping[str, object]) -> None:
    """Raise ConfigError for options ``Dispatcher`` does not take, with the nearest allowed one."""
    if unknown:
        names = sorted(unknown)
        hints = [difflib.get_close_matches(u, _OPTIONS, n=1) for u in names]
        hint = "".join(f" (did you mean {h[0]!r}?)" for h in hints if h)
        raise ConfigError(
            f"unknown Dispatcher option(s) {', '.join(map(repr, names))}{hint}; allowed: {', '.join(_OPTIONS)}"
        )


def _defaults(
    retry: object, clock: object, rng: object
) -> tuple[RetryPolicy, Clock, random.Random]:
    """The retry policy, clock and rng a dispatcher uses: the defaults for ``None``, checked otherwise."""
    if retry is None:
        retry = RetryPolicy()
    elif not isinstance(retry, RetryPolicy):
        raise ConfigError(f"retry must be a RetryPolicy; got {retry!r}")
    if clock is None:
        clock = RealClock()
    elif not isinstance(clock, Clock):
        raise ConfigError(f"clock must implement engine.Clock (monotonic, time, wait); got {clock!r}")
    if rng is None:
        rng = random.Random()
    elif not isinstance(rng, random.Random):
        raise ConfigError(f"rng must be a random.Random; got {rng!r}")
    return retry, clock, rng


def _check_timeout(name: str, value: object) -> None:
    if value is not None and (not _is_number(value) or value <= 0):  # type: ignore[operator]
        raise ConfigError(f"{name} must be None or a number > 0 (seconds); got {value!r}")

