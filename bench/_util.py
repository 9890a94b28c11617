"""Shared helpers for the benchmarks: fresh-subprocess runs, statistics, memory readings, tables.

Every measured run happens in a fresh Python process, started by :func:`run_child`, so that no
side of a comparison benefits from a heap, thread pool or import cache warmed by the other. The
child is this module run as a script::

    python -m bench._util MODULE FUNCTION JSON_KWARGS

It imports ``bench.MODULE``, calls ``FUNCTION(**kwargs)`` (which must return a JSON-serialisable
dict) and prints that dict as one JSON line, with the child's peak RSS added under
``"peak_rss_kib"``.

Only the parent thread of the benchmark process calls these helpers; none of them is meant to be
shared between threads.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "REPO_ROOT",
    "BenchError",
    "Summary",
    "check_reps",
    "child_main",
    "common_parser",
    "engine_revision",
    "json_path_for",
    "machine_info",
    "markdown_table",
    "peak_rss_kib",
    "rss_kib",
    "run_child",
    "run_child_undisturbed",
    "wait_for_quiet",
    "write_json",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
_CPUS_ENV = "BENCH_CPUS"  # run_child -> child_main: the CPUs to pin the child to


class BenchError(RuntimeError):
    """A benchmark run failed (the child crashed, timed out or printed no result)."""


@dataclass(frozen=True, slots=True)
class Summary:
    """Median and range (min-max) of repeated measurements."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """Summarise ``values`` (at least one).

        Raises:
            ValueError: ``values`` is empty.
        """
        if not values:
            raise ValueError("values must hold at least one measurement; got none")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def fmt(self, spec: str = ",.0f", unit: str = "") -> str:
        """``median (low-high)`` with ``spec`` applied to each number, e.g. ``1.52x (1.48-1.60)``."""
        return (
            f"{format(self.median, spec)}{unit} "
            f"({format(self.low, spec)}-{format(self.high, spec)})"
        )

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def common_parser(description: str, *, default_reps: int = 5, prog: str | None = None) -> argparse.ArgumentParser:
    """The options every bench module's ``main(argv)`` accepts.

    ``--reps N`` (default ``default_reps``), ``--quick`` (2 repetitions, for a fast look; not for
    recorded numbers) and ``--json PATH`` (``-`` prints the JSON to stdout instead of the table).
    ``prog`` names the command in usage lines (default ``python -m bench``).
    """
    parser = argparse.ArgumentParser(prog=prog or "python -m bench", description=description)
    parser.add_argument("--reps", type=int, default=None,
                        help=f"repetitions per side (default {default_reps}; --quick: 2)")
    parser.add_argument("--quick", action="store_true",
                        help="2 repetitions per side: a fast look, not for recorded numbers")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="also write the results as JSON to PATH ('-': print JSON instead of the table)")
    parser.set_defaults(default_reps=default_reps)
    return parser


def check_reps(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The repetition count chosen by ``--reps``/``--quick``; errors out on a bad value."""
    if args.reps is not None:
        if args.reps < 1:
            parser.error(f"--reps must be an integer >= 1; got {args.reps}")
        return int(args.reps)
    return 2 if args.quick else int(args.default_reps)


