"""Pure policies: no threads, no time, no global random. Each is a function of its inputs."""

from __future__ import annotations

from engine.policy.autoscale import AutoscalePolicy, ScaleDecision, ScaleStats, decide_scale
from engine.policy.backoff import Jitter, RetryPolicy, backoff_delay

__all__ = [
    "AutoscalePolicy",
    "ScaleDecision",
    "ScaleStats",
    "decide_scale",
    "Jitter",
    "RetryPolicy",
    "backoff_delay",
]
