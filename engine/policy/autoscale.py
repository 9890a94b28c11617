"""Autoscaling decisions: a pure function of (stats, policy, memory).

The dispatcher's timer calls :func:`decide_scale` every ``interval_s`` with fresh
:class:`ScaleStats` and the :class:`ScaleMemory` it returned last time, then applies the
decision. Nothing here reads time, starts threads or draws random numbers, so every rule
below is unit-tested with exact values.

Rules, in order:

1. Outside ``[min_workers, max_workers]``: move straight back inside (reason says which bound).
2. **Up**: backlog per worker above ``up_backlog_per_worker`` *or* utilisation above
   ``up_utilisation``, continuously for ``up_sustain_s``, and at least ``up_cooldown_s`` since the
   last change. Grows by at most ``up_step_fraction`` of the current size (at least 1), no
   further than the backlog needs, never past ``max_workers``.
3. **Down**: backlog empty *and* utilisation below ``down_utilisation``, continuously for
   ``down_sustain_s``, and at least ``down_cooldown_s`` since the last change. Shrinks by at
   most ``down_step_fraction`` of the idle workers (at least 1), never below ``min_workers``.
   The dispatcher only ever retires idle workers.

The gap between the up and down thresholds, the sustain windows and the cooldowns are the
hysteresis that keeps it from flapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from engine.errors import ConfigError

__all__ = ["AutoscalePolicy", "ScaleStats", "ScaleMemory", "ScaleDecision", "decide_scale"]


@dataclass(frozen=True, slots=True)
class AutoscalePolicy:
    """Thresholds and timings for autoscaling. See the module docstring for the rules.

    Attributes:
        enabled: when False the pool stays at its size, except to honour min/max changes.
        interval_s: how often the dispatcher evaluates the policy.
        up_backlog_per_worker: backlog per worker above which to grow.
        up_utilisation: utilisation (0..1) above which to grow.
        up_sustain_s: how long a grow condition must hold.
        up_cooldown_s: minimum time between a change and the next grow.
        up_step_fraction: largest growth per step, as a fraction of the current size.
        down_utilisation: utilisation below which to shrink (only with an empty backlog).
        down_sustain_s: how long the shrink condition must hold.
        down_cooldown_s: minimum time between a change and the next shrink.
        down_step_fraction: largest shrink per step, as a fraction of the idle workers.
    """

    enabled: bool = True
    interval_s: float = 0.25
    up_backlog_per_worker: float = 2.0
    up_utilisation: float = 0.85
    up_sustain_s: float = 0.5
    up_cooldown_s: float = 0.5
    up_step_fraction: float = 1.0
    down_utilisation: float = 0.3
    down_sustain_s: float = 5.0
    down_cooldown_s: float = 5.0
    down_step_fraction: float = 0.5

    def __post_init__(self) -> None:
        for name in ("interval_s", "up_sustain_s", "up_cooldown_s", "down_sustain_s", "down_cooldown_s",
                     "up_backlog_per_worker"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ConfigError(f"autoscale {name} must be a finite number >= 0; got {value!r}")
        if self.interval_s <= 0:
            raise ConfigError(f"autoscale interval_s must be > 0; got {self.interval_s!r}")
        for name in ("up_utilisation", "down_utilisation"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"autoscale {name} must be between 0 and 1; got {value!r}")
        if self.down_utilisation >= self.up_utilisation:
            raise ConfigError(
                "autoscale down_utilisation must be below up_utilisation "
                f"(got down={self.down_utilisation!r}, up={self.up_utilisation!r})"
            )
        for name in ("up_step_fraction", "down_step_fraction"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                raise ConfigError(f"autoscale {name} must be a number > 0; got {value!r}")


@dataclass(frozen=True, slots=True)
class ScaleStats:
    """What the policy sees at one evaluation.

    Attributes:
        now: monotonic seconds.
        workers: live workers, not counting those already retiring.
        idle: idle workers among them.
        backlog: jobs waiting for a worker.
        utilisation: busy fraction of worker time since the last evaluation (0..1).
        min_workers: current lower bound.
        max_workers: current upper bound.
    """

    now: float
    workers: int
    idle: int
    backlog: int
    utilisation: float
    min_workers: int
    max_workers: int


@dataclass(frozen=True, slots=True)
class ScaleMemory:
    """What the policy remembers between evaluations. Start with ``ScaleMemory()``."""

    high_since: float | None = None
    low_since: float | None = None
    last_change_at: float | None = None


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """The outcome: change the pool by ``delta`` workers (0 = keep), for ``reason``."""

    delta: int
    reason: str

    @property
    def changes(self) -> bool:
        return self.delta != 0


_KEEP = ScaleDecision(0, "")


def decide_scale(
    stats: ScaleStats, policy: AutoscalePolicy, memory: ScaleMemory
) -> tuple[ScaleDecision, ScaleMemory]:
    """Decide whether to grow or shrink the pool.

    Args:
        stats: the current figures.
        policy: thresholds and timings.
        memory: what the previous call returned (``ScaleMemory()`` the first time).

    Returns:
        The decision and the memory to pass next time.
    """
    now, workers = stats.now, stats.workers

    if workers < stats.min_workers:
        delta = stats.min_workers - workers
        return ScaleDecision(delta, f"below min_workers={stats.min_workers}"), ScaleMemory(last_change_at=now)
    if workers > stats.max_workers:
        delta = stats.max_workers - workers
        return ScaleDecision(delta, f"above max_workers={stats.max_workers}"), ScaleMemory(last_change_at=now)
    if not policy.enabled:
        return _KEEP, ScaleMemory(last_change_at=memory.last_change_at)

    per_worker = stats.backlog / workers if workers else math.inf if stats.backlog else 0.0
    backlog_high = per_worker > policy.up_backlog_per_worker
    util_high = stats.utilisation > policy.up_utilisation
    high = (backlog_high or util_high) and workers < stats.max_workers
    low = stats.backlog == 0 and stats.utilisation < policy.down_utilisation and workers > stats.min_workers

    memory = replace(
        memory,
        high_since=(memory.high_since if memory.high_since is not None else now) if high else None,
        low_since=(memory.low_since if memory.low_since is not None else now) if low else None,
    )
    since_change = math.inf if memory.last_change_at is None else now - memory.last_change_at

    if high and memory.high_since is not None and now - memory.high_since >= policy.up_sustain_s \
            and since_change >= policy.up_cooldown_s:
        step = max(1, math.floor(workers * policy.up_step_fraction))
        if backlog_high:
            needed = math.ceil(stats.backlog / policy.up_backlog_per_worker) - workers if policy.up_backlog_per_worker else step
            step = min(step, max(1, needed))
            reason = (f"backlog {stats.backlog} is {per_worker:.1f}/worker > "
                      f"{policy.up_backlog_per_worker:g} for {now - memory.high_since:.1f}s")
        else:
            reason = (f"utilisation {stats.utilisation:.0%} > {policy.up_utilisation:.0%} "
                      f"for {now - memory.high_since:.1f}s")
        delta = min(step, stats.max_workers - workers)
        return ScaleDecision(delta, reason), ScaleMemory(last_change_at=now)

    if low and memory.low_since is not None and now - memory.low_since >= policy.down_sustain_s \
            and since_change >= policy.down_cooldown_s and stats.idle > 0:
        step = max(1, math.floor(stats.idle * policy.down_step_fraction))
        delta = min(step, stats.idle, workers - stats.min_workers)
        reason = (f"utilisation {stats.utilisation:.0%} < {policy.down_utilisation:.0%} "
                  f"with empty backlog for {now - memory.low_since:.1f}s")
        return ScaleDecision(-delta, reason), ScaleMemory(last_change_at=now)

    return _KEEP, memory


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
