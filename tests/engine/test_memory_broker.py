"""The in-memory broker on its own: FIFO backlog, lazy discard, the retry schedule ordered by due
time (ties by insertion), drain, and the capped DLQ. The dispatcher sets a job's state before it
hands the job to the broker; these tests do the same."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import (
    ConfigError,
    DeadLetter,
    JobHandle,
    JobOptions,
    JobState,
    MemoryBroker,
    RetryPolicy,
)

OPTIONS = JobOptions(None, RetryPolicy(), None)


def job(job_id: int, enqueued_at: float = 0.0) -> JobHandle:
    handle = JobHandle(None, job_id, print, (), None, f"job-{job_id}", OPTIONS)
    handle._enqueued_at = enqueued_at
    return handle


def push(broker: MemoryBroker, handle: JobHandle) -> JobHandle:
    handle._job_state = JobState.QUEUED
    broker.push(handle)
    return handle


def schedule(broker: MemoryBroker, handle: JobHandle, due_at: float) -> JobHandle:
    handle._job_state = JobState.SCHEDULED
    broker.schedule(handle, due_at)
    return handle


def discard(broker: MemoryBroker, handle: JobHandle) -> bool:
    removed = broker.discard(handle)
    if removed:
        handle._job_state = JobState.CANCELLED
    return removed


def pop(broker: MemoryBroker) -> JobHandle | None:
    handle = broker.pop()
    if handle is not None:
        handle._job_state = JobState.RUNNING
    return handle


def ids(jobs) -> list[int]:
    return [j.id for j in jobs]


def entry(job_id: int, message: str = "boom") -> DeadLetter:
    return DeadLetter(
        job_id=job_id, name=f"job-{job_id}", task=None, args_repr="()", exc_type="ValueError",
        exc_message=message, traceback="Traceback...", attempts=1, first_failure_at=1.0,
        last_failure_at=2.0, reason="retries exhausted (0 retries)",
    )


# -- the backlog -------------------------------------------------------------------------------
def test_backlog_is_fifo():
    broker = MemoryBroker()
    assert broker.pop() is None and broker.backlog_len() == 0 and broker.oldest_enqueued_at() is None
    for i in range(1, 6):
        push(broker, job(i, enqueued_at=float(i)))
    assert broker.backlog_len() == 5
    assert broker.oldest_enqueued_at() == 1.0
    assert [pop(broker).id for _ in range(5)] == [1, 2, 3, 4, 5]
    assert broker.pop() is None and broker.backlog_len() == 0


def test_discard_is_lazy_and_the_skipped_job_never_comes_out():
    broker = MemoryBroker()
    jobs = [push(broker, job(i, enqueued_at=float(i))) for i in range(1, 7)]
    assert discard(broker, jobs[0]) and discard(broker, jobs[3])
    assert broker.backlog_len() == 4
    assert broker.oldest_enqueued_at() == 2.0  # the discarded head is skipped
    assert not discard(broker, jobs[3])  # twice: already gone
    assert broker.backlog_len() == 4
    assert [pop(broker).id for _ in range(4)] == [2, 3, 5, 6]
    assert broker.pop() is None and broker.backlog_len() == 0 and broker.oldest_enqueued_at() is None


def test_discard_of_a_running_or_finished_job_is_refused():
    broker = MemoryBroker()
    running = push(broker, job(1))
    assert pop(broker) is running
    assert not broker.discard(running)
    for state in (JobState.SUCCEEDED, JobState.DEAD_LETTERED, JobState.CANCELLED):
        done = job(2)
        done._job_state = state
        assert not broker.discard(done)
    assert broker.backlog_len() == 0 and broker.scheduled_len() == 0


@pytest.mark.parametrize("state", [JobState.QUEUED, JobState.SCHEDULED])
def test_discard_of_a_job_the_broker_does_not_hold_is_refused(state):
    broker = MemoryBroker()
    stranger = job(99)
    stranger._job_state = state
    assert broker.discard(stranger) is False
    assert broker.backlog_len() == 0 and broker.scheduled_len() == 0


def test_a_discarded_job_in_the_middle_does_not_disturb_order_or_counts():
    broker = MemoryBroker()
    jobs = [push(broker, job(i)) for i in range(1, 1001)]
    for j in jobs[1::2]:
        assert discard(broker, j)
    assert broker.backlog_len() == 500
    assert ids(iter(broker.pop, None)) == list(range(1, 1001, 2))


# -- the retry schedule --------------------------------------------------------------------------
def test_schedule_orders_by_due_time_then_by_insertion():
    broker = MemoryBroker()
    order = [(1, 5.0), (2, 3.0), (3, 5.0), (4, 1.0), (5, 3.0), (6, 5.0), (7, 0.5)]
    for job_id, due in order:
        schedule(broker, job(job_id), due)
    assert broker.scheduled_len() == 7 and broker.next_due() == 0.5
    assert [(due, j.id) for due, j in broker.peek_scheduled(10)] == [
        (0.5, 7), (1.0, 4), (3.0, 2), (3.0, 5), (5.0, 1), (5.0, 3), (5.0, 6)
    ]
    assert broker.scheduled_len() == 7  # peeking takes nothing


def test_pop_due_takes_everything_due_at_or_before_now_in_due_order():
    broker = MemoryBroker()
    for job_id, due in [(1, 5.0), (2, 3.0), (3, 5.0), (4, 1.0), (5, 3.0)]:
        schedule(broker, job(job_id), due)
    assert broker.pop_due(0.999) == []
    assert ids(broker.pop_due(1.0)) == [4]  # due exactly now counts
    assert ids(broker.pop_due(4.0)) == [2, 5]
    assert broker.next_due() == 5.0 and broker.scheduled_len() == 2
    assert ids(broker.pop_due(100.0)) == [1, 3]
    assert broker.next_due() is None and broker.scheduled_len() == 0 and broker.pop_due(1e9) == []


def test_discarded_scheduled_jobs_are_skipped_everywhere():
    broker = MemoryBroker()
    jobs = {i: schedule(broker, job(i), float(i)) for i in range(1, 9)}
    for i in (1, 2, 5):
        assert discard(broker, jobs[i])
    assert not discard(broker, jobs[5])
    assert broker.scheduled_len() == 5
    assert [j.id for _, j in broker.peek_scheduled(3)] == [3, 4, 6]
    assert [j.id for _, j in broker.peek_scheduled(100)] == [3, 4, 6, 7, 8]
    assert broker.next_due() == 3.0
    assert ids(broker.pop_due(6.0)) == [3, 4, 6]
    assert broker.scheduled_len() == 2
    assert ids(broker.pop_due(10.0)) == [7, 8]
    assert broker.scheduled_len() == 0 and broker.next_due() is None


def test_peek_scheduled_with_many_discarded_ahead():
    broker = MemoryBroker()
    jobs = [schedule(broker, job(i), float(i)) for i in range(1, 51)]
    for j in jobs[:40]:
        discard(broker, j)
    assert [j.id for _, j in broker.peek_scheduled(5)] == [41, 42, 43, 44, 45]
    assert broker.peek_scheduled(0) == []


def test_a_job_can_move_from_schedule_to_backlog_and_back():
    broker = MemoryBroker()
    handle = schedule(broker, job(1, enqueued_at=0.0), 2.0)
    (due,) = broker.pop_due(2.0)
    due._enqueued_at = 2.0
    push(broker, due)  # what the dispatcher does when a retry falls due
    assert broker.scheduled_len() == 0 and broker.backlog_len() == 1
    assert pop(broker) is handle
    schedule(broker, handle, 6.0)
    assert broker.scheduled_len() == 1 and broker.next_due() == 6.0


# -- drain -------------------------------------------------------------------------------------
def test_drain_returns_backlog_then_schedule_in_order_without_discarded_jobs():
    broker = MemoryBroker()
    backlog = [push(broker, job(i)) for i in (1, 2, 3)]
    scheduled = [schedule(broker, job(i), due) for i, due in ((4, 9.0), (5, 1.0), (6, 4.0))]
    discard(broker, backlog[1])
    discard(broker, scheduled[2])
    assert ids(broker.drain()) == [1, 3, 5, 4]
    assert broker.backlog_len() == 0 and broker.scheduled_len() == 0
    assert broker.pop() is None and broker.next_due() is None and broker.oldest_enqueued_at() is None
    assert broker.drain() == []
    push(broker, job(7))  # still usable, and its counts start clean
    schedule(broker, job(8), 1.0)
    assert broker.backlog_len() == 1 and broker.scheduled_len() == 1


# -- the dead-letter queue -----------------------------------------------------------------------
def test_dlq_keeps_entries_oldest_first_and_finds_them_by_id():
    broker = MemoryBroker()
    jobs = {i: job(i) for i in (3, 1, 2)}
    for i in (3, 1, 2):
        assert broker.dead_letter(jobs[i], entry(i)) == []
    assert broker.dlq_len() == 3
    assert [e.job_id for e in broker.dlq_list(0, 10)] == [3, 1, 2]
    assert broker.dlq_get(1) == entry(1) and broker.dlq_get(42) is None
    taken = broker.dlq_take(1)
    assert taken is not None and taken[0] == entry(1) and taken[1] is jobs[1]
    assert broker.dlq_take(1) is None
    assert [e.job_id for e in broker.dlq_list(0, 10)] == [3, 2]
    all_taken = broker.dlq_take_all()
    assert [(e.job_id, j) for e, j in all_taken] == [(3, jobs[3]), (2, jobs[2])]
    assert broker.dlq_len() == 0 and broker.dlq_list(0, 10) == [] and broker.dlq_take_all() == []


def test_dlq_cap_evicts_the_oldest_first_and_returns_them():
    broker = MemoryBroker(dlq_max=3)
    evicted = [broker.dead_letter(job(i), entry(i)) for i in range(1, 7)]
    assert [[e.job_id for e in batch] for batch in evicted] == [[], [], [], [1], [2], [3]]
    assert broker.dlq_len() == 3
    assert [e.job_id for e in broker.dlq_list(0, 10)] == [4, 5, 6]
    assert broker.dlq_get(1) is None


def test_dlq_cap_of_one():
    broker = MemoryBroker(dlq_max=1)
    assert broker.dead_letter(job(1), entry(1)) == []
    assert [e.job_id for e in broker.dead_letter(job(2), entry(2))] == [1]
    assert [e.job_id for e in broker.dlq_list(0, 5)] == [2]


def test_dlq_cap_counts_after_a_take():
    broker = MemoryBroker(dlq_max=2)
    broker.dead_letter(job(1), entry(1))
    broker.dead_letter(job(2), entry(2))
    broker.dlq_take(1)
    assert broker.dead_letter(job(3), entry(3)) == []  # room was made
    assert [e.job_id for e in broker.dead_letter(job(4), entry(4))] == [2]
    assert [e.job_id for e in broker.dlq_list(0, 5)] == [3, 4]


@pytest.mark.parametrize(
    ("offset", "limit", "expected"),
    [
        (0, 3, [1, 2, 3]),
        (3, 3, [4, 5, 6]),
        (9, 3, [10]),
        (10, 3, []),
        (50, 3, []),
        (0, 100, list(range(1, 11))),
        (4, 1, [5]),
    ],
)
def test_dlq_list_pages(offset, limit, expected):
    broker = MemoryBroker()
    for i in range(1, 11):
        broker.dead_letter(job(i), entry(i))
    assert [e.job_id for e in broker.dlq_list(offset, limit)] == expected


@pytest.mark.parametrize("dlq_max", [0, -1, 1.5, True, "10"])
def test_bad_dlq_max_raises_config_error_naming_it(dlq_max):
    with pytest.raises(ConfigError, match="dlq_max"):
        MemoryBroker(dlq_max=dlq_max)


# -- against a model, over random operation sequences ----------------------------------------------
operations = st.lists(
    st.one_of(
        st.tuples(st.just("push")),
        st.tuples(st.just("pop")),
        st.tuples(st.just("schedule"), st.integers(0, 20)),
        st.tuples(st.just("pop_due"), st.integers(0, 20)),
        st.tuples(st.just("discard"), st.integers(0, 1000)),
        st.tuples(st.just("drain")),
    ),
    max_size=60,
)


@given(operations)
def test_broker_matches_a_simple_model(ops):
    broker = MemoryBroker()
    backlog: list[JobHandle] = []  # model: FIFO list
    sched: list[tuple[float, int, JobHandle]] = []  # model: (due, insertion, job), kept sorted
    known: list[JobHandle] = []
    seq = 0
    for op in ops:
        kind = op[0]
        if kind == "push":
            seq += 1
            backlog.append(push(broker, job(seq)))
            known.append(backlog[-1])
        elif kind == "pop":
            got = pop(broker)
            expected = backlog.pop(0) if backlog else None
            assert got is expected
        elif kind == "schedule":
            seq += 1
            handle = schedule(broker, job(seq), float(op[1]))
            sched.append((float(op[1]), seq, handle))
            sched.sort(key=lambda item: (item[0], item[1]))
            known.append(handle)
        elif kind == "pop_due":
            now = float(op[1])
            due = [j for d, _, j in sched if d <= now]
            sched = [item for item in sched if item[0] > now]
            got = broker.pop_due(now)
            assert got == due
            for handle in got:  # as the dispatcher does: back to the backlog
                push(broker, handle)
                backlog.append(handle)
        elif kind == "discard" and known:
            handle = known[op[1] % len(known)]
            held = handle in backlog or any(j is handle for _, _, j in sched)
            assert discard(broker, handle) is held
            if handle in backlog:
                backlog.remove(handle)
            sched = [item for item in sched if item[2] is not handle]
        elif kind == "drain":
            assert broker.drain() == backlog + [j for _, _, j in sched]
            for handle in backlog + [j for _, _, j in sched]:
                handle._job_state = JobState.CANCELLED
            backlog, sched = [], []
        assert broker.backlog_len() == len(backlog)
        assert broker.scheduled_len() == len(sched)
        assert broker.next_due() == (sched[0][0] if sched else None)
        assert [j for _, j in broker.peek_scheduled(3)] == [j for _, _, j in sched[:3]]
