"""The :class:`~engine.Dispatcher` API on a Redis queue: ``Dispatcher(broker=RedisBroker(url))``.

A dispatcher on Redis is one member of a fleet that shares a queue: what it submits can run in
any worker process on that queue (its own threads included), and its handles complete when the
job ends anywhere. It is built from three parts that also work alone:

* a :class:`~engine.brokers.redis.RedisQueue` client, which submits (with this dispatcher's
  reply list, so the fleet tells it how each job ended), cancels, and reads the DLQ;
* a :class:`~engine.redis_worker.RedisWorker`, this process's own autoscaled pool that runs
  jobs from the queue (none with ``max_workers=0``: a producer only);
* a reply reader thread, which completes handles from the reply list in batches.

What is the same as the in-memory dispatcher: ``submit``, ``submit_job``, ``submit_many``,
``submit_task``, ``map``, the handles (real :class:`concurrent.futures.Future` objects),
``cancel`` before a job starts, retries with ``max_retries`` per job, the DLQ methods,
``snapshot``, ``pause``/``resume``, ``set_limits``, ``join`` and ``shutdown``.

What differs, because the jobs cross process boundaries:

* Jobs are registered tasks: ``submit(fn, ...)`` needs ``fn`` in ``tasks``; arguments and
  results are JSON. A result JSON cannot carry makes the handle raise :class:`TypeError` (the
  job itself succeeded). A job that fails for good makes the handle raise
  :class:`~engine.errors.RemoteJobError`, which carries the remote exception's type, message
  and traceback as text (exceptions are never unpickled).
* The backoff between retries is the executing worker's :class:`RetryPolicy` (base, factor,
  cap, jitter, ``retry_on``); a job carries only its ``max_retries`` and ``timeout_s``. So
  ``submit_job(retry=...)`` is refused: pass ``max_retries``.
* ``snapshot``, ``pause``/``resume``, ``set_limits`` and the DLQ are the whole fleet's.
  ``join`` waits for the jobs this dispatcher submitted (or requeued).
* A handle is QUEUED until its job ends (the fleet does not report starts to producers), and
  ``cancel()`` succeeds while the job waits in Redis, not once a worker has fetched it.
* ``shutdown`` (graceful) waits for this dispatcher's jobs to end anywhere in the fleet, then
  stops this process's pool (running jobs finish, fetched ones go back); forceful, it also
  cancels this dispatcher's jobs still waiting in Redis. A job it submitted that is still
  queued or running elsewhere when it stops stays in Redis and ends there; its handle raises
  :class:`~engine.errors.DispatcherClosed` and the report lists it under ``abandoned``. At
  interpreter exit it does not wait for the fleet, nor cancel: a producer's jobs stay queued.
* Done-callbacks run on a few callback threads of the dispatcher (in memory: on the worker
  that ran the job).
* A requeued job (``dlq_requeue``) reports to the dispatcher that requeued it; each life of a
  job (a submit, each requeue) has its own number, so its outcomes are never confused.
* No ``max_queue`` (Redis is the bound) and no ``rng``-driven jitter outside the local pool.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import random
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures._base import CANCELLED_AND_NOTIFIED, FINISHED
from typing import Any

from engine.brokers.redis import RedisBroker, RedisQueue, _text_field
from engine.clock import Clock, RealClock
from engine.dispatcher import (
    Dispatcher,
    ShutdownReport,
    _check_timeout,
    _defaults,
    _is_number,
    _live_dispatchers,
    _refuse_unknown,
)
from engine.errors import (
    BrokerUnavailable,
    ConfigError,
    DispatcherClosed,
    JobNotFound,
    RemoteJobError,
)
from engine.fleet import FleetView
from engine.jobs import (
    JobHandle,
    JobOptions,
    JobState,
    TaskRegistry,
    _invoke_callback,
)
from engine.metrics import DeadLetter, EngineState, Snapshot
from engine.policy.autoscale import AutoscalePolicy
from engine.policy.backoff import RetryPolicy, backoff_delay
from engine.redis_worker import RedisWorker, current_redis_job

__all__ = ["RedisDispatcher"]

_callback_thread = threading.local()  # .active while a callback thread runs callbacks

log = logging.getLogger("engine.redis")

_EARLY_KEPT = 10_000  # replies that arrived before their submit returned, kept at most
_RECENT_KEPT = 10_000  # ids of completed handles remembered, to drop a reply read twice
_REAL_CLOCK = RealClock()  # join() waits in real seconds, like Future.result
_CALLBACK_THREADS = 4  # threads that run done-callbacks (each handle's on one of them)
_RECONNECT_BASE_S = 0.05
_RECONNECT_CAP_S = 5.0


class RedisDispatcher(Dispatcher):
    """A :class:`~engine.Dispatcher` whose jobs live in a Redis queue shared by a fleet.

    Built by ``Dispatcher(broker=RedisBroker(url), tasks=registry, ...)``; see the module
    docstring for what is the same as in memory and what differs. The arguments are the
    dispatcher's; these mean something particular here:

    Args:
        min_workers: this process's pool's lower bound.
        max_workers: its upper bound; 0 makes a producer that runs nothing itself.
        retry: the backoff this process's pool uses for the jobs it runs, and the default
            ``max_retries`` of the jobs this dispatcher submits.
        tasks: required: the tasks this process can submit by function and can run.
        broker: the :class:`~engine.brokers.redis.RedisBroker`.
        dlq_max: refused here; give it to the broker (the cap is the queue's).
        max_queue: refused (not supported on Redis).

    Raises:
        ConfigError: a bad argument, naming it.
        BrokerUnavailable: Redis does not answer (unreachable, bad credentials...).
    """

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
        broker: Any = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        force_wait_s: float = 1.0,
        name: str = "dispatch",
        logger: logging.Logger | None = None,
        **unknown: object,
    ) -> None:
        # Dispatcher.__init__ is not called: this class shares the API, not the machinery.
        _refuse_unknown(unknown)
        if not isinstance(broker, RedisBroker):
            raise ConfigError(f"broker must be a RedisBroker; got {broker!r}")
        if max_queue is not None:
            raise ConfigError("max_queue is not supported with a RedisBroker (the queue lives in Redis)")
        if dlq_max is not None:
            raise ConfigError("dlq_max is the queue's: pass it to RedisBroker(..., dlq_max=...)")
        if not isinstance(tasks, TaskRegistry):
            raise ConfigError(
                "a Dispatcher on a RedisBroker needs tasks=TaskRegistry(...): only registered tasks cross "
                f"to other processes; got {tasks!r}"
            )
        retry, clock, rng = _defaults(retry, clock, rng)
        _check_timeout("default_timeout_s", default_timeout_s)

        self._retry = retry
        self._default_timeout_s = default_timeout_s
        self._max_queue = None  # Dispatcher.map reads it
        self._tasks = tasks
        self._clock = clock
        self._now = clock.monotonic
        self._rng = rng
        self._reader_rng = random.Random()  # the reply reader's reconnect jitter (never draws from rng)
        self._name = name
        self._log = logger or log
        self._default_options = JobOptions(None, retry, default_timeout_s)
        self._options_cache: dict[tuple[Any, ...], JobOptions] = {}
        self._broker_config = broker
        self._queue: RedisQueue = broker.open(clock)
        try:
            self._queue.ping()  # a URL that cannot be reached fails here, clearly
        except BrokerUnavailable:
            self._queue.close()
            raise
        self.dispatcher_id = f"{uuid.uuid4().hex[:12]}"
        self._reply_to = self._queue.reply_list(self.dispatcher_id)
        self._view = FleetView(self._queue, clock=clock)

        self._lock = threading.Lock()  # guards every field marked (lock)
        self._settled = threading.Condition(self._lock)  # a handle completed, or stopping
        self._pending: dict[tuple[int, int], _RedisHandle] = {}  # (lock) handles waiting, by (id, life)
        self._early: dict[tuple[int, int], list[Any]] = {}  # (lock) replies that came before their handle
        self._recent: dict[tuple[int, int], None] = {}  # (lock) (id, life) of the handles completed last
        self._sending = 0  # (lock) submits and requeues under way (their early replies are kept)
        self._forced = False  # (lock) a forceful shutdown began
        self._escalate = False  # (lock) a forceful shutdown was asked for: a graceful one stops waiting
        self._lives = itertools.count(1)  # (lock) life numbers of requeues; a submit's jobs are life 0
        self._closed = False  # (lock) intake stopped
        self._stopped = False  # (lock) shutdown finished
        self._reader_stop = False  # (lock)
        self._connected = True  # (lock) the reply reader's view
        self._report: ShutdownReport | None = None  # (lock)
        self._shutdown_lock = threading.Lock()  # one shutdown at a time
        self._delivering = 0  # (lock) handles taken from _pending whose futures are being set
        self._callback_pool = ThreadPoolExecutor(max_workers=_CALLBACK_THREADS, thread_name_prefix=f"{name}-callbacks")
        with self._lock:
            self._clock.wait(self._settled, 0)  # register with a fake clock before anyone advances it

        self._worker: RedisWorker | None = None
        try:
            if max_workers is None or max_workers != 0:
                self._worker = RedisWorker(
                    self._queue, tasks, min_workers=min_workers, max_workers=max_workers, autoscale=autoscale,
                    retry=retry, lease_s=broker.lease_s, heartbeat_s=broker.heartbeat_s,
                    heartbeat_ttl_s=broker.heartbeat_ttl_s, prefetch=broker.prefetch, poll_s=broker.poll_s,
                    clock=clock, rng=rng, log_interval_s=log_interval_s, force_wait_s=force_wait_s, name=name,
                )
            elif not isinstance(min_workers, int) or isinstance(min_workers, bool) or min_workers != 0:
                raise ConfigError(
                    f"with max_workers=0 (a producer only), min_workers must be 0; got {min_workers!r}")
        except BaseException:
            self._queue.close()
            raise
        self._reader = threading.Thread(target=self._reader_main, name=f"{name}-replies", daemon=True)
        self._reader.start()
        if self._worker is not None:
            self._worker.start()
        self._started_at = clock.monotonic()
        _live_dispatchers.add(self)

    # ==========================================================================================
    # Submitting
    # ==========================================================================================
    def _task_name(self, fn: Callable[..., Any], what: str) -> str:
        if not callable(fn):
            raise ConfigError(f"{what}: fn must be callable; got {fn!r}")
        name = self._tasks.name_of(fn) if self._tasks is not None else None
        if name is None:
            raise ConfigError(
                f"{what}: {getattr(fn, '__qualname__', fn)!r} is not a registered task; on a RedisBroker only "
                "registered tasks can run (register it with @tasks.task, or use submit_task)"
            )
        return name

    def _send(
        self, task: str, arg_tuples: list[tuple[Any, ...]], kwargs: Mapping[str, Any] | None, options: JobOptions,
    ) -> list[JobHandle]:
        fn = self._tasks.get(task) if self._tasks is not None else None  # raises UnknownTask, naming the known ones
        with self._lock:
            if self._closed:
                raise DispatcherClosed("the dispatcher is shut down and takes no new jobs")
            self._sending += 1
        label = options.name or task
        copied = dict(kwargs) if kwargs else None
        handles: list[JobHandle] = []

        def track(ids: list[int]) -> None:  # after each chunk of 1000, before the next is sent
            at = len(handles)
            chunk = [_RedisHandle(self, job_id, fn, args, copied, label, options, task=task)
                     for job_id, args in zip(ids, arg_tuples[at:at + len(ids)], strict=True)]
            handles.extend(chunk)
            self._track(chunk)

        try:  # submit_many checks every argument (ConfigError, naming it) before it sends anything
            self._queue.submit_many(
                task, arg_tuples, kwargs=kwargs, name=options.name, max_retries=options.retry.max_retries,
                timeout_s=options.timeout_s, reply_to=self._reply_to, life=0, on_chunk=track,
            )
        finally:
            with self._lock:
                self._sending -= 1
        return handles

    def _track(self, handles: list[_RedisHandle]) -> None:
        """Wait for these handles' replies (or take those that came first)."""
        early: list[tuple[_RedisHandle, list[Any]]] = []
        late: list[_RedisHandle] = []
        with self._lock:
            if self._reader_stop:  # a shutdown finished while these were being sent: nobody will listen
                late = handles
            else:
                for handle in handles:
                    key = (handle.id, handle.life)
                    reply = self._early.pop(key, None)
                    if reply is None:
                        self._pending[key] = handle
                    else:
                        self._remember_locked(key)
                        early.append((handle, reply))
                self._delivering += len(early)
        if late:
            self._orphaned(late)
        if early:
            self._deliver([(handle, *self._outcome(handle, reply)) for handle, reply in early])

    def _orphaned(self, handles: list[_RedisHandle]) -> None:
        """Handles sent while a shutdown finished: their jobs are told to send no reply (and
        cancelled, if the shutdown was forceful); the rest end with DispatcherClosed."""
        ids = [h.id for h in handles]
        cancelled: set[int] = set()
        try:
            if self._forced:
                cancelled = set(self._queue.cancel(ids, owner=self._reply_to))
            self._queue.drop_replies(self._reply_to, ids)
        except BrokerUnavailable as exc:
            self._log.warning("could not detach %d jobs sent during shutdown: %s", len(ids), exc)
        for handle in handles:
            if handle.id in cancelled:
                handle._job_state = JobState.CANCELLED
                handle._complete(CANCELLED_AND_NOTIFIED, None, None)
            else:
                handle._complete(FINISHED, None, DispatcherClosed(
                    f"job {handle.id} ({handle.name}) was queued in Redis while this dispatcher shut down; "
                    "it ends there, not in this handle"))

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> JobHandle:
        """Submit ``fn(*args, **kwargs)``; ``fn`` must be a registered task, the arguments JSON.
        Thread-safe.

        Raises:
            ConfigError: ``fn`` is not registered, or an argument is not JSON (naming which).
            DispatcherClosed: after shutdown started.
            BrokerUnavailable: Redis cannot be reached (the job may or may not be queued).
        """
        return self._send(self._task_name(fn, "submit"), [args], kwargs or None, self._default_options)[0]

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
        """Submit one job with per-job options. Thread-safe. ``retry`` is refused (the backoff is
        the executing worker's; pass ``max_retries``); ``block`` and ``block_timeout_s`` are
        accepted and ignored (the queue is unbounded). See :meth:`submit`."""
        if retry is not None:
            raise ConfigError(
                "submit_job(retry=...) is not supported on a RedisBroker: a job carries only max_retries and "
                "timeout_s, and the backoff is the executing worker's RetryPolicy; pass max_retries=..."
            )
        task = self._task_name(fn, "submit_job")
        options = self._options(name, None, max_retries, timeout_s)
        return self._send(task, [tuple(args)], kwargs, options)[0]

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
        """Submit ``fn(*args)`` for each ``args``, in batches of 1000 per round trip. Thread-safe.

        Every argument is checked before anything is sent; each batch of 1000 is atomic.
        """
        if retry is not None:
            raise ConfigError("submit_many(retry=...) is not supported on a RedisBroker; pass max_retries=...")
        task = self._task_name(fn, "submit_many")
        options = self._options(name, None, max_retries, timeout_s)
        return self._send(task, [tuple(args) for args in arg_tuples], None, options)

    def submit_task(self, task: str, /, *args: Any, **kwargs: Any) -> JobHandle:
        """Submit a registered task by name with JSON arguments. Thread-safe.

        Raises:
            UnknownTask: ``task`` is not registered in ``tasks``.
            ConfigError: an argument is not plain JSON.
            DispatcherClosed: after shutdown started.
            BrokerUnavailable: Redis cannot be reached.
        """
        return self._send(task, [args], kwargs or None, self._default_options)[0]

    # ==========================================================================================
    # Replies: how the fleet tells this dispatcher that its jobs ended
    # ==========================================================================================
    def _reader_main(self) -> None:
        failures = 0
        while True:
            with self._lock:
                if self._reader_stop:
                    return
            try:
                texts = self._queue.read_replies(self._reply_to, timeout_s=self._broker_config.poll_s)
                if texts:
                    self._handle_replies(texts)
                    self._queue.trim_replies(self._reply_to, len(texts))
            except BrokerUnavailable as exc:
                failures += 1
                self._note(False, exc)
                self._reader_backoff(failures)
                continue
            except Exception:  # a bug must not stop the reader
                failures += 1
                self._log.exception("dispatcher %s: reading replies failed", self.dispatcher_id)
                self._reader_backoff(failures)
                continue
            failures = 0
            self._note(True, None)

    def _handle_replies(self, texts: list[str]) -> None:
        done: list[tuple[_RedisHandle, list[Any]]] = []
        for text in texts:
            if text == "wake":
                continue
            reply = _parse_reply(text)
            if reply is None:  # anyone who can write to Redis can write here: never crash
                self._log.warning("dispatcher %s: ignored a malformed reply %.80r", self.dispatcher_id, text)
                continue
            key = (reply[0], reply[1])
            with self._lock:
                if key in self._recent:
                    continue  # read twice (a connection dropped before the trim): handled already
                handle = self._pending.pop(key, None)
                if handle is None:  # its submit has not returned yet
                    if len(self._early) >= _EARLY_KEPT and not self._sending:
                        self._early.pop(next(iter(self._early)))
                    self._early[key] = reply
                    continue
                self._remember_locked(key)
                self._delivering += 1
            done.append((handle, reply))
        if done:
            self._deliver([(handle, *self._outcome(handle, reply)) for handle, reply in done])

    def _reader_backoff(self, failures: int) -> None:
        delay = backoff_delay(failures, base_s=_RECONNECT_BASE_S, factor=2.0, cap_s=_RECONNECT_CAP_S,
                              jitter="equal", rng=self._reader_rng)
        with self._lock:
            if not self._reader_stop:
                self._clock.wait(self._settled, delay)

    def _note(self, up: bool, exc: BaseException | None) -> None:
        with self._lock:
            changed = self._connected != up
            self._connected = up
        if changed and up:
            self._log.warning("dispatcher %s: Redis reachable again; reading replies", self.dispatcher_id)
        elif changed:
            self._log.warning("dispatcher %s: Redis unavailable, reconnecting with backoff: %s",
                              self.dispatcher_id, exc)

    def _outcome(self, handle: JobHandle, reply: list[Any]) -> tuple[str, Any, BaseException | None]:
        """What ``handle`` completes with, from its reply ``[id, life, kind, attempts, body]``
        (see :func:`_parse_reply`); sets its job state and attempts. Never raises."""
        _, _, kind, attempts, body = reply
        handle.attempts = attempts
        if kind == "ok":
            handle._job_state = JobState.SUCCEEDED
            return FINISHED, body, None
        if kind == "unencodable":
            handle._job_state = JobState.SUCCEEDED
            return FINISHED, None, TypeError(
                f"job {handle.id} ({handle.name}) succeeded, but {_text_field(body)}; a job on Redis must return JSON")
        if kind == "cancelled":
            handle._job_state = JobState.CANCELLED
            return CANCELLED_AND_NOTIFIED, None, None
        handle._job_state = JobState.DEAD_LETTERED
        if kind == "dead" and isinstance(body, dict):
            return FINISHED, None, RemoteJobError(
                handle.id, _text_field(body.get("exc_type", "?")), _text_field(body.get("exc_message", "")),
                remote_traceback=_text_field(body.get("traceback", "")), attempts=attempts,
                reason=_text_field(body.get("reason", "")),
            )
        return FINISHED, None, RemoteJobError(
            handle.id, "?", f"unreadable reply (kind {_text_field(kind)!r}): {_text_field(body)[:80]}", attempts=attempts,
            reason="the fleet's reply could not be read")

    def _deliver(self, outcomes: list[tuple[_RedisHandle, str, Any, BaseException | None]]) -> None:
        """Complete handles taken from ``_pending`` (each counted in ``_delivering`` and
        remembered in ``_recent`` by whoever took it, under the lock): set each
        future and wake its waiters here, then run done-callbacks on the callback threads, so a
        slow callback holds back neither the reply reader nor other handles. Never raises."""
        later: list[tuple[_RedisHandle, list[Callable[[Any], object]]]] = []
        try:
            for handle, state, result, exc in outcomes:
                callbacks = handle._settle(state, result, exc)
                if callbacks:
                    later.append((handle, callbacks))
        finally:
            with self._lock:
                self._delivering -= len(outcomes)
                self._settled.notify_all()
        for handle, callbacks in later:
            try:
                self._callback_pool.submit(_run_callbacks, handle, callbacks)
            except RuntimeError:  # the pool is shut down (a late delivery during shutdown): run here
                _run_callbacks(handle, callbacks)

    def _remember_locked(self, key: tuple[int, int]) -> None:
        self._recent[key] = None
        if len(self._recent) > _RECENT_KEPT:
            self._recent.pop(next(iter(self._recent)))

    # ==========================================================================================
    # Cancelling
    # ==========================================================================================
    def _cancel_handle(self, job: JobHandle) -> bool:
        if job.done():
            return job.cancelled()
        try:
            done = self._queue.cancel([job.id], owner=self._reply_to)
        except BrokerUnavailable as exc:
            self._log.warning("could not cancel job %d: %s", job.id, exc)
            return False
        if not done:  # leased, finished, or cancelled just now by a shutdown
            return job.cancelled() or job._job_state is JobState.CANCELLED
        self._cancelled([job])  # here, so cancelled() is True on return; the reply is then a repeat
        return True

    def _cancelled(self, jobs: list[JobHandle]) -> None:
        """Complete handles whose jobs were cancelled in Redis: all are marked cancelled (under
        the lock) before any callback runs, as in memory."""
        with self._lock:
            mine = [job for job in jobs if isinstance(job, _RedisHandle)
                    and self._pending.pop((job.id, job.life), None) is not None]
            for job in mine:
                self._remember_locked((job.id, job.life))  # its 'cancelled' reply is then a repeat
            for job in mine:
                job._job_state = JobState.CANCELLED
            self._delivering += len(mine)
        self._deliver([(job, CANCELLED_AND_NOTIFIED, None, None) for job in mine])

    # ==========================================================================================
    # Control and state: the fleet's
    # ==========================================================================================
    def set_limits(self, min_workers: int | None = None, max_workers: int | None = None) -> None:
        """Move every worker process's pool on this queue (this one's included) to these bounds.
        Thread-safe; applied with each process's next heartbeat.

        Raises:
            ConfigError: bad bounds.
            BrokerUnavailable: Redis cannot be reached.
        """
        self._queue.set_limits(min_workers, max_workers)

    @property
    def min_workers(self) -> int:
        """This process's pool's lower bound (0 for a producer)."""
        return self._worker._local.min_workers if self._worker is not None else 0

    @property
    def max_workers(self) -> int:
        """This process's pool's upper bound (0 for a producer)."""
        return self._worker._local.max_workers if self._worker is not None else 0

    def pause(self) -> None:
        """Pause the whole fleet: no process fetches; running jobs finish. Thread-safe.

        Raises:
            DispatcherClosed: this dispatcher is shutting down (its drain cannot be paused).
        """
        with self._lock:
            if self._closed:
                raise DispatcherClosed("the dispatcher is shutting down; a drain cannot be paused")
        self._queue.set_paused(True)

    def resume(self) -> None:
        """Resume the whole fleet. Thread-safe."""
        self._queue.set_paused(False)

    @property
    def paused(self) -> bool:
        """Whether the fleet is paused (one Redis round trip)."""
        return self._queue.control().get("paused") == "1"

    @property
    def state(self) -> EngineState:
        with self._lock:
            if self._stopped:
                return EngineState.STOPPED
            if self._closed:
                return EngineState.DRAINING
        return EngineState.PAUSED if self.paused else EngineState.RUNNING

    def snapshot(self, *, workers: bool = True) -> Snapshot:
        """The whole fleet's snapshot: every process's threads, the queue, the counters.
        Thread-safe; one Redis round trip.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        snap = self._view.snapshot()
        return snap if workers else dataclasses.replace(snap, workers=())

    # ==========================================================================================
    # The dead-letter queue: the fleet's
    # ==========================================================================================
    def dlq_list(self, offset: int = 0, limit: int = 100) -> list[DeadLetter]:
        return self._queue.dlq_list(offset, limit)

    def dlq_get(self, job_id: int) -> DeadLetter:
        return self._queue.dlq_get(job_id)

    def _requeue(self, entries: list[DeadLetter]) -> list[JobHandle]:
        with self._lock:
            if self._closed:
                raise DispatcherClosed("the dispatcher is shut down and takes no requeues")
            life = next(self._lives)  # this requeue's replies are told apart from earlier lives'
            self._sending += 1
        try:
            done = set(self._queue.dlq_requeue_ids([e.job_id for e in entries], reply_to=self._reply_to, life=life))
        finally:
            with self._lock:
                self._sending -= 1
        handles: list[_RedisHandle] = []
        for entry in entries:
            if entry.job_id not in done:
                continue
            fn = None
            if entry.task is not None and self._tasks is not None and entry.task in self._tasks:
                fn = self._tasks.get(entry.task)
            handles.append(_RedisHandle(self, entry.job_id, fn, (), None, entry.name, self._default_options,
                                        task=entry.task, life=life))
        self._track(handles)
        return list(handles)

    def dlq_requeue(self, job_id: int) -> JobHandle:
        """Send one DLQ entry back to the queue with fresh attempts; this dispatcher gets its
        outcome. Thread-safe.

        Raises:
            JobNotFound: no entry with that id.
            DispatcherClosed: after shutdown started.
        """
        handles = self._requeue([self._queue.dlq_get(job_id)])
        if not handles:
            raise JobNotFound(f"no dead-lettered job with id {job_id!r}")
        return handles[0]

    def dlq_requeue_all(self) -> list[JobHandle]:
        """Send every DLQ entry back to the queue, oldest first, with handles. Thread-safe.

        Entries dead-lettered after the call began may stay."""
        entries: list[DeadLetter] = []
        while True:
            page = self._queue.dlq_list(len(entries), 1000)
            entries.extend(page)
            if len(page) < 1000:
                break
        return self._requeue(entries)

    def dlq_delete(self, job_id: int) -> DeadLetter:
        return self._queue.dlq_delete(job_id)

    def dlq_purge(self) -> int:
        return self._queue.dlq_purge()

    # ==========================================================================================
    # Waiting and shutting down
    # ==========================================================================================
    def join(self, timeout_s: float | None = None) -> bool:
        """Wait until every job this dispatcher submitted or requeued has ended. Thread-safe.

        Returns:
            True if they all ended, False on timeout.
        """
        return self._drained(timeout_s, _REAL_CLOCK, stop_on_escalate=False)

    def _drained(self, timeout_s: float | None, clock: Clock, *, stop_on_escalate: bool = True) -> bool:
        """Wait, timing ``timeout_s`` on ``clock``, until no handle is pending or being completed;
        a shutdown (the injected clock) also stops when a forceful one is asked for."""
        with self._lock:
            deadline = None if timeout_s is None else clock.monotonic() + timeout_s
            while self._pending or self._delivering:
                remaining = None if deadline is None else deadline - clock.monotonic()
                if (remaining is not None and remaining <= 0) or (stop_on_escalate and self._escalate):
                    return False
                clock.wait(self._settled, remaining)
            return True

    def shutdown(  # type: ignore[override]
        self, wait: bool = True, *, cancel_futures: bool = False, timeout_s: float | None = None
    ) -> ShutdownReport:
        """Stop this dispatcher and its pool. Thread-safe and idempotent.

        * Graceful (default): stop intake; with ``wait``, wait (up to ``timeout_s``) until this
          dispatcher's jobs have ended anywhere in the fleet, then stop the pool gracefully
          (running jobs finish, fetched ones go back to the queue unspent). When ``timeout_s``
          runs out it escalates to forceful.
        * Forceful (``cancel_futures=True``): stop intake, cancel this dispatcher's jobs still
          waiting in Redis, and stop the pool forcefully (running jobs are told to stop and,
          after ``force_wait_s``, go back to the queue as failed attempts).

        Jobs still queued or running elsewhere at the end stay in Redis; their handles raise
        :class:`DispatcherClosed` and the report lists them as ``abandoned``.
        """
        if timeout_s is not None and (not _is_number(timeout_s) or timeout_s < 0):
            raise ConfigError(f"timeout_s must be None or a number >= 0; got {timeout_s!r}")
        if wait and current_redis_job() is not None and not cancel_futures:
            raise RuntimeError(
                "shutdown(wait=True) from inside a running job would wait for that job itself; "
                "use shutdown(wait=False) there"
            )
        with self._lock:
            if self._report is not None:
                return self._report
            self._closed = True
            if cancel_futures:  # a graceful shutdown under way stops waiting and goes forceful
                self._escalate = True
                self._settled.notify_all()
        if not wait:
            threading.Thread(target=self._shut_down, args=(cancel_futures, timeout_s),
                             name=f"{self._name}-shutdown", daemon=True).start()
            return ShutdownReport(forceful=cancel_futures, escalated=False, completed=False, cancelled=(),
                                  abandoned=(), duration_s=0.0)
        return self._shut_down(cancel_futures, timeout_s)

    def _shut_down(self, forceful: bool, timeout_s: float | None, *, wait_for_jobs: bool = True) -> ShutdownReport:
        with self._shutdown_lock:
            with self._lock:
                if self._report is not None:
                    return self._report
            started = self._clock.monotonic()
            escalated = False
            if wait_for_jobs and not forceful and not self._drained(timeout_s, self._clock):
                escalated = forceful = True
            cancelled: list[JobHandle] = []
            if forceful:
                with self._lock:
                    self._forced = True
                    waiting = list(self._pending.values())
                try:
                    done = set(self._queue.cancel([h.id for h in waiting], owner=self._reply_to))
                except BrokerUnavailable as exc:
                    self._log.warning("shutdown could not cancel queued jobs: %s", exc)
                    done = set()
                cancelled = [h for h in waiting if h.id in done]
                self._cancelled(cancelled)
            if self._worker is not None:
                self._worker.stop(graceful=not forceful)
            with self._lock:
                self._reader_stop = True
                self._settled.notify_all()
            try:
                self._queue.wake_replies(self._reply_to)
            except BrokerUnavailable:
                pass  # the reader returns after at most poll_s, or from its backoff wait
            self._reader.join()
            self._callback_pool.shutdown(wait=not getattr(_callback_thread, "active", False))
            with self._lock:
                left = list(self._pending.values())
                self._pending.clear()
                self._early.clear()
            for handle in left:
                handle._complete(FINISHED, None, DispatcherClosed(
                    f"job {handle.id} ({handle.name}) was still queued or running in Redis when this dispatcher "
                    "shut down; it ends there (see the fleet's counters and DLQ), not in this handle"))
            try:
                self._queue.drop_replies(self._reply_to, [h.id for h in left])
            except BrokerUnavailable:
                pass  # it expires a day after its last reply
            # Idle connections only: snapshot() and the DLQ methods still work after a shutdown,
            # and one under way on another thread is not cut off (the pool closes when collected).
            self._queue.close(idle_only=True)
            report = ShutdownReport(
                forceful=forceful, escalated=escalated, completed=True,
                cancelled=tuple((h.id, h.name) for h in cancelled),
                abandoned=tuple((h.id, h.name) for h in left),
                duration_s=self._clock.monotonic() - started,
            )
            with self._lock:
                self._report = report
                self._stopped = True
                self._settled.notify_all()
            _live_dispatchers.discard(self)
            if escalated:
                self._log.warning("graceful shutdown ran out of %gs; cancelled %d queued jobs",
                                  timeout_s or 0.0, len(cancelled))
            return report

    def _exit(self) -> None:
        """At interpreter exit: stop this process's pool gracefully (running jobs finish, fetched
        ones go back), without waiting for jobs elsewhere in the fleet, and without cancelling
        any: a producer's jobs stay queued for the fleet."""
        with self._lock:
            if self._report is not None:
                return
            self._closed = True
            waiting = len(self._pending)
        if waiting:
            self._log.warning("interpreter exiting: %d jobs of %r stay in Redis for the fleet; their handles are "
                              "closed", waiting, self)
        self._shut_down(False, 0.0, wait_for_jobs=False)

    def __repr__(self) -> str:
        return (f"<RedisDispatcher {self._name!r} on {self._queue.url} queue={self._queue.queue!r} "
                f"id={self.dispatcher_id}>")


