"""Retry policy and exponential backoff with jitter: pure functions of their inputs.

The delay before retry number ``n`` (1-based) is::

    raw = min(cap_s, base_s * factor ** (n - 1))

and then, by ``jitter``:

* ``"none"``:  ``raw``
* ``"full"``:  uniform in ``[0, raw]``
* ``"equal"``: ``raw / 2 + uniform in [0, raw / 2]`` (the default; never less than half the raw delay)

``max_retries`` counts *retries*, not attempts: a job runs at most ``max_retries + 1`` times.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from engine.errors import ConfigError

__all__ = ["Jitter", "RetryPolicy", "backoff_delay"]

Jitter = Literal["none", "full", "equal"]
_JITTERS: tuple[str, ...] = ("none", "full", "equal")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failing job is retried.

    Attributes:
        max_retries: retries after the first attempt (0 = never retry). Default 3, so 4 attempts.
        base_s: delay before the first retry, before jitter. Default 0.1 s.
        factor: growth per retry. Default 2.0.
        cap_s: the largest delay, before jitter. Default 30 s.
        jitter: ``"equal"`` (default), ``"full"`` or ``"none"``.
        retry_on: exception types that are retried; any other exception fails the job at once.
            Default ``(Exception,)``. :class:`~engine.errors.Permanent` is never retried.
    """

    max_retries: int = 3
    base_s: float = 0.1
    factor: float = 2.0
    cap_s: float = 30.0
    jitter: Jitter = "equal"
    retry_on: tuple[type[BaseException], ...] = field(default=(Exception,))

    def __post_init__(self) -> None:
        _check_int("max_retries", self.max_retries, low=0)
        _check_float("base_s", self.base_s, low=0.0)
        _check_float("factor", self.factor, low=1.0)
        _check_float("cap_s", self.cap_s, low=0.0)
        if self.jitter not in _JITTERS:
            raise ConfigError(f"jitter must be one of {', '.join(map(repr, _JITTERS))}; got {self.jitter!r}")
        retry_on = self.retry_on
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        if not isinstance(retry_on, Sequence) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
        ):
            raise ConfigError(f"retry_on must be a tuple of exception types; got {self.retry_on!r}")
        object.__setattr__(self, "retry_on", tuple(retry_on))

    def delay(self, retry: int, rng: random.Random) -> float:
        """The delay before retry number ``retry`` (1-based), with this policy's jitter."""
        return backoff_delay(retry, base_s=self.base_s, factor=self.factor, cap_s=self.cap_s,
                             jitter=self.jitter, rng=rng)

    def should_retry(self, exc: BaseException) -> bool:
        """Whether ``exc`` is of a type this policy retries (ignoring the retry count)."""
        from engine.errors import Permanent

        if isinstance(exc, Permanent):
            return False
        return isinstance(exc, self.retry_on)


def backoff_delay(
    retry: int,
    *,
    base_s: float,
    factor: float,
    cap_s: float,
    jitter: Jitter,
    rng: random.Random,
) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first retry).

    Args:
        retry: which retry this is, 1-based.
        base_s: the first retry's raw delay.
        factor: the growth per retry (>= 1).
        cap_s: the largest raw delay.
        jitter: ``"none"``, ``"full"`` or ``"equal"``.
        rng: the source of jitter; only ``rng.random()`` is called, once, unless jitter is none.

    Returns:
        The delay in seconds, in ``[0, cap_s]``.

    Raises:
        ConfigError: ``retry`` < 1 or an unknown ``jitter``.
    """
    if not isinstance(retry, int) or isinstance(retry, bool) or retry < 1:
        raise ConfigError(f"retry must be an int >= 1; got {retry!r}")
    _check_float("base_s", base_s, low=0.0)
    _check_float("factor", factor, low=1.0)
    _check_float("cap_s", cap_s, low=0.0)
    # Compare in log space so that huge retry numbers never overflow.
    if base_s <= 0.0 or cap_s <= 0.0:
        raw = 0.0
    elif math.log(base_s) + (retry - 1) * math.log(factor) >= math.log(cap_s):
        raw = cap_s
    else:
        try:
            raw = min(cap_s, base_s * factor ** (retry - 1))
        except OverflowError:  # factor ** n alone overflows although the product stays below the cap
            raw = min(cap_s, math.exp(math.log(base_s) + (retry - 1) * math.log(factor)))
    if jitter == "none":
        return raw
    if jitter == "full":
        return raw * rng.random()
    if jitter == "equal":
        half = raw / 2.0
        return half + half * rng.random()
    raise ConfigError(f"jitter must be one of {', '.join(map(repr, _JITTERS))}; got {jitter!r}")


def _check_int(name: str, value: object, *, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name} must be an int >= {low}; got {value!r}")


def _check_float(name: str, value: object, *, low: float) -> None:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < low
    ):
        raise ConfigError(f"{name} must be a finite number >= {low:g}; got {value!r}")
