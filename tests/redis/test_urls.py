"""The Redis URL selects the broker: TLS (``rediss://``) and an ACL user with a password, each
against a real server, and a clear error for wrong credentials."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from engine import BrokerUnavailable, Dispatcher, TaskRegistry
from engine.brokers.redis import RedisBroker, RedisQueue
from engine.redis_worker import RedisWorker
from tests.redis.conftest import WAIT_S, _free_port, eventually

tasks = TaskRegistry()


@tasks.task("double")
def double(n: int) -> int:
    return 2 * n


def _need(program: str) -> None:
    if shutil.which(program) is None:
        if os.environ.get("TUI_DISPATCH_REQUIRE_REDIS") == "1":
            pytest.fail(f"TUI_DISPATCH_REQUIRE_REDIS=1 but {program} is not on PATH")
        pytest.skip(f"{program} is not on PATH")


@pytest.fixture
def tls_redis() -> Iterator[tuple[str, Path]]:
    """A private redis-server that speaks only TLS, with a self-signed certificate for 127.0.0.1.

    Yields its rediss:// URL (which verifies the certificate against that CA) and the CA file.
    """
    _need("redis-server")
    _need("openssl")
    directory = Path(tempfile.mkdtemp(prefix="tdtest-tls-"))
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=WAIT_S,
    )
    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
         "--tls-auth-clients", "no", "--save", "", "--dir", str(directory), "--logfile", "redis.log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.exceptions.RedisError:
            return False

    try:
        eventually(up, what=f"the TLS redis-server on port {port} to answer")
        yield url, cert
    finally:
        client.close()
        proc.terminate()
        proc.wait(WAIT_S)
        shutil.rmtree(directory, ignore_errors=True)


def test_a_rediss_url_runs_jobs_over_tls(tls_redis: tuple[str, Path]) -> None:
    url, _ = tls_redis
    with Dispatcher(broker=RedisBroker(url, poll_s=0.05, heartbeat_s=0.1), tasks=tasks, min_workers=2,
                    max_workers=2, autoscale=False, log_interval_s=0) as d:
        assert [h.result(timeout=WAIT_S) for h in d.submit_many(double, [(n,) for n in range(20)])] == [
            2 * n for n in range(20)]
        assert d.snapshot().counters.succeeded == 20


def test_plain_redis_to_a_tls_port_fails_clearly(tls_redis: tuple[str, Path]) -> None:
    url, _ = tls_redis
    plain = "redis://" + url.removeprefix("rediss://").split("?")[0]
    queue = RedisQueue(plain, connect_timeout_s=0.5, socket_timeout_s=0.5)
    try:
        with pytest.raises(BrokerUnavailable, match=r"Redis at redis://127\.0\.0\.1:\d+/0 is unavailable"):
            queue.ping()
    finally:
        queue.close()


def test_an_untrusted_certificate_is_refused(tls_redis: tuple[str, Path]) -> None:
    url, _ = tls_redis
    unverified = url.split("?")[0] + "?ssl_cert_reqs=required"  # the system CAs do not know it
    queue = RedisQueue(unverified, connect_timeout_s=1.0, socket_timeout_s=1.0)
    try:
        with pytest.raises(BrokerUnavailable, match="certificate verify failed"):
            queue.ping()
    finally:
        queue.close()


@pytest.fixture
def acl_user(redis_url: str, prefix: str, raw: redis.Redis) -> Iterator[tuple[str, str]]:
    """An ACL user allowed only the keys under the test's prefix."""
    name, password = f"tdtest-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    raw.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=[f"{prefix}:*"], commands=["+@all"])
    try:
        yield name, password
    finally:
        raw.acl_deluser(name)


def test_an_acl_user_in_the_url_runs_jobs_within_its_keys(
    redis_url: str, prefix: str, acl_user: tuple[str, str]
) -> None:
    name, password = acl_user
    host = redis_url.removeprefix("redis://")
    url = f"redis://{name}:{password}@{host}"
    queue = RedisQueue(url, prefix=prefix)
    worker = RedisWorker(RedisQueue(url, prefix=prefix), tasks, min_workers=1, max_workers=1, autoscale=False,
                         heartbeat_s=0.1, poll_s=0.05, log_interval_s=0).start()
    try:
        ids = queue.submit_many("double", [(n,) for n in range(10)])
        assert len(ids) == 10
        eventually(lambda: queue.counters().get("succeeded") == 10, what="the jobs to run as the ACL user")
        assert password not in queue.url and password not in repr(queue)
    finally:
        worker.stop()
        worker.queue.close()
        queue.close()
    other = RedisQueue(url, prefix=f"not-{prefix}")  # outside the user's keys
    try:
        with pytest.raises(BrokerUnavailable, match=r"failed a command: .*can.t access at least one of the keys"):
            other.submit("double", 1)
    finally:
        other.close()


def test_a_wrong_password_is_named_as_refused_credentials(
    redis_url: str, prefix: str, acl_user: tuple[str, str]
) -> None:
    name, _ = acl_user
    url = f"redis://{name}:wrong-secret@" + redis_url.removeprefix("redis://")
    with pytest.raises(BrokerUnavailable, match="refused the credentials") as info:
        Dispatcher(broker=RedisBroker(url, prefix=prefix), tasks=tasks)
    assert "wrong-secret" not in str(info.value)


def test_a_unix_socket_url_runs_jobs(tmp_path: Path) -> None:
    _need("redis-server")
    sock = Path(tempfile.mkdtemp(prefix="tdtest-sock-")) / "redis.sock"  # short: socket paths are limited
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "", "--dir", str(tmp_path),
         "--logfile", "redis.log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        eventually(sock.exists, what="the socket to appear")
        with Dispatcher(broker=RedisBroker(f"unix://{sock}?db=1", poll_s=0.05, heartbeat_s=0.1), tasks=tasks,
                        min_workers=1, max_workers=1, autoscale=False, log_interval_s=0) as d:
            assert d.submit(double, 21).result(timeout=WAIT_S) == 42
    finally:
        proc.terminate()
        proc.wait(WAIT_S)
        shutil.rmtree(sock.parent, ignore_errors=True)
