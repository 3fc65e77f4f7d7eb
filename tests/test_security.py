"""Security checks: Redis with a password, a wrong password, Redis over TLS.

(The sandbox admin API's refusal of non-loopback clients is tested in
tests/sandbox; webhook signatures are verified by tests/support/receiver.py
with the ``standardwebhooks`` package in every delivery test.)

Redis over TLS
--------------
``ETBRIDGE_REDIS_URL`` (and ``ETBRIDGE_BROKER_URL``) take a ``rediss://`` URL.
The query string carries the TLS options of redis-py's ``SSLConnection``:

    ETBRIDGE_REDIS_URL=rediss://:PASSWORD@redis.example.com:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ssl/certs/redis-ca.pem

``ssl_cert_reqs=required`` verifies the server's certificate (and its host
name) against ``ssl_ca_certs`` (the system's CAs when omitted); Celery's Redis
broker refuses a ``rediss://`` URL without ``ssl_cert_reqs``, so always give
it. A managed Redis with a public CA needs only ``?ssl_cert_reqs=required``.
Client certificates: ``ssl_certfile`` and ``ssl_keyfile``. A
``redis-streams://`` sink uses the same options.

The TLS tests run when the system's ``redis-server`` was built with TLS (it
answers on ``--tls-port``); they make a throw-away CA and server certificate
with ``cryptography``.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from redis.sentinel import MasterNotFoundError

from etbridge import keys, redisconn
from etbridge.redisserver import RedisServer, find_server_binary, free_port
from etbridge.settings import parse_sink
from tests.support.fleet import fleet, fleet_env, read_sink, stop, wait_for
from tests.support.sandbox import Sandbox
from tests.support.stack import outbox_events, runtime_for

REPO = Path(__file__).resolve().parents[1]
SINK = "redis-stream:test:events"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=1, bookings=8, seed=3) as sb:
        yield sb


def _poll_and_deliver(sandbox: Sandbox, url: str, **overrides: Any) -> None:
    """A baseline poll, its atomic commit, and the relay's delivery, all over ``url``."""
    rt = runtime_for(sandbox, url, emit_baseline=True, sinks=SINK, **overrides)
    try:
        rt.poller().poll("1001", "sweep")
        events = outbox_events(rt.redis, "1001")
        assert len(events) == 8
        assert {e["type"] for e in events} == {"com.eventtemple.booking.snapshot"}
        result = rt.relay.deliver("1001", parse_sink(SINK).name)
        assert result.delivered == 8
        assert [e["id"] for e in read_sink(rt.redis)] == [e["id"] for e in events]
    finally:
        rt.relay.close()
        rt.session.close()
        rt.redis.close()


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ETBRIDGE_")}
    base.pop("SENTRY_DSN", None)
    base.update(env)
    return subprocess.run(
        [sys.executable, "-m", "etbridge", *args],
        env=base,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# ---------------------------------------------------------------------------
# Password


@pytest.fixture(scope="module")
def password() -> str:
    return "pw-" + secrets.token_urlsafe(12)


@pytest.fixture(scope="module")
def locked_redis(password: str) -> Iterator[RedisServer]:
    with RedisServer(password=password) as server:
        yield server


def test_redis_with_a_password_works_end_to_end(
    sandbox: Sandbox, locked_redis: RedisServer, password: str
) -> None:
    assert f":{password}@" in locked_redis.url
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=locked_redis.port).ping()  # the server does want the password
    redis.Redis.from_url(locked_redis.url).flushall()
    _poll_and_deliver(sandbox, locked_redis.url)
    # ...and the operator's view, through the same URL.
    done = _cli(
        "status",
        "--json",
        ETBRIDGE_CLIENT_ID=sandbox.client_id,
        ETBRIDGE_CLIENT_SECRET=sandbox.client_secret,
        ETBRIDGE_API_URL=sandbox.url,
        ETBRIDGE_REDIS_URL=locked_redis.url,
        ETBRIDGE_ORGS="1001",
    )
    assert done.returncode == 0, done.stderr
    org = json.loads(done.stdout)["orgs"]["1001"]
    assert org["last_poll"] or org.get("watermark"), org
    assert password not in done.stdout + done.stderr


