"""The backoff policy: exact delays for each jitter mode, the cap, huge retry numbers, and
argument checks. Expected values are computed here from the documented formula and an
independent ``random.Random`` with the same seed, never by calling the code under test."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import ConfigError, RetryPolicy, backoff_delay

SEED = 20261204


def raw_delay(retry: int, base_s: float, factor: float, cap_s: float) -> float:
    """The documented raw delay, ``min(cap, base * factor ** (retry - 1))``, straight from the formula
    (a power too large for a float is past any finite cap)."""
    if base_s <= 0 or cap_s <= 0:
        return 0.0
    try:
        grown = base_s * factor ** (retry - 1)
    except OverflowError:
        return cap_s
    return min(cap_s, grown)


# -- exact values ------------------------------------------------------------------------------
def test_no_jitter_doubles_from_base_up_to_the_cap():
    policy = RetryPolicy(base_s=0.1, factor=2.0, cap_s=30.0, jitter="none")
    rng = random.Random(SEED)
    delays = [policy.delay(n, rng) for n in range(1, 13)]
    assert delays == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0, 30.0], rel=1e-12, abs=0
    )
    assert delays[9:] == [30.0, 30.0, 30.0]  # the cap itself, exactly


def test_no_jitter_draws_nothing_from_the_rng():
    rng = random.Random(SEED)
    untouched = random.Random(SEED)
    for n in range(1, 20):
        backoff_delay(n, base_s=1.0, factor=3.0, cap_s=100.0, jitter="none", rng=rng)
    assert rng.getstate() == untouched.getstate()


@pytest.mark.parametrize(
    ("base_s", "factor", "cap_s"),
    [(0.1, 2.0, 30.0), (1.0, 3.0, 60.0), (0.5, 1.0, 0.5), (2.0, 1.5, 7.0)],
)
def test_full_jitter_is_raw_times_one_uniform_draw(base_s, factor, cap_s):
    policy = RetryPolicy(base_s=base_s, factor=factor, cap_s=cap_s, jitter="full")
    rng, mirror = random.Random(SEED), random.Random(SEED)
    for n in range(1, 15):
        expected = raw_delay(n, base_s, factor, cap_s) * mirror.random()
        assert policy.delay(n, rng) == pytest.approx(expected, rel=1e-12, abs=0)
    assert rng.getstate() == mirror.getstate()  # exactly one draw per delay


@pytest.mark.parametrize(
    ("base_s", "factor", "cap_s"),
    [(0.1, 2.0, 30.0), (1.0, 3.0, 60.0), (0.5, 1.0, 0.5), (2.0, 1.5, 7.0)],
)
def test_equal_jitter_is_half_raw_plus_half_raw_times_one_draw(base_s, factor, cap_s):
    policy = RetryPolicy(base_s=base_s, factor=factor, cap_s=cap_s, jitter="equal")
    rng, mirror = random.Random(SEED), random.Random(SEED)
    for n in range(1, 15):
        raw = raw_delay(n, base_s, factor, cap_s)
        expected = raw / 2 + raw / 2 * mirror.random()
        assert policy.delay(n, rng) == pytest.approx(expected, rel=1e-12, abs=0)
    assert rng.getstate() == mirror.getstate()


def test_equal_jitter_known_values_for_the_first_retries():
    # The first three draws of random.Random(SEED), taken independently of the engine.
    mirror = random.Random(SEED)
    u1, u2, u3 = mirror.random(), mirror.random(), mirror.random()
    rng = random.Random(SEED)
    policy = RetryPolicy()  # the defaults: base 0.1, x2, cap 30, equal jitter
    assert policy.delay(1, rng) == pytest.approx(0.05 + 0.05 * u1, rel=1e-12)
    assert policy.delay(2, rng) == pytest.approx(0.1 + 0.1 * u2, rel=1e-12)
    assert policy.delay(3, rng) == pytest.approx(0.2 + 0.2 * u3, rel=1e-12)


def test_backoff_delay_and_policy_delay_agree():
    policy = RetryPolicy(base_s=0.25, factor=4.0, cap_s=50.0, jitter="full")
    a, b = random.Random(SEED), random.Random(SEED)
    for n in range(1, 10):
        assert policy.delay(n, a) == backoff_delay(
            n, base_s=0.25, factor=4.0, cap_s=50.0, jitter="full", rng=b
        )


def test_defaults_are_documented_values():
    policy = RetryPolicy()
    assert (policy.max_retries, policy.base_s, policy.factor, policy.cap_s, policy.jitter) == (
        3, 0.1, 2.0, 30.0, "equal"
    )
    assert policy.retry_on == (Exception,)


# -- the cap and huge retry numbers ------------------------------------------------------------
@pytest.mark.parametrize("retry", [10, 100, 1_024, 10**6, 10**18, 2**200])
def test_huge_retry_numbers_give_the_cap_without_overflow(retry):
    rng = random.Random(SEED)
    assert backoff_delay(retry, base_s=0.1, factor=2.0, cap_s=30.0, jitter="none", rng=rng) == 30.0
    mirror = random.Random(SEED)
    expected = 15.0 + 15.0 * mirror.random()
    assert backoff_delay(retry, base_s=0.1, factor=2.0, cap_s=30.0, jitter="equal", rng=rng) == expected


def test_factor_one_keeps_the_base_forever():
    rng = random.Random(SEED)
    for retry in (1, 2, 50, 10**12):
        assert backoff_delay(retry, base_s=0.7, factor=1.0, cap_s=30.0, jitter="none", rng=rng) == 0.7


def test_base_above_cap_is_capped_from_the_first_retry():
    rng = random.Random(SEED)
    assert backoff_delay(1, base_s=5.0, factor=2.0, cap_s=1.0, jitter="none", rng=rng) == 1.0


@pytest.mark.parametrize(("base_s", "cap_s"), [(0.0, 30.0), (0.1, 0.0), (0.0, 0.0)])
def test_zero_base_or_cap_gives_zero_for_every_jitter(base_s, cap_s):
    rng = random.Random(SEED)
    for jitter in ("none", "full", "equal"):
        for retry in (1, 5, 10**9):
            assert backoff_delay(retry, base_s=base_s, factor=2.0, cap_s=cap_s, jitter=jitter, rng=rng) == 0.0


def test_no_overflow_below_a_huge_cap():
    policy = RetryPolicy(base_s=1e-300, factor=10.0, cap_s=1e300, jitter="none")
    rng = random.Random(SEED)
    # raw = 1e-300 * 10**399 = 1e99, well below the cap; 10.0 ** 399 alone overflows a float.
    assert policy.delay(400, rng) == pytest.approx(1e99, rel=1e-9)


# -- bad arguments -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"max_retries": "3"}, "max_retries"),
        ({"base_s": -0.1}, "base_s"),
        ({"base_s": math.nan}, "base_s"),
        ({"base_s": math.inf}, "base_s"),
        ({"base_s": "0.1"}, "base_s"),
        ({"factor": 0.5}, "factor"),
        ({"factor": 0}, "factor"),
        ({"factor": math.inf}, "factor"),
        ({"cap_s": -1.0}, "cap_s"),
        ({"cap_s": math.inf}, "cap_s"),
        ({"cap_s": None}, "cap_s"),
        ({"jitter": "gaussian"}, "jitter"),
        ({"jitter": None}, "jitter"),
        ({"retry_on": (int,)}, "retry_on"),
        ({"retry_on": "ValueError"}, "retry_on"),
        ({"retry_on": (ValueError, 3)}, "retry_on"),
    ],
)
def test_bad_policy_raises_config_error_naming_the_argument(options, argument):
    with pytest.raises(ConfigError, match=argument) as info:
        RetryPolicy(**options)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_bad_jitter_message_lists_the_allowed_values():
    with pytest.raises(ConfigError) as info:
        RetryPolicy(jitter="fixed")
    message = str(info.value)
    assert all(name in message for name in ("'none'", "'full'", "'equal'", "'fixed'"))


def test_retry_on_accepts_one_type_or_a_sequence():
    assert RetryPolicy(retry_on=KeyError).retry_on == (KeyError,)
    assert RetryPolicy(retry_on=[KeyError, OSError]).retry_on == (KeyError, OSError)


@pytest.mark.parametrize("retry", [0, -1, 1.0, None, "1"])
def test_backoff_delay_rejects_a_bad_retry_number(retry):
    with pytest.raises(ConfigError, match="retry"):
        backoff_delay(retry, base_s=0.1, factor=2.0, cap_s=30.0, jitter="none", rng=random.Random())


def test_backoff_delay_rejects_an_unknown_jitter():
    with pytest.raises(ConfigError, match="jitter"):
        backoff_delay(1, base_s=0.1, factor=2.0, cap_s=30.0, jitter="fixed", rng=random.Random())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"base_s": 1.0, "factor": 0.0, "cap_s": 10.0}, "factor"),  # ValueError: math domain error
        ({"base_s": 1.0, "factor": 0.5, "cap_s": 10.0}, "factor"),  # delays shrink
        ({"base_s": -1.0, "factor": 2.0, "cap_s": 10.0}, "base_s"),  # silently 0
        ({"base_s": math.nan, "factor": 2.0, "cap_s": 10.0}, "base_s"),  # silently the cap
        ({"base_s": 1.0, "factor": 2.0, "cap_s": -5.0}, "cap_s"),  # silently 0
    ],
)
def test_backoff_delay_rejects_bad_base_factor_and_cap(options, argument):
    with pytest.raises(ConfigError, match=argument):
        backoff_delay(3, jitter="none", rng=random.Random(SEED), **options)


def test_policy_is_immutable():
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.max_retries = 5  # type: ignore[misc]


# -- properties --------------------------------------------------------------------------------
retries = st.one_of(st.integers(1, 64), st.integers(1, 10**30))
bases = st.one_of(st.just(0.0), st.floats(1e-6, 1e3))
factors = st.floats(1.0, 16.0)
caps = st.one_of(st.just(0.0), st.floats(1e-6, 1e4))


@given(retry=retries, base_s=bases, factor=factors, cap_s=caps, seed=st.integers(0, 2**32 - 1))
def test_every_delay_is_within_zero_and_the_cap(retry, base_s, factor, cap_s, seed):
    policy_args = {"base_s": base_s, "factor": factor, "cap_s": cap_s}
    raw = raw_delay(retry, base_s, factor, cap_s)
    assert 0.0 <= raw <= cap_s
    slack = 1e-12  # the engine compares in log space: at the cap boundary it may round to the cap
    for jitter in ("none", "full", "equal"):
        delay = RetryPolicy(jitter=jitter, **policy_args).delay(retry, random.Random(seed))
        assert 0.0 <= delay <= cap_s
        assert delay <= raw * (1 + slack)
        if jitter == "none":
            assert delay == pytest.approx(raw, rel=slack, abs=0)
        if jitter == "equal":
            assert delay >= raw / 2


@given(base_s=st.floats(1e-3, 10.0), factor=st.floats(1.0, 8.0), cap_s=st.floats(1e-3, 1e3),
       retry=st.integers(1, 200))
def test_raw_delay_never_decreases_with_the_retry_number(base_s, factor, cap_s, retry):
    rng = random.Random(SEED)
    now = backoff_delay(retry, base_s=base_s, factor=factor, cap_s=cap_s, jitter="none", rng=rng)
    later = backoff_delay(retry + 1, base_s=base_s, factor=factor, cap_s=cap_s, jitter="none", rng=rng)
    assert now <= later
