"""Jobs: the handle returned by ``submit`` (a real :class:`concurrent.futures.Future`), the task
registry for jobs described by name and JSON arguments, and the cancellation token a running job
can ask for.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures._base import (  # the states Future's own methods test against
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    PENDING,
    RUNNING,
)
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar, overload

from engine.errors import ConfigError, UnknownTask
from engine.policy.backoff import RetryPolicy

if TYPE_CHECKING:
    from engine.dispatcher import Dispatcher

__all__ = [
    "JobState",
    "JobOptions",
    "JobHandle",
    "TaskRegistry",
    "CancelToken",
    "JobContext",
    "current_job",
    "cancel_token",
    "check_json_args",
]

F = TypeVar("F", bound=Callable[..., Any])

# Guards the lazy creation of a handle's Condition, waiter list and callback list, and the
# lock-free completion path that is only taken while no Condition exists. Held for a few
# bytecodes at a time; nothing is ever acquired while holding it.
_LAZY_LOCK = threading.Lock()


class JobState(StrEnum):
    """Where a job is in its life. The last three are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SCHEDULED = "scheduled"
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.DEAD_LETTERED, JobState.CANCELLED)


@dataclass(frozen=True, slots=True)
class JobOptions:
    """Per-job options, shared by every job of one ``submit``/``submit_many`` call.

    Attributes:
        name: a label shown in metrics and the DLQ; defaults to the callable's name.
        retry: the retry policy.
        timeout_s: seconds an attempt may run before it is timed out; ``None`` for no limit.
    """

    name: str | None
    retry: RetryPolicy
    timeout_s: float | None


class CancelToken:
    """Tells a running job that nobody wants its result any more (timeout or forceful shutdown).

    A job gets its token with :func:`cancel_token` and checks it between steps of its work::

        def crunch(items):
            token = engine.cancel_token()
            for item in items:
                token.raise_if_cancelled()
                process(item)

    Thread-safe.
    """

    __slots__ = ("_event", "reason")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def cancelled(self) -> bool:
        """Whether the job should stop."""
        return self._event.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block up to ``timeout_s`` for cancellation; returns whether it happened. A cancellable sleep."""
        return self._event.wait(timeout_s)

    def raise_if_cancelled(self) -> None:
        """Raise :class:`concurrent.futures.CancelledError` if the job should stop."""
        if self._event.is_set():
            from concurrent.futures import CancelledError

            raise CancelledError(self.reason or "job cancelled")

    def _cancel(self, reason: str) -> None:
        self.reason = reason
        self._event.set()


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a running job can learn about itself through :func:`current_job`."""

    job_id: int
    name: str
    attempt: int
    token: CancelToken


_current = threading.local()


def current_job() -> JobContext | None:
    """The job running on the calling thread, or ``None`` outside a job. Thread-safe."""
    handle: JobHandle | None = getattr(_current, "handle", None)
    if handle is None:
        return None
    attempt: int = _current.attempt
    return JobContext(handle.id, handle.name, attempt, handle._token_for(attempt))


def cancel_token() -> CancelToken:
    """The cancellation token of the job running on the calling thread.

    Outside a job it returns a token that is never cancelled, so library code can call it
    unconditionally.
    """
    ctx = current_job()
    return ctx.token if ctx is not None else CancelToken()


def _invoke_callback(fn: Callable[[Future[Any]], object], handle: JobHandle) -> None:
    try:
        fn(handle)
    except BaseException:  # a callback, even one raising SystemExit, must not kill a worker
        import logging

        try:
            logging.getLogger("engine").exception("done-callback %r of job %s raised", fn, handle.id)
        except Exception:
            pass


