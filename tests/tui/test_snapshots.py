"""Snapshot tests: every scenario of ``tui_dispatch.scenarios`` at its fixed terminal size.

The scenarios are fixed, seeded states served by a FixedSource (no live engine, no clock), so
each render is the same on every run. ``python -m tui_dispatch.screenshots`` renders the same
scenarios for the README. Update after a deliberate change with
``pytest tests/tui/test_snapshots.py --snapshot-update`` and look at the new SVGs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tui_dispatch.scenarios import SCENARIOS, settle

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str, snap_compare: Callable[..., bool]) -> None:
    scenario = SCENARIOS[name]
    assert snap_compare(
        scenario.app(), press=scenario.keys, terminal_size=scenario.size, run_before=settle
    )


def test_every_scenario_is_consistent() -> None:
    """Each served snapshot adds up, as a real engine's would."""
    for name, scenario in SCENARIOS.items():
        source = scenario.build()
        served: list[Any] = []
        while not source.exhausted:
            served.append(source.snapshot())
        assert all(s.consistent for s in served), name
        assert source.last.dlq_size == len(source.dlq_list(0, 10**9)), name


def test_the_screenshots_are_the_snapshots() -> None:
    """``python -m tui_dispatch.screenshots`` draws exactly what the snapshot test stored."""
    import re
    from pathlib import Path

    from tui_dispatch.screenshots import render_svg

    def normal(svg: str) -> str:  # each render numbers its CSS classes differently
        return re.sub(r"terminal-\d+-", "terminal-", svg)

    stored = Path(__file__).parent / "__snapshots__" / "test_snapshots" / "test_scenario[idle].svg"
    assert normal(render_svg(SCENARIOS["idle"])) == normal(stored.read_text(encoding="utf-8"))
