"""What every side runner shares: worker processes, completion polling, workloads, cleanup.

Needs only the standard library and redis-py, so it runs both in the project's virtualenv and
in ``bench/.peers``.

Two halves:

* **In worker processes** (imported by a side's task module): :data:`TALLY` counts finished
  jobs in memory and a daemon thread publishes the counts to one Redis hash every
  :data:`POLL_S` seconds, so counting costs a task no round trip; :func:`record_wait` pushes an
  enqueue-to-start sample (latency workload only, where the extra round trip is not measured).
* **In the runner process**: :class:`Side` (what a side must provide), :class:`WorkerProcs`
  (the side's worker processes, each in its own session, output to a temp file) and
  :func:`run` (warm up, then the workloads, each timed from the first enqueue until the side's
  own completion count reaches the job count, polled every :data:`POLL_S` s with a bounded
  timeout; the CPU time of the workers, the producer and Redis is recorded for each), and
  :func:`main` (the ``python -m bench.peers MODULE JSON_KWARGS`` entry point).

Everything in the runner half is called from the runner's main thread only; :class:`Tally`
and :func:`record_wait` are thread-safe.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

REPO_ROOT = Path(__file__).resolve().parents[2]
THREADS = 4
"""Worker threads per side (RQ has no threads: 4 worker processes instead)."""
FAIL_P = 0.2
"""Share of the ``fail_once`` jobs that fail on their first attempt."""
POLL_S = 0.005
"""How often the runner polls completion counts, and how often a :class:`Tally` publishes."""
WARMUP_JOBS = 4 * THREADS
CHUNK = 1000
"""Jobs per enqueue call for sides with a bulk enqueue (ours, RQ)."""
ENV_URL = "BENCH_PEERS_REDIS_URL"
ENV_PREFIX = "BENCH_PEERS_PREFIX"

# ------------------------------------------------------------------------------------------------
# Worker-process half
# ------------------------------------------------------------------------------------------------
_clients_lock = threading.Lock()  # guards _clients
_clients: dict[int, redis.Redis] = {}


def env_url() -> str:
    """The Redis URL the runner handed to its worker processes."""
    return os.environ[ENV_URL]


def env_prefix() -> str:
    """The run's unique key prefix (lowercase letters and digits), handed down by the runner."""
    return os.environ[ENV_PREFIX]


def worker_client() -> redis.Redis:
    """This process's Redis client for tally and latency keys, made anew after a fork. Thread-safe."""
    pid = os.getpid()
    with _clients_lock:
        client = _clients.get(pid)
        if client is None:
            client = _clients[pid] = redis.Redis.from_url(env_url())
        return client


class Tally:
    """Per-process job counts, published to the hash ``<prefix>:tally`` every :data:`POLL_S` s.

    Fields are ``<pid>:<name>``, so the counts of several worker processes add up. A task calls
    :meth:`add` (a lock and an increment; no Redis round trip). A forked child starts afresh.
    Thread-safe.
    """

    def __init__(self) -> None:
        self._pid = -1
        self._lock = threading.Lock()  # guards _counts
        self._counts: dict[str, int] = {}
        self._start_lock = threading.Lock()

    def add(self, name: str) -> None:
        """Count one ``name`` (``"ok"`` or ``"failed"``). Thread-safe."""
        if self._pid != os.getpid():
            self._restart()
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + 1

    def _restart(self) -> None:
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self._lock = threading.Lock()
            self._counts = {}
            self._pid = os.getpid()
            threading.Thread(target=self._publish, args=(self._pid,), name="bench-tally", daemon=True).start()

    def _publish(self, pid: int) -> None:
        client = worker_client()
        key = f"{env_prefix()}:tally"
        sent: dict[str, int] = {}
        tick = threading.Event()
        while True:
            tick.wait(POLL_S)
            with self._lock:
                now = dict(self._counts)
            changed = {f"{pid}:{k}": v for k, v in now.items() if sent.get(k) != v}
            if changed:
                try:
                    client.hset(key, mapping=changed)
                    sent.update(now)
                except redis.exceptions.RedisError:
                    continue  # published on the next tick


TALLY = Tally()


class PlannedFailure(RuntimeError):
    """What a ``fail_once`` job raises on its first attempt when it was drawn to fail."""


def body_noop() -> None:
    """The no-op job's body (plus the count the runner waits for)."""
    TALLY.add("ok")


def body_fail_once(fail: bool, first_attempt: bool) -> None:
    """Fail on the first attempt if ``fail``; succeed otherwise."""
    if fail and first_attempt:
        TALLY.add("failed")
        raise PlannedFailure("planned failure (first attempt)")
    TALLY.add("ok")