class JobHandle(Future[Any]):
    """The handle of one submitted job. It *is* a :class:`concurrent.futures.Future`.

    ``result()``, ``exception()``, ``done()``, ``add_done_callback()``,
    :func:`concurrent.futures.wait`, :func:`~concurrent.futures.as_completed` and
    :func:`asyncio.wrap_future` work as with any future. On top of that it carries the job's
    ``id``, ``name``, ``state`` and ``attempts``.

    ``cancel()`` succeeds while the job is queued or waiting for a retry, and fails (returns
    ``False``) once an attempt is running or the job has finished.

    To keep a million queued jobs small, the future's Condition and lists are only created when
    somebody waits on or subscribes to this handle.

    All methods are thread-safe.
    """

    # Not calling Future.__init__ is deliberate: it eagerly builds a Condition (about 1 KiB).
    def __init__(
        self,
        dispatcher: Dispatcher | None,
        job_id: int,
        fn: Callable[..., Any] | None,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any] | None,
        name: str,
        options: JobOptions,
        task: str | None = None,
    ) -> None:
        self._cond: threading.Condition | None = None
        self._waiters_: list[Any] | None = None
        self._callbacks_: list[Callable[[Future[Any]], object]] | None = None
        self._state = PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self.id = job_id
        self.name = name
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.task = task
        self.options = options
        self.attempts = 0
        self._job_state = JobState.QUEUED
        self._dispatcher = dispatcher
        self._enqueued_at = 0.0
        self._first_failure_at: float | None = None
        self._last_failure_at: float | None = None
        self._token: CancelToken | None = None
        self._token_attempt = 0
        self._skip = False  # set when cancelled while in the backlog or schedule (lazy removal)
        self._slot: str | None = None  # where the broker holds it: "backlog", "schedule" or None

    # -- what the handle tells -------------------------------------------------------------
    @property
    def state(self) -> JobState:
        """The job's state now."""
        return self._job_state

    def __repr__(self) -> str:
        return f"<JobHandle id={self.id} name={self.name!r} state={self._job_state.value} attempts={self.attempts}>"

    # -- Future internals, created on first use --------------------------------------------
    # Future declares these as plain attributes; read-only properties are deliberate here.
    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond = self._cond
        if cond is None:
            with _LAZY_LOCK:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition()
        return cond

    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]
        waiters = self._waiters_
        if waiters is None:
            with _LAZY_LOCK:
                waiters = self._waiters_
                if waiters is None:
                    waiters = self._waiters_ = []
        return waiters

    @property
    def _done_callbacks(self) -> list[Callable[[Future[Any]], object]]:
        callbacks = self._callbacks_
        if callbacks is None:
            with _LAZY_LOCK:
                callbacks = self._callbacks_
                if callbacks is None:
                    callbacks = self._callbacks_ = []
        return callbacks

    def running(self) -> bool:
        return self._state == RUNNING

    def done(self) -> bool:
        return self._state in (FINISHED, CANCELLED, CANCELLED_AND_NOTIFIED)

    def cancelled(self) -> bool:
        return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)

    def cancel(self) -> bool:
        """Cancel the job if it is queued or waiting for a retry. Thread-safe.

        Returns:
            True if the job is now cancelled (or already was); False if it is running or finished.
        """
        if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
            return True
        if self._dispatcher is None:
            return False
        return self._dispatcher._cancel_handle(self)

    # -- transitions, driven by the dispatcher ------------------------------------------------
    def _complete_quietly(self, state: str, result: Any, exc: BaseException | None) -> bool:
        """Finish at once if nobody has ever waited on or subscribed to this handle.

        Runs no user code and takes only the leaf ``_LAZY_LOCK``, so the dispatcher may call it
        while holding its own lock. Returns False (changing nothing) when waiters or callbacks
        may exist; the caller then uses :meth:`_complete` after releasing its lock.
        """
        with _LAZY_LOCK:
            if self._cond is not None or self._callbacks_ is not None:
                return False
            self._result, self._exception, self._state = result, exc, state
            return True

    def _complete(self, state: str, result: Any, exc: BaseException | None) -> None:
        """Move to FINISHED or CANCELLED_AND_NOTIFIED, wake waiters, run callbacks.

        Called once per job, by the engine, never while holding the dispatcher's lock.
        """
        for fn in self._settle(state, result, exc):
            _invoke_callback(fn, self)

    def _settle(self, state: str, result: Any, exc: BaseException | None) -> list[Callable[[Future[Any]], object]]:
        """Like :meth:`_complete`, but return the done-callbacks instead of running them (the
        caller runs each with :func:`_invoke_callback`, on a thread of its choosing)."""
        with _LAZY_LOCK:
            cond = self._cond
            if cond is None:  # nobody can be waiting: no Condition was ever handed out
                self._result, self._exception, self._state = result, exc, state
        if cond is not None:
            with cond:
                self._result, self._exception, self._state = result, exc, state
                for waiter in self._waiters_ or ():
                    if state == CANCELLED_AND_NOTIFIED:
                        waiter.add_cancelled(self)
                    elif exc is not None:
                        waiter.add_exception(self)
                    else:
                        waiter.add_result(self)
                cond.notify_all()
        return list(self._callbacks_ or ())

    def _token_for(self, attempt: int) -> CancelToken:
        with _LAZY_LOCK:
            if self._token is None or self._token_attempt != attempt:
                token = CancelToken()
                if attempt < self.attempts or self._job_state.final:
                    token._cancel("the attempt was abandoned")
                if attempt == self.attempts:
                    self._token, self._token_attempt = token, attempt
                return token
            return self._token

    def _cancel_token(self, reason: str) -> None:
        """Tell the current attempt, if it asked for a token, to stop."""
        with _LAZY_LOCK:
            token = self._token
            if token is None or self._token_attempt != self.attempts:
                token = self._token = CancelToken()
                self._token_attempt = self.attempts
        token._cancel(reason)


