"""Small, pure formatting helpers shared by the panels."""

from __future__ import annotations

__all__ = ["clip", "count", "duration", "percent", "uptime"]


def count(n: int) -> str:
    """``12345`` -> ``"12,345"``."""
    return f"{n:,}"


def duration(seconds: float) -> str:
    """A short human duration: ``"850µs"``, ``"12.3ms"``, ``"4.2s"``, ``"3m05s"``, ``"2h01m"``."""
    if seconds < 0:
        seconds = 0.0
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f}ms"
    if seconds < 60.0:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def uptime(seconds: float) -> str:
    """``3725.4`` -> ``"1:02:05"`` (hours grow past 24 rather than adding days)."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def percent(fraction: float) -> str:
    """``0.634`` -> ``"63%"``."""
    return f"{max(0.0, min(1.0, fraction)) * 100:.0f}%"


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells with an ellipsis when it is longer."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return text[: width - 1] + "…"
