"""RQ: 4 ``rq worker`` processes, with ``SimpleWorker`` (jobs run in the worker process) or the
default ``Worker`` (a fork per job). Runs in ``bench/.peers``.

RQ has no threads, so "4 worker threads" is 4 worker processes (each runs one job at a time).
The producer uses ``Queue.enqueue_many`` in one pipeline per 1,000 jobs. Completion is read
from RQ's own registries (``FinishedJobRegistry`` + ``FailedJobRegistry`` sizes), which RQ
writes anyway, so nothing is added to the jobs. Retries: ``Retry(max=1)`` with no interval
(re-enqueued at once); the job knows its first attempt by ``retries_left == 1``. Retries are
counted after the run from each job's ``retries_left``. Job ids and worker names contain the
run's prefix, so its keys can be found and deleted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from redis import Redis
from rq import Queue, Retry, get_current_job
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from bench.peers._common import THREADS, RunError, Side, record_wait

WORKER_CLASSES = {"simple": "rq.worker.SimpleWorker", "fork": "rq.worker.Worker"}


def noop(i: int) -> None:
    """Nothing."""


def fail_once(i: int, fail: bool) -> None:
    """Fail on the first attempt if ``fail``."""
    job = get_current_job()
    if fail and job is not None and job.retries_left == 1:
        raise RuntimeError("planned failure (first attempt)")


def wait(i: int, enqueued_at: float) -> None:
    """Record the enqueue-to-start time."""
    record_wait(enqueued_at)


class RQSide(Side):
    """RQ with ``SimpleWorker`` (``worker="simple"``) or the forking ``Worker`` (``"fork"``)."""

    def __init__(self, url: str, prefix: str, worker: str = "simple") -> None:
        super().__init__(url, prefix)
        if worker not in WORKER_CLASSES:
            raise ValueError(f"worker must be one of {', '.join(WORKER_CLASSES)}; got {worker!r}")
        self.worker = worker
        self.name = "RQ SimpleWorker" if worker == "simple" else "RQ Worker (fork)"
        self.connection = Redis.from_url(url)
        self.queue = Queue(prefix, connection=self.connection)
        self._registries = (FinishedJobRegistry(queue=self.queue).key, FailedJobRegistry(queue=self.queue).key)
        self._job_ids: list[str] = []

    def worker_commands(self) -> list[list[str]]:
        rq = [sys.executable, "-c", "from rq.cli import main; main()"]
        return [[*rq, "worker", "--url", self.url, "--worker-class", WORKER_CLASSES[self.worker],
                 "--name", f"{self.prefix}-w{k}", "--logging_level", "WARNING", self.prefix]
                for k in range(THREADS)]

    def submit(self, workload: str, items: Sequence[Any]) -> None:
        retry = Retry(max=1) if workload == "fail_once" else None
        func = f"{__name__}.{workload}"  # by name: a worker imports it
        datas = []
        for item in items:
            args = (item,) if workload == "noop" else tuple(item)
            job_id = f"{self.prefix}-{workload[0]}{args[0]}"
            if workload == "fail_once":
                self._job_ids.append(job_id)
            datas.append(Queue.prepare_data(func, args, job_id=job_id, retry=retry))
        with self.connection.pipeline() as pipe:
            self.queue.enqueue_many(datas, pipeline=pipe)
            pipe.execute()

    def submit_wait(self, i: int, enqueued_at: float) -> None:
        self.queue.enqueue(f"{__name__}.wait", i, enqueued_at, job_id=f"{self.prefix}-l{i}")

    def finished(self) -> int:
        with self.connection.pipeline(transaction=False) as pipe:
            for key in self._registries:
                pipe.zcard(key)
            done, failed = (int(n) for n in pipe.execute())
        if failed:
            raise RunError(f"{failed} job(s) ended in RQ's failed registry")
        return done

    def retries(self) -> int | None:
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in self._job_ids:
                pipe.hget(f"rq:job:{job_id}", "retries_left")
            return sum(1 for left in pipe.execute() if left == b"0")

    def shared_sets(self) -> list[str]:
        return ["rq:queues", "rq:workers"]

    def shared_keys(self) -> list[str]:
        return ["rq:clean_groups"]  # a maintenance lock our workers took (it expires anyway)

    def versions(self) -> dict[str, str]:
        return {"rq": metadata.version("rq"), "redis-py": metadata.version("redis")}

    def close(self) -> None:
        self.connection.close()
        super().close()


SIDE = RQSide
