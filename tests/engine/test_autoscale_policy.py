"""The autoscaling decision, a pure function of (stats, policy, memory): exact decisions for
growing, shrinking, sustain windows, cooldowns, bounds and hysteresis, and the policy's checks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import AutoscalePolicy, ConfigError, ScaleDecision, ScaleStats, decide_scale
from engine.policy.autoscale import ScaleMemory

POLICY = AutoscalePolicy(
    interval_s=1.0,
    up_backlog_per_worker=2.0,
    up_utilisation=0.8,
    up_sustain_s=2.0,
    up_cooldown_s=3.0,
    up_step_fraction=1.0,
    down_utilisation=0.2,
    down_sustain_s=5.0,
    down_cooldown_s=10.0,
    down_step_fraction=0.5,
)


def stats(
    now: float,
    *,
    workers: int = 4,
    idle: int = 0,
    backlog: int = 0,
    util: float = 0.5,
    lo: int = 1,
    hi: int = 16,
) -> ScaleStats:
    return ScaleStats(now=now, workers=workers, idle=idle, backlog=backlog, utilisation=util,
                      min_workers=lo, max_workers=hi)


def run(
    policy: AutoscalePolicy, seq: list[ScaleStats], memory: ScaleMemory | None = None
) -> tuple[list[ScaleDecision], ScaleMemory]:
    """Evaluate a sequence of stats as the dispatcher would, returning every decision."""
    memory = memory or ScaleMemory()
    decisions = []
    for s in seq:
        decision, memory = decide_scale(s, policy, memory)
        decisions.append(decision)
    return decisions, memory


def deltas(decisions: list[ScaleDecision]) -> list[int]:
    return [d.delta for d in decisions]


# -- growing -----------------------------------------------------------------------------------
def test_backlog_grows_the_pool_only_after_up_sustain():
    decisions, memory = run(POLICY, [stats(t, backlog=100) for t in (0.0, 1.0, 2.0)])
    assert deltas(decisions) == [0, 0, 4]  # step: 4 workers * fraction 1.0
    reason = decisions[2].reason
    assert "backlog 100" in reason and "25.0/worker" in reason and "for 2.0s" in reason
    assert not decisions[0].changes and decisions[2].changes
    assert memory == ScaleMemory(high_since=None, low_since=None, last_change_at=2.0)


def test_the_high_window_is_remembered_from_its_first_evaluation():
    decision, memory = decide_scale(stats(7.5, backlog=100), POLICY, ScaleMemory())
    assert decision == ScaleDecision(0, "")
    assert memory == ScaleMemory(high_since=7.5, low_since=None, last_change_at=None)
    decision, memory = decide_scale(stats(9.0, backlog=100), POLICY, memory)
    assert decision.delta == 0 and memory.high_since == 7.5
    decision, memory = decide_scale(stats(9.5, backlog=100), POLICY, memory)
    assert decision.delta == 4


@pytest.mark.parametrize(
    ("workers", "backlog", "expected"),
    [
        (4, 10, 1),  # 2.5/worker: ceil(10 / 2) - 4 = 1 more worker is enough
        (4, 9, 1),  # 2.25/worker: ceil(4.5) - 4 = 1
        (4, 13, 3),  # ceil(6.5) - 4 = 3
        (4, 17, 4),  # needs 5, but one step is at most 4 * 1.0
        (4, 1000, 4),
        (14, 1000, 2),  # never past max_workers = 16
        (15, 1000, 1),
    ],
)
def test_growth_step_is_bounded_by_need_by_fraction_and_by_max(workers, backlog, expected):
    decisions, _ = run(POLICY, [stats(t, workers=workers, backlog=backlog) for t in (0.0, 2.0)])
    assert deltas(decisions) == [0, expected]


@pytest.mark.parametrize(("workers", "fraction", "expected"), [(6, 0.5, 3), (7, 0.5, 3), (1, 0.5, 1), (3, 0.25, 1), (10, 2.0, 6)])
def test_growth_step_fraction_rounds_down_but_is_at_least_one(workers, fraction, expected):
    policy = AutoscalePolicy(up_sustain_s=0, up_cooldown_s=0, up_step_fraction=fraction)
    decision, _ = decide_scale(stats(0.0, workers=workers, backlog=10_000, hi=16), policy, ScaleMemory())
    assert decision.delta == expected


def test_high_utilisation_grows_the_pool_after_up_sustain():
    decisions, _ = run(POLICY, [stats(t, backlog=0, util=0.9) for t in (0.0, 1.0, 2.0)])
    assert deltas(decisions) == [0, 0, 4]
    assert decisions[2].reason == "utilisation 90% > 80% for 2.0s"


def test_thresholds_are_strict():
    seq = [stats(float(t), workers=4, backlog=8, util=0.8) for t in range(10)]  # exactly 2.0/worker, 80%
    decisions, memory = run(POLICY, seq)
    assert deltas(decisions) == [0] * 10
    assert memory.high_since is None and memory.low_since is None


def test_an_interrupted_high_condition_restarts_the_sustain_window():
    seq = [
        stats(0.0, backlog=100),
        stats(1.0, backlog=0, util=0.5),  # neither high nor low
        stats(2.0, backlog=100),
        stats(3.0, backlog=100),
        stats(4.0, backlog=100),
    ]
    decisions, _ = run(POLICY, seq)
    assert deltas(decisions) == [0, 0, 0, 0, 4]


def test_up_cooldown_spaces_consecutive_growth():
    policy = AutoscalePolicy(up_sustain_s=2.0, up_cooldown_s=5.0, up_step_fraction=1.0)
    times = [float(t) for t in range(13)]
    workers, history = 1, []
    memory = ScaleMemory()
    for t in times:
        decision, memory = decide_scale(stats(t, workers=workers, backlog=1000, hi=64), policy, memory)
        workers += decision.delta
        history.append(decision.delta)
    # Up at 2 (sustained 2 s); the window restarts at 3, but the cooldown holds until 7; then 12.
    assert history == [0, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 4]


def test_no_growth_at_max_workers_and_no_high_window_is_kept():
    decisions, memory = run(POLICY, [stats(float(t), workers=16, backlog=1000, util=1.0) for t in range(10)])
    assert deltas(decisions) == [0] * 10
    assert memory.high_since is None


def test_an_empty_pool_with_a_backlog_starts_one_worker():
    policy = AutoscalePolicy(up_sustain_s=1.0, up_cooldown_s=0.0)
    decisions, _ = run(policy, [stats(t, workers=0, backlog=5, util=0.0, lo=0) for t in (0.0, 0.5, 1.0)])
    assert deltas(decisions) == [0, 0, 1]


def test_an_empty_pool_without_backlog_stays_empty():
    decisions, memory = run(POLICY, [stats(float(t), workers=0, backlog=0, util=0.0, lo=0) for t in range(20)])
    assert deltas(decisions) == [0] * 20
    assert memory == ScaleMemory()


def test_zero_backlog_threshold_grows_by_a_full_step_on_any_backlog():
    policy = AutoscalePolicy(up_backlog_per_worker=0.0, up_sustain_s=0.0, up_cooldown_s=0.0)
    decision, _ = decide_scale(stats(0.0, workers=4, backlog=1, util=0.0), policy, ScaleMemory())
    assert decision.delta == 4


def test_zero_sustain_grows_on_the_first_evaluation():
    policy = AutoscalePolicy(up_sustain_s=0.0, up_cooldown_s=0.0)
    decision, memory = decide_scale(stats(3.0, workers=2, backlog=50), policy, ScaleMemory())
    assert decision.delta == 2 and memory.last_change_at == 3.0


# -- shrinking ---------------------------------------------------------------------------------
def idle_pool(t: float, workers: int = 8, idle: int | None = None, lo: int = 2, util: float = 0.1) -> ScaleStats:
    return stats(t, workers=workers, idle=workers if idle is None else idle, backlog=0, util=util, lo=lo)


def test_low_utilisation_with_empty_backlog_shrinks_after_down_sustain():
    decisions, memory = run(POLICY, [idle_pool(float(t)) for t in range(6)])
    assert deltas(decisions) == [0, 0, 0, 0, 0, -4]  # half of the 8 idle workers
    assert decisions[5].reason == "utilisation 10% < 20% with empty backlog for 5.0s"
    assert memory == ScaleMemory(last_change_at=5.0)


@pytest.mark.parametrize(
    ("workers", "idle", "lo", "fraction", "expected"),
    [
        (8, 1, 2, 0.5, -1),  # at least one, and only idle workers
        (8, 3, 2, 0.5, -1),  # floor(1.5)
        (8, 6, 2, 0.5, -3),
        (8, 8, 7, 0.5, -1),  # never below min_workers
        (8, 8, 5, 1.0, -3),
        (8, 2, 0, 1.0, -2),  # a full step is bounded by the idle count
        (8, 8, 0, 3.0, -8),  # a fraction above 1 is still bounded by idle and min
        (8, 3, 0, 3.0, -3),  # ... and never retires a busy worker
    ],
)
def test_shrink_step_is_bounded_by_idle_workers_and_min(workers, idle, lo, fraction, expected):
    policy = AutoscalePolicy(down_sustain_s=0.0, down_cooldown_s=0.0, down_step_fraction=fraction)
    decision, _ = decide_scale(idle_pool(0.0, workers=workers, idle=idle, lo=lo), policy, ScaleMemory())
    assert decision.delta == expected


def test_no_shrink_without_an_idle_worker():
    decisions, memory = run(POLICY, [idle_pool(float(t), idle=0) for t in range(30)])
    assert deltas(decisions) == [0] * 30
    assert memory.low_since == 0.0  # the condition holds; there is just nobody to retire


@pytest.mark.parametrize(
    ("backlog", "util", "workers", "lo"),
    [
        (1, 0.0, 8, 2),  # a backlog, however small, blocks shrinking
        (0, 0.2, 8, 2),  # utilisation exactly at the threshold is not low
        (0, 0.5, 8, 2),
        (0, 0.0, 2, 2),  # already at min_workers
    ],
)
def test_no_shrink_unless_backlog_empty_utilisation_low_and_above_min(backlog, util, workers, lo):
    seq = [stats(float(t), workers=workers, idle=workers, backlog=backlog, util=util, lo=lo) for t in range(30)]
    decisions, memory = run(POLICY, seq)
    assert deltas(decisions) == [0] * 30
    assert memory.low_since is None


def test_an_interrupted_low_condition_restarts_the_down_window():
    seq = [idle_pool(float(t)) for t in range(4)] + [stats(4.0, workers=8, idle=8, backlog=1, util=0.1)]
    seq += [idle_pool(float(t)) for t in range(5, 11)]
    decisions, _ = run(POLICY, seq)
    assert deltas(decisions) == [0] * 10 + [-4]  # the window restarts at 5: shrink at 10


def test_down_cooldown_follows_a_growth():
    seq = [stats(t, workers=4, backlog=100) for t in (0.0, 1.0, 2.0)]  # grows to 8 at t=2
    seq += [idle_pool(float(t)) for t in range(3, 14)]
    decisions, _ = run(POLICY, seq)
    # low from t=3; sustained 5 s at t=8, but 10 s must pass since the change at t=2: t=12.
    expected = [0, 0, 4] + [0] * 9 + [-4, 0]
    assert deltas(decisions) == expected


def test_down_cooldown_spaces_consecutive_shrinks():
    workers, memory, history = 16, ScaleMemory(), []
    for t in range(26):
        decision, memory = decide_scale(idle_pool(float(t), workers=workers, lo=1), POLICY, memory)
        workers += decision.delta
        history.append((t, decision.delta))
    assert [(t, d) for t, d in history if d] == [(5, -8), (15, -4), (25, -2)]


# -- bounds ------------------------------------------------------------------------------------
def test_below_min_moves_up_at_once_whatever_the_windows():
    decision, memory = decide_scale(stats(4.0, workers=1, backlog=0, util=0.0, lo=3), POLICY,
                                    ScaleMemory(high_since=1.0, low_since=2.0, last_change_at=3.9))
    assert decision == ScaleDecision(2, "below min_workers=3")
    assert memory == ScaleMemory(last_change_at=4.0)


def test_above_max_moves_down_at_once_even_with_busy_workers():
    decision, memory = decide_scale(stats(4.0, workers=10, idle=0, backlog=50, util=1.0, hi=6), POLICY, ScaleMemory())
    assert decision == ScaleDecision(-4, "above max_workers=6")
    assert memory == ScaleMemory(last_change_at=4.0)


def test_bound_corrections_apply_when_disabled():
    policy = AutoscalePolicy(enabled=False)
    assert decide_scale(stats(0.0, workers=1, lo=2), policy, ScaleMemory())[0].delta == 1
    assert decide_scale(stats(0.0, workers=9, hi=8), policy, ScaleMemory())[0].delta == -1


def test_a_bound_correction_starts_the_cooldown():
    seq = [stats(0.0, workers=1, backlog=100, lo=2)]  # corrected to 2 at t=0
    seq += [stats(t, workers=2, backlog=100, lo=2) for t in (1.0, 2.0, 3.0)]
    decisions, _ = run(POLICY, seq)
    # high from t=1, sustained at t=3, and 3 s since the change at t=0: grows by 2 at t=3.
    assert deltas(decisions) == [1, 0, 0, 2]


def test_disabled_policy_keeps_the_size_and_forgets_its_windows():
    policy = AutoscalePolicy(enabled=False, up_sustain_s=0.0, up_cooldown_s=0.0)
    memory = ScaleMemory(high_since=1.0, low_since=None, last_change_at=0.5)
    decisions, memory = run(policy, [stats(float(t), backlog=1000, util=1.0) for t in range(2, 10)], memory)
    assert deltas(decisions) == [0] * 8
    assert memory == ScaleMemory(last_change_at=0.5)


# -- hysteresis, over random sequences -----------------------------------------------------------
@dataclass
class Step:
    now: float
    stats: ScaleStats
    delta: int
    high: bool
    low: bool


evaluations = st.lists(
    st.tuples(
        st.sampled_from([0.1, 0.25, 0.5, 1.0, 2.0, 4.0]),  # time since the previous evaluation
        st.integers(0, 60),  # backlog
        st.floats(0.0, 1.0),  # utilisation
        st.floats(0.0, 1.0),  # idle fraction
    ),
    min_size=1,
    max_size=80,
)
policies = st.builds(
    AutoscalePolicy,
    up_backlog_per_worker=st.sampled_from([0.0, 1.0, 2.0, 5.0]),
    up_utilisation=st.sampled_from([0.7, 0.85, 0.95]),
    up_sustain_s=st.sampled_from([0.0, 0.5, 2.0]),
    up_cooldown_s=st.sampled_from([0.0, 1.0, 3.0]),
    up_step_fraction=st.sampled_from([0.25, 1.0, 2.0]),
    down_utilisation=st.sampled_from([0.1, 0.3, 0.5]),
    down_sustain_s=st.sampled_from([0.0, 1.0, 5.0]),
    down_cooldown_s=st.sampled_from([0.0, 2.0, 5.0]),
    down_step_fraction=st.sampled_from([0.25, 0.5, 1.0, 3.0]),
)


def simulate(policy: AutoscalePolicy, lo: int, hi: int, seq: list[tuple[float, int, float, float]]) -> list[Step]:
    """Feed the policy a sequence of evaluations, applying each decision to a simulated pool."""
    workers, now, memory, steps = lo, 0.0, ScaleMemory(), []
    for dt, backlog, util, idle_fraction in seq:
        now += dt
        idle = math.floor(workers * idle_fraction)
        s = ScaleStats(now=now, workers=workers, idle=idle, backlog=backlog, utilisation=util,
                       min_workers=lo, max_workers=hi)
        decision, memory = decide_scale(s, policy, memory)
        per_worker = backlog / workers if workers else (math.inf if backlog else 0.0)
        high = (per_worker > policy.up_backlog_per_worker or util > policy.up_utilisation) and workers < hi
        low = backlog == 0 and util < policy.down_utilisation and workers > lo
        steps.append(Step(now, s, decision.delta, high, low))
        workers += decision.delta
    return steps


@given(policy=policies, lo=st.integers(0, 4), extra=st.integers(0, 12), seq=evaluations)
def test_no_flapping_and_every_change_is_earned(policy, lo, extra, seq):
    hi = max(1, lo + extra)
    steps = simulate(policy, lo, hi, seq)
    last_change: int | None = None
    for i, step in enumerate(steps):
        s, delta = step.stats, step.delta
        after = s.workers + delta
        assert s.min_workers <= after <= s.max_workers  # the pool starts inside and never leaves
        if delta == 0:
            continue
        since = math.inf if last_change is None else step.now - steps[last_change].now
        # The condition must have held, uninterrupted and since the last change, for the sustain time.
        first = i
        attr = "high" if delta > 0 else "low"
        while first - 1 >= 0 and getattr(steps[first - 1], attr) and (last_change is None or first - 1 > last_change):
            first -= 1
        held_for = step.now - steps[first].now
        if delta > 0:
            assert step.high
            assert since >= policy.up_cooldown_s
            assert held_for >= policy.up_sustain_s
            assert delta <= max(1, math.floor(s.workers * policy.up_step_fraction))
        else:
            assert step.low and s.backlog == 0
            assert since >= policy.down_cooldown_s  # in particular, never soon after a growth
            assert held_for >= policy.down_sustain_s
            assert -delta <= s.idle  # only idle workers are retired
        last_change = i


@given(policy=policies, dts=st.lists(st.sampled_from([0.1, 0.25, 0.5, 1.0]), min_size=1, max_size=60))
def test_a_sustained_backlog_grows_the_pool_at_the_first_due_evaluation(policy, dts):
    now, times = 0.0, []
    for dt in dts:
        now += dt
        times.append(now)
    hi = 1000
    memory, first_up = ScaleMemory(), None
    for t in times:
        decision, memory = decide_scale(stats(t, workers=2, backlog=10_000, util=1.0, lo=1, hi=hi), policy, memory)
        if decision.delta:
            first_up = t
            break
    due = [t for t in times if t - times[0] >= policy.up_sustain_s]
    assert first_up == (due[0] if due else None)


# -- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"interval_s": 0}, "interval_s"),
        ({"interval_s": -1.0}, "interval_s"),
        ({"interval_s": math.inf}, "interval_s"),
        ({"up_sustain_s": -0.1}, "up_sustain_s"),
        ({"up_cooldown_s": math.nan}, "up_cooldown_s"),
        ({"down_sustain_s": -5}, "down_sustain_s"),
        ({"down_cooldown_s": "5"}, "down_cooldown_s"),
        ({"up_backlog_per_worker": -1}, "up_backlog_per_worker"),
        ({"up_utilisation": 1.5}, "up_utilisation"),
        ({"up_utilisation": True}, "up_utilisation"),
        ({"down_utilisation": -0.1}, "down_utilisation"),
        ({"down_utilisation": 0.9, "up_utilisation": 0.85}, "down_utilisation"),
        ({"down_utilisation": 0.5, "up_utilisation": 0.5}, "down_utilisation"),
        ({"up_step_fraction": 0}, "up_step_fraction"),
        ({"up_step_fraction": math.inf}, "up_step_fraction"),
        ({"down_step_fraction": -0.5}, "down_step_fraction"),
        ({"down_step_fraction": None}, "down_step_fraction"),
    ],
)
def test_bad_policy_raises_config_error_naming_the_argument(options, argument):
    with pytest.raises(ConfigError, match=argument) as info:
        AutoscalePolicy(**options)
    assert "\n" not in str(info.value)


def test_default_policy_is_valid_and_has_hysteresis():
    policy = AutoscalePolicy()
    assert policy.enabled
    assert policy.down_utilisation < policy.up_utilisation
    assert policy.down_sustain_s > policy.up_sustain_s and policy.down_cooldown_s > 0
