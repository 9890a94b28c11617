"""The Redis broker: one named queue in a shared Redis, for workers on many hosts.

This is the only engine module that imports :mod:`redis`. It keeps the same three structures as
the in-memory broker (backlog, retry schedule, DLQ) in Redis, plus what a fleet needs: leases,
counters and worker heartbeats. Unlike :class:`~engine.brokers.base.Broker`, which the
dispatcher calls under its lock and which must never block, a :class:`RedisQueue` does network
I/O: it is driven by a worker process's own threads (:class:`engine.redis_worker.RedisWorker`),
in batches, outside any engine lock.

Layout, under the key base ``<prefix>:{<queue>}:`` (the braces keep one queue in one hash slot):

* ``ready`` (LIST of job ids), ``processing`` (ZSET id -> lease deadline), ``scheduled`` (ZSET
  id -> retry due time), ``dlq`` (ZSET id -> dead-letter order): every job is in exactly one;
* ``job:<id>`` (HASH): the JSON payload, attempts, lease token, failure times, DLQ entry;
* ``stats`` (HASH): fleet-wide counters, updated by the same scripts that move the jobs;
* ``workers`` (ZSET) and ``worker:<id>`` (HASH with a TTL): heartbeats; ``control`` (HASH):
  pause and pool limits for the whole fleet; ``wake`` (LIST): tokens that wake idle fetchers.

Every state change is one Lua script (``engine/brokers/redis_*.lua``), so no job is ever in no
structure and the counters always agree with the structures. Scripts never read the clock: the
caller passes ``now`` from its injected :class:`~engine.clock.Clock` (wall-clock seconds, so
hosts need synchronised clocks; leases and retries tolerate a skew far below ``lease_s``).

Requirements and operation:

* **Redis >= 6.2** (the fetch script uses ``LPOP key count``).
* Set ``maxmemory-policy noeviction``: an evicting policy can silently drop a job's hash or a
  structure, and with it the "every job is in exactly one structure" guarantee.
* For jobs to survive a Redis restart, enable ``appendonly yes`` (AOF; ``appendfsync
  everysec`` loses at most about a second). Without persistence a restart empties the queue.
* Clocks: leases, retry due times and heartbeats use each host's wall clock, so hosts must be
  synchronised (NTP); skew must stay well below ``lease_s / 2``.
* Redis away for longer than a lease: a silence of the whole fleet (no fetch and no lease
  renewal for over ``lease_s / 2``) reads as an outage, and every lease is pushed back by the
  silence beyond that before anything is reclaimed, so live workers keep their running jobs
  (see ``touch`` in ``redis_lib.lua``); a dead worker's lease still ends, at most ``lease_s /
  2`` later than it would have. A worker cut off alone, while others reach Redis, is
  indistinguishable from a dead one: its jobs run again elsewhere and its outcomes are ignored.

Jobs are registered task names with JSON arguments, never pickles: whoever can write to Redis
can make a worker run a registered task, nothing else.

Delivery is at least once: a job whose lease ends without an outcome (its worker died) goes back
to the queue. If a heartbeat had reported it running, that lost attempt counts against the
job's retries (a job that keeps killing its worker ends in the DLQ instead of looping); if not,
it was most likely only prefetched and goes back without spending an attempt (at most 3 times). An outcome reported under a lease that has
since ended is ignored, so each job is counted as succeeded or dead-lettered exactly once.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal
from urllib.parse import unquote_plus

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from engine.brokers.base import SharedBroker
from engine.clock import Clock, RealClock
from engine.errors import BrokerUnavailable, ConfigError, EngineError, JobNotFound
from engine.jobs import TaskRegistry, check_json_args
from engine.metrics import DeadLetter

__all__ = [
    "RedisBroker",
    "RedisQueue",
    "JobPayload",
    "Delivery",
    "FetchResult",
    "Outcome",
    "SettleResult",
    "FleetState",
    "MalformedPayload",
    "LeaseExpired",
    "encode_payload",
    "decode_payload",
    "check_worker_settings",
    "socket_timeout_for",
    "dead_letter_entry",
    "encode_result",
    "redact_url",
]

_NAME = re.compile(r"^[A-Za-z0-9_.\-:]{1,100}$")
_TASK_NAME = TaskRegistry._NAME
_SCHEMES = ("redis", "rediss", "unix")
_CHUNK = 1000  # jobs per enqueue script call
_SCAN = 1000  # most retries promoted / leases reclaimed per fetch
_DLQ_CHUNK = 1000  # DLQ entries requeued / purged per script call
_ARGS_REPR = reprlib.Repr()
_ARGS_REPR.maxstring = 80
_ARGS_REPR.maxother = 80
_ARGS_REPR.maxlevel = 3
_ARGS_REPR_MAX = 200


class MalformedPayload(EngineError, ValueError):
    """A job's payload in Redis is not what a producer writes (bad JSON or bad fields)."""


class LeaseExpired(EngineError):
    """The ``exc_type`` of DLQ entries whose last attempt lost its lease (its worker vanished)."""


# ================================================================================================
# Payloads: what a producer writes and a worker reads
# ================================================================================================
@dataclass(frozen=True, slots=True)
class JobPayload:
    """A job as stored in Redis: a registered task name and JSON arguments.

    Attributes:
        task: the registered task name.
        args: positional arguments (JSON values).
        kwargs: keyword arguments (JSON values).
        name: the label shown in metrics and the DLQ (default: the task name).
        max_retries: retries after the first attempt.
        timeout_s: per-attempt timeout, or ``None``.
    """

    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    name: str
    max_retries: int
    timeout_s: float | None


def encode_payload(
    task: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    max_retries: int = 3,
    timeout_s: float | None = None,
) -> str:
    """The JSON text of one job. Thread-safe (pure).

    The format is ``{"task", "name", "max_retries", "timeout_s", "a": [args, kwargs]}``, so a
    producer in any language can enqueue jobs.

    Raises:
        ConfigError: a bad task name or option, or an argument that is not plain JSON.
    """
    if not isinstance(task, str) or not _TASK_NAME.match(task):
        raise ConfigError(
            "task must be 1-200 characters of letters, digits, '_', '.', ':' or '-', "
            f"starting with a letter or '_'; got {task!r}"
        )
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"name must be a str; got {name!r}")
    _check_max_retries(max_retries)
    _check_timeout(timeout_s)
    encoded = check_json_args(task, args, kwargs)
    return (
        f'{{"task":{json.dumps(task)},"name":{json.dumps(name or task)},'
        f'"max_retries":{max_retries},"timeout_s":{json.dumps(timeout_s)},"a":{encoded}}}'
    )


def decode_payload(text: str) -> JobPayload:
    """Parse and check a job's payload. Thread-safe (pure).

    Never raises anything but :class:`MalformedPayload`, whatever ``text`` holds: bytes that
    were not UTF-8 (passed in as lone surrogates, see :meth:`RedisQueue.fetch`), JSON nested
    too deeply for the parser, numbers too big for a float...

    Raises:
        MalformedPayload: with a one-line reason naming what is wrong.
    """
    try:
        return _decode_payload(text)
    except MalformedPayload:
        raise
    except Exception as exc:  # RecursionError, OverflowError, MemoryError-free surprises...
        raise MalformedPayload(f"malformed payload: cannot be decoded ({type(exc).__name__})") from None


