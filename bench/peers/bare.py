"""The floor: a bare LPUSH/BRPOP loop, one round trip per job each way, no bookkeeping.

A consumer process (``python -m bench.peers.bare``) runs 4 threads, each looping on
``BRPOP`` and counting the job in a :data:`~bench.peers._common.TALLY` (no round trip); the
producer in the runner process does one ``LPUSH`` per job. No lease, no retry, no counters in
Redis: a job is lost if its consumer dies. So it has no ``fail_once`` workload. Latency jobs
carry their enqueue time and record it like every other side's.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from bench.peers._common import TALLY, THREADS, Side, env_prefix, record_wait, worker_client


def consume() -> int:
    """The consumer process: 4 BRPOP threads until SIGTERM."""
    key = f"{env_prefix()}:bare"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def loop() -> None:
        client = worker_client()
        while not stop.is_set():
            item = client.brpop([key], timeout=1)
            if item is None:
                continue
            payload = item[1]
            if payload.startswith(b"w"):
                record_wait(float(payload[1:]))
            else:
                TALLY.add("ok")

    threads = [threading.Thread(target=loop, name=f"bare-{k}", daemon=True) for k in range(THREADS)]
    for t in threads:
        t.start()
    stop.wait()
    return 0


class Bare(Side):
    """LPUSH/BRPOP with no bookkeeping."""

    name = "bare LPUSH/BRPOP"
    has_retries = False

    def worker_commands(self) -> list[list[str]]:
        return [[sys.executable, "-m", "bench.peers.bare"]]

    def submit(self, workload: str, items: Sequence[Any]) -> None:
        key = f"{self.prefix}:bare"
        for i in items:  # one round trip per job, on purpose
            self.client.lpush(key, i)

    def submit_wait(self, i: int, enqueued_at: float) -> None:
        self.client.lpush(f"{self.prefix}:bare", f"w{enqueued_at!r}")

    def retries(self) -> int | None:
        return None

    def versions(self) -> dict[str, str]:
        return {"redis-py": metadata.version("redis")}


SIDE = Bare

if __name__ == "__main__":
    sys.exit(consume())