@pytest.mark.parametrize("given", ["wrong", "none"])
def test_a_wrong_redis_password_is_a_clear_error(
    sandbox: Sandbox, locked_redis: RedisServer, password: str, given: str
) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(8)
    auth = f":{wrong}@" if given == "wrong" else ""
    url = f"redis://{auth}127.0.0.1:{locked_redis.port}/0"
    # In a worker: redis-py's AuthenticationError, with no secret in its message.
    rt = runtime_for(sandbox, url)
    try:
        with pytest.raises(redis.AuthenticationError) as caught:
            rt.poller().poll("1001", "sweep")
    finally:
        rt.session.close()
        rt.redis.close()
    message = str(caught.value)
    assert "password" in message.lower() or "authenticat" in message.lower()
    assert wrong not in message and password not in message
    # At the command line: one line naming the variable, exit 1, no traceback.
    done = _cli(
        "status",
        ETBRIDGE_CLIENT_ID=sandbox.client_id,
        ETBRIDGE_CLIENT_SECRET=sandbox.client_secret,
        ETBRIDGE_API_URL=sandbox.url,
        ETBRIDGE_REDIS_URL=url,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "ETBRIDGE_REDIS_URL" in lines[0]
    assert "password" in lines[0].lower() or "authenticat" in lines[0].lower()
    assert wrong not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_worker_with_a_wrong_redis_password_says_so_without_the_password(
    sandbox: Sandbox, locked_redis: RedisServer, tmp_path: Path
) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(8)
    env = fleet_env(sandbox, f"redis://:{wrong}@127.0.0.1:{locked_redis.port}/0")
    with fleet(env, tmp_path) as f:
        worker = f.worker(concurrency=1)
        wait_for(
            lambda: "invalid username-password pair" in worker.output(),
            60,
            "the worker to report the refused password",
        )
        assert worker.alive()  # it keeps trying, as for any broker outage
    assert wrong not in worker.output()


# ---------------------------------------------------------------------------
# TLS


def _certificates(directory: Path) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost, as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "etbridge test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca": directory / "ca.pem",
        "cert": directory / "server.pem",
        "key": directory / "server.key",
    }
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