_MAX_NESTING = 128  # producers refuse arguments nested deeper than 100 levels (check_json_args)
_raw_decode = json.JSONDecoder().raw_decode  # what json.loads runs, minus its checks
_MISSING = object()


def _nesting(obj: object) -> int:
    """How deeply lists and objects nest in decoded JSON, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, depth)
            if depth <= _MAX_NESTING:
                stack.extend((item, depth + 1) for item in value if isinstance(item, (list, dict)))
    return deepest


def _decode_payload(text: str) -> JobPayload:
    if not isinstance(text, str):
        raise MalformedPayload(f"malformed payload: expected JSON text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedPayload(
            f"malformed payload: not valid UTF-8: {_clean(text[:80])!r}") from None
    try:
        try:  # the common case, without json.loads' checks: one JSON value and nothing else
            obj, end = _raw_decode(text)
            whole = end == len(text)
        except ValueError:
            whole = False
        if not whole:  # surrounding whitespace, extra data, not JSON: json.loads decides and says why
            obj = json.loads(text)
    except RecursionError:
        raise MalformedPayload("malformed payload: JSON nested too deeply") from None
    except (TypeError, ValueError) as exc:
        raise MalformedPayload(f"malformed payload: not JSON ({exc}): {text[:80]!r}") from None
    if not isinstance(obj, dict):
        raise MalformedPayload(f"malformed payload: expected a JSON object, got {type(obj).__name__}")
    # The same limit on every Python, whatever its parser's own. Each level of nesting needs an
    # opening bracket in the text, so only a text with more than the limit needs the walk.
    if text.count("[") + text.count("{") > _MAX_NESTING and _nesting(obj) > _MAX_NESTING:
        raise MalformedPayload("malformed payload: JSON nested too deeply")
    task = obj.get("task")
    if not isinstance(task, str) or not _TASK_NAME.match(task):
        raise MalformedPayload(f"malformed payload: 'task' must be a task name, got {_short(task)}")
    a = obj.get("a", _MISSING)
    if a is _MISSING:
        a = [[], {}]
    if not (isinstance(a, list) and len(a) == 2 and isinstance(a[0], list) and isinstance(a[1], dict)):
        raise MalformedPayload(f"malformed payload: 'a' must be [args list, kwargs object], got {_short(a)}")
    name = obj.get("name", task)
    if not isinstance(name, str):
        raise MalformedPayload(f"malformed payload: 'name' must be a string, got {_short(name)}")
    max_retries = obj.get("max_retries", 0)
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise MalformedPayload(f"malformed payload: 'max_retries' must be an int >= 0, got {_short(max_retries)}")
    timeout_s = obj.get("timeout_s")
    if timeout_s is not None:
        try:
            timeout = float(timeout_s) if isinstance(timeout_s, (int, float)) and not isinstance(timeout_s, bool) \
                else math.nan
        except OverflowError:  # an int beyond a float's range
            timeout = math.inf
        if not 0 < timeout < math.inf:
            raise MalformedPayload(
                f"malformed payload: 'timeout_s' must be null or a number > 0, got {_short(timeout_s)}")
    return JobPayload(task, tuple(a[0]), a[1], name, max_retries,
                      None if timeout_s is None else float(timeout_s))


def _short(value: object) -> str:
    """A bounded repr for error messages (reprlib: safe on deep nesting and huge ints)."""
    return _ARGS_REPR.repr(value)[:80]


def _clean(text: str) -> str:
    """``text`` as printable Unicode: bytes that were not UTF-8 (lone surrogates) become U+FFFD."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that does not stand for a byte (from a JSON escape)
        return text.encode("utf-8", "replace").decode("utf-8")


def dead_letter_entry(
    *, exc_type: str, exc_message: str, traceback: str, attempts: int, reason: str, last_failure_at: float
) -> str:
    """The JSON text a worker stores as a job's DLQ entry. Thread-safe (pure).

    Name, task and arguments are not repeated: they are read from the job's payload.
    """
    return json.dumps(
        {"exc_type": exc_type, "exc_message": exc_message, "traceback": traceback,
         "attempts": attempts, "reason": reason, "last_failure_at": last_failure_at},
        separators=(",", ":"),
    )


RESULT_MAX_CHARS = 1 << 20  # the largest result a reply carries (JSON characters)


def encode_result(value: Any) -> tuple[str, Literal["ok", "unencodable"]]:
    """A job's return value as reply text: ``(json_text, "ok")``, or, when JSON cannot carry it,
    ``(json_string_saying_why, "unencodable")``. Thread-safe (pure); never raises."""
    if value is None:
        return "null", "ok"
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
        if len(text) > RESULT_MAX_CHARS:  # one huge result must not make a settle batch Redis refuses
            return json.dumps(f"the result ({type(value).__qualname__}) is {len(text):,} characters of JSON, "
                              f"over the {RESULT_MAX_CHARS:,} a reply may carry; store it elsewhere and "
                              "return a reference"), "unencodable"
        return text, "ok"
    except Exception as exc:  # TypeError, ValueError, RecursionError, or whatever a dict subclass raises
        try:
            detail = _short(str(exc))
        except Exception:
            detail = type(exc).__name__
        why = f"the result ({type(value).__qualname__}) is not JSON-serialisable: {detail}"
        return json.dumps(why), "unencodable"


# ================================================================================================
# What the scripts return
# ================================================================================================
@dataclass(frozen=True, slots=True)
class Delivery:
    """One fetched job, leased to the fetching worker.

    Attributes:
        job_id: the job's id.
        token: the lease token; outcomes and lease renewals must quote it.
        attempt: the number of this attempt (1 for the first).
        payload: the payload text, not yet decoded (see :func:`decode_payload`).
        enqueued_at: wall-clock time it last became ready.
    """

    job_id: int
    token: str
    attempt: int
    payload: str
    enqueued_at: float


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What one :meth:`RedisQueue.fetch` did.

    Attributes:
        deliveries: the jobs fetched, oldest first.
        next_retry_at: the earliest retry due time still scheduled, or ``None``.
        next_lease_deadline: the earliest lease deadline of any worker, or ``None``.
        promoted: retries that fell due and were moved to the ready list.
        reclaimed: expired leases taken back (requeued or dead-lettered).
        missing: ids on the ready list without job data (skipped; only if keys were tampered with).
        paused: whether the queue is paused (nothing was fetched).
    """

    deliveries: list[Delivery]
    next_retry_at: float | None
    next_lease_deadline: float | None
    promoted: int
    reclaimed: int
    missing: int
    paused: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one attempt, to report with :meth:`RedisQueue.settle`.

    Build one with :meth:`ok`, :meth:`retry` or :meth:`dead`.
    """

    kind: Literal["ok", "retry", "dead"]
    job_id: int
    token: str
    run_s: float = 0.0
    wait_s: float = 0.0
    due_at: float = 0.0
    retry_no: int = 0
    entry: str = ""
    timed_out: bool = False

    result: str = "null"
    result_kind: Literal["ok", "unencodable"] = "ok"

    def __post_init__(self) -> None:
        if self.result_kind not in ("ok", "unencodable"):
            raise ConfigError(f"result_kind must be 'ok' or 'unencodable'; got {self.result_kind!r}")

    @classmethod
    def ok(
        cls, job_id: int, token: str, *, run_s: float = 0.0, wait_s: float = 0.0, result: str = "null",
        result_kind: Literal["ok", "unencodable"] = "ok",
    ) -> Outcome:
        """The attempt succeeded. ``result`` is the return value's JSON text (see
        :func:`encode_result`), sent to the submitting dispatcher if one waits."""
        return cls("ok", job_id, token, run_s, wait_s, result=result, result_kind=result_kind)

    @classmethod
    def retry(
        cls, job_id: int, token: str, *, due_at: float, retry_no: int,
        run_s: float = 0.0, wait_s: float = 0.0, timed_out: bool = False,
    ) -> Outcome:
        """The attempt failed; retry number ``retry_no`` is due at wall-clock time ``due_at``."""
        return cls("retry", job_id, token, run_s, wait_s, due_at=due_at, retry_no=retry_no, timed_out=timed_out)

    @classmethod
    def dead(
        cls, job_id: int, token: str, *, entry: str, run_s: float = 0.0, wait_s: float = 0.0,
        timed_out: bool = False,
    ) -> Outcome:
        """The job failed for good; ``entry`` comes from :func:`dead_letter_entry`."""
        return cls("dead", job_id, token, run_s, wait_s, entry=entry, timed_out=timed_out)

    def _fields(self) -> tuple[str, ...]:
        x1: str
        x2: str
        if self.kind == "ok":
            x1, x2 = self.result, self.result_kind
        else:
            x1, x2 = (repr(self.due_at) if self.kind == "retry" else self.entry), str(self.retry_no)
        return (self.kind, str(self.job_id), self.token, repr(self.run_s), repr(self.wait_s),
                x1, x2, "1" if self.timed_out else "0")


