"""Regenerate the README's screenshots from the snapshot tests' scenarios.

Usage::

    python -m tui_dispatch.screenshots screenshots          # every scenario, as SVG
    python -m tui_dispatch.screenshots screenshots --png    # and PNG (needs cairosvg)
    python -m tui_dispatch.screenshots out/ idle dlq        # only some scenarios

Each picture is rendered the way ``pytest-textual-snapshot``'s ``snap_compare`` renders it
(Textual's own ``take_svg_screenshot``, after the same :func:`~tui_dispatch.scenarios.settle`),
from the same :data:`~tui_dispatch.scenarios.SCENARIOS`; so ``screenshots/<name>.svg`` is what
``tests/tui/__snapshots__`` holds for that scenario.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from textual._doc import take_svg_screenshot  # the renderer snap_compare itself uses

from tui_dispatch.scenarios import SCENARIOS, Scenario, settle

__all__ = ["render_svg", "main"]

_PNG_FONT = "DejaVu Sans Mono"  # the SVGs ask for Fira Code from the web; PNGs use a local font


def render_svg(scenario: Scenario) -> str:
    """The scenario's screenshot, as an SVG document. Call it from a thread with no event loop."""
    return take_svg_screenshot(
        app=scenario.app(),
        press=scenario.keys,
        terminal_size=scenario.size,
        run_before=settle,
    )


def _to_png(svg: str, path: Path) -> None:
    import cairosvg  # type: ignore[import-not-found]  # optional: only for --png

    local = re.sub(r"font-family:\s*[^;\"]*", f"font-family: {_PNG_FONT}", svg)
    cairosvg.svg2png(bytestring=local.encode(), write_to=str(path), output_width=1600)


def main(argv: Sequence[str] | None = None) -> int:
    """Write ``<out>/<scenario>.svg`` (and ``.png`` with ``--png``) for the chosen scenarios."""
    parser = argparse.ArgumentParser(
        prog="python -m tui_dispatch.screenshots",
        description="Render the dashboard's fixed scenarios to SVG files.",
    )
    parser.add_argument("out", type=Path, help="directory to write into (created if missing)")
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"scenario names (default: all): {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--png", action="store_true", help="also write PNGs (needs cairosvg)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(map(repr, unknown))}; choose from {', '.join(SCENARIOS)}"
        )
    if args.png and importlib.util.find_spec("cairosvg") is None:
        parser.error("--png needs cairosvg (pip install cairosvg) and the cairo library")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.scenarios or SCENARIOS:
        svg = render_svg(SCENARIOS[name])
        path = args.out / f"{name}.svg"
        path.write_text(svg, encoding="utf-8")
        written = [path]
        if args.png:
            _to_png(svg, path.with_suffix(".png"))
            written.append(path.with_suffix(".png"))
        print(" ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
