"""``python -m bench [MODULE ...] [options]``: run every benchmark module, or the ones named.

A benchmark module is any ``bench/<name>.py`` whose name does not start with ``_`` and that
defines ``main(argv: list[str]) -> int``. Options after the module names (``--reps N``,
``--quick``, ``--json PATH``) are passed to each module's ``main``. When several modules run with
``--json PATH``, each writes its own file (see :func:`bench._util.json_path_for`).

Runs on the main thread only.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType

import bench
from bench._util import json_path_for


def discover() -> dict[str, ModuleType]:
    """Every benchmark module, by name, in alphabetical order."""
    found: dict[str, ModuleType] = {}
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.ispkg:
            continue
        module = importlib.import_module(f"bench.{info.name}")
        if callable(getattr(module, "main", None)):
            found[info.name] = module
    return found


def _split(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Leading non-option words are module names; the rest are options for the modules."""
    names: list[str] = []
    rest = list(argv)
    while rest and not rest[0].startswith("-"):
        names.append(rest.pop(0))
    return names, rest


def _with_json_path(options: list[str], name: str, several: bool) -> list[str]:
    out = list(options)
    for i, opt in enumerate(out):
        if opt == "--json" and i + 1 < len(out):
            out[i + 1] = json_path_for(out[i + 1], name, several=several)
        elif opt.startswith("--json="):
            out[i] = "--json=" + json_path_for(opt.split("=", 1)[1], name, several=several)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks named in ``argv`` (all of them when none is named)."""
    args = list(sys.argv[1:] if argv is None else argv)
    modules = discover()
    if args[:1] in (["-h"], ["--help"], ["--list"]):
        print(__doc__.strip().splitlines()[0] if __doc__ else "python -m bench")
        print("modules: " + ", ".join(modules))
        print("options: see `python -m bench MODULE --help`")
        return 0
    names, options = _split(args)
    unknown = [n for n in names if n not in modules]
    if unknown:
        print(f"python -m bench: unknown module(s) {', '.join(unknown)}; "
              f"choose from {', '.join(modules)}", file=sys.stderr)
        return 2
    chosen = names or list(modules)
    status = 0
    for name in chosen:
        run: Callable[[list[str]], int] = modules[name].main
        print(f"== bench.{name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        code = run(_with_json_path(options, name, len(chosen) > 1))
        print(f"== bench.{name} finished in {time.perf_counter() - started:.1f} s (exit {code})",
              file=sys.stderr, flush=True)
        status = status or code
    return status


if __name__ == "__main__":
    sys.exit(main())
