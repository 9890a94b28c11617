"""A worker process's main object: it runs jobs from a Redis queue on a local, autoscaled pool.

Threads
-------
* **The fetcher** leases a batch of jobs whenever local capacity frees up (``max_workers +
  prefetch`` jobs held at most) and submits each one to a local :class:`engine.Dispatcher`,
  whose worker threads run them round-robin. With nothing to fetch it blocks on Redis for a
  wake-up token, at most ``poll_s``, or until the next retry or lease deadline.
* **The local dispatcher's workers** run the tasks. Each attempt's outcome (success, retry with
  backoff, or dead letter) is decided right there and put in the outbox.
* **The flusher** sends the outbox to Redis in batches (one script call per batch). After the
  first outcome it lingers up to 2 ms for more while jobs still run, so short jobs share a
  round trip.
* **The heartbeat** renews the leases of every job this process holds, writes the process's
  heartbeat (host, pid, each thread's busy state) and applies fleet commands (limits, stop).

Retries live in Redis, so the local dispatcher never retries (``max_retries=0``): a job's
retry falls due on whichever worker fetches next, and survives this process.

Redis down: every thread catches :class:`~engine.errors.BrokerUnavailable`, logs the outage
once (and its end), exposes it through :meth:`RedisWorker.status`, and retries with exponential
backoff (:func:`engine.policy.backoff.backoff_delay`). Running jobs keep running; outcomes wait
in the outbox. Nothing crashes and nothing spins.

Stopping: graceful puts back the jobs fetched but not started (without spending an attempt),
finishes the running ones and flushes their outcomes. Forceful also gives up on running jobs
after ``force_wait_s`` and hands them back to the queue as failed attempts.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from engine.brokers.redis import (
    Delivery,
    JobPayload,
    MalformedPayload,
    Outcome,
    RedisQueue,
    check_worker_settings,
    dead_letter_entry,
    decode_payload,
    encode_result,
    socket_timeout_for,
)
from engine.clock import Clock, RealClock
from engine.dispatcher import Dispatcher, _qualname
from engine.errors import (
    BrokerUnavailable,
    ConfigError,
    DispatcherClosed,
    JobNotFound,
    JobTimeout,
    Permanent,
    RetryAfter,
    UnknownTask,
)
from engine.jobs import JobHandle, TaskRegistry, cancel_token
from engine.metrics import Snapshot
from engine.policy.autoscale import AutoscalePolicy
from engine.policy.backoff import RetryPolicy, backoff_delay

__all__ = ["RedisWorker", "WorkerStatus", "StopReport", "RedisJob", "current_redis_job", "socket_timeout_for"]

log = logging.getLogger("engine.redis")

_FLUSH_BATCH = 1000
_FLUSH_SOON = 200  # outcomes that are sent without lingering for more
_FLUSH_LINGER_S = 0.002  # how long the flusher waits for more outcomes while jobs still run
_PREFETCH_WINDOW_S = 0.05  # adaptive prefetch: buffer about this much of the recent throughput
_PREFETCH_MAX = 64  # ... but never more jobs than this
_RATE_SAMPLE_S = 0.05  # the shortest interval over which the completion rate is measured
_RECONNECT_BASE_S = 0.1
_RECONNECT_CAP_S = 5.0
_STILL_DOWN_LOG_S = 30.0


@dataclass(frozen=True, slots=True)
class RedisJob:
    """What a task running in a :class:`RedisWorker` can learn about its job.

    Attributes:
        job_id: the job's id in the queue.
        attempt: this attempt's number across the fleet (1 for the first; a retry on another
            host continues the count).
        max_retries: the job's retry limit.
        name: the job's name.
        task: the task name.
    """

    job_id: int
    attempt: int
    max_retries: int
    name: str
    task: str


_current = threading.local()


def current_redis_job() -> RedisJob | None:
    """The Redis job running on the calling thread, or ``None`` outside one. Thread-safe.

    (:func:`engine.current_job` describes the local attempt, whose number is always 1 because
    retries go through Redis.)
    """
    delivery: _Delivery | None = getattr(_current, "job", None)
    if delivery is None or delivery.job is None:
        return None
    job = delivery.job
    return RedisJob(delivery.job_id, delivery.attempt, job.max_retries, job.name, job.task)


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """How a worker process is doing, for logs and dashboards.

    Attributes:
        worker_id: unique id of this worker process in the fleet (``host:pid:random``).
        process: ``host:pid``.
        state: ``"new"``, ``"running"``, ``"stopping"`` or ``"stopped"``.
        connected: whether the last Redis call succeeded.
        last_error: the last Redis error, or ``""``.
        down_since: wall-clock time the current outage began, or ``None``.
        leased: jobs this process holds a lease on (buffered, running or awaiting flush).
        outbox: outcomes waiting to be sent to Redis.
        settled: outcomes Redis accepted from this process.
        stale: outcomes Redis ignored because the lease had already ended.
    """

    worker_id: str
    process: str
    state: str
    connected: bool
    last_error: str
    down_since: float | None
    leased: int
    outbox: int
    settled: int
    stale: int


@dataclass(frozen=True, slots=True)
class StopReport:
    """What :meth:`RedisWorker.stop` did.

    Attributes:
        graceful: False if the stop was (or became) forceful.
        put_back: fetched-but-unstarted jobs given back without spending an attempt.
        abandoned: running jobs given up on (handed back as failed attempts).
        unflushed: outcomes that could not be sent (Redis stayed down); their leases will
            expire and the jobs run again elsewhere.
        duration_s: how long the stop took (the worker's clock).
    """

    graceful: bool
    put_back: int
    abandoned: int
    unflushed: int
    duration_s: float


class _Delivery:
    """One leased job inside this process. Fields guarded by the worker's lock."""

    __slots__ = ("job_id", "token", "attempt", "enqueued_at", "job", "fn", "handle", "settled", "started")

    def __init__(self, delivery: Delivery, job: JobPayload | None, fn: Callable[..., Any] | None) -> None:
        self.job_id = delivery.job_id
        self.token = delivery.token
        self.attempt = delivery.attempt
        self.enqueued_at = delivery.enqueued_at
        self.job = job
        self.fn = fn
        self.handle: JobHandle | None = None
        self.settled = False  # an outcome has been decided (maybe not yet flushed)
        self.started = False  # _run has begun (set once, by the running thread)


class RedisWorker:
    """Runs jobs from a Redis queue on a local thread pool. One per worker process.

    Args:
        queue: a :class:`RedisQueue`, or a Redis URL to build one from (then owned and closed
            by this worker).
        tasks: the registered tasks this process can run.
        queue_name: the queue's name, when ``queue`` is a URL.
        prefix: the key prefix, when ``queue`` is a URL.
        min_workers: the local pool's lower bound (it starts there).
        max_workers: the local pool's upper bound.
        autoscale: the local pool's :class:`AutoscalePolicy`, True for the default, False for
            a fixed pool of ``min_workers``.
        retry: how failures are retried: backoff (``base_s``, ``factor``, ``cap_s``,
            ``jitter``) and ``retry_on``. Each job's own ``max_retries`` (from its payload)
            decides how many retries it gets.
        lease_s: how long a fetched job stays leased without a heartbeat; a job whose worker
            dies is run again after at most this long.
        heartbeat_s: seconds between heartbeats (lease renewals); below ``lease_s / 2``, and
            ``heartbeat_s + 2 * queue.socket_timeout_s <= lease_s`` (see
            :func:`socket_timeout_for`; a queue built from a URL here gets that timeout).
        heartbeat_ttl_s: how long a silent worker's heartbeat stays visible to dashboards.
        prefetch: jobs fetched beyond ``max_workers``, so threads never wait for a round trip;
            a fixed value is refilled once half of it is free. Default: adaptive, about 50 ms of
            this process's recent completion rate, at least ``2 * max_workers`` and at most 64,
            refilled once a quarter is free (short jobs then travel in batches of dozens; in a
            steady stream of jobs of 25 ms or more it stays ``2 * max_workers``, but right after
            a burst of quick jobs it can hold up to 64 of whatever comes next). Beyond its
            threads and ``2 * max_workers``, a fetch takes at most a fair part of the ready list
            (its length divided by the live worker processes). A buffered job waits for this
            process even if another is idle, and a paused queue gives the buffer back; a fixed,
            low value suits long jobs.
        poll_s: the longest an idle fetcher blocks on Redis before looking again.
        clock: time source; default :class:`RealClock`.
        rng: source of retry jitter; default ``random.Random()``.
        log_interval_s: the local dispatcher's metrics log line interval (0: off).
        force_wait_s: how long a forceful stop waits for running jobs.
        stop_redis_timeout_s: how long a stop keeps trying to reach Redis to put back jobs and
            flush outcomes.
        name: prefix of thread names.
        worker_id: this process's id in the fleet; default ``host:pid:<random>``.

    Raises:
        ConfigError: a bad argument, with what is allowed.
    """

    def __init__(
        self,
        queue: RedisQueue | str,
        tasks: TaskRegistry,
        *,
        queue_name: str = "default",
        prefix: str = "tui-dispatch",
        min_workers: int = 1,
        max_workers: int | None = None,
        autoscale: AutoscalePolicy | bool = True,
        retry: RetryPolicy | None = None,
        lease_s: float = 30.0,
        heartbeat_s: float = 1.0,
        heartbeat_ttl_s: float = 60.0,
        prefetch: int | None = None,
        poll_s: float = 0.5,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        log_interval_s: float = 10.0,
        force_wait_s: float = 1.0,
        stop_redis_timeout_s: float = 10.0,
        name: str = "redis-worker",
        worker_id: str | None = None,
    ) -> None:
        if not isinstance(tasks, TaskRegistry):
            raise ConfigError(f"tasks must be a TaskRegistry; got {tasks!r}")
        check_worker_settings(lease_s=lease_s, heartbeat_s=heartbeat_s, prefetch=prefetch,
                              heartbeat_ttl_s=heartbeat_ttl_s, poll_s=poll_s, stop_redis_timeout_s=stop_redis_timeout_s)
        if isinstance(queue, RedisQueue):
            socket_s = queue.socket_timeout_s
            if heartbeat_s + 2 * socket_s > lease_s:
                raise ConfigError(
                    f"the queue's socket_timeout_s ({socket_s:g}) is too long for lease_s ({lease_s:g}) and "
                    f"heartbeat_s ({heartbeat_s:g}): a heartbeat may wait that long for Redis, twice, and must "
                    f"still renew the lease in time; need heartbeat_s + 2 * socket_timeout_s <= lease_s, e.g. "
                    f"RedisQueue(..., socket_timeout_s={socket_timeout_for(lease_s, heartbeat_s):g})"
                )
        if retry is None:
            retry = RetryPolicy()
        elif not isinstance(retry, RetryPolicy):
            raise ConfigError(f"retry must be a RetryPolicy; got {retry!r}")
        self._clock: Clock = clock if clock is not None else RealClock()
        self._owns_queue = not isinstance(queue, RedisQueue)
        if isinstance(queue, RedisQueue):
            self.queue = queue
        elif isinstance(queue, str):
            self.queue = RedisQueue(queue, queue=queue_name, prefix=prefix, clock=self._clock,
                                    socket_timeout_s=socket_timeout_for(lease_s, heartbeat_s))
        else:
            raise ConfigError(f"queue must be a RedisQueue or a Redis URL; got {queue!r}")
        self._local = Dispatcher(
            min_workers=min_workers,
            max_workers=max_workers,
            retry=RetryPolicy(max_retries=0),
            autoscale=autoscale,
            dlq_max=1000,  # only attempts timed out locally land here, and are deleted at once
            log_interval_s=log_interval_s,
            clock=self._clock,
            force_wait_s=force_wait_s,
            name=name,
        )
        self.tasks = tasks
        self._retry = retry
        self._rng = rng if rng is not None else random.Random()
        self._rng_lock = threading.Lock()  # guards _rng (drawn from worker threads)
        self._lease_s = float(lease_s)
        self._heartbeat_s = float(heartbeat_s)
        self._heartbeat_ttl_s = float(heartbeat_ttl_s)
        self._prefetch_fixed = prefetch  # None: adaptive (see _prefetch_locked)
        self._poll_s = float(poll_s)
        self._stop_redis_timeout_s = float(stop_redis_timeout_s)
        self._name = name
        host = socket.gethostname()
        self.process = f"{host}:{os.getpid()}"
        self.worker_id = worker_id or f"{self.process}:{uuid.uuid4().hex[:6]}"
        self._host = host

        self._lock = threading.Lock()  # guards every field marked (lock)
        self._room = threading.Condition(self._lock)  # local capacity freed, or stopping
        self._outbox_cond = threading.Condition(self._lock)  # outbox gained items, or stopping
        self._tick = threading.Condition(self._lock)  # wakes backoff and heartbeat waits on stop
        self._leased: dict[str, _Delivery] = {}  # (lock) token -> delivery, until its outcome is flushed
        self._by_local: dict[int, _Delivery] = {}  # (lock) local job id -> delivery, while unsettled
        self._held = 0  # (lock) fetched and not yet settled
        self._refill_at = 0  # (lock) wake the waiting fetcher once _held drops to this
        self._taken = 0  # (lock) jobs fetched so far (so _taken - _held have finished)
        self._rate = 0.0  # (lock) recent local completion rate (jobs/s), for the adaptive prefetch
        self._rate_at = 0.0  # (lock) monotonic time of the last rate sample
        self._rate_done = 0  # (lock) _taken - _held at the last rate sample
        self._outbox: list[tuple[_Delivery, Outcome]] = []  # (lock) decided, not yet sent
        self._settled_n = 0  # (lock)
        self._stale_n = 0  # (lock)
        self._state = "new"  # (lock)
        self._fetch_stop = False  # (lock)
        self._flush_stop = False  # (lock) exit once the outbox is empty
        self._flush_abort = False  # (lock) exit now
        self._beat_stop = False  # (lock)
        self._connected = True  # (lock)
        self._last_error = ""  # (lock)
        self._down_since: float | None = None  # (lock)
        self._down_logged_at = 0.0  # (lock)
        self._limits_at = 0.0  # (lock) limits_at of the last fleet limits applied
        self._stop_request: str | None = None  # (lock) "graceful"/"forceful" asked by the fleet
        self._report: StopReport | None = None  # (lock)
        self._stopping = False  # (lock)
        self._forced = False  # (lock)
        self._stopped = threading.Event()
        self.stop_requested = threading.Event()
        """Set when the fleet asked this process to stop (see :meth:`RedisQueue.request_stop`)."""
        self.started_at = self._clock.time()
        self._threads: list[threading.Thread] = []
        with self._lock:
            for cond in (self._room, self._outbox_cond, self._tick):
                self._clock.wait(cond, 0)  # register with a fake clock before anyone advances it

    # ==========================================================================================
    # Life cycle
    # ==========================================================================================
    def start(self) -> RedisWorker:
        """Start the fetcher, flusher and heartbeat threads. Call once, from any thread.

        Returns:
            self, for ``worker = RedisWorker(...).start()``.
        """
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"RedisWorker.start: already {self._state}")
            self._state = "running"
        for target, what in ((self._heartbeat_main, "heartbeat"), (self._flush_main, "flusher"),
                             (self._fetch_main, "fetcher")):
            thread = threading.Thread(target=target, name=f"{self._name}-{what}", daemon=True)
            self._threads.append(thread)
            thread.start()
        log.info("worker %s started on queue %s of %s (%d-%d threads)", self.worker_id, self.queue.queue,
                 self.queue.url, self._local.min_workers, self._local.max_workers)
        return self

    def __enter__(self) -> RedisWorker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop(graceful=True)

    def wait_stop_requested(self, timeout_s: float | None = None) -> str | None:
        """Block until the fleet asks this process to stop. Any thread.

        Returns:
            ``"graceful"`` or ``"forceful"``, or ``None`` on timeout.
        """
        self.stop_requested.wait(timeout_s)
        with self._lock:
            return self._stop_request

    def stop(self, graceful: bool = True, *, timeout_s: float | None = None) -> StopReport:
        """Stop the worker. Thread-safe and idempotent; not from a job or a worker thread.

        Graceful: stop fetching, give back the jobs fetched but not started (no attempt spent),
        let running jobs finish, flush every outcome. With ``timeout_s``, running jobs that
        are still going when it runs out are given up on, as with forceful.
        Forceful (or a second call with ``graceful=False`` while a graceful stop runs): also
        give up on running jobs after ``force_wait_s``; they go back to the queue as failed
        attempts (retried at once, or dead-lettered if out of retries).

        Returns:
            A :class:`StopReport`.
        """
        started = self._clock.monotonic()
        with self._lock:
            first = not self._stopping
            self._stopping = True
            if not graceful:
                self._forced = True
            never_started = self._state == "new"
            if never_started:
                self._state = "stopped"
                self._report = StopReport(True, 0, 0, 0, 0.0)
            elif self._state == "running":
                self._state = "stopping"
            self._fetch_stop = True
            self._room.notify_all()
            self._tick.notify_all()
        if first and self._threads:
            try:
                self.queue.wake_worker(self.worker_id)  # out of its blocking wait at once
            except BrokerUnavailable:
                pass  # it is in a backoff wait, which the notify above ends
        if not first:
            if not graceful:
                self._local.shutdown(wait=False, cancel_futures=True)
            self._stopped.wait()
            assert self._report is not None
            return self._report
        if never_started:
            self._local.shutdown(wait=True)
            if self._owns_queue:
                self.queue.close()
            self._stopped.set()
            assert self._report is not None
            return self._report
        try:
            report = self._stop(graceful, timeout_s, started)
        finally:
            self._stopped.set()
        return report

    def _stop(self, graceful: bool, timeout_s: float | None, started: float) -> StopReport:
        fetcher = self._threads[2]
        fetcher.join()
        # Jobs fetched but not started go back first, so other workers can take them now.
        with self._lock:
            waiting = [d for d in self._leased.values() if not d.settled and d.handle is not None]
        unstarted = [d for d in waiting if d.handle is not None and d.handle.cancel()]
        with self._lock:
            for d in unstarted:
                d.settled = True
                self._held -= 1
                self._forget_locked(d)
        put_back = self._redis_with_retry(
            "put back unstarted jobs", lambda: self.queue.put_back([(d.job_id, d.token) for d in unstarted])
        ) if unstarted else 0
        if unstarted:
            log.info("worker %s put back %d fetched but unstarted jobs", self.worker_id, put_back or 0)
        # Running jobs finish (or are given up on); their outcomes reach the outbox.
        with self._lock:
            forced = self._forced or not graceful
        remaining = None if timeout_s is None else max(0.0, timeout_s - (self._clock.monotonic() - started))
        self._local.shutdown(wait=True, cancel_futures=forced, timeout_s=remaining)
        with self._lock:
            left = [d for d in self._leased.values() if not d.settled]
            for d in left:
                d.settled = True
                self._held -= 1
                self._forget_locked(d)
            # A forceful shutdown also cancels jobs handed to a thread that never started them.
            abandoned = [d for d in left if d.started]
            never_ran = [d for d in left if not d.started]
            forced = forced or self._forced or bool(abandoned)
        if never_ran:
            self._redis_with_retry(
                "put back jobs that never ran",
                lambda: self.queue.put_back([(d.job_id, d.token) for d in never_ran]),
            )
            unstarted.extend(never_ran)
        if abandoned:
            self._redis_with_retry(
                "hand back abandoned jobs",
                lambda: self.queue.put_back([(d.job_id, d.token) for d in abandoned], started=True),
            )
            log.warning("worker %s gave up on %d running jobs; they go back to the queue", self.worker_id,
                        len(abandoned))
        # Flush every outcome, then stop the heartbeat.
        flusher, beat = self._threads[1], self._threads[0]
        with self._lock:
            self._flush_stop = True
            self._outbox_cond.notify_all()
        flusher.join(self._stop_redis_timeout_s)
        with self._lock:
            if flusher.is_alive():
                self._flush_abort = True
                self._outbox_cond.notify_all()
                self._tick.notify_all()
        flusher.join()
        with self._lock:
            unflushed = len(self._outbox)
            self._beat_stop = True
            self._tick.notify_all()
        beat.join()
        if unflushed:
            log.error("worker %s stopped with %d outcomes unsent (Redis unreachable); those jobs will run "
                      "again when their leases expire", self.worker_id, unflushed)
        try:
            self.queue.remove_worker(self.worker_id)
        except BrokerUnavailable as exc:
            log.warning("worker %s could not remove its heartbeat: %s", self.worker_id, exc)
        if self._owns_queue:
            self.queue.close()
        report = StopReport(
            graceful=not forced,
            put_back=len(unstarted),
            abandoned=len(abandoned),
            unflushed=unflushed,
            duration_s=self._clock.monotonic() - started,
        )
        with self._lock:
            self._report = report
            self._state = "stopped"
        log.info("worker %s stopped: %s", self.worker_id, report)
        return report

    def _redis_with_retry(self, what: str, call: Callable[[], int]) -> int | None:
        """Run a Redis call during stop, retrying with backoff for ``stop_redis_timeout_s``."""
        deadline = self._clock.monotonic() + self._stop_redis_timeout_s
        failures = 0
        while True:
            try:
                result = call()
            except BrokerUnavailable as exc:
                failures += 1
                self._note_down(exc)
                if self._clock.monotonic() >= deadline:
                    log.error("worker %s could not %s: %s", self.worker_id, what, exc)
                    return None
                self._backoff_wait(failures, deadline)
                continue
            self._note_up()
            return result

    # ==========================================================================================
    # Status
    # ==========================================================================================
    def status(self) -> WorkerStatus:
        """Connection state and counts. Thread-safe."""
        with self._lock:
            return WorkerStatus(
                worker_id=self.worker_id,
                process=self.process,
                state=self._state,
                connected=self._connected,
                last_error=self._last_error,
                down_since=self._down_since,
                leased=len(self._leased),
                outbox=len(self._outbox),
                settled=self._settled_n,
                stale=self._stale_n,
            )

    @property
    def connected(self) -> bool:
        """Whether the last Redis call succeeded. Thread-safe."""
        return self._connected

    @property
    def last_error(self) -> str:
        """The last Redis error, or ``""``. Thread-safe."""
        return self._last_error

    def snapshot(self) -> Snapshot:
        """The local pool's snapshot (this process only). Thread-safe."""
        return self._local.snapshot()

    def _note_down(self, exc: BaseException) -> None:
        now = self._clock.time()
        with self._lock:
            was_up = self._connected
            self._connected = False
            self._last_error = str(exc)
            if was_up:
                self._down_since = now
                self._down_logged_at = now
            elif now - self._down_logged_at >= _STILL_DOWN_LOG_S:
                self._down_logged_at = now
                was_up = True
            down_for = now - (self._down_since or now)
        if was_up:
            if down_for:
                log.warning("worker %s: Redis still unavailable after %.0fs: %s", self.worker_id, down_for, exc)
            else:
                log.warning("worker %s: Redis unavailable, reconnecting with backoff: %s", self.worker_id, exc)

    def _note_up(self) -> None:
        if self._connected:
            return
        now = self._clock.time()
        with self._lock:
            if self._connected:
                return
            self._connected = True
            down_for = now - (self._down_since or now)
            self._down_since = None
        log.warning("worker %s: Redis reachable again after %.1fs", self.worker_id, down_for)

    def _backoff_wait(self, failures: int, deadline: float | None = None) -> None:
        with self._rng_lock:
            delay = backoff_delay(failures, base_s=_RECONNECT_BASE_S, factor=2.0, cap_s=_RECONNECT_CAP_S,
                                  jitter="equal", rng=self._rng)
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - self._clock.monotonic()))
        with self._lock:
            if not (self._flush_abort or self._beat_stop):
                self._clock.wait(self._tick, delay)

    # ==========================================================================================
    # Fetching
    # ==========================================================================================
    def _fetch_main(self) -> None:
        failures = 0
        unsure = False  # a fetch failed: its reply may be lost with jobs leased to us
        while True:
            with self._lock:
                if self._fetch_stop:
                    return
                # Refill once half the prefetch buffer is free (with no prefetch: once a thread
                # is free), so each round trip fetches a batch rather than one job.
                max_workers = self._local.max_workers
                prefetch = self._prefetch_locked(max_workers)
                capacity = max_workers + prefetch - self._held
                min_batch = max(1, (prefetch + 1) // 2)
                if self._prefetch_fixed is None:  # a large adaptive buffer: refill at a quarter
                    min_batch = max(min(min_batch, max_workers), prefetch // 4)
                if capacity < min_batch:
                    self._refill_at = self._held - (min_batch - capacity)
                    self._clock.wait(self._room, self._poll_s)
                    continue
            try:
                if unsure:
                    with self._lock:
                        known = list(self._leased)
                    recovered = self.queue.recover(self.worker_id, known)
                    unsure = False
                    if recovered:
                        log.warning("worker %s put back %d jobs leased by a fetch whose reply was lost",
                                    self.worker_id, recovered)
                # Beyond its threads and a small buffer, take only a fair part of the queue.
                result = self.queue.fetch(self.worker_id, capacity, lease_s=self._lease_s,
                                          own_share=max(1, 2 * max_workers - self._held),
                                          live_s=3 * self._heartbeat_s + 1.0)
            except BrokerUnavailable as exc:
                failures += 1
                unsure = True
                self._note_down(exc)
                self._backoff_wait(failures)
                continue
            except Exception:  # a bug must not kill the fetcher; back off and try again
                failures += 1
                unsure = True  # the script may have leased jobs we never heard of: recover them
                log.exception("worker %s: fetch failed", self.worker_id)
                self._backoff_wait(failures)
                continue
            failures = 0
            self._note_up()
            if result.reclaimed:
                log.info("worker %s took back %d expired leases", self.worker_id, result.reclaimed)
            if result.missing:
                log.warning("worker %s skipped %d ready ids with no job data", self.worker_id, result.missing)
            if result.deliveries:
                try:
                    self._accept(result.deliveries)
                except Exception:  # a bug: jobs not yet known to this process go back via recover
                    unsure = True
                    log.exception("worker %s could not start %d fetched jobs", self.worker_id,
                                  len(result.deliveries))
            if result.deliveries:
                continue
            if result.paused:
                self._give_back_unstarted("the queue is paused")
            timeout = self._poll_s
            now = self._clock.time()
            if not result.paused:
                for at in (result.next_retry_at, result.next_lease_deadline):
                    if at is not None:
                        timeout = min(timeout, max(0.01, at - now))
                try:
                    self.queue.wait_for_work(timeout, worker_id=self.worker_id)
                except BrokerUnavailable:
                    pass  # the next fetch notices and backs off
            else:
                with self._lock:
                    if not self._fetch_stop:
                        self._clock.wait(self._room, timeout)

    def _give_back_unstarted(self, why: str) -> int:
        """Put jobs fetched but not started back at the front of the queue, unspent. Returns how
        many (the fetcher's thread; stop has its own path)."""
        with self._lock:
            waiting = [d for d in self._leased.values() if not d.settled and not d.started and d.handle is not None]
        cancelled = [d for d in waiting if d.handle is not None and d.handle.cancel()]
        with self._lock:  # the fetcher and the heartbeat may both get here: each job goes back once
            unstarted = [d for d in cancelled if not d.settled]
            for d in unstarted:
                d.settled = True
                self._held -= 1
                self._forget_locked(d)
        if not unstarted:
            return 0
        try:
            back = self.queue.put_back([(d.job_id, d.token) for d in unstarted])
        except BrokerUnavailable:
            back = 0  # their leases expire; they come back then, unspent
        log.info("worker %s gave back %d buffered jobs: %s", self.worker_id, back, why)
        return back

    def _prefetch_locked(self, max_workers: int) -> int:
        """How many jobs to hold beyond the threads: the fixed ``prefetch``, or, by default, about
        ``_PREFETCH_WINDOW_S`` of the recent completion rate, at least ``2 * max_workers`` and
        at most ``_PREFETCH_MAX``. Short jobs are so fetched (and settled) in large batches,
        while a prefetched job still waits in this process for about that window at most."""
        if self._prefetch_fixed is not None:
            return self._prefetch_fixed
        now = self._clock.monotonic()
        elapsed = now - self._rate_at
        done = self._taken - self._held
        if elapsed >= _RATE_SAMPLE_S or (elapsed >= _RATE_SAMPLE_S / 10 and done - self._rate_done >= 64):
            rate = (done - self._rate_done) / elapsed
            # Up at once (a burst of short jobs), down gently (one slow sample is no trend).
            self._rate = rate if rate >= self._rate else (self._rate + rate) / 2
            self._rate_at, self._rate_done = now, done
        return max(2 * max_workers, min(_PREFETCH_MAX, int(self._rate * _PREFETCH_WINDOW_S)))

    def _accept(self, deliveries: list[Delivery]) -> None:
        """Decode fetched jobs and submit them locally (a batch per run of equal options), or
        dead-letter those that cannot run."""
        runnable: list[_Delivery] = []
        rejected: list[tuple[_Delivery, Outcome]] = []
        now = self._clock.time()
        fns: dict[str, Callable[..., Any]] = {}  # this batch's task lookups
        for delivery in deliveries:
            job: JobPayload | None = None
            try:
                job = decode_payload(delivery.payload)
                fn = fns.get(job.task)
                if fn is None:
                    fn = fns[job.task] = self.tasks.get(job.task)
                d = _Delivery(delivery, job, fn)
                runnable.append(d)
                continue
            except UnknownTask as exc:
                exc_type, message = "engine.errors.UnknownTask", str(exc)
                reason = f"not runnable: unknown task {job.task if job else '?'!r} in worker {self.worker_id}"
            except Exception as exc:  # MalformedPayload, or anything else a payload could provoke
                if not isinstance(exc, MalformedPayload):
                    exc = MalformedPayload(f"malformed payload: cannot be decoded ({type(exc).__name__})")
                exc_type, message, reason = "engine.brokers.redis.MalformedPayload", str(exc), f"not runnable: {exc}"
            d = _Delivery(delivery, job, None)
            log.warning("worker %s dead-letters job %d: %s", self.worker_id, d.job_id, reason)
            entry = dead_letter_entry(exc_type=exc_type, exc_message=message, traceback="",
                                      attempts=d.attempt, reason=reason, last_failure_at=now)
            rejected.append((d, Outcome.dead(d.job_id, d.token, entry=entry)))
        with self._lock:
            for d in runnable:
                self._leased[d.token] = d
            for d, _ in rejected:
                self._leased[d.token] = d
            self._held += len(runnable) + len(rejected)
            self._taken += len(runnable) + len(rejected)
        for d, outcome in rejected:
            self._settle(d, outcome)
        start = 0
        while start < len(runnable):  # consecutive jobs with the same name and timeout: one batch
            head = runnable[start].job
            assert head is not None
            end = start + 1
            while end < len(runnable) and (runnable[end].job.name, runnable[end].job.timeout_s) == (  # type: ignore[union-attr]
                    head.name, head.timeout_s):
                end += 1
            self._submit_local(runnable[start:end], head.name, head.timeout_s)
            start = end

    def _submit_local(self, group: list[_Delivery], name: str, timeout_s: float | None) -> None:
        try:
            handles = self._local.submit_many(self._run, [(d,) for d in group], name=name, timeout_s=timeout_s)
        except DispatcherClosed:  # a forceful stop raced with this fetch: give them back untouched
            with self._lock:
                for d in group:
                    d.settled = True
                    self._held -= 1
                    self._forget_locked(d)
            try:
                self.queue.put_back([(d.job_id, d.token) for d in group])
            except BrokerUnavailable:
                pass  # their leases expire
            return
        except Exception as exc:  # a bug: dead-letter them with the reason rather than loop on them
            log.exception("worker %s could not start %d fetched jobs", self.worker_id, len(group))
            now = self._clock.time()
            for d in group:
                entry = dead_letter_entry(
                    exc_type=_qualname(type(exc)), exc_message=_safe_str(exc), traceback="",
                    attempts=d.attempt, reason=f"not runnable: worker {self.worker_id} could not start it",
                    last_failure_at=now)
                self._settle(d, Outcome.dead(d.job_id, d.token, entry=entry))
            return
        with self._lock:
            for d, handle in zip(group, handles, strict=True):
                d.handle = handle
                if not d.settled:
                    self._by_local[handle.id] = d
        if timeout_s is not None:  # only a local timeout ends an attempt without _run seeing it
            for d, handle in zip(group, handles, strict=True):
                handle.add_done_callback(functools.partial(self._on_done, d))

    # ==========================================================================================
    # Running (worker threads of the local dispatcher)
    # ==========================================================================================
    def _run(self, d: _Delivery) -> None:
        """The local job: run the task, decide the outcome, queue it. Never raises."""
        assert d.fn is not None and d.job is not None
        # Only an attempt with a timeout can be given up on while it runs (forceful stops are
        # handled by stop()); asking for the token costs an Event, so only those ask.
        token = cancel_token() if d.job.timeout_s is not None else None
        start_wall = self._clock.time()
        start = self._clock.monotonic()
        wait_s = max(0.0, start_wall - d.enqueued_at)
        d.started = True
        _current.job = d  # current_redis_job() describes it, only if a task asks
        try:
            result = d.fn(*d.job.args, **d.job.kwargs)
        except BaseException as exc:  # a job can never kill its worker
            if token is None or not token.cancelled():
                self._failed(d, exc, run_s=self._clock.monotonic() - start, wait_s=wait_s, timed_out=False)
            return
        finally:
            _current.job = None
        # A cancelled token means the local pool gave up on this attempt (it timed out): the
        # done-callback reports it, whatever the task returned.
        if token is None or not token.cancelled():
            text, kind = encode_result(result)
            self._settle(d, Outcome.ok(d.job_id, d.token, run_s=self._clock.monotonic() - start, wait_s=wait_s,
                                       result=text, result_kind=kind))

    def _on_done(self, d: _Delivery, handle: Future[Any]) -> None:
        """Done-callback of the local handle: catches what ``_run`` cannot see (local timeouts)."""
        if handle.cancelled():
            return  # put back by stop
        exc = handle.exception()
        if exc is None:
            return
        tb: str | None = None
        try:  # the local entry of a timed-out attempt holds the stack of the thread left running
            tb = self._local.dlq_delete(handle.id).traceback  # type: ignore[attr-defined]
        except JobNotFound:
            pass
        self._failed(d, exc, run_s=0.0, wait_s=0.0, timed_out=isinstance(exc, JobTimeout), tb=tb)

    def _failed(
        self, d: _Delivery, exc: BaseException, *, run_s: float, wait_s: float, timed_out: bool, tb: str | None = None
    ) -> None:
        assert d.job is not None
        now = self._clock.time()
        policy = self._retry
        retries_left = d.job.max_retries - (d.attempt - 1)
        if retries_left > 0 and policy.should_retry(exc):
            if isinstance(exc, RetryAfter):
                delay = exc.delay_s
            else:
                with self._rng_lock:
                    delay = policy.delay(d.attempt, self._rng)
            self._settle(d, Outcome.retry(d.job_id, d.token, due_at=now + delay, retry_no=d.attempt,
                                          run_s=run_s, wait_s=wait_s, timed_out=timed_out))
            return
        # The same order as the in-memory dispatcher's (Dispatcher._judge): the job's own verdict
        # first, then the policy's, then the count.
        if isinstance(exc, Permanent):
            reason = "not retryable: raised Permanent"
        elif not isinstance(exc, policy.retry_on):
            reason = f"not retryable: {type(exc).__name__} is not in retry_on"
        else:
            reason = f"retries exhausted ({d.job.max_retries} retries)"
        if tb is None:
            try:
                tb = "".join(traceback.format_exception(exc))
            except Exception as tb_exc:  # a broken __str__ must not break the worker
                tb = f"<traceback unavailable: {tb_exc!r}>"
        entry = dead_letter_entry(exc_type=_qualname(type(exc)), exc_message=_safe_str(exc), traceback=tb,
                                  attempts=d.attempt, reason=reason, last_failure_at=now)
        self._settle(d, Outcome.dead(d.job_id, d.token, entry=entry, run_s=run_s, wait_s=wait_s,
                                     timed_out=timed_out))

    def _settle(self, d: _Delivery, outcome: Outcome) -> None:
        """Queue an attempt's outcome for the flusher; the first outcome of an attempt wins."""
        with self._lock:
            if d.settled:
                return
            d.settled = True
            self._held -= 1
            if d.handle is not None:
                self._by_local.pop(d.handle.id, None)
            self._outbox.append((d, outcome))
            # The flusher waits for a first outcome, then lingers for more (see _flush_main):
            # wake it for the first, for a full batch, or once nothing else is running.
            pending = len(self._outbox)
            if pending == 1 or pending == _FLUSH_SOON or self._held == 0:
                self._outbox_cond.notify()
            if self._held <= self._refill_at:
                self._room.notify()

    def _forget_locked(self, d: _Delivery) -> None:
        self._leased.pop(d.token, None)
        if d.handle is not None:
            self._by_local.pop(d.handle.id, None)
        self._room.notify()

    # ==========================================================================================
    # Flushing
    # ==========================================================================================
    def _flush_main(self) -> None:
        failures = 0
        resend = False  # the last send failed: it may have been applied with its reply lost
        while True:
            with self._lock:
                while not self._outbox and not self._flush_stop and not self._flush_abort:
                    self._clock.wait(self._outbox_cond, None)
                if self._flush_abort or (not self._outbox and self._flush_stop):
                    return
                # Let outcomes of jobs still running gather for a moment, so one round trip
                # carries many (real time: a short coalescing delay, not a timeout).
                linger_until = time.monotonic() + _FLUSH_LINGER_S
                while (len(self._outbox) < _FLUSH_SOON and self._held > 0 and not self._flush_stop
                       and not self._flush_abort):
                    left = linger_until - time.monotonic()
                    if left <= 0:
                        break
                    self._outbox_cond.wait(left)
                if self._flush_abort:
                    return
                batch = self._outbox[:_FLUSH_BATCH]
            try:
                result = self.queue.settle([outcome for _, outcome in batch])
            except BrokerUnavailable as exc:
                failures += 1
                resend = True
                self._note_down(exc)
                self._backoff_wait(failures)
                continue
            except Exception:  # a bug must not kill the flusher
                failures += 1
                log.exception("worker %s: flushing %d outcomes failed", self.worker_id, len(batch))
                self._backoff_wait(failures)
                continue
            failures = 0
            self._note_up()
            with self._lock:
                del self._outbox[: len(batch)]  # only this thread removes, always from the front
                for d, _ in batch:
                    self._leased.pop(d.token, None)
                self._settled_n += result.accepted
                self._stale_n += result.stale
            if result.stale:
                log.log(logging.INFO if resend else logging.WARNING,
                        "worker %s: %d outcomes were not applied because their lease had ended (the lease "
                        "expired and the job was handed out again%s)", self.worker_id, result.stale,
                        ", or an earlier send whose reply was lost had applied them" if resend else "")
            resend = False

    # ==========================================================================================
    # Heartbeat
    # ==========================================================================================
    def _heartbeat_main(self) -> None:
        while True:
            try:
                self._beat()
            except Exception:  # a bug must not stop the heartbeat
                log.exception("worker %s: heartbeat failed", self.worker_id)
            with self._lock:
                deadline = self._clock.monotonic() + self._heartbeat_s
                while not self._beat_stop and self._clock.monotonic() < deadline:
                    self._clock.wait(self._tick, deadline - self._clock.monotonic())
                if self._beat_stop:
                    return

    def _beat(self) -> None:
        with self._lock:
            leases = [(d.job_id, d.token) for d in self._leased.values()]
            started = {d.token for d in self._leased.values() if d.started}
        fields = self._heartbeat_fields()
        try:
            lost = self.queue.extend(leases, lease_s=self._lease_s, started=started) if leases else []
            control = self.queue.heartbeat(self.worker_id, fields, ttl_s=self._heartbeat_ttl_s)
        except BrokerUnavailable as exc:
            self._note_down(exc)
            return
        self._note_up()
        if lost:
            # Outcomes flushed since the lease list was taken are not lost: only count jobs
            # still unsettled here whose lease Redis no longer has.
            lost_ids = set(lost)
            with self._lock:
                lost = [job_id for job_id, token in leases if job_id in lost_ids
                        and token in self._leased and not self._leased[token].settled]
        if lost:
            # Jobs still waiting in the buffer must not start: their lease is gone, so another
            # worker has them (or will). Running ones finish; their outcomes are then ignored.
            lost_ids = set(lost)
            with self._lock:
                gone = [d for d in self._leased.values() if d.job_id in lost_ids and not d.settled]
            cancelled = [d for d in gone if not d.started and d.handle is not None and d.handle.cancel()]
            with self._lock:
                dropped = [d for d in cancelled if not d.settled]
                for d in dropped:
                    d.settled = True
                    self._held -= 1
                    self._forget_locked(d)
            log.warning("worker %s lost the lease of %d jobs (%s); they run again elsewhere%s", self.worker_id,
                        len(lost), ", ".join(map(str, lost[:10])),
                        f" ({len(dropped)} not started here: dropped)" if dropped else "")
        self._apply_control(control)

    def _heartbeat_fields(self) -> dict[str, str]:
        snap = self._local.snapshot()
        now = self._clock.time()
        with self._lock:
            by_local = {local_id: d.job_id for local_id, d in self._by_local.items()}
            state = self._state
            leased, outbox, connected = len(self._leased), len(self._outbox), self._connected
        threads = [
            [w.id, w.state.value, by_local.get(w.job_id) if w.job_id is not None else None, w.job_name,
             w.jobs_done, round(w.utilisation, 4), round(w.busy_for_s, 3)]
            for w in snap.workers
        ]
        events = [[e.at, e.delta, e.workers_after, e.reason] for e in snap.scale_events[-5:]]
        return {
            "id": self.worker_id,
            "host": self._host,
            "pid": str(os.getpid()),
            "process": self.process,
            "state": state,
            "started_at": repr(self.started_at),
            "last_seen": repr(now),
            "heartbeat_s": repr(self._heartbeat_s),
            "connected": "1" if connected else "0",
            "threads": json.dumps(threads, separators=(",", ":")),
            "min_workers": str(snap.min_workers),
            "max_workers": str(snap.max_workers),
            "utilisation": repr(round(snap.utilisation, 4)),
            "stuck": str(snap.stuck_threads),
            "leased": str(leased),
            "outbox": str(outbox),
            "scale_ups": str(snap.counters.scale_ups),
            "scale_downs": str(snap.counters.scale_downs),
            "scale_events": json.dumps(events, separators=(",", ":")),
        }

    def _apply_control(self, control: dict[str, str]) -> None:
        limits_at = _float(control.get("limits_at"))
        if limits_at is not None and limits_at >= self.started_at and limits_at != self._limits_at:
            self._limits_at = limits_at
            low, high = _int(control.get("min_workers")), _int(control.get("max_workers"))
            current_low, current_high = self._local.min_workers, self._local.max_workers
            low = current_low if low is None else low
            high = current_high if high is None else high
            if high < low:  # one bound given alone: the other follows it
                if control.get("max_workers") is None:
                    high = low
                else:
                    low = high
            try:
                self._local.set_limits(min_workers=low, max_workers=high)
                log.info("worker %s: fleet set pool limits to %d-%d", self.worker_id, low, high)
            except ConfigError as exc:
                log.warning("worker %s ignored fleet limits: %s", self.worker_id, exc)
        if control.get("paused") == "1":  # running jobs finish; buffered ones go back (within a heartbeat)
            self._give_back_unstarted("the queue is paused")
        stop = control.get("stop", "")
        mode, _, at = stop.partition(":")
        at_s = _float(at)
        if mode in ("graceful", "forceful") and at_s is not None and at_s >= self.started_at:
            with self._lock:
                if self._stop_request is None or mode == "forceful":
                    self._stop_request = mode
            if not self.stop_requested.is_set():
                log.warning("worker %s: the fleet asked for a %s stop", self.worker_id, mode)
            self.stop_requested.set()


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not break the worker
        return "<unprintable exception>"


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None