class TaskRegistry:
    """Named tasks, so a job can be described by a task name and JSON arguments.

    This is how jobs cross a process boundary (the Redis broker): only registered names run,
    and arguments are JSON, never pickles. Thread-safe.

    Example::

        tasks = TaskRegistry()

        @tasks.task
        def resize(path: str, width: int) -> str: ...

        @tasks.task("email.send")
        def send(to: str) -> None: ...
    """

    _NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,199}$")

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _tasks
        self._tasks: dict[str, Callable[..., Any]] = {}
        self._names: list[tuple[Callable[..., Any], str]] = []  # (fn, name), for name_of

    @overload
    def task(self, fn_or_name: F) -> F: ...
    @overload
    def task(self, fn_or_name: str | None = None) -> Callable[[F], F]: ...

    def task(self, fn_or_name: F | str | None = None) -> F | Callable[[F], F]:
        """Decorator: register a function under its qualified name or an explicit one."""
        if callable(fn_or_name):
            self.register(fn_or_name.__qualname__, fn_or_name)
            return fn_or_name

        def deco(fn: F) -> F:
            self.register(fn_or_name or fn.__qualname__, fn)
            return fn

        return deco

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        """Register ``fn`` as task ``name``.

        Raises:
            ConfigError: a bad name, a non-callable, or a name already taken by another function.
        """
        if isinstance(name, str) and "<locals>" in name:
            raise ConfigError(
                f"task {name!r} is defined inside a function, so it has no stable name; "
                "register it with an explicit one: @tasks.task(\"my.task\")"
            )
        if not isinstance(name, str) or not self._NAME.match(name):
            raise ConfigError(
                f"task name must be 1-200 characters of letters, digits, '_', '.', ':' or '-', "
                f"starting with a letter or '_'; got {name!r}"
            )
        if not callable(fn):
            raise ConfigError(f"task {name!r} must be callable; got {fn!r}")
        with self._lock:
            existing = self._tasks.get(name)
            if existing is not None and existing is not fn and existing != fn:
                raise ConfigError(f"task name {name!r} is already registered to {existing!r}")
            if existing is None:
                self._tasks[name] = fn
                self._names.append((fn, name))

    def get(self, name: str) -> Callable[..., Any]:
        """The function registered as ``name``.

        Raises:
            UnknownTask: nothing is registered under ``name``.
        """
        with self._lock:
            fn = self._tasks.get(name)
        if fn is None:
            known = ", ".join(sorted(self._tasks)[:10]) or "none"
            raise UnknownTask(f"unknown task {name!r} (registered: {known})")
        return fn

    def name_of(self, fn: Callable[..., Any]) -> str | None:
        """The name ``fn`` is registered under (the first, if several), or ``None``.

        Bound methods match by equality (``obj.method`` makes a new object on each access).
        """
        with self._lock:
            for registered, name in self._names:
                if registered is fn:
                    return name
            for registered, name in self._names:
                try:
                    if registered == fn:
                        return name
                except Exception:  # an odd callable's __eq__ must not break a lookup
                    continue
        return None

    def names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._tasks))

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        with self._lock:
            return len(self._tasks)


def check_json_args(task: str, args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> str:
    """Check that a task's arguments are plain JSON, and return their encoding.

    Raises:
        ConfigError: an argument is not JSON-serialisable (or is NaN/infinite), naming which.
    """
    for index, value in enumerate(args):
        _check_json_value(task, f"argument {index}", value)
    for key, value in (kwargs or {}).items():
        if not isinstance(key, str):
            raise ConfigError(f"task {task!r}: keyword names must be strings; got {key!r}")
        _check_json_value(task, f"keyword argument {key!r}", value)
    return json.dumps([list(args), dict(kwargs or {})], separators=(",", ":"), allow_nan=False)


def _check_json_value(task: str, where: str, value: Any, depth: int = 0) -> None:
    """Accept exactly what JSON round-trips: None, bool, int, finite float, str, lists and
    str-keyed dicts of those (tuples are sent as lists)."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"task {task!r}: {where} is {value!r}, which JSON cannot carry")
        return
    if depth > 100:
        raise ConfigError(f"task {task!r}: {where} nests deeper than 100 levels")
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_json_value(task, where, item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"task {task!r}: {where} has a non-string dict key {key!r}; JSON keys are strings")
            _check_json_value(task, where, item, depth + 1)
        return
    raise ConfigError(
        f"task {task!r}: {where} is not JSON-serialisable: {type(value).__name__} {value!r:.80}"
    )