@dataclass(frozen=True, slots=True)
class SettleResult:
    """How many outcomes were recorded, and how many were stale (their lease had ended)."""

    accepted: int
    stale: int


@dataclass(frozen=True, slots=True)
class FleetState:
    """The raw, consistent picture that :class:`engine.fleet.FleetView` turns into a snapshot.

    Read by one script, so the counters and the four depths agree with each other.

    Attributes:
        taken_at: wall-clock time of the read (the caller's clock).
        counters: the ``stats`` hash (``submitted``, ``succeeded``, ``retry:<n>``...).
        backlog: ids on the ready list.
        in_flight: leased jobs.
        scheduled: jobs waiting for a retry.
        dlq_size: DLQ entries.
        oldest_enqueued_at: when the job at the head of the ready list became ready.
        next_retries: ``(job_id, due_at, name, attempts_so_far)``, soonest first.
        run_samples: recent attempt run times (s), newest first.
        wait_samples: recent enqueue-to-start times (s), newest first.
        control: the ``control`` hash.
        workers: every live heartbeat hash.
    """

    taken_at: float
    counters: dict[str, int]
    backlog: int
    in_flight: int
    scheduled: int
    dlq_size: int
    oldest_enqueued_at: float | None
    next_retries: list[tuple[int, float, str, int]]
    run_samples: list[float]
    wait_samples: list[float]
    control: dict[str, str]
    workers: list[dict[str, str]] = field(default_factory=list)


# ================================================================================================
# The queue client
# ================================================================================================
def redact_url(url: str) -> str:
    """``url`` with every password replaced by ``***``, for messages and labels. Thread-safe.

    Works by position, not by parsing (a password may hold ``/``, ``#``, ``?`` or ``@``
    unencoded, which defeats URL parsers): everything between ``://`` and the last ``@`` is
    user info, of which only a user name before the first ``:`` is kept; and the value of
    every ``password=`` query parameter (``redis://host/0?password=...``) is masked.
    """
    text = str(url)
    scheme_end = text.find("://")
    start = 0 if scheme_end < 0 else scheme_end + 3
    at = text.rfind("@", start)
    if at >= 0:
        user, colon, _ = text[start:at].partition(":")
        text = text[:start] + (f"{user}:***" if colon else "***") + text[at:]
    query = text.find("?", start)
    if query >= 0:
        text = text[:query] + _QUERY_PARAM.sub(_mask_password, text[query:])
    return text


_QUERY_PARAM = re.compile(r"([?&;])([^=&;]*)=([^&;]*)")


def _mask_password(match: re.Match[str]) -> str:
    if unquote_plus(match.group(2)).strip().lower() == "password":
        return f"{match.group(1)}{match.group(2)}=***"
    return match.group(0)


def _load_scripts() -> dict[str, str]:
    base = resources.files("engine.brokers")
    lib = base.joinpath("redis_lib.lua").read_text(encoding="utf-8")
    names = ("enqueue", "fetch", "settle", "extend", "putback", "recover", "dlq", "read", "cancel", "forget")
    return {name: lib + base.joinpath(f"redis_{name}.lua").read_text(encoding="utf-8") for name in names}


_SCRIPTS: dict[str, str] | None = None
_SCRIPTS_LOCK = threading.Lock()


def _scripts() -> dict[str, str]:
    global _SCRIPTS
    with _SCRIPTS_LOCK:
        if _SCRIPTS is None:
            _SCRIPTS = _load_scripts()
        return _SCRIPTS