class TlsRedis:
    """``redis-server`` answering TLS only (``--port 0 --tls-port P``), with a password."""

    def __init__(self, directory: Path, files: dict[str, Path], password: str) -> None:
        self.port = free_port()
        self.password = password
        self.files = files
        self.process = subprocess.Popen(
            [
                find_server_binary(),
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--tls-cert-file",
                str(files["cert"]),
                "--tls-key-file",
                str(files["key"]),
                "--tls-ca-cert-file",
                str(files["ca"]),
                "--tls-auth-clients",
                "no",
                "--requirepass",
                password,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
                "--logfile",
                str(directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def url(self, scheme: str = "rediss") -> str:
        query = f"?ssl_cert_reqs=required&ssl_ca_certs={self.files['ca']}"
        return f"{scheme}://:{self.password}@127.0.0.1:{self.port}/0{query}"

    def answers(self) -> bool:
        if self.process.poll() is not None:
            return False
        try:
            with redis.Redis.from_url(self.url(), socket_timeout=2) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        stop(self.process)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    directory = tmp_path_factory.mktemp("tls-redis")
    try:
        binary = find_server_binary()
    except FileNotFoundError:
        pytest.skip("no redis-server binary")
    probe = subprocess.run(
        [binary, "--help"], capture_output=True, text=True, timeout=10, check=False
    )
    if "tls" not in (probe.stdout + probe.stderr).lower() and not _links_openssl(binary):
        pytest.skip("this redis-server was built without TLS")
    server = TlsRedis(directory, _certificates(directory), "pw-" + secrets.token_urlsafe(8))
    try:
        with contextlib.suppress(AssertionError):
            wait_for(lambda: server.answers() or server.process.poll() is not None, 10, "TLS")
        if not server.answers():
            pytest.skip("this redis-server does not serve TLS (--tls-port refused)")
        yield server
    finally:
        server.stop()


def _links_openssl(binary: str) -> bool:
    try:
        done = subprocess.run(
            ["ldd", binary], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return True  # cannot tell: let the start-up probe decide
    return "libssl" in done.stdout


def test_redis_over_tls_works_end_to_end(sandbox: Sandbox, tls_redis: TlsRedis) -> None:
    # Plain text to the TLS port gets nowhere: the connection really is TLS.
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=tls_redis.port, password=tls_redis.password, socket_timeout=2).ping()
    redis.Redis.from_url(tls_redis.url()).flushall()
    _poll_and_deliver(sandbox, tls_redis.url())


def test_redis_over_tls_refuses_a_server_it_cannot_verify(
    sandbox: Sandbox, tls_redis: TlsRedis, tmp_path: Path
) -> None:
    other_ca = _certificates(tmp_path)["ca"]
    url = tls_redis.url().replace(str(tls_redis.files["ca"]), str(other_ca))
    rt = runtime_for(sandbox, url)
    try:
        with pytest.raises(redis.ConnectionError, match=r"(?i)certificate"):
            rt.poller().poll("1001", "sweep")
    finally:
        rt.session.close()
        rt.redis.close()


@pytest.mark.slow
def test_a_fleet_runs_on_redis_over_tls(
    sandbox: Sandbox, tls_redis: TlsRedis, tmp_path: Path
) -> None:
    """Celery's broker and beat take the same ``rediss://`` URL as etbridge's own clients."""
    client = redis.Redis.from_url(tls_redis.url())
    client.flushall()
    env = fleet_env(sandbox, tls_redis.url(), ETBRIDGE_EMIT_BASELINE="true", ETBRIDGE_SINKS=SINK)
    with fleet(env, tmp_path) as f:
        f.worker(concurrency=1)
        f.beat()
        try:
            wait_for(lambda: len(read_sink(client)) >= 8, 60, "the baseline over TLS")
        except AssertionError:
            raise AssertionError(f.logs()) from None
    assert client.exists(keys.DEFAULT.outbox("1001"))
    client.close()


class TlsSentinel:
    """``redis-server --sentinel`` answering TLS only, watching ``master`` over TLS."""

    SERVICE = "etb-tls"

    def __init__(self, directory: Path, master: TlsRedis) -> None:
        self.port = free_port()
        self.master = master
        files = master.files
        conf = directory / f"sentinel-{self.port}.conf"
        conf.write_text(
            f"port 0\ntls-port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
            f"logfile {directory}/sentinel-{self.port}.log\n"
            f"tls-cert-file {files['cert']}\ntls-key-file {files['key']}\n"
            f"tls-ca-cert-file {files['ca']}\ntls-auth-clients no\n"
            # The sentinel's own connections to the master are TLS too.
            "tls-replication yes\n"
            f"sentinel monitor {self.SERVICE} 127.0.0.1 {master.port} 1\n"
            f"sentinel auth-pass {self.SERVICE} {master.password}\n"
        )
        self.process = subprocess.Popen(
            [find_server_binary(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def url(self) -> str:
        query = f"?ssl_cert_reqs=required&ssl_ca_certs={self.master.files['ca']}"
        return (
            f"rediss+sentinel://:{self.master.password}@127.0.0.1:{self.port}"
            f"/{self.SERVICE}/0{query}"
        )

    def names_the_master(self) -> bool:
        client = redis.Redis(
            port=self.port,
            ssl=True,
            ssl_cert_reqs="required",
            ssl_ca_certs=str(self.master.files["ca"]),
            socket_timeout=2,
        )
        with client:
            master = cast(dict[str, Any], client.sentinel_master(self.SERVICE))
        # It reached the master over TLS: it has the master's own word on its role.
        return bool(
            master["port"] == self.master.port
            and master["role-reported"] == "master"
            and not master["is_disconnected"]
        )

    def stop(self) -> None:
        stop(self.process)


def test_redis_sentinel_over_tls_works_end_to_end(
    sandbox: Sandbox, tls_redis: TlsRedis, tmp_path: Path
) -> None:
    """``rediss+sentinel://``: TLS to the sentinel and to the master it names, with the
    CA of the URL's ``ssl_ca_certs``; state, token cache and outbox through it."""
    sentinel = TlsSentinel(tmp_path, tls_redis)
    try:
        wait_for(
            lambda: _quietly(sentinel.names_the_master), 20, "the TLS sentinel to name the master"
        )
        with pytest.raises(redis.ConnectionError):  # the sentinel speaks TLS only
            redis.Redis(port=sentinel.port, socket_timeout=2).ping()
        client = redis.Redis.from_url(tls_redis.url())
        client.flushall()
        # No broker URL is derived for TLS to sentinels (README): this one names its own.
        _poll_and_deliver(sandbox, sentinel.url(), broker_url="memory://")
        assert client.exists(keys.DEFAULT.outbox("1001"))
        assert list(client.scan_iter(match=f"{keys.ROOT}:token:*"))  # the cached token
        client.close()
        # Another CA: the sentinel is refused (redis-py reports it as no master found,
        # the certificate error is in the sentinel's ConnectionError it lists).
        (tmp_path / "other").mkdir()
        other_ca = _certificates(tmp_path / "other")["ca"]
        url = sentinel.url().replace(str(tls_redis.files["ca"]), str(other_ca))
        with pytest.raises(MasterNotFoundError):
            redisconn.connect(url, socket_timeout=2).ping()
    finally:
        sentinel.stop()


def _quietly(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except redis.RedisError:
        return False