def run_child(module: str, function: str, kwargs: dict[str, Any], *, timeout_s: float = 300.0,
              cpus: Sequence[int] | None = None) -> dict[str, Any]:
    """Run ``bench.<module>.<function>(**kwargs)`` in a fresh interpreter and return its result.

    Args:
        module: the module's name inside ``bench`` (e.g. ``"engine_vs_tpe"``).
        function: a module-level function returning a JSON-serialisable dict.
        kwargs: JSON-serialisable keyword arguments.
        timeout_s: the child is killed after this many seconds.
        cpus: pin the child (and every thread it starts) to these CPUs; ``None``: all of them.

    Returns:
        The function's dict, plus ``"peak_rss_kib"`` (the child's peak resident set size) and
        ``"others_cpu"``: the share of all CPUs that other processes used while it ran (0..1;
        from ``/proc/stat``, 0.0 elsewhere).

    Raises:
        BenchError: the child failed, timed out or printed no JSON line.
    """
    cmd = [sys.executable, "-m", "bench._util", module, function, json.dumps(kwargs)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop(_CPUS_ENV, None)
    if cpus is not None:
        env[_CPUS_ENV] = ",".join(str(c) for c in cpus)
    cpu_before, ours_before, wall_before = _cpu_busy_s(), _our_cpu_s(), time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              cwd=REPO_ROOT, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{module}.{function}({kwargs}) timed out after {timeout_s:g} s") from exc
    wall_s = time.monotonic() - wall_before
    others_s = (_cpu_busy_s() - cpu_before) - (_our_cpu_s() - ours_before)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise BenchError(f"{module}.{function}({kwargs}) exited with {proc.returncode}:\n{tail}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise BenchError(f"{module}.{function}({kwargs}) printed no result; stderr:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["others_cpu"] = max(0.0, others_s) / (wall_s * _ncpu()) if wall_s > 0 else 0.0
    return result


def run_child_undisturbed(
    module: str,
    function: str,
    kwargs: dict[str, Any],
    *,
    max_others: float = 0.10,
    tries: int = 3,
    settle_s: float = 20.0,
    timeout_s: float = 300.0,
    cpus: Sequence[int] | None = None,
) -> dict[str, Any]:
    """:func:`run_child`, repeated when other processes disturbed it.

    Before each try it waits (up to ``settle_s``) for the CPUs to be quiet. A run during which
    other processes used more than ``max_others`` of all CPU time is repeated, up to ``tries``
    runs in all; the least disturbed one is returned. The result says how many tries it took
    (``"tries"``) and how disturbed the kept run was (``"others_cpu"``, a fraction of all CPUs).
    """
    best: dict[str, Any] | None = None
    for attempt in range(1, tries + 1):
        wait_for_quiet(max_busy=max_others, max_wait_s=settle_s)
        result = run_child(module, function, kwargs, timeout_s=timeout_s, cpus=cpus)
        result["tries"] = attempt
        if best is None or result["others_cpu"] < best["others_cpu"]:
            best = result
        if result["others_cpu"] <= max_others:
            break
    assert best is not None
    best["tries"] = attempt
    return best


def wait_for_quiet(*, max_busy: float = 0.10, window_s: float = 0.25, max_wait_s: float = 20.0) -> float:
    """Wait until the CPUs were at most ``max_busy`` busy over ``window_s``, or ``max_wait_s`` passed.

    Returns:
        The busy fraction of the last window (0.0 where ``/proc/stat`` is missing).
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before, ours_before = _cpu_busy_s(), _our_cpu_s()
        time.sleep(window_s)
        busy = ((_cpu_busy_s() - before) - (_our_cpu_s() - ours_before)) / (window_s * _ncpu())
        if busy <= max_busy or time.monotonic() >= deadline:
            return max(0.0, busy)


def _ncpu() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _cpu_busy_s() -> float:
    """Seconds of CPU time all processes used since boot (``/proc/stat``; 0.0 elsewhere).

    Steal time counts as busy: on a VM it is CPU the benchmark could not have.
    """
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _our_cpu_s() -> float:
    """CPU seconds used by this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def child_main(argv: Sequence[str]) -> int:
    """Entry point of a child run (see the module docstring). Called only by ``run_child``."""
    if len(argv) != 3:
        print("usage: python -m bench._util MODULE FUNCTION JSON_KWARGS", file=sys.stderr)
        return 2
    module_name, function_name, raw_kwargs = argv
    pinned = os.environ.get(_CPUS_ENV)
    if pinned:
        os.sched_setaffinity(0, {int(c) for c in pinned.split(",")})
    module = importlib.import_module(f"bench.{module_name}")
    function = getattr(module, function_name)
    result = dict(function(**json.loads(raw_kwargs)))
    result["peak_rss_kib"] = peak_rss_kib()
    print(json.dumps(result), flush=True)
    return 0


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])  # "VmRSS:   12345 kB"
    except OSError:
        return None
    return None


def rss_kib() -> int:
    """The calling process's current resident set size in KiB (``VmRSS``; Linux only).

    Raises:
        BenchError: ``/proc/self/status`` is not available.
    """
    value = _proc_status_kib("VmRSS")
    if value is None:
        raise BenchError("the current RSS needs /proc/self/status (Linux)")
    return value


def peak_rss_kib() -> int:
    """The calling process's peak resident set size in KiB (``VmHWM``, else ``getrusage``)."""
    value = _proc_status_kib("VmHWM")
    if value is not None:
        return value
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss // 1024 if sys.platform == "darwin" else maxrss  # bytes on macOS, KiB on Linux


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPUs, CPU model, Python, OS."""
    cpu_model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        cpu_model = platform.processor()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
    }


def engine_revision() -> str:
    """The git commit, the hash of its ``engine/`` tree, and whether ``engine/`` has local changes.

    Two runs with the same engine tree hash measured the same engine code (when neither says
    "with local changes"), whatever else was committed in between.
    """
    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                 timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    engine_tree = git("rev-parse", "--short", "HEAD:engine")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "engine")
    return f"{rev} (engine tree {engine_tree or 'unknown'}{', with local changes' if dirty else ''})"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A pipe table, aligned for the terminal and valid Markdown for the docs."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(row) for row in rows)])


def json_path_for(path: str, module: str, *, several: bool) -> str:
    """Where one module writes its JSON when ``--json PATH`` is shared by several modules.

    ``{name}`` in ``path`` is replaced by the module name; otherwise, when several modules run,
    the name goes before the extension (``out.json`` → ``out.engine_vs_tpe.json``).
    """
    if path == "-":
        return path
    if "{name}" in path:
        return path.replace("{name}", module)
    if not several:
        return path
    stem, dot, ext = path.rpartition(".")
    return f"{stem}.{module}.{ext}" if dot and "/" not in ext else f"{path}.{module}"


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` (``-``: stdout)."""
    text = json.dumps(payload, indent=2, ensure_ascii=False)
    if path == "-":
        print(text)
    else:
        Path(path).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))


def redis_problem(url: str) -> str | None:
    """Why the Redis at ``url`` cannot be benchmarked (it does not answer a PING), or None."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        client.ping()
        return None
    except redis.exceptions.RedisError as exc:
        return f"Redis at {url} does not answer: {exc}"
    finally:
        client.close()