class RedisQueue:
    """A client for one named job queue in Redis. Thread-safe: every method may be called from
    any thread (redis-py's connection pool gives each call its own connection).

    Producers use :meth:`submit` / :meth:`submit_many`; workers use :meth:`fetch`,
    :meth:`settle`, :meth:`extend` and :meth:`put_back` (through
    :class:`engine.redis_worker.RedisWorker`); dashboards use :meth:`fleet_state` and the DLQ
    methods. Every network failure raises :class:`~engine.errors.BrokerUnavailable`, quickly
    (short socket timeouts, no hidden retries: a script that may have run is never re-sent
    behind the caller's back).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS, or
            ``unix:///path.sock``.
        queue: the queue's name; several queues can share one Redis.
        prefix: the first part of every key, so several applications can share one Redis.
        clock: the time source for ``now`` (wall-clock); default :class:`RealClock`.
        tasks: if given, :meth:`submit` rejects task names it does not hold, at once.
        max_retries: the default retries of submitted jobs.
        timeout_s: the default per-attempt timeout of submitted jobs (``None``: none).
        dlq_max: the most DLQ entries kept (oldest evicted beyond); ``None`` for no cap.
        connect_timeout_s: TCP connect timeout.
        socket_timeout_s: read/write timeout of every command.

    Raises:
        ConfigError: a bad argument, with what is allowed.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        queue: str = "default",
        prefix: str = "tui-dispatch",
        clock: Clock | None = None,
        tasks: TaskRegistry | None = None,
        max_retries: int = 3,
        timeout_s: float | None = None,
        dlq_max: int | None = None,
        connect_timeout_s: float = 2.0,
        socket_timeout_s: float = 5.0,
    ) -> None:
        if not isinstance(url, str) or url.partition("://")[0].lower() not in _SCHEMES or "://" not in url:
            raise ConfigError(
                f"url must start with redis://, rediss:// (TLS) or unix://; got {redact_url(str(url))!r}"
            )
        for what, name in (("queue", queue), ("prefix", prefix)):
            if not isinstance(name, str) or not _NAME.match(name):
                raise ConfigError(
                    f"{what} must be 1-100 characters of letters, digits, '_', '.', '-' or ':'; got {name!r}"
                )
        if tasks is not None and not isinstance(tasks, TaskRegistry):
            raise ConfigError(f"tasks must be a TaskRegistry or None; got {tasks!r}")
        _check_max_retries(max_retries)
        _check_timeout(timeout_s)
        if dlq_max is not None and (not isinstance(dlq_max, int) or isinstance(dlq_max, bool) or dlq_max < 1):
            raise ConfigError(f"dlq_max must be None or an int >= 1; got {dlq_max!r}")
        for what, value in (("connect_timeout_s", connect_timeout_s), ("socket_timeout_s", socket_timeout_s)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ConfigError(f"{what} must be a number > 0; got {value!r}")
        self.url = redact_url(url)
        self.queue = queue
        self.prefix = prefix
        self.base = f"{prefix}:{{{queue}}}:"
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.dlq_max = dlq_max
        self.socket_timeout_s = float(socket_timeout_s)
        self._clock: Clock = clock if clock is not None else RealClock()
        self._tasks = tasks
        try:
            self._redis: redis.Redis = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_connect_timeout=connect_timeout_s,
                socket_timeout=socket_timeout_s,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=30,
            )
        except Exception:  # ValueError mostly; any parse failure is a bad URL
            # redis-py's message may quote part of the password (as a port, say): never show it.
            raise ConfigError(
                f"url {self.url!r} is not a valid Redis URL; expected "
                "redis://[[user]:password@]host[:port][/db] (percent-encode '/', '#', '?' and '@' in a password)"
            ) from None
        scripts = _scripts()
        self._s = {name: self._redis.register_script(text) for name, text in scripts.items()}

    # -- plumbing --------------------------------------------------------------------------------
    def _now(self) -> float:
        return self._clock.time()

    def _run(self, script: str, args: Sequence[Any]) -> Any:
        try:
            return self._s[script](keys=(), args=(self.base, *args))
        except redis.exceptions.RedisError as exc:
            raise self._unavailable(exc) from exc

    def _run_raw(self, script: str, args: Sequence[Any]) -> Any:
        """Run a script whose reply holds stored text (payloads, DLQ entries, heartbeats), with
        every bulk string decoded here as UTF-8 with ``surrogateescape``: bytes that are not
        UTF-8 (anyone who can write to Redis can store them) reach the caller as lone
        surrogates, to be refused or cleaned per value, instead of failing the whole reply
        in redis-py's decoder (``decode_responses``)."""
        s = self._s[script]
        argv = (self.base, *args)
        try:
            try:
                reply = self._redis.execute_command(  # type: ignore[no-untyped-call]
                    "EVALSHA", s.sha, 0, *argv, NEVER_DECODE=True)
            except redis.exceptions.NoScriptError:  # not run: safe to load and send again
                s.sha = self._redis.script_load(s.script)
                reply = self._redis.execute_command(  # type: ignore[no-untyped-call]
                    "EVALSHA", s.sha, 0, *argv, NEVER_DECODE=True)
        except redis.exceptions.RedisError as exc:
            raise self._unavailable(exc) from exc
        return _decode_reply(reply)

    def _unavailable(self, exc: BaseException) -> BrokerUnavailable:
        if isinstance(exc, redis.exceptions.AuthenticationError):
            return BrokerUnavailable(f"Redis at {self.url} refused the credentials: {exc}")
        if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            return BrokerUnavailable(f"Redis at {self.url} is unavailable: {exc}")
        return BrokerUnavailable(f"Redis at {self.url} failed a command: {type(exc).__name__}: {exc}")

    def _blocking_timeout(self, timeout_s: float) -> float:
        """``timeout_s`` for a blocking command, shortened so the server's answer after it still
        arrives within the socket timeout."""
        return max(0.01, min(float(timeout_s), self.socket_timeout_s - min(0.5, self.socket_timeout_s / 2)))

    def ping(self) -> None:
        """Check that Redis answers. Thread-safe.

        Raises:
            BrokerUnavailable: it does not (unreachable, refused credentials, timed out...).
        """
        try:
            self._redis.ping()
        except redis.exceptions.RedisError as exc:
            raise self._unavailable(exc) from exc

    def close(self, *, idle_only: bool = False) -> None:
        """Close the connection pool. Thread-safe; the queue must not be used afterwards.

        With ``idle_only``, close only the connections no call is using: the queue stays
        usable (a later call connects again), and a call under way on another thread is not
        cut off.
        """
        if idle_only:
            self._redis.connection_pool.disconnect(inuse_connections=False)
        else:
            self._redis.close()

    def __repr__(self) -> str:
        return f"RedisQueue({self.url!r}, queue={self.queue!r}, prefix={self.prefix!r})"

    # -- producing -------------------------------------------------------------------------------
    def submit(self, task: str, /, *args: Any, **kwargs: Any) -> int:
        """Enqueue one job: ``task(*args, **kwargs)`` with JSON arguments. Thread-safe.

        Returns:
            The job's id.

        Raises:
            UnknownTask: ``tasks`` was given and does not hold ``task``.
            ConfigError: an argument is not plain JSON (naming which), or a bad task name.
            BrokerUnavailable: Redis cannot be reached. The job may or may not have been
                enqueued (the reply was lost); nothing is retried behind your back.
        """
        return self.submit_job(task, args, kwargs)

    def submit_job(
        self,
        task: str,
        /,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        max_retries: int | None = None,
        timeout_s: float | None = None,
    ) -> int:
        """Enqueue one job with per-job options. Thread-safe. See :meth:`submit`.

        Args:
            task: the registered task name.
            args: JSON positional arguments.
            kwargs: JSON keyword arguments.
            name: a label for metrics and the DLQ (default: the task name).
            max_retries: retries after the first attempt (default: the queue's).
            timeout_s: per-attempt timeout (default: the queue's).
        """
        return self.submit_many(task, [tuple(args)], kwargs=kwargs, name=name, max_retries=max_retries,
                                timeout_s=timeout_s)[0]

    def submit_many(
        self,
        task: str,
        arg_tuples: Iterable[Iterable[Any]],
        /,
        *,
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        max_retries: int | None = None,
        timeout_s: float | None = None,
        reply_to: str | None = None,
        life: int = 0,
        on_chunk: Callable[[list[int]], None] | None = None,
    ) -> list[int]:
        """Enqueue ``task(*args, **kwargs)`` for each ``args`` in ``arg_tuples``. Thread-safe.

        Every payload is checked before anything is sent. Jobs go in chunks of 1000 per script
        call; each chunk is atomic and gets consecutive ids.

        ``reply_to`` names a reply list (see :meth:`reply_list`) that is told how each job
        ended: the result of a success, the DLQ entry of a dead letter, a cancel. ``life`` is
        echoed in those replies, and ``on_chunk(ids)`` is called after each chunk is in Redis
        (before the next is sent). The Redis :class:`~engine.Dispatcher` uses the three to
        complete its handles.

        Returns:
            The jobs' ids, in order.

        Raises:
            UnknownTask, ConfigError, BrokerUnavailable: as :meth:`submit`. After a
            BrokerUnavailable, earlier chunks may have been enqueued.
        """
        if self._tasks is not None:
            self._tasks.get(task)  # raises UnknownTask, naming the registered ones
        retries = self.max_retries if max_retries is None else max_retries
        timeout = self.timeout_s if timeout_s is None else timeout_s
        payloads = [
            encode_payload(task, tuple(args), kwargs, name=name, max_retries=retries, timeout_s=timeout)
            for args in arg_tuples
        ]
        ids: list[int] = []
        now = repr(self._now())
        for start in range(0, len(payloads), _CHUNK):
            chunk = payloads[start:start + _CHUNK]
            first = int(self._run("enqueue", (now, retries, reply_to or "", life, *chunk)))
            chunk_ids = list(range(first, first + len(chunk)))
            ids.extend(chunk_ids)
            if on_chunk is not None:
                on_chunk(chunk_ids)
        return ids

    # -- working ---------------------------------------------------------------------------------
    def fetch(
        self, worker_id: str, count: int, *, lease_s: float, own_share: int | None = None, live_s: float = 5.0,
    ) -> FetchResult:
        """Lease up to ``count`` ready jobs to ``worker_id``, in one round trip. Thread-safe.

        First moves retries that fell due to the ready list and takes back expired leases, so
        the fleet needs no separate scheduler. Nothing is fetched while the queue is paused
        (:meth:`set_paused`), but that housekeeping still happens. ``count`` may be 0.

        Args:
            worker_id: who takes the leases (shown in DLQ entries of lost leases).
            count: the most jobs to take.
            lease_s: seconds until the leases expire unless renewed with :meth:`extend`.
            own_share: with it, take more than this only up to a fair part of the ready list
                (its length / the workers whose heartbeat is younger than ``live_s``).

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        now = self._now()
        # A payload that is not UTF-8 reaches decode_payload as lone surrogates, which it refuses
        # (MalformedPayload): one bad job never fails the whole batch's reply.
        reply = json.loads(self._run_raw("fetch", (repr(now), int(count), repr(now + lease_s), worker_id,
                                                   self.dlq_max or 0, _SCAN,
                                                   "" if own_share is None else int(own_share), repr(live_s))))
        jobs = reply[6] if isinstance(reply[6], list) else []  # Lua's cjson writes [] as {}
        return FetchResult(
            deliveries=[Delivery(int(i), str(t), int(a), str(p), _float_or(e, now) or now) for i, t, a, p, e in jobs],
            next_retry_at=float(reply[0]) if reply[0] != "" else None,
            next_lease_deadline=float(reply[1]) if reply[1] != "" else None,
            promoted=int(reply[2]),
            reclaimed=int(reply[3]),
            missing=int(reply[4]),
            paused=reply[5] == 1,
        )

    def wait_for_work(self, timeout_s: float, *, worker_id: str | None = None) -> bool:
        """Block up to ``timeout_s`` real seconds for a wake-up token (new work was enqueued, or
        :meth:`wake_worker` was called for ``worker_id``).

        A token may be spurious or taken by another worker: callers fetch again either way.
        Thread-safe.

        Returns:
            Whether a token arrived.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        timeout_s = self._blocking_timeout(timeout_s)
        keys = [self.base + "wake"]
        if worker_id is not None:
            keys.append(self.base + "wake:" + worker_id)
        try:
            return self._redis.blpop(keys, timeout=timeout_s) is not None
        except redis.exceptions.RedisError as exc:
            raise self._unavailable(exc) from exc

    def wake_worker(self, worker_id: str) -> None:
        """Wake ``worker_id``'s fetcher from :meth:`wait_for_work` (used when it stops).
        Thread-safe.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        key = self.base + "wake:" + worker_id
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.lpush(key, "1")
            pipe.expire(key, 60)
            pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise self._unavailable(exc) from exc

    def settle(self, outcomes: Sequence[Outcome]) -> SettleResult:
        """Record a batch of outcomes in one round trip. Thread-safe.

        Outcomes whose lease has ended (the job was reclaimed and handed to someone else) are
        ignored and counted as stale: the other run reports instead.

        Raises:
            BrokerUnavailable: Redis cannot be reached; nothing or everything was recorded
                (the batch is one script), and sending it again is safe (stale outcomes are
                ignored).
        """
        if not outcomes:
            return SettleResult(0, 0)
        batch = json.dumps([outcome._fields() for outcome in outcomes], separators=(",", ":"))
        accepted, stale = self._run("settle", (repr(self._now()), str(self.dlq_max or 0), batch))
        return SettleResult(int(accepted), int(stale))

    def extend(
        self, leases: Iterable[tuple[int, str]], *, lease_s: float, started: Collection[str] = ()
    ) -> list[int]:
        """Renew leases for another ``lease_s`` seconds (the heartbeat). Thread-safe.

        Args:
            leases: ``(job_id, token)`` pairs.
            lease_s: the new lease length.
            started: tokens of jobs that have started running. A lease that expires before its
                job was reported started does not cost an attempt (the job was most likely only
                prefetched), at most 3 times per job.

        Returns:
            The ids whose lease the caller no longer holds (it expired and was taken back).

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        now = self._now()
        argv: list[Any] = [repr(now), repr(now + lease_s)]
        for job_id, token in leases:
            argv.extend((job_id, token, "1" if token in started else "0"))
        if len(argv) == 2:
            return []
        return [int(job_id) for job_id in self._run("extend", argv)]

    def put_back(self, leases: Iterable[tuple[int, str]], *, started: bool = False) -> int:
        """Give leased jobs back. Thread-safe.

        Args:
            leases: ``(job_id, token)`` pairs.
            started: False for jobs fetched but never started (a graceful stop): they go back to
                the front of the queue, in order, and the attempt is not spent. True for running
                jobs given up on (a forceful stop): the attempt counts as failed, as if the
                lease had expired, so they are retried at once or dead-lettered.

        Returns:
            How many were given back (leases already lost are skipped).

        Raises:
            BrokerUnavailable: Redis cannot be reached; the leases will expire by themselves.
        """
        argv: list[Any] = [repr(self._now()), "abandoned" if started else "unstarted", self.dlq_max or 0]
        for job_id, token in leases:
            argv.extend((job_id, token))
        if len(argv) == 3:
            return 0
        return int(self._run("putback", argv))

    def recover(self, worker_id: str, known_tokens: Iterable[str]) -> int:
        """Give back the jobs leased to ``worker_id`` whose tokens it does not know. Thread-safe.

        A fetch whose reply was lost (the connection dropped after Redis ran it) leaves jobs
        leased to a worker that never heard of them. Call this after such a failure, before the
        next fetch, with every token the worker holds: the others go back to the front of the
        queue without spending an attempt, instead of waiting for their leases to expire.
        Costs one pass over the leased jobs of the whole queue.

        Returns:
            How many jobs were given back.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        return int(self._run("recover", (worker_id, *known_tokens)))

    # -- heartbeats and fleet control -------------------------------------------------------------
    def heartbeat(self, worker_id: str, fields: Mapping[str, str], *, ttl_s: float) -> dict[str, str]:
        """Write a worker's heartbeat and read the fleet's control settings. Thread-safe.

        The heartbeat hash expires after ``ttl_s`` unless renewed; dashboards show how long
        ago each worker was last seen.

        Returns:
            The ``control`` hash: ``paused`` ("1"), ``min_workers``, ``max_workers`` and
            ``limits_at`` (see :meth:`set_limits`), ``stop`` (see :meth:`request_stop`).

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        key = self.base + "worker:" + worker_id
        now = self._now()
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(key)
            pipe.hset(key, mapping=dict[Any, Any](fields))
            pipe.expire(key, max(1, math.ceil(ttl_s)))
            pipe.zadd(self.base + "workers", {worker_id: now})
            pipe.zremrangebyscore(self.base + "workers", "-inf", now - max(ttl_s, 3600.0))
            pipe.hgetall(self.base + "control")
            control: dict[str, str] = pipe.execute()[-1]
        except redis.exceptions.RedisError as exc:
            raise self._unavailable(exc) from exc
        return control

    def remove_worker(self, worker_id: str) -> None:
        """Delete a worker's heartbeat (on a clean stop). Thread-safe.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(self.base + "worker:" + worker_id)
            pipe.zrem(self.base + "workers", worker_id)
            pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise self._unavailable(exc) from exc

    def control(self) -> dict[str, str]:
        """The fleet's control settings. Thread-safe.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        try:
            result: dict[str, str] = self._redis.hgetall(self.base + "control")  # type: ignore[assignment]
        except redis.exceptions.RedisError as exc:
            raise self._unavailable(exc) from exc
        return result

    def _set_control(self, values: Mapping[str, str | None]) -> None:
        key = self.base + "control"
        try:
            pipe = self._redis.pipeline(transaction=True)
            for name, value in values.items():
                if value is None:
                    pipe.hdel(key, name)
                else:
                    pipe.hset(key, name, value)
            pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise self._unavailable(exc) from exc

    def set_paused(self, paused: bool) -> None:
        """Pause the whole fleet (no worker fetches; running jobs finish), or resume it.
        Thread-safe.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        self._set_control({"paused": "1" if paused else None})

    def set_limits(self, min_workers: int | None = None, max_workers: int | None = None) -> None:
        """Ask every running worker process to move its pool to these bounds. Thread-safe.

        Workers apply it with their next heartbeat; ``None`` keeps a process's own bound.
        Workers started later keep their own settings.

        Raises:
            ConfigError: bad or inconsistent bounds.
            BrokerUnavailable: Redis cannot be reached.
        """
        for what, value in (("min_workers", min_workers), ("max_workers", max_workers)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"{what} must be None or an int >= 0; got {value!r}")
        if max_workers is not None and max_workers < 1:
            raise ConfigError(f"max_workers must be >= 1; got {max_workers!r}")
        if min_workers is not None and max_workers is not None and min_workers > max_workers:
            raise ConfigError(f"min_workers ({min_workers}) must not exceed max_workers ({max_workers})")
        self._set_control({
            "min_workers": None if min_workers is None else str(min_workers),
            "max_workers": None if max_workers is None else str(max_workers),
            "limits_at": repr(self._now()),
        })

    def request_stop(self, graceful: bool = True) -> None:
        """Ask every running worker process to stop (they see it with their next heartbeat).
        Thread-safe.

        Workers started after the request ignore it.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        self._set_control({"stop": f"{'graceful' if graceful else 'forceful'}:{self._now()!r}"})

    # -- reading ---------------------------------------------------------------------------------
    def fleet_state(self, *, next_retries: int = 10) -> FleetState:
        """Counters, depths, latencies, heartbeats and control, read atomically. Thread-safe.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        now = self._now()
        (stats, backlog, in_flight, scheduled, dlq_size, oldest, soon, runs, waits, control,
         workers) = self._run_raw("read", ("fleet", next_retries))
        counters = {k: _int_or(v, 0) for k, v in _pairs(stats)}
        upcoming: list[tuple[int, float, str, int]] = []
        for i in range(0, len(soon), 4):
            upcoming.append((int(soon[i]), float(soon[i + 1]), _payload_name(soon[i + 2]),
                             _int_or(soon[i + 3], 0)))
        return FleetState(
            taken_at=now,
            counters=counters,
            backlog=int(backlog),
            in_flight=int(in_flight),
            scheduled=int(scheduled),
            dlq_size=int(dlq_size),
            oldest_enqueued_at=_float_or(oldest, None),
            next_retries=upcoming,
            run_samples=[x for x in (_float_or(v, None) for v in runs) if x is not None],
            wait_samples=[x for x in (_float_or(v, None) for v in waits) if x is not None],
            control=dict(_pairs(control)),
            workers=[dict(_pairs(w)) for w in workers],
        )

    def counters(self) -> dict[str, int]:
        """The fleet-wide counters (``submitted``, ``succeeded``, ``failed``...). Thread-safe.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        try:
            raw: dict[str, str] = self._redis.hgetall(self.base + "stats")  # type: ignore[assignment]
        except redis.exceptions.RedisError as exc:
            raise self._unavailable(exc) from exc
        return {k: int(v) for k, v in raw.items()}

    # -- the DLQ ---------------------------------------------------------------------------------
    def dlq_len(self) -> int:
        """Entries in the DLQ. Thread-safe. Raises :class:`BrokerUnavailable`."""
        try:
            return int(self._redis.zcard(self.base + "dlq"))
        except redis.exceptions.RedisError as exc:
            raise self._unavailable(exc) from exc

    def dlq_list(self, offset: int = 0, limit: int = 100) -> list[DeadLetter]:
        """DLQ entries ``offset .. offset+limit``, oldest first. Thread-safe.

        Raises:
            ConfigError: a negative offset or a limit below 1.
            BrokerUnavailable: Redis cannot be reached.
        """
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise ConfigError(f"offset must be an int >= 0; got {offset!r}")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ConfigError(f"limit must be an int >= 1; got {limit!r}")
        return _dead_letters(self._run_raw("read", ("dlq", offset, limit)))

    def dlq_get(self, job_id: int) -> DeadLetter:
        """One DLQ entry. Thread-safe.

        Raises:
            JobNotFound: no entry with that id.
            BrokerUnavailable: Redis cannot be reached.
        """
        found = _dead_letters(self._run_raw("read", ("dlq_ids", int(job_id))))
        if not found:
            raise JobNotFound(f"no dead-lettered job with id {job_id!r}")
        return found[0]

    def dlq_requeue(self, job_id: int, *, reply_to: str | None = None, life: int = 0) -> int:
        """Send one DLQ entry back to the ready list with fresh attempts; it keeps its id.
        Thread-safe. Its outcome goes to ``reply_to`` if given (see :meth:`submit_many`).

        Returns:
            The job's id.

        Raises:
            JobNotFound: no entry with that id.
            BrokerUnavailable: Redis cannot be reached.
        """
        done = self._run("dlq", (repr(self._now()), "requeue", reply_to or "", life, int(job_id)))
        if not done:
            raise JobNotFound(f"no dead-lettered job with id {job_id!r}")
        return int(done[0])

    def dlq_requeue_ids(self, job_ids: Iterable[int], *, reply_to: str | None = None, life: int = 0) -> list[int]:
        """Send these DLQ entries back to the ready list (ids not in the DLQ are skipped), in
        chunks of 1000 per script call. Thread-safe. See :meth:`dlq_requeue`.

        Returns:
            The ids requeued.

        Raises:
            BrokerUnavailable: Redis cannot be reached; earlier chunks may have been requeued.
        """
        ids = [int(i) for i in job_ids]
        done: list[int] = []
        for start in range(0, len(ids), _DLQ_CHUNK):
            chunk = ids[start:start + _DLQ_CHUNK]
            done.extend(int(i) for i in self._run("dlq", (repr(self._now()), "requeue", reply_to or "", life, *chunk)))
        return done

    def dlq_requeue_all(self, *, reply_to: str | None = None, life: int = 0) -> list[int]:
        """Send every DLQ entry back to the ready list, oldest first. Thread-safe. Their
        outcomes go to ``reply_to`` if given (see :meth:`submit_many`).

        Works in chunks of 1000 entries (one atomic script call each), so a huge DLQ never
        blocks Redis for long; entries dead-lettered after the call began are left alone.

        Returns:
            The requeued ids.

        Raises:
            BrokerUnavailable: Redis cannot be reached; earlier chunks may have been requeued.
        """
        return self._dlq_chunked("requeue", reply_to or "", life)

    def dlq_delete(self, job_id: int) -> DeadLetter:
        """Remove one DLQ entry for good, returning it. Thread-safe.

        Raises:
            JobNotFound: no entry with that id.
            BrokerUnavailable: Redis cannot be reached.
        """
        entry = self.dlq_get(job_id)
        if not self._run("dlq", (repr(self._now()), "delete", "", 0, int(job_id))):
            raise JobNotFound(f"no dead-lettered job with id {job_id!r}")
        return entry

    def dlq_purge(self) -> int:
        """Remove every DLQ entry; returns how many. Thread-safe.

        In chunks, as :meth:`dlq_requeue_all`; entries dead-lettered after the call began stay.

        Raises:
            BrokerUnavailable: Redis cannot be reached; earlier chunks may have been removed.
        """
        return len(self._dlq_chunked("delete", "", 0))

    def _dlq_chunked(self, command: str, reply_to: str, life: int) -> list[int]:
        try:
            newest = self._redis.zrange(self.base + "dlq", -1, -1, withscores=True)
        except redis.exceptions.RedisError as exc:
            raise self._unavailable(exc) from exc
        if not newest:
            return []
        upto = repr(float(newest[0][1]))  # DLQ scores are a sequence: later entries score higher
        done: list[int] = []
        while True:
            chunk = self._run("dlq", (repr(self._now()), command, reply_to, life, "upto", upto, _DLQ_CHUNK))
            done.extend(int(i) for i in chunk)
            if len(chunk) < _DLQ_CHUNK:
                return done

    # -- cancelling and replies ------------------------------------------------------------------
    def cancel(self, job_ids: Iterable[int], *, owner: str | None = None) -> list[int]:
        """Cancel jobs that have not started: those waiting in the ready list or for a retry
        are deleted and counted as cancelled, and a dispatcher waiting for one is told (its
        handle ends cancelled). Jobs leased to a worker, dead-lettered or finished are left
        alone. With ``owner`` (a reply list), only jobs whose outcomes go there are touched.
        Thread-safe.

        Returns:
            The ids cancelled.

        Raises:
            BrokerUnavailable: Redis cannot be reached (the jobs may or may not be cancelled).
        """
        ids = [int(i) for i in job_ids]
        done: list[int] = []
        for start in range(0, len(ids), _CHUNK):
            done.extend(int(i) for i in self._run("cancel", (owner or "", *ids[start:start + _CHUNK])))
        return done

    def reply_list(self, owner: str) -> str:
        """The key of ``owner``'s reply list (``owner``: letters, digits, '_', '.', '-', ':')."""
        if not isinstance(owner, str) or not _NAME.match(owner):
            raise ConfigError(f"owner must be 1-100 characters of letters, digits, '_', '.', '-' or ':'; got {owner!r}")
        return f"{self.base}reply:{owner}"

    def read_replies(self, reply_to: str, *, timeout_s: float, count: int = 1000) -> list[str]:
        """Read (without removing) up to ``count`` replies from the head of a reply list,
        waiting up to ``timeout_s`` for one (less if the socket timeout is shorter). Thread-safe; one reader per list, which removes
        what it has handled with :meth:`trim_replies` (so a reply is not lost with a
        connection that drops mid-read; it may be read twice instead).

        Returns:
            The replies' texts, oldest first (empty on timeout); bytes that are not UTF-8
            become U+FFFD. Each should be ``[id, life, kind, attempts, body]``: kind ``"ok"``
            with the result's JSON, ``"unencodable"`` with a message (the result was not JSON),
            ``"dead"`` with the DLQ entry, or ``"cancelled"``; but anyone who can write to
            Redis can write here.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        timeout_s = self._blocking_timeout(timeout_s)
        try:
            head = self._redis.execute_command(  # type: ignore[no-untyped-call]
                "LRANGE", reply_to, 0, count - 1, NEVER_DECODE=True)
            if not head:
                # Block until one arrives; moving the head to the tail of the same list leaves
                # it in place (the order of replies does not matter), so nothing is popped.
                if self._redis.execute_command(  # type: ignore[no-untyped-call]
                        "BLMOVE", reply_to, reply_to, "LEFT", "RIGHT", timeout_s, NEVER_DECODE=True) is None:
                    return []
                head = self._redis.execute_command(  # type: ignore[no-untyped-call]
                    "LRANGE", reply_to, 0, count - 1, NEVER_DECODE=True)
        except redis.exceptions.RedisError as exc:
            raise self._unavailable(exc) from exc
        return [bytes(raw).decode("utf-8", "replace") for raw in head or ()]

    def trim_replies(self, reply_to: str, handled: int) -> None:
        """Remove the ``handled`` replies at the head of a reply list (see :meth:`read_replies`)."""
        try:
            self._redis.ltrim(reply_to, handled, -1)
        except redis.exceptions.RedisError as exc:
            raise self._unavailable(exc) from exc

    def wake_replies(self, reply_to: str) -> None:
        """Wake the reader blocked in :meth:`read_replies` (it reads the reply ``"wake"``)."""
        try:
            self._redis.lpush(reply_to, "wake")
        except redis.exceptions.RedisError as exc:
            raise self._unavailable(exc) from exc

    def drop_replies(self, reply_to: str, job_ids: Iterable[int] = ()) -> None:
        """Delete a reply list (its reader is going away), after telling ``job_ids`` (its
        reader's jobs still queued or running) to send it no reply; a job whose replies now go
        to another list (requeued by another dispatcher) is left alone. Thread-safe."""
        ids = [int(i) for i in job_ids]
        for start in range(0, max(1, len(ids)), _CHUNK):
            self._run("forget", (reply_to, *ids[start:start + _CHUNK]))

    # -- administration --------------------------------------------------------------------------
    def clear(self) -> int:
        """Delete every key of this queue (jobs, counters, heartbeats). Thread-safe.

        Returns:
            How many keys were deleted.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        deleted = 0
        try:
            batch: list[str] = []
            for key in self._redis.scan_iter(match=_glob_escape(self.base) + "*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += int(self._redis.delete(*batch))
                    batch.clear()
            if batch:
                deleted += int(self._redis.delete(*batch))
        except redis.exceptions.RedisError as exc:
            raise self._unavailable(exc) from exc
        return deleted


def socket_timeout_for(lease_s: float, heartbeat_s: float) -> float:
    """The Redis socket timeout a worker with these intervals should use: at most 5 s, and
    short enough that a heartbeat which waits a full timeout, twice, still renews its leases
    in time (``heartbeat_s + 2 * socket_timeout_s <= lease_s``). Thread-safe (pure)."""
    return min(5.0, (lease_s - heartbeat_s) / 2)


def check_worker_settings(*, lease_s: object, heartbeat_s: object, prefetch: object, **positive: object) -> None:
    """Check a worker's timing and buffer settings (a :class:`RedisBroker`'s or a
    :class:`~engine.redis_worker.RedisWorker`'s); ``positive`` are other settings that must be
    numbers > 0. Thread-safe (pure).

    Raises:
        ConfigError: the first bad one, named, with what is allowed.
    """
    for what, value in (("lease_s", lease_s), ("heartbeat_s", heartbeat_s), *positive.items()):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
            raise ConfigError(f"{what} must be a number > 0; got {value!r}")
    assert isinstance(lease_s, (int, float)) and isinstance(heartbeat_s, (int, float))
    if heartbeat_s >= lease_s / 2:
        raise ConfigError(
            f"heartbeat_s ({heartbeat_s:g}) must be below lease_s / 2 ({lease_s / 2:g}) so leases are "
            "renewed before they expire"
        )
    if prefetch is not None and (not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 0):
        raise ConfigError(f"prefetch must be None or an int >= 0; got {prefetch!r}")


# ================================================================================================
# The broker seam: Dispatcher(broker=RedisBroker(url))
# ================================================================================================
class RedisBroker(SharedBroker):
    """Selects a Redis queue for :class:`~engine.Dispatcher`: ``Dispatcher(broker=RedisBroker(url),
    tasks=registry)`` keeps the dispatcher's API, with the jobs, retries, DLQ and counters in
    Redis, shared by every process on that queue (see :mod:`engine.redis_dispatcher`).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS, or
            ``unix:///path.sock``.
        queue: the queue's name; several queues can share one Redis.
        prefix: the first part of every key.
        dlq_max: the most DLQ entries kept (oldest evicted beyond); ``None`` for no cap.
        lease_s: how long a fetched job stays leased without a heartbeat (a job whose process
            dies runs again after at most this long).
        heartbeat_s: seconds between this process's heartbeats and lease renewals.
        heartbeat_ttl_s: how long a silent process stays visible to dashboards.
        prefetch: jobs this process fetches beyond its pool size (default: adaptive, see
            :class:`~engine.redis_worker.RedisWorker`).
        poll_s: the longest an idle fetcher, or the reply reader, blocks on Redis at a time.
        connect_timeout_s: TCP connect timeout.

    Raises:
        ConfigError: a bad argument (a bad URL included), with what is allowed. Nothing is
            sent to Redis until the dispatcher is built.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        queue: str = "default",
        prefix: str = "tui-dispatch",
        dlq_max: int | None = None,
        lease_s: float = 30.0,
        heartbeat_s: float = 1.0,
        heartbeat_ttl_s: float = 60.0,
        prefetch: int | None = None,
        poll_s: float = 0.5,
        connect_timeout_s: float = 2.0,
    ) -> None:
        check_worker_settings(lease_s=lease_s, heartbeat_s=heartbeat_s, prefetch=prefetch,
                              heartbeat_ttl_s=heartbeat_ttl_s, poll_s=poll_s)
        self.url = url
        self.queue_name = queue
        self.prefix = prefix
        self.dlq_max = dlq_max
        self.lease_s = float(lease_s)
        self.heartbeat_s = float(heartbeat_s)
        self.heartbeat_ttl_s = float(heartbeat_ttl_s)
        self.prefetch = prefetch
        self.poll_s = float(poll_s)
        self.connect_timeout_s = connect_timeout_s
        # Validates the URL, names and limits now; connects only when used.
        self.open(None).close()

    def open(self, clock: Clock | None) -> RedisQueue:
        """A new :class:`RedisQueue` client for this broker's queue, on ``clock``."""
        return RedisQueue(
            self.url, queue=self.queue_name, prefix=self.prefix, clock=clock, dlq_max=self.dlq_max,
            connect_timeout_s=self.connect_timeout_s,
            socket_timeout_s=socket_timeout_for(self.lease_s, self.heartbeat_s),
        )

    def dispatcher_class(self) -> type:
        from engine.redis_dispatcher import RedisDispatcher

        return RedisDispatcher

    def __repr__(self) -> str:
        return f"RedisBroker({redact_url(self.url)!r}, queue={self.queue_name!r}, prefix={self.prefix!r})"


# ================================================================================================
# Helpers
# ================================================================================================
def _decode_reply(reply: Any) -> Any:
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "surrogateescape")
    if isinstance(reply, list):
        return [_decode_reply(item) for item in reply]
    return reply


def _pairs(flat: Sequence[Any]) -> list[tuple[str, str]]:
    return [(_clean(str(flat[i])), _clean(str(flat[i + 1]))) for i in range(0, len(flat) - 1, 2)]


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _payload_name(text: str) -> str:
    try:
        return decode_payload(text).name
    except MalformedPayload:
        return "<malformed payload>"


def _int_or(text: Any, default: int) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return default


def _float_or(text: Any, default: float | None) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError, OverflowError):
        return default
    return value if math.isfinite(value) else default