def _run_callbacks(handle: JobHandle, callbacks: list[Callable[[Any], object]]) -> None:
    _callback_thread.active = True
    try:
        for fn in callbacks:
            _invoke_callback(fn, handle)
    finally:
        _callback_thread.active = False


class _RedisHandle(JobHandle):
    """A handle of a job on Redis; ``life`` tells its replies from those of the same job's
    earlier lives (before a requeue)."""

    def __init__(self, *args: Any, life: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.life = life


_REPLY_HEAD = re.compile(r"^\[(\d{1,18}),(\d{1,18}),")
_KINDS = ("ok", "unencodable", "dead", "cancelled")


def _parse_reply(text: str) -> list[Any] | None:
    """``[id, life, kind, attempts, body]`` from a reply's text, or ``None`` if not even the id and
    life can be read. A reply whose head is readable but whose rest is not comes back with kind
    "?" (its handle then fails with a RemoteJobError rather than wait forever)."""
    try:
        reply = json.loads(text)
        if (isinstance(reply, list) and len(reply) == 5 and all(type(x) is int and x >= 0 for x in reply[:2])
                and reply[2] in _KINDS and type(reply[3]) is int):
            return reply
    except Exception:  # ValueError, RecursionError...
        pass
    head = _REPLY_HEAD.match(text)
    if head is None:
        return None
    return [int(head.group(1)), int(head.group(2)), "?", 0, text[head.end():]]
