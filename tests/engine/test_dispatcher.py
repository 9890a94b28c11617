"""The dispatcher with real threads, an injected fake clock and gates: submit, round-robin,
retries at exact fake times, the DLQ, cancel, pause, bounded intake and executor compatibility."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import random
import threading

import pytest

from engine import (
    ConfigError,
    Dispatcher,
    DispatcherClosed,
    FakeClock,
    JobNotFound,
    JobState,
    Permanent,
    QueueFull,
    RetryAfter,
    RetryPolicy,
    TaskRegistry,
    UnknownTask,
    current_job,
)
from tests.engine.conftest import WAIT_S, Gate, eventually, failed_with

NO_JITTER = RetryPolicy(max_retries=3, base_s=1.0, factor=2.0, cap_s=30.0, jitter="none")


def always_fails(message: str = "boom") -> None:
    raise ValueError(message)


@pytest.fixture
def tasks(tasks: TaskRegistry) -> TaskRegistry:
    """The conftest's registry, plus this module's job functions."""
    tasks.register("always_fails", always_fails)
    tasks.register("worker_id_of_current_job", _worker_id_of_current_job)
    return tasks


# -- submitting ------------------------------------------------------------------------------
@pytest.mark.both_brokers
def test_submit_returns_a_future_with_job_details(make_dispatcher):
    d = make_dispatcher(min_workers=2, max_workers=2)
    handle = d.submit(pow, 2, 10)
    assert isinstance(handle, cf.Future)
    assert handle.result(timeout=WAIT_S) == 1024
    assert handle.id == 1 and handle.name == "pow"
    assert handle.state is JobState.SUCCEEDED and handle.attempts == 1
    assert handle.done() and not handle.running() and not handle.cancelled()
    assert handle.exception() is None


@pytest.mark.both_brokers
def test_submit_job_options_and_kwargs(make_dispatcher):
    d = make_dispatcher()
    handle = d.submit_job(dict, kwargs={"a": 1}, name="make-dict", max_retries=0, timeout_s=5)
    assert handle.result(timeout=WAIT_S) == {"a": 1}
    assert handle.name == "make-dict"
    assert handle.options.retry.max_retries == 0 and handle.options.timeout_s == 5


@pytest.mark.both_brokers
def test_submit_many_is_one_batch_in_order(make_dispatcher):
    d = make_dispatcher(min_workers=3, max_workers=3)
    handles = d.submit_many(pow, [(2, n) for n in range(50)])
    assert [h.result(timeout=WAIT_S) for h in handles] == [2**n for n in range(50)]
    assert [h.id for h in handles] == list(range(1, 51))
    assert d.snapshot().counters.submitted == 50


@pytest.mark.both_brokers
def test_submit_task_by_name_with_json_arguments(make_dispatcher):
    tasks = TaskRegistry()

    @tasks.task("math.add")
    def add(a: int, b: int) -> int:
        return a + b

    d = make_dispatcher(tasks=tasks)
    handle = d.submit_task("math.add", 2, b=3)
    assert handle.result(timeout=WAIT_S) == 5
    assert handle.task == "math.add" and handle.name == "math.add"
    with pytest.raises(UnknownTask, match=r"'math\.sub'"):
        d.submit_task("math.sub", 1, 2)
    with pytest.raises(ConfigError, match=r"argument 0 .*set"):
        d.submit_task("math.add", {1, 2}, 3)
    assert d.snapshot().counters.submitted == 1  # the bad ones never entered


@pytest.mark.both_brokers
def test_executor_map_wait_as_completed_and_asyncio(make_dispatcher):
    d = make_dispatcher(min_workers=4, max_workers=4)
    assert list(d.map(pow, [2, 3, 4], [2, 2, 2])) == [4, 9, 16]
    handles = [d.submit(pow, 3, n) for n in range(20)]
    done, not_done = cf.wait(handles, timeout=WAIT_S)
    assert len(done) == 20 and not not_done
    assert sorted(h.result() for h in cf.as_completed(handles, timeout=WAIT_S)) == sorted(3**n for n in range(20))

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        first = await loop.run_in_executor(d, pow, 5, 2)
        second = await asyncio.wrap_future(d.submit(pow, 6, 2))
        return [first, second]

    assert asyncio.run(main()) == [25, 36]


@pytest.mark.both_brokers
def test_as_completed_while_jobs_finish(make_dispatcher, gate: Gate):
    d = make_dispatcher(min_workers=2, max_workers=2)
    handles = [d.submit(gate.job, n) for n in range(6)]
    gate.wait_entered(2)
    results = []
    it = cf.as_completed(handles, timeout=WAIT_S)
    gate.open()
    results = sorted(h.result() for h in it)
    assert results == list(range(6))


def test_context_manager_drains_then_refuses(clock, rng):
    with Dispatcher(min_workers=2, max_workers=2, autoscale=False, clock=clock, rng=rng, log_interval_s=0) as d:
        handles = d.submit_many(abs, [(-n,) for n in range(100)])
    assert all(h.done() for h in handles)
    assert d.state.value == "stopped"
    with pytest.raises(DispatcherClosed):
        d.submit(abs, 1)


# -- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_workers": 5, "max_workers": 2}, r"min_workers \(5\) must not exceed max_workers \(2\)"),
        ({"min_workers": -1}, "min_workers must be an int >= 0; got -1"),
        ({"max_workers": 0}, "max_workers must be an int >= 1; got 0"),
        ({"max_workers": 2.5}, "max_workers must be an int"),
        ({"max_queue": 0}, "max_queue must be None or an int >= 1"),
        ({"log_interval_s": -1}, "log_interval_s must be a number >= 0"),
        ({"default_timeout_s": 0}, "default_timeout_s must be None or a number > 0"),
        ({"retry": 3}, "retry must be a RetryPolicy"),
        ({"autoscale": "yes"}, "autoscale must be an AutoscalePolicy"),
        ({"rng": 42}, "rng must be a random.Random"),
        ({"max_worker": 4}, r"unknown Dispatcher option\(s\) 'max_worker' \(did you mean 'max_workers'\?\)"),
    ],
)
def test_bad_configuration_raises_at_once_naming_the_argument(options, message):
    with pytest.raises(ConfigError, match=message):
        Dispatcher(**options)


def test_bad_job_arguments(make_dispatcher):
    d = make_dispatcher()
    with pytest.raises(ConfigError, match="fn must be callable; got 42"):
        d.submit(42)
    with pytest.raises(ConfigError, match="max_retries must be an int >= 0; got -1"):
        d.submit_job(abs, (1,), max_retries=-1)
    with pytest.raises(ConfigError, match="timeout_s must be None or a number > 0"):
        d.submit_job(abs, (1,), timeout_s=-2)
    with pytest.raises(ConfigError, match="either retry or max_retries"):
        d.submit_job(abs, (1,), retry=RetryPolicy(), max_retries=1)
    with pytest.raises(ConfigError, match="jitter must be one of"):
        RetryPolicy(jitter="some")


# -- round-robin ----------------------------------------------------------------------------
def _worker_id_of_current_job() -> int:
    ctx = current_job()
    assert ctx is not None
    return int(threading.current_thread().name.rsplit("-", 1)[1])


def test_round_robin_is_strictly_cyclic_when_all_workers_are_free(make_dispatcher):
    d = make_dispatcher(min_workers=3, max_workers=3)
    order = []
    for _ in range(9):
        eventually(lambda: d.snapshot().workers_idle == 3, what="all workers idle")
        order.append(d.submit(_worker_id_of_current_job).result(timeout=WAIT_S))
    assert order == [1, 2, 3, 1, 2, 3, 1, 2, 3]
    assert [w.jobs_done for w in d.snapshot().workers] == [3, 3, 3]


def test_no_job_waits_behind_a_slow_one(make_dispatcher, gate: Gate):
    d = make_dispatcher(min_workers=2, max_workers=2)
    slow = d.submit(gate.job, "slow")
    gate.wait_entered(1)
    quick = [d.submit(abs, -n) for n in range(20)]
    assert [h.result(timeout=WAIT_S) for h in quick] == list(range(20))  # the free worker ran them all
    assert not slow.done()
    snap = d.snapshot()
    assert sorted(w.jobs_done for w in snap.workers) == [0, 20]
    gate.open()
    assert slow.result(timeout=WAIT_S) == "slow"


def test_idle_workers_take_a_burst_in_cyclic_order(make_dispatcher, gate: Gate):
    d = make_dispatcher(min_workers=4, max_workers=4)
    eventually(lambda: d.snapshot().workers_idle == 4)
    handles = [d.submit(gate.job, n) for n in range(4)]
    gate.wait_entered(4)
    running = {w.job_id: w.id for w in d.snapshot().workers}
    assert running == {h.id: i + 1 for i, h in enumerate(handles)}


# -- retries and backoff at exact fake times ---------------------------------------------------
@pytest.mark.both_brokers
def test_retries_fall_due_at_the_backoff_times_then_dead_letter(make_dispatcher, clock: FakeClock):
    d = make_dispatcher(retry=NO_JITTER)
    handle = d.submit(always_fails)
    expected_delays = [1.0, 2.0, 4.0]  # base 1, factor 2, no jitter
    for attempt, delay in enumerate(expected_delays, start=1):
        snap = eventually(lambda: (s := d.snapshot()).scheduled == 1 and s.next_retries[0].attempt == attempt + 1 and s)
        assert snap.next_retries[0].due_in_s == pytest.approx(delay)
        clock.advance(delay - 0.001)
        snap = d.snapshot()  # not due yet: time has not reached it
        assert snap.scheduled == 1 and snap.next_retries[0].attempt == attempt + 1
        clock.advance(0.001)
    failed_with(handle, ValueError, "boom")
    snap = d.snapshot()
    assert handle.attempts == 4 and handle.state is JobState.DEAD_LETTERED
    c = snap.counters
    assert (c.submitted, c.succeeded, c.failed, c.retries, c.dead_lettered) == (1, 0, 4, 3, 1)
    assert snap.retries_by_attempt == ((1, 1), (2, 1), (3, 1))
    assert snap.consistent


@pytest.mark.both_brokers
def test_equal_jitter_uses_the_injected_rng(make_dispatcher, clock: FakeClock):
    policy = RetryPolicy(max_retries=1, base_s=8.0, jitter="equal")
    d = make_dispatcher(retry=policy, rng=random.Random(7))
    d.submit(always_fails)
    expected = 4.0 + 4.0 * random.Random(7).random()
    snap = eventually(lambda: (s := d.snapshot()).scheduled == 1 and s)
    assert snap.next_retries[0].due_in_s == pytest.approx(expected)


@pytest.mark.both_brokers
def test_retry_after_overrides_the_backoff(make_dispatcher, clock: FakeClock, tasks: TaskRegistry):
    calls = []

    def flaky() -> str:
        calls.append(clock.monotonic())
        if len(calls) == 1:
            raise RetryAfter(5)
        return "ok"

    tasks.register("flaky", flaky)
    d = make_dispatcher(retry=NO_JITTER)
    handle = d.submit(flaky)
    snap = eventually(lambda: (s := d.snapshot()).scheduled == 1 and s)
    assert snap.next_retries[0].due_in_s == pytest.approx(5.0)
    clock.advance(5)
    assert handle.result(timeout=WAIT_S) == "ok"
    assert calls == [100.0, 105.0]


@pytest.mark.both_brokers
def test_permanent_error_skips_retries(make_dispatcher, tasks: TaskRegistry):
    def bad_input() -> None:
        raise Permanent("malformed record")

    tasks.register("bad_input", bad_input)
    d = make_dispatcher(retry=NO_JITTER)
    handle = d.submit(bad_input)
    failed_with(handle, Permanent, "malformed record")
    assert handle.attempts == 1
    assert d.dlq_get(handle.id).reason == "not retryable: raised Permanent"


@pytest.mark.both_brokers
def test_retry_only_on_given_exception_types(make_dispatcher, clock: FakeClock, tasks: TaskRegistry):
    policy = RetryPolicy(max_retries=3, base_s=1.0, jitter="none", retry_on=(ConnectionError,))
    d = make_dispatcher(retry=policy)

    def typo() -> None:
        raise TypeError("not retryable")

    tasks.register("typo", typo)
    handle = d.submit(typo)
    failed_with(handle, TypeError, "not retryable")
    assert handle.attempts == 1
    assert d.dlq_get(handle.id).reason == "not retryable: TypeError is not in retry_on"

    attempts = []

    def reconnect() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionResetError("reset")
        return "connected"

    tasks.register("reconnect", reconnect)
    handle = d.submit(reconnect)
    eventually(lambda: len(attempts) == 1 and d.snapshot().scheduled == 1)
    clock.advance(1)
    eventually(lambda: len(attempts) == 2 and d.snapshot().scheduled == 1)
    clock.advance(2)
    assert handle.result(timeout=WAIT_S) == "connected" and handle.attempts == 3


@pytest.mark.both_brokers
def test_a_waiting_retry_occupies_no_worker(make_dispatcher, clock: FakeClock):
    d = make_dispatcher(min_workers=1, max_workers=1, retry=NO_JITTER)
    failing = d.submit(always_fails)
    eventually(lambda: d.snapshot().scheduled == 1)
    assert d.submit(abs, -3).result(timeout=WAIT_S) == 3  # the only worker is free
    assert not failing.done()


# -- the dead-letter queue --------------------------------------------------------------------
@pytest.mark.both_brokers
def test_dlq_entry_has_everything_needed_to_debug(make_dispatcher, clock: FakeClock):
    d = make_dispatcher(retry=RetryPolicy(max_retries=1, base_s=10.0, jitter="none"))
    handle = d.submit_job(always_fails, ("disk full", ), name="import-batch")
    eventually(lambda: d.snapshot().scheduled == 1)
    clock.advance(10)
    failed_with(handle, ValueError, "disk full")
    [entry] = d.dlq_list()
    assert entry.job_id == handle.id and entry.name == "import-batch"
    assert entry.args_repr == "('disk full')"
    assert entry.exc_type == "ValueError" and entry.exc_message == "disk full"
    assert "in always_fails" in entry.traceback and "ValueError: disk full" in entry.traceback
    assert entry.attempts == 2
    assert entry.first_failure_at == 1_700_000_000.0
    assert entry.last_failure_at == 1_700_000_010.0
    assert entry.reason == "retries exhausted (1 retries)"
    assert d.dlq_get(handle.id) == entry


@pytest.mark.both_brokers
def test_dlq_args_repr_is_truncated(make_dispatcher):
    d = make_dispatcher(retry=RetryPolicy(max_retries=0))
    handle = d.submit(always_fails, "x" * 10_000)
    eventually(lambda: handle.done())
    entry = d.dlq_get(handle.id)
    assert len(entry.args_repr) <= 200 and "..." in entry.args_repr


@pytest.mark.both_brokers
def test_dlq_requeue_delete_and_purge(make_dispatcher, tasks: TaskRegistry):
    d = make_dispatcher(retry=RetryPolicy(max_retries=0))
    outcomes = {"fail": True}

    def sometimes() -> str:
        if outcomes["fail"]:
            raise RuntimeError("down")
        return "up"

    tasks.register("sometimes", sometimes)
    handles = [d.submit(sometimes) for _ in range(4)]
    eventually(lambda: d.snapshot().dlq_size == 4)
    ids = [h.id for h in handles]
    assert [e.job_id for e in d.dlq_list()] == ids
    assert [e.job_id for e in d.dlq_list(offset=1, limit=2)] == ids[1:3]

    outcomes["fail"] = False
    again = d.dlq_requeue(ids[0])
    assert again.id == ids[0] and again is not handles[0]
    assert again.result(timeout=WAIT_S) == "up" and again.attempts == 1
    assert d.dlq_delete(ids[1]).job_id == ids[1]
    with pytest.raises(JobNotFound, match=f"no dead-lettered job with id {ids[1]}"):
        d.dlq_get(ids[1])
    with pytest.raises(JobNotFound):
        d.dlq_requeue(ids[1])
    rest = d.dlq_requeue_all()
    assert [h.id for h in rest] == ids[2:]
    assert [h.result(timeout=WAIT_S) for h in rest] == ["up", "up"]
    outcomes["fail"] = True
    eventually(lambda: d.submit(sometimes).exception(timeout=WAIT_S) is not None)
    assert d.dlq_purge() == 1 and d.dlq_list() == []
    c = d.snapshot().counters
    assert (c.submitted, c.requeued, c.succeeded, c.dead_lettered) == (8, 3, 3, 5)
    assert d.snapshot().consistent


def test_dlq_cap_evicts_oldest_and_counts_and_logs(make_dispatcher, caplog):
    d = make_dispatcher(retry=RetryPolicy(max_retries=0), dlq_max=2)
    with caplog.at_level(logging.WARNING, logger="engine"):
        for n in range(5):
            d.submit(always_fails, f"e{n}").exception(timeout=WAIT_S)
        eventually(lambda: d.snapshot().counters.dlq_evicted == 3)

        def evictions() -> list[str]:
            return [r.getMessage() for r in caplog.records if "evicted" in r.getMessage()]

        eventually(lambda: len(evictions()) == 3, what="three eviction log lines")
    assert [e.exc_message for e in d.dlq_list()] == ["e3", "e4"]
    assert "e0" in evictions()[0] and "e2" in evictions()[2]


# -- cancel, pause, bounded intake --------------------------------------------------------------
@pytest.mark.both_brokers
def test_cancel_queued_and_scheduled_but_not_running(make_dispatcher, gate: Gate, clock: FakeClock, broker_kind):
    d = make_dispatcher(min_workers=1, max_workers=1, retry=NO_JITTER)
    running = d.submit(gate.job, "r")
    gate.wait_entered(1)
    queued = d.submit(abs, -1)
    assert running.cancel() is False
    assert queued.cancel() is True and queued.cancel() is True
    with pytest.raises(cf.CancelledError):
        queued.result(timeout=0)
    assert queued.state is JobState.CANCELLED
    gate.open()
    assert running.result(timeout=WAIT_S) == "r"

    failing = d.submit(always_fails)
    eventually(lambda: d.snapshot().scheduled == 1)
    assert failing.cancel() is True
    clock.advance(60)
    snap = d.snapshot()
    assert snap.scheduled == 0 and snap.counters.cancelled == 2 and failing.state is JobState.CANCELLED
    if broker_kind == "memory":  # a handle on Redis learns its attempts only from how the job ended
        assert failing.attempts == 1
    assert snap.consistent


@pytest.mark.both_brokers
def test_pause_holds_jobs_and_resume_releases_them(make_dispatcher):
    d = make_dispatcher(min_workers=2, max_workers=2)
    d.pause()
    assert d.paused and d.state.value == "paused"
    handles = [d.submit(abs, -n) for n in range(10)]
    snap = d.snapshot()
    assert snap.backlog == 10 and snap.in_flight == 0 and not any(h.done() for h in handles)
    d.resume()
    assert [h.result(timeout=WAIT_S) for h in handles] == list(range(10))


def test_bounded_intake_blocks_or_raises(make_dispatcher):
    d = make_dispatcher(max_queue=3)
    d.pause()
    for n in range(3):
        d.submit(abs, n)
    with pytest.raises(QueueFull, match=r"backlog is full \(3/3 jobs\)"):
        d.submit_job(abs, (1,), block=False)
    with pytest.raises(QueueFull, match=r"stayed full for 0\.01s"):
        d.submit_job(abs, (1,), block_timeout_s=0.01)
    with pytest.raises(QueueFull, match="batch of 4 jobs cannot fit"):
        d.submit_many(abs, [(1,)] * 4)

    released = threading.Event()
    blocked = []

    def producer() -> None:
        blocked.append(d.submit_job(abs, (-7,), block_timeout_s=WAIT_S))
        released.set()

    t = threading.Thread(target=producer)
    t.start()
    d.resume()  # the backlog drains, so the blocked submit gets room
    assert released.wait(WAIT_S)
    t.join(WAIT_S)
    assert blocked[0].result(timeout=WAIT_S) == 7


# -- robustness ---------------------------------------------------------------------------------
@pytest.mark.both_brokers
def test_failing_callbacks_and_base_exceptions_do_not_kill_workers(make_dispatcher, caplog, tasks: TaskRegistry):
    d = make_dispatcher(min_workers=1, max_workers=1, retry=RetryPolicy(max_retries=0))

    def explode(_future: cf.Future) -> None:
        raise RuntimeError("callback bug")

    def exits() -> None:
        raise SystemExit(3)

    tasks.register("exits", exits)
    with caplog.at_level(logging.ERROR, logger="engine"):
        h = d.submit(abs, -1)
        h.add_done_callback(explode)
        assert h.result(timeout=WAIT_S) == 1
        failed_with(d.submit(exits), SystemExit, "3")
        assert d.submit(abs, -2).result(timeout=WAIT_S) == 2
    assert any("callback" in r.getMessage() for r in caplog.records)
    assert d.snapshot().workers_total == 1


def test_a_failing_log_handler_does_not_stop_the_timer(make_dispatcher, clock: FakeClock):
    class Broken(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise RuntimeError("handler bug")

        def handleError(self, record: logging.LogRecord) -> None:
            raise RuntimeError("handleError bug too")

    logger = logging.getLogger("engine.test.broken")
    logger.propagate = False
    logger.addHandler(Broken())
    logger.setLevel(logging.INFO)
    d = make_dispatcher(log_interval_s=1, logger=logger, retry=NO_JITTER)
    handle = d.submit(always_fails)
    for attempt in (1, 2, 3):
        eventually(lambda: handle.attempts == attempt and d.snapshot().scheduled == 1)
        clock.advance(5)  # past the due retry and past a log interval
    eventually(lambda: handle.attempts == 4, what="retries keep falling due")
    assert isinstance(handle.exception(timeout=WAIT_S), ValueError)


@pytest.mark.both_brokers
def test_snapshots_stay_consistent_under_load(make_dispatcher, tasks: TaskRegistry, broker_kind):
    d = make_dispatcher(min_workers=4, max_workers=4, retry=RetryPolicy(max_retries=1, base_s=0.0))
    rnd = random.Random(3)
    total = 20_000 if broker_kind == "memory" else 3_000  # each Redis snapshot is a round trip
    outcomes = [rnd.random() < 0.2 for _ in range(total)]

    def job(fail: bool) -> None:
        if fail:
            raise ValueError("x")

    tasks.register("job", job)
    stop = threading.Event()
    bad = []

    def watch() -> None:
        while not stop.is_set():
            s = d.snapshot(workers=False)
            if not s.consistent:
                bad.append(s)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        handles = d.submit_many(job, [(f,) for f in outcomes])
        assert d.join(timeout_s=30)
    finally:
        stop.set()
        watcher.join(WAIT_S)
    assert not bad
    c = d.snapshot().counters
    assert c.succeeded + c.dead_lettered == total
    assert c.dead_lettered == sum(1 for h in handles if h.exception() is not None)
    assert c.dead_lettered == sum(outcomes)  # failing jobs fail both attempts


def test_a_thousand_workers(clock, rng):
    d = Dispatcher(min_workers=1000, max_workers=1000, autoscale=False, clock=clock, rng=rng, log_interval_s=0)
    try:
        handles = d.submit_many(abs, [(-n,) for n in range(5000)])
        assert d.join(timeout_s=30)
        assert sum(h.result() for h in handles) == sum(range(5000))
        assert d.snapshot().workers_total == 1000
    finally:
        d.shutdown()
    assert d.snapshot().workers_total == 0


def test_periodic_log_line(make_dispatcher, clock: FakeClock, caplog):
    d = make_dispatcher(log_interval_s=10)
    d.submit(abs, 1).result(timeout=WAIT_S)
    with caplog.at_level(logging.INFO, logger="engine"):
        clock.advance(10)
        eventually(lambda: any("successful=" in r.getMessage() for r in caplog.records))
    line = next(r.getMessage() for r in caplog.records if "successful=" in r.getMessage())
    assert "successful=1 failed=0 retries=0 total=1" in line and "backlog=0" in line


@pytest.mark.both_brokers
def test_permanent_reason_wins_even_without_retries(make_dispatcher, tasks: TaskRegistry):
    def bad() -> None:
        raise Permanent("no")

    tasks.register("bad", bad)
    d = make_dispatcher(retry=RetryPolicy(max_retries=0))
    handle = d.submit(bad)
    handle.exception(timeout=WAIT_S)
    eventually(lambda: d.snapshot().dlq_size == 1)
    assert d.dlq_get(handle.id).reason == "not retryable: raised Permanent"


def test_a_nested_function_needs_an_explicit_task_name():
    tasks = TaskRegistry()

    def inner() -> None: ...

    with pytest.raises(ConfigError, match=r"defined inside a function.*explicit one"):
        tasks.task(inner)
    tasks.task("inner")(inner)
    assert "inner" in tasks