def _args_repr(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    parts = [_ARGS_REPR.repr(a) for a in args]
    parts += [f"{k}={_ARGS_REPR.repr(v)}" for k, v in kwargs.items()]
    text = "(" + ", ".join(parts) + ")"
    return text if len(text) <= _ARGS_REPR_MAX else text[: _ARGS_REPR_MAX - 3] + "..."


def _dead_letters(reply: Sequence[Any]) -> list[DeadLetter]:
    entries: list[DeadLetter] = []
    for i in range(1, len(reply), 4):
        entries.append(_dead_letter(int(reply[i]), str(reply[i + 1]), str(reply[i + 2]), reply[i + 3]))
    return entries


def _dead_letter(job_id: int, payload: str, raw_entry: str, first: Any) -> DeadLetter:
    """One DLQ entry from what Redis holds; never raises, whatever was stored."""
    try:
        job = decode_payload(payload)
        name, task, args_repr = job.name, job.task, _args_repr(job.args, job.kwargs)
    except Exception:  # decode_payload raises only MalformedPayload; _args_repr must not break a read
        name, task = "<malformed payload>", None
        shown = _clean(payload)
        args_repr = shown if len(shown) <= _ARGS_REPR_MAX else shown[: _ARGS_REPR_MAX - 3] + "..."
    entry: dict[str, Any]
    try:
        parsed = json.loads(_clean(raw_entry))
        if not isinstance(parsed, dict):
            raise ValueError("not an object")
        entry = parsed
    except Exception:  # ValueError, RecursionError...
        entry = {"exc_type": "?", "exc_message": f"unreadable DLQ entry: {_clean(raw_entry[:80])!r}",
                 "reason": "?"}
    last = _float_or(entry.get("last_failure_at"), 0.0) or 0.0
    first_at = _float_or(first, None)
    return DeadLetter(
        job_id=job_id,
        name=name,
        task=task,
        args_repr=args_repr,
        exc_type=_text_field(entry.get("exc_type", "?")),
        exc_message=_text_field(entry.get("exc_message", "")),
        traceback=_text_field(entry.get("traceback", "")),
        attempts=_int_or(entry.get("attempts"), 0),
        first_failure_at=min(first_at, last) if first_at is not None else last,
        last_failure_at=last,
        reason=_text_field(entry.get("reason", "")),
    )


def _text_field(value: Any) -> str:
    text = value if isinstance(value, str) else _ARGS_REPR.repr(value)
    return _clean(text)


def _check_max_retries(value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"max_retries must be an int >= 0; got {value!r}")


def _check_timeout(value: object) -> None:
    if value is not None and (
        not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf
    ):
        raise ConfigError(f"timeout_s must be None or a number > 0 (seconds); got {value!r}")