def record_wait(enqueued_at: float) -> None:
    """Push one enqueue-to-start sample (s); call first thing in the latency job. Thread-safe."""
    waited = time.time() - enqueued_at
    worker_client().rpush(f"{env_prefix()}:wait", repr(waited))


# ------------------------------------------------------------------------------------------------
# Runner half
# ------------------------------------------------------------------------------------------------
class RunError(RuntimeError):
    """A side could not be measured (a worker died, a wait timed out). One line plus a log tail."""


def plan_failures(n: int, seed: int) -> list[bool]:
    """Which of ``n`` jobs fail once: each with probability :data:`FAIL_P`, seeded."""
    rng = random.Random(seed)
    return [rng.random() < FAIL_P for _ in range(n)]


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty)."""
    if not ordered:
        return 0.0
    index = max(0, min(len(ordered) - 1, math.ceil(round(p * len(ordered), 9)) - 1))
    return ordered[index]


def tally_sum(client: redis.Redis, prefix: str, name: str) -> int:
    """The sum of every worker process's ``name`` count."""
    raw: dict[bytes, bytes] = client.hgetall(f"{prefix}:tally")  # type: ignore[assignment]
    suffix = f":{name}".encode()
    return sum(int(v) for k, v in raw.items() if k.endswith(suffix))


