"""JobHandle as a real ``concurrent.futures.Future`` (wait, as_completed, asyncio, callbacks,
cancel), the task registry, and the JSON argument check."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import threading

import pytest

from engine import (
    CancelToken,
    ConfigError,
    JobHandle,
    JobState,
    Permanent,
    TaskRegistry,
    UnknownTask,
    cancel_token,
    current_job,
)
from engine.jobs import check_json_args
from tests.engine.conftest import WAIT_S, Gate


class Gates:
    """One gate per key: ``job(key, value)`` blocks until ``release(key)``."""

    def __init__(self) -> None:
        self._events: dict[object, threading.Event] = {}
        self._lock = threading.Lock()

    def _event(self, key: object) -> threading.Event:
        with self._lock:
            return self._events.setdefault(key, threading.Event())

    def job(self, key: object, value: object = None) -> object:
        if not self._event(key).wait(WAIT_S):
            raise RuntimeError(f"gate {key!r} never opened")
        return value

    def release(self, key: object) -> None:
        self._event(key).set()

    def release_all(self) -> None:
        with self._lock:
            events = list(self._events.values())
        for event in events:
            event.set()


@pytest.fixture
def gates():
    g = Gates()
    yield g
    g.release_all()


def fail_permanently(message: str) -> None:
    raise Permanent(message)


# -- the Future protocol ---------------------------------------------------------------------
def test_handle_is_a_future_with_the_standard_api(make_dispatcher, gate: Gate):
    d = make_dispatcher(min_workers=1, max_workers=1)
    running = d.submit(gate.job, "r")
    queued = d.submit(pow, 2, 8)
    gate.wait_entered(1)
    assert isinstance(running, cf.Future) and isinstance(running, JobHandle)
    assert running.running() and not running.done() and running.state is JobState.RUNNING
    assert not queued.running() and not queued.done() and queued.state is JobState.QUEUED
    with pytest.raises(cf.TimeoutError):
        queued.result(timeout=0.01)
    with pytest.raises(cf.TimeoutError):
        queued.exception(timeout=0.01)
    gate.open()
    assert running.result(timeout=WAIT_S) == "r" and queued.result(timeout=WAIT_S) == 256
    assert queued.exception(timeout=0) is None and queued.state is JobState.SUCCEEDED


def test_a_failed_job_raises_its_exception(make_dispatcher):
    d = make_dispatcher()
    handle = d.submit(fail_permanently, "bad input")
    with pytest.raises(Permanent, match="bad input"):
        handle.result(timeout=WAIT_S)
    assert isinstance(handle.exception(timeout=0), Permanent)
    assert handle.state is JobState.DEAD_LETTERED and handle.done() and not handle.cancelled()


def test_wait_first_completed_returns_only_the_finished_job(make_dispatcher, gates: Gates):
    d = make_dispatcher(min_workers=2, max_workers=2)
    slow = d.submit(gates.job, "slow", "s")
    fast = d.submit(pow, 2, 2)
    done, pending = cf.wait([slow, fast], timeout=WAIT_S, return_when=cf.FIRST_COMPLETED)
    assert done == {fast} and pending == {slow}
    gates.release("slow")
    done, pending = cf.wait([slow, fast], timeout=WAIT_S, return_when=cf.ALL_COMPLETED)
    assert done == {slow, fast} and not pending


def test_wait_first_exception_returns_at_the_failure(make_dispatcher, gates: Gates):
    d = make_dispatcher(min_workers=2, max_workers=2)
    slow = d.submit(gates.job, "slow")
    failing = d.submit(fail_permanently, "nope")
    done, pending = cf.wait([slow, failing], timeout=WAIT_S, return_when=cf.FIRST_EXCEPTION)
    assert done == {failing} and pending == {slow}
    gates.release("slow")


def test_as_completed_yields_in_completion_order_while_jobs_finish(make_dispatcher, gates: Gates):
    d = make_dispatcher(min_workers=3, max_workers=3)
    handles = [d.submit(gates.job, key, key) for key in range(3)]
    iterator = cf.as_completed(handles, timeout=WAIT_S)
    order = []
    for key in (2, 0, 1):
        gates.release(key)  # each job finishes while the iteration is under way
        order.append(next(iterator).result())
    assert order == [2, 0, 1]
    with pytest.raises(StopIteration):
        next(iterator)


def test_as_completed_after_completion_that_nobody_watched(make_dispatcher):
    d = make_dispatcher(min_workers=2, max_workers=2)
    handles = d.submit_many(pow, [(3, n) for n in range(10)])
    assert d.join(timeout_s=WAIT_S)  # done without anyone waiting on a handle
    assert sorted(h.result() for h in cf.as_completed(handles, timeout=WAIT_S)) == sorted(3**n for n in range(10))


def test_as_completed_and_wait_race_with_completion(make_dispatcher):
    d = make_dispatcher(min_workers=4, max_workers=4)
    for round_no in range(30):
        handles = d.submit_many(pow, [(2, n) for n in range(40)])
        seen = list(cf.as_completed(handles, timeout=WAIT_S))  # jobs finish while it sets up
        assert len(seen) == 40 and set(seen) == set(handles), f"round {round_no}"
        more = d.submit_many(abs, [(-n,) for n in range(40)])
        done, pending = cf.wait(more, timeout=WAIT_S)
        assert len(done) == 40 and not pending
        assert [h.result() for h in more] == list(range(40))


def test_many_threads_wait_on_one_handle(make_dispatcher, gate: Gate):
    d = make_dispatcher()
    handle = d.submit(gate.job, "shared")
    gate.wait_entered(1)
    results: list[object] = []
    lock = threading.Lock()

    def waiter() -> None:
        value = handle.result(timeout=WAIT_S)
        with lock:
            results.append(value)

    threads = [threading.Thread(target=waiter) for _ in range(8)]
    for t in threads:
        t.start()
    gate.open()
    for t in threads:
        t.join(WAIT_S)
    assert results == ["shared"] * 8


# -- asyncio ------------------------------------------------------------------------------------
def test_asyncio_wrap_future_result_exception_and_late_completion(make_dispatcher, gates: Gates):
    d = make_dispatcher(min_workers=2, max_workers=2)

    async def main() -> tuple[object, object]:
        loop = asyncio.get_running_loop()
        quick = await asyncio.wait_for(asyncio.wrap_future(d.submit(pow, 7, 2)), WAIT_S)
        late = asyncio.wrap_future(d.submit(gates.job, "late", "done late"))
        loop.call_soon(gates.release, "late")  # completes while the coroutine awaits it
        late_value = await asyncio.wait_for(late, WAIT_S)
        with pytest.raises(Permanent, match="async bad"):
            await asyncio.wait_for(asyncio.wrap_future(d.submit(fail_permanently, "async bad")), WAIT_S)
        return quick, late_value

    assert asyncio.run(main()) == (49, "done late")


def test_cancelling_the_asyncio_future_cancels_a_queued_job(make_dispatcher, gate: Gate):
    d = make_dispatcher(min_workers=1, max_workers=1)
    d.submit(gate.job)
    gate.wait_entered(1)
    queued = d.submit(pow, 2, 3)

    async def main() -> None:
        wrapped = asyncio.wrap_future(queued)
        wrapped.cancel()
        with pytest.raises(asyncio.CancelledError):
            await wrapped
        for _ in range(100):  # the cancel reaches the handle through a loop callback
            if queued.cancelled():
                break
            await asyncio.sleep(0)

    asyncio.run(main())
    assert queued.cancelled() and queued.state is JobState.CANCELLED
    gate.open()
    assert d.join(timeout_s=WAIT_S)
    assert queued.attempts == 0
    assert d.snapshot().counters.cancelled == 1


# -- done callbacks ----------------------------------------------------------------------------
def test_callback_added_before_completion_runs_once_in_a_worker(make_dispatcher, gate: Gate):
    d = make_dispatcher()
    handle = d.submit(gate.job, 5)
    calls: list[tuple[object, str, object]] = []
    done = threading.Event()

    def callback(future: cf.Future) -> None:
        calls.append((future, threading.current_thread().name, future.result()))
        done.set()

    handle.add_done_callback(callback)
    gate.open()
    assert done.wait(WAIT_S)
    assert d.join(timeout_s=WAIT_S)
    assert len(calls) == 1
    future, thread_name, value = calls[0]
    assert future is handle and value == 5 and "worker" in thread_name


def test_callback_added_after_completion_runs_at_once_in_the_caller(make_dispatcher):
    d = make_dispatcher()
    handle = d.submit(pow, 2, 4)
    handle.result(timeout=WAIT_S)
    calls: list[tuple[object, threading.Thread]] = []
    handle.add_done_callback(lambda f: calls.append((f.result(), threading.current_thread())))
    assert calls == [(16, threading.current_thread())]


def test_callbacks_see_failure_and_cancellation(make_dispatcher, gate: Gate):
    d = make_dispatcher(min_workers=1, max_workers=1)
    d.submit(gate.job)
    gate.wait_entered(1)
    failing = d.submit(fail_permanently, "cb")
    queued = d.submit(pow, 1, 1)
    seen: list[tuple[str, bool, object]] = []
    cond = threading.Condition()

    def record(label: str):
        def callback(f: cf.Future) -> None:
            with cond:
                seen.append((label, f.cancelled(), None if f.cancelled() else type(f.exception())))
                cond.notify_all()
        return callback

    failing.add_done_callback(record("failing"))
    queued.add_done_callback(record("queued"))
    assert queued.cancel()
    gate.open()
    with cond:
        assert cond.wait_for(lambda: len(seen) == 2, WAIT_S)
    assert sorted(seen) == [("failing", False, Permanent), ("queued", True, None)]


def test_a_raising_callback_breaks_nothing(make_dispatcher, gate: Gate, caplog):
    d = make_dispatcher(min_workers=1, max_workers=1)
    handle = d.submit(gate.job, "v")
    after: list[object] = []
    later_ran = threading.Event()

    def bad(_: cf.Future) -> None:
        raise RuntimeError("callback exploded")

    handle.add_done_callback(bad)
    handle.add_done_callback(lambda f: (after.append(f.result()), later_ran.set()))
    with caplog.at_level(logging.ERROR):
        gate.open()
        assert handle.result(timeout=WAIT_S) == "v"
        # Later callbacks still ran, the worker survived and keeps working.
        assert later_ran.wait(WAIT_S) and after == ["v"]
        assert d.submit(pow, 3, 3).result(timeout=WAIT_S) == 27
        handle.add_done_callback(bad)  # after completion: run at once, logged, not raised
    snap = d.snapshot()
    assert snap.workers_total == 1 and snap.counters.succeeded == 2 and snap.consistent
    messages = [r.getMessage() for r in caplog.records if r.exc_info]
    assert sum("callback exploded" in str(r.exc_info[1]) for r in caplog.records if r.exc_info) == 2
    assert any(f"job {handle.id}" in m for m in messages)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_callback_raising_base_exception_does_not_kill_the_worker(make_dispatcher, gate: Gate):
    d = make_dispatcher(min_workers=1, max_workers=1)
    first = d.submit(gate.job, 1)
    gate.wait_entered(1)
    second = d.submit(pow, 2, 5)  # taken by the same worker right after `first`

    def exits(_: cf.Future) -> None:
        raise SystemExit("a callback called sys.exit")

    first.add_done_callback(exits)
    gate.open()
    assert first.result(timeout=WAIT_S) == 1
    assert second.result(timeout=1.0) == 32
    assert d.join(timeout_s=1.0)
    assert d.snapshot().workers_total == 1


# -- cancel ------------------------------------------------------------------------------------
def test_cancel_follows_future_semantics(make_dispatcher, gate: Gate):
    d = make_dispatcher(min_workers=1, max_workers=1)
    running = d.submit(gate.job, "r")
    gate.wait_entered(1)
    queued = d.submit(pow, 2, 2)
    assert not running.cancel() and running.running()
    assert queued.cancel() and queued.cancel()  # idempotent
    assert queued.cancelled() and queued.done() and not queued.running()
    with pytest.raises(cf.CancelledError):
        queued.result(timeout=0)
    with pytest.raises(cf.CancelledError):
        queued.exception(timeout=0)
    done, pending = cf.wait([queued, running], timeout=0)
    assert done == {queued} and pending == {running}
    gate.open()
    assert running.result(timeout=WAIT_S) == "r"
    assert not running.cancel() and not running.cancelled()
    assert queued.attempts == 0 and queued.state is JobState.CANCELLED


# -- what a job can learn about itself -----------------------------------------------------------
def test_current_job_and_cancel_token_inside_and_outside_a_job(make_dispatcher):
    assert current_job() is None
    token = cancel_token()
    assert isinstance(token, CancelToken) and not token.cancelled()
    token.raise_if_cancelled()  # outside a job: never cancelled
    d = make_dispatcher()

    def who_am_i() -> tuple[int, str, int, bool]:
        ctx = current_job()
        assert ctx is not None
        return ctx.job_id, ctx.name, ctx.attempt, cancel_token().cancelled()

    handle = d.submit_job(who_am_i, name="introspect")
    assert handle.result(timeout=WAIT_S) == (handle.id, "introspect", 1, False)


def test_job_state_values():
    assert [str(s) for s in JobState] == [
        "queued", "running", "scheduled", "succeeded", "dead_lettered", "cancelled"
    ]
    assert {s for s in JobState if s.final} == {JobState.SUCCEEDED, JobState.DEAD_LETTERED, JobState.CANCELLED}


# -- the task registry ---------------------------------------------------------------------------
def plain(x: int) -> int:
    return x


def send(to: str) -> str:
    return to


def empty_call() -> None:
    return None


def test_registry_registers_by_qualname_or_explicit_name():
    tasks = TaskRegistry()
    assert tasks.task(plain) is plain
    assert tasks.task("email.send")(send) is send
    assert tasks.task()(empty_call) is empty_call

    assert tasks.get(plain.__qualname__) is plain
    assert tasks.get("email.send") is send
    assert tasks.get(empty_call.__qualname__) is empty_call
    assert "email.send" in tasks and "email.recv" not in tasks
    assert len(tasks) == 3
    assert tasks.names() == tuple(sorted([plain.__qualname__, "email.send", empty_call.__qualname__]))
    assert list(tasks) == list(tasks.names())


def test_registering_the_same_function_twice_is_fine_another_is_not():
    tasks = TaskRegistry()
    tasks.register("job", abs)
    tasks.register("job", abs)
    with pytest.raises(ConfigError, match="'job' is already registered"):
        tasks.register("job", round)
    assert tasks.get("job") is abs


@pytest.mark.parametrize("name", ["", "1abc", "has space", "a" * 201, "semi;colon", "é", 42, None])
def test_bad_task_names_are_refused(name):
    with pytest.raises(ConfigError, match="task name") as info:
        TaskRegistry().register(name, abs)
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("name", ["a", "_x", "a" * 200, "pkg.mod:func", "jobs.resize-image", "A1_b.c"])
def test_good_task_names_are_accepted(name):
    tasks = TaskRegistry()
    tasks.register(name, abs)
    assert tasks.get(name) is abs


def test_a_non_callable_task_is_refused():
    with pytest.raises(ConfigError, match="'t' must be callable"):
        TaskRegistry().register("t", 42)  # type: ignore[arg-type]


def test_unknown_task_names_what_is_registered():
    tasks = TaskRegistry()
    with pytest.raises(UnknownTask, match=r"unknown task 'x' \(registered: none\)"):
        tasks.get("x")
    tasks.register("b.two", abs)
    tasks.register("a.one", abs)
    with pytest.raises(UnknownTask, match=r"'x' \(registered: a.one, b.two\)"):
        tasks.get("x")


def test_registry_is_safe_to_fill_from_many_threads():
    tasks = TaskRegistry()
    barrier = threading.Barrier(8, timeout=WAIT_S)

    def fill(worker: int) -> None:
        barrier.wait()
        for i in range(200):
            tasks.register(f"w{worker}.t{i}", abs)

    threads = [threading.Thread(target=fill, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert len(tasks) == 1600


# -- JSON arguments ----------------------------------------------------------------------------
def test_check_json_args_returns_compact_json():
    encoded = check_json_args("t", (1, "a", None, (2, 3)), {"k": [1.5, True], "d": {"x": -0.0}})
    assert encoded == '[[1,"a",null,[2,3]],{"k":[1.5,true],"d":{"x":-0.0}}]'
    assert check_json_args("t", (), None) == "[[],{}]"


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (({1, 2},), None, "argument 0 is not JSON-serialisable: set"),
        ((1, b"raw"), None, "argument 1 is not JSON-serialisable: bytes"),
        ((float("nan"),), None, "argument 0 is nan"),
        ((1, [float("inf")]), None, "argument 1 is inf"),
        ((), {"v": float("-inf")}, "keyword argument 'v' is -inf"),
        ((), {"obj": object()}, "keyword argument 'obj' is not JSON-serialisable: object"),
        (({1: "a"},), None, "argument 0 has a non-string dict key 1"),
        ((), {1: "a"}, "keyword names must be strings; got 1"),
        (([[{"deep": {1, 2}}]],), None, "argument 0 is not JSON-serialisable: set"),
    ],
)
def test_check_json_args_names_the_bad_argument(args, kwargs, message):
    with pytest.raises(ConfigError) as info:
        check_json_args("my.task", args, kwargs)
    text = str(info.value)
    assert text.startswith("task 'my.task': ") and message in text and "\n" not in text


def test_check_json_args_refuses_deep_and_circular_structures():
    deep: list[object] = []
    node = deep
    for _ in range(150):
        child: list[object] = []
        node.append(child)
        node = child
    with pytest.raises(ConfigError, match="argument 0 nests deeper than 100 levels"):
        check_json_args("t", (deep,), None)
    circular: list[object] = []
    circular.append(circular)
    with pytest.raises(ConfigError, match="nests deeper"):
        check_json_args("t", (), {"c": circular})
