"""Stress: 100,000 jobs with seeded random failures under autoscaling, checked exactly. Every job
succeeds exactly once or ends in the DLQ, and the counters agree with what the jobs saw."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from engine import AutoscalePolicy, Dispatcher, JobState, RetryPolicy

JOBS = 100_000
MAX_RETRIES = 2
WAIT_S = 60.0  # generous bound; the test takes a few seconds on 2 cores


@pytest.mark.slow
def test_100k_jobs_with_random_failures_under_autoscaling():
    rng = random.Random(1204)
    # How many times each job fails before it succeeds; 3 or more means it never does.
    failures = rng.choices([0, 1, 2, 3], weights=[70, 15, 7, 8], k=JOBS)
    calls = [0] * JOBS  # attempts of one job never overlap, and the dispatcher's lock orders them
    successes = [0] * JOBS

    def job(index: int) -> int:
        call = calls[index]
        calls[index] = call + 1
        if call < failures[index]:
            raise ValueError(f"job {index} fails call {call + 1}")
        successes[index] += 1
        return index

    policy = AutoscalePolicy(interval_s=0.05, up_sustain_s=0.1, up_cooldown_s=0.1,
                             down_sustain_s=0.2, down_cooldown_s=0.2)
    d = Dispatcher(
        min_workers=2, max_workers=16, autoscale=policy,
        retry=RetryPolicy(max_retries=MAX_RETRIES, base_s=0.0, jitter="none"),
        rng=random.Random(7), log_interval_s=0, name="stress",
    )
    started = time.monotonic()
    peak_workers = 0
    try:
        handles = d.submit_many(job, [(i,) for i in range(JOBS)])
        while not d.join(timeout_s=0.05):
            assert time.monotonic() - started < WAIT_S, "the stress run did not finish in time"
            snap = d.snapshot(workers=False)
            assert snap.consistent, snap
            assert snap.workers_total - snap.workers_retiring <= 16
            assert snap.workers_total >= 2
            peak_workers = max(peak_workers, snap.workers_total)
    finally:
        report = d.shutdown(wait=True, timeout_s=WAIT_S)
    assert not report.escalated and report.cancelled == () and report.abandoned == ()

    expected_dead = {i for i, f in enumerate(failures) if f > MAX_RETRIES}
    states: Counter[JobState] = Counter()
    for index, handle in enumerate(handles):
        f = failures[index]
        assert handle.done()
        states[handle.state] += 1
        if f <= MAX_RETRIES:
            assert handle.state is JobState.SUCCEEDED, (index, f, handle)
            assert handle.result(timeout=0) == index
            assert successes[index] == 1 and calls[index] == handle.attempts == f + 1
        else:
            assert handle.state is JobState.DEAD_LETTERED, (index, f, handle)
            assert successes[index] == 0 and calls[index] == handle.attempts == MAX_RETRIES + 1
    assert states[JobState.SUCCEEDED] == JOBS - len(expected_dead)
    assert states[JobState.DEAD_LETTERED] == len(expected_dead)

    # The DLQ holds exactly the jobs that never succeeded, each after every allowed attempt.
    entries = []
    while batch := d.dlq_list(offset=len(entries), limit=1000):
        entries.extend(batch)
    id_of = {h.id: i for i, h in enumerate(handles)}
    assert {id_of[e.job_id] for e in entries} == expected_dead and len(entries) == len(expected_dead)
    assert all(e.attempts == MAX_RETRIES + 1 and e.exc_type == "ValueError" for e in entries)

    snap = d.snapshot()
    c = snap.counters
    assert snap.consistent and snap.unfinished == 0 and snap.dlq_size == len(expected_dead)
    assert c.submitted == JOBS
    assert c.succeeded == JOBS - len(expected_dead)
    assert c.dead_lettered == len(expected_dead)
    assert c.failed == sum(min(f, MAX_RETRIES + 1) for f in failures) == sum(calls) - c.succeeded
    assert c.retries == sum(min(f, MAX_RETRIES) for f in failures)
    assert dict(snap.retries_by_attempt) == {
        1: sum(1 for f in failures if f >= 1),
        2: sum(1 for f in failures if f >= 2),
    }
    assert c.cancelled == c.timed_out == c.dlq_evicted == 0
    # Autoscaling took part: the backlog of 100,000 made the pool grow (bounds checked above).
    assert c.scale_ups >= 1 and peak_workers > 2