def session_cpu_s(sessions: Sequence[int]) -> float:
    """CPU seconds of every live process in ``sessions`` and of their reaped children (Linux
    ``/proc``; 0.0 elsewhere)."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except (OSError, ValueError):
        return 0.0
    wanted = set(sessions)
    total = 0
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                data = stat.read()
        except OSError:
            continue  # gone
        fields = data[data.rindex(")") + 2:].split()  # from field 3 (state) on
        if int(fields[3]) in wanted:  # field 6: session
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / tick


def own_cpu_s() -> float:
    """CPU seconds this process used (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def redis_cpu_s(client: redis.Redis) -> float:
    """CPU seconds the Redis server used since it started (``INFO cpu``)."""
    info: dict[str, Any] = client.info("cpu")  # type: ignore[assignment]
    return float(info.get("used_cpu_user", 0.0)) + float(info.get("used_cpu_sys", 0.0))


class WorkerProcs:
    """A side's worker processes, each in its own session with its output in a temp file.

    Args:
        commands: one argv per process.
        env: extra environment variables (on top of this process's, plus ``PYTHONPATH``).
        stop_signal: what asks a worker to stop gracefully.
    """

    def __init__(self, commands: Sequence[Sequence[str]], env: dict[str, str], *,
                 stop_signal: int = signal.SIGTERM) -> None:
        self._commands = [list(c) for c in commands]
        self._env = dict(os.environ)
        self._env.update(env)
        self._env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self._env["PYTHONUNBUFFERED"] = "1"
        self._stop_signal = stop_signal
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []

    def start(self) -> None:
        """Start every process."""
        for argv in self._commands:
            log = tempfile.TemporaryFile()
            self._logs.append(log)
            self._procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=self._env,
                                                start_new_session=True))

    def cpu_s(self) -> float:
        """CPU seconds used so far by the worker processes and everything they started."""
        return session_cpu_s([p.pid for p in self._procs])

    def check(self) -> None:
        """Raise :class:`RunError` if a worker process has exited."""
        for proc in self._procs:
            if proc.poll() is not None:
                raise RunError(f"worker {proc.args!r} exited with {proc.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        """The last lines each worker printed."""
        out = []
        for log in self._logs:
            log.seek(0)
            text = log.read().decode("utf-8", "replace").strip().splitlines()[-lines:]
            out.append("\n".join(text))
        return "\n---\n".join(out)

    def stop(self, timeout_s: float = 15.0) -> list[int | None]:
        """Ask each worker to stop, wait up to ``timeout_s``, then kill what is left (whole
        session, so forked children go too). Returns the exit codes (``None``: killed)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(self._stop_signal)
        deadline = time.monotonic() + timeout_s
        codes: list[int | None] = []
        for proc in self._procs:
            try:
                codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the session this object started; children too
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(timeout=5)
        for log in self._logs:
            log.close()
        return codes


class Side:
    """One side of the comparison. Subclasses fill in the hooks; :func:`run` drives them.

    Attributes:
        name: the label in the results.
        url: the Redis URL (a dedicated DB).
        prefix: the run's unique token; every key the side creates contains it.
        client: a Redis client for the runner's own reads.
    """

    name = "side"
    stop_signal: int = signal.SIGTERM
    has_retries = True

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.client = redis.Redis.from_url(url)

    # -- hooks ----------------------------------------------------------------------------------
    def worker_commands(self) -> list[list[str]]:
        """The argv of each worker process."""
        raise NotImplementedError

    def submit(self, workload: str, items: Sequence[Any]) -> None:
        """Enqueue ``noop(i)`` for each ``i`` or ``fail_once(i, fail)`` for each ``(i, fail)``."""
        raise NotImplementedError

    def submit_wait(self, i: int, enqueued_at: float) -> None:
        """Enqueue one latency job, which calls :func:`record_wait` with ``enqueued_at``."""
        raise NotImplementedError

    def finished(self) -> int:
        """Jobs finished so far (cumulative; failed attempts that will be retried do not count)."""
        return tally_sum(self.client, self.prefix, "ok")

    def retries(self) -> int | None:
        """Retries so far (cumulative), or ``None`` when the side cannot tell cheaply."""
        return tally_sum(self.client, self.prefix, "failed")

    def versions(self) -> dict[str, str]:
        """Library versions, for the record."""
        return {}

    def shared_sets(self) -> list[str]:
        """Sets shared with other users of the DB whose members naming ``prefix`` are ours."""
        return []

    def shared_keys(self) -> list[str]:
        """Keys the library's workers create under fixed names (locks that expire): deleted."""
        return []

    def close(self) -> None:
        """Release the runner's connections."""
        self.client.close()

    # -- helpers --------------------------------------------------------------------------------
    def cleanup(self) -> int:
        """Delete every key naming ``prefix``, and our members of :meth:`shared_sets`. Returns
        how many keys were deleted."""
        deleted = 0
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=f"*{self.prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(self.client.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(self.client.delete(*batch))
        if self.shared_keys():
            self.client.delete(*self.shared_keys())
        for key in self.shared_sets():
            ours = [m for m in self.client.smembers(key) if self.prefix.encode() in m]  # type: ignore[union-attr]
            if ours:
                self.client.srem(key, *ours)
        return deleted

    def leftover(self) -> int:
        """Keys naming ``prefix`` still in the DB."""
        return sum(1 for _ in self.client.scan_iter(match=f"*{self.prefix}*", count=1000))


def _wait_for(side: Side, procs: WorkerProcs, target: int, timeout_s: float, what: str,
              count: Callable[[], int]) -> float:
    """Poll ``count()`` every :data:`POLL_S` s until it reaches ``target``; the time it did."""
    deadline = time.perf_counter() + timeout_s
    tick = threading.Event()
    next_check = time.perf_counter() + 1.0
    while True:
        done = count()
        now = time.perf_counter()
        if done >= target:
            return now
        if now > deadline:
            raise RunError(f"{side.name}: {what}: {done}/{target} jobs finished after {timeout_s:g} s;"
                           f" worker output:\n{procs.tail()}")
        if now > next_check:
            procs.check()
            next_check = now + 1.0
        tick.wait(POLL_S)


def run(side: Side, *, n_noop: int, n_fail: int, n_wait: int, wait_rate: float, seed: int,
        timeout_s: float) -> dict[str, Any]:
    """Start the side's workers, warm them up, run the workloads, stop, clean up.

    Workloads (``0`` jobs skips one):

    * ``noop``: ``n_noop`` no-op jobs enqueued in chunks of :data:`CHUNK` (one call per job for
      sides without a bulk enqueue); timed from the first enqueue until all have finished.
    * ``fail_once``: ``n_fail`` jobs, :data:`FAIL_P` of them (seeded) fail once, then succeed
      on the retry (each side's retry delay set to about 0).
    * ``wait``: ``n_wait`` jobs enqueued one at a time at ``wait_rate`` per second; each records
      its enqueue-to-start time.

    Returns:
        ``{"side", "versions", "workloads": {name: {...}}, "extra", "worker_exit_codes",
        "leftover_keys", "python"}``.

    Raises:
        RunError: a worker died or a wait timed out (the workers are stopped and keys deleted).
    """
    procs = WorkerProcs(side.worker_commands(), {ENV_URL: side.url, ENV_PREFIX: side.prefix},
                        stop_signal=side.stop_signal)
    results: dict[str, Any] = {}
    pause = threading.Event()
    procs.start()
    try:
        side.submit("noop", list(range(-WARMUP_JOBS, 0)))  # warm-up: imports, connections
        _wait_for(side, procs, WARMUP_JOBS, min(timeout_s, 120.0), "warm-up", side.finished)
        pause.wait(0.5)  # let the workers settle into their idle wait
        plans: list[tuple[str, int, list[Any]]] = [
            ("noop", n_noop, list(range(n_noop))),
            ("fail_once", n_fail, list(enumerate(plan_failures(n_fail, seed)))),
        ]
        for workload, n, items in plans:
            if n <= 0 or (workload == "fail_once" and not side.has_retries):
                continue
            base = side.finished()
            base_retries = side.retries()
            cpu = (procs.cpu_s(), own_cpu_s(), redis_cpu_s(side.client))
            started = time.perf_counter()
            for at in range(0, n, CHUNK):
                side.submit(workload, items[at:at + CHUNK])
            enqueued = time.perf_counter()
            ended = _wait_for(side, procs, base + n, timeout_s, workload, side.finished)
            cpu_end = (procs.cpu_s(), own_cpu_s(), redis_cpu_s(side.client))
            retries = side.retries()
            results[workload] = {
                "n": n,
                "elapsed_s": ended - started,
                "enqueue_s": enqueued - started,
                "jobs_per_s": n / (ended - started),
                "retries": None if retries is None or base_retries is None else retries - base_retries,
                "planned_failures": sum(1 for _, fail in items if fail) if workload == "fail_once" else 0,
                "cpu_s": {"workers": cpu_end[0] - cpu[0], "producer": cpu_end[1] - cpu[1],
                          "redis": cpu_end[2] - cpu[2]},
            }
            pause.wait(0.5)
        if n_wait > 0:
            wait_key = f"{side.prefix}:wait"
            side.client.delete(wait_key)
            first = time.perf_counter()
            for i in range(n_wait):
                delay = first + i / wait_rate - time.perf_counter()
                if delay > 0:
                    pause.wait(delay)
                side.submit_wait(i, time.time())
            _wait_for(side, procs, n_wait, timeout_s, "wait", lambda: int(side.client.llen(wait_key)))
            samples = sorted(float(x) for x in side.client.lrange(wait_key, 0, -1))  # type: ignore[union-attr]
            results["wait"] = {
                "n": n_wait,
                "rate_per_s": wait_rate,
                "p50_ms": percentile(samples, 0.50) * 1000,
                "p99_ms": percentile(samples, 0.99) * 1000,
                "max_ms": samples[-1] * 1000,
            }
        extra = side_extra(side, n_wait)
    finally:
        codes = procs.stop()
        side.cleanup()
        leftover = side.leftover()
        side.close()
    return {"side": side.name, "versions": side.versions(), "workloads": results, "extra": extra,
            "worker_exit_codes": codes, "leftover_keys": leftover,
            "python": f"{platform.python_implementation()} {platform.python_version()}"}


def side_extra(side: Side, n_wait: int) -> dict[str, Any]:
    """Anything else a side reports after its workloads (its ``extra(n_wait)``, if any)."""
    extra = getattr(side, "extra", None)
    return dict(extra(n_wait)) if callable(extra) else {}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.peers MODULE JSON_KWARGS``: measure one side, print one JSON line.

    Sets ``$BENCH_PEERS_REDIS_URL`` and ``$BENCH_PEERS_PREFIX`` first (task modules read them at
    import, as the side's worker processes do), then imports ``bench.peers.MODULE`` and runs
    its ``SIDE`` class. ``JSON_KWARGS`` holds ``url``, ``prefix``, ``n_noop``, ``n_fail``,
    ``n_wait``, ``wait_rate``, ``seed`` and ``timeout_s``, plus ``side`` (options for the
    class). Exit status 1 with a message on stderr when the side cannot be measured, 2 on bad
    usage.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or not args[0].isidentifier():
        print("usage: python -m bench.peers MODULE JSON_KWARGS", file=sys.stderr)
        return 2
    kwargs = json.loads(args[1])
    url, prefix = kwargs.pop("url"), kwargs.pop("prefix")
    if not prefix.isalnum() or not prefix.islower():
        print(f"prefix must be lowercase letters and digits; got {prefix!r}", file=sys.stderr)
        return 2
    os.environ[ENV_URL] = url
    os.environ[ENV_PREFIX] = prefix
    module = importlib.import_module(f"bench.peers.{args[0]}")
    side = module.SIDE(url, prefix, **kwargs.pop("side", {}))
    try:
        result = run(side, **kwargs)
    except RunError as exc:
        print(f"{side.name}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0
