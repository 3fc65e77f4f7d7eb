"""Real Redis Sentinel sets, Redis Clusters and RabbitMQ nodes for the engine tests.

Each starts its own processes on loopback ports in a private directory and
stops them on exit. Sentinel runs as ``redis-server --sentinel`` (Debian's
``redis-sentinel`` package is that same binary under another name), so the
Redis that CI already installs is enough. RabbitMQ needs Debian's
``rabbitmq-server``; :func:`rabbitmq_missing` says why it cannot run here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import pytest
import redis

from etbridge.redisserver import RedisServer, find_server_binary, free_port

SERVICE = "etb"


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


class _Context:
    def start(self) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _ExtraArgsServer(RedisServer):
    def __init__(self, extra: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.extra = extra

    def _args(self) -> list[str]:
        return super()._args() + self.extra


# ---------------------------------------------------------------------------------------


class SentinelSet(_Context):
    """One master, one replica (both AOF), three sentinels (quorum 2) on loopback.

    Three sentinels, because a majority must agree that the master is down:
    with one sentinel, that sentinel's view alone would decide.
    """

    def __init__(self, sentinels: int = 3) -> None:
        self.directory = tempfile.mkdtemp(prefix="etbridge-sentinel-")
        self.nodes = [RedisServer(appendonly=True), RedisServer(appendonly=True)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> SentinelSet:
        for node in self.nodes:
            node.start()
        master = self.nodes[0]
        replica = self._client(self.nodes[1])
        replica.replicaof("127.0.0.1", master.port)
        wait_until(
            lambda: replica.info("replication").get("master_link_status") == "up",
            30,
            "the replica to sync",
        )
        replica.close()
        for port in self.sentinel_ports:
            conf = Path(self.directory) / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"logfile {self.directory}/sentinel-{port}.log\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    [find_server_binary(), str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    stdin=subprocess.DEVNULL,
                )
            )
        others = len(self.sentinel_ports) - 1
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, socket_timeout=1)
            wait_until(
                lambda c=client: (
                    len(c.sentinel_slaves(SERVICE)) == 1  # type: ignore[misc]
                    and len(c.sentinel_sentinels(SERVICE)) == others
                ),
                30,
                f"sentinel {port} to see the replica and {others} sentinels",
            )
            client.close()
        return self

    def _client(self, node: RedisServer) -> redis.Redis:
        return redis.Redis(port=node.port, socket_timeout=2)

    def master_port(self) -> int:
        client = redis.Redis(port=self.sentinel_ports[0], socket_timeout=1)
        try:
            host_port = client.sentinel_get_master_addr_by_name(SERVICE)
        finally:
            client.close()
        return int(cast(tuple[bytes, int], host_port)[1])

    def kill_master(self, timeout: float = 30, *, rejoin: bool = True) -> int:
        """SIGKILL the master and wait for the sentinels to promote the replica; with
        ``rejoin``, restart the old master as the new one's replica. The new master's port."""
        old = self.master_port()
        victim = next(n for n in self.nodes if n.port == old)
        victim.kill()
        wait_until(lambda: self.master_port() != old, timeout, "the sentinels to elect a master")
        new = self.master_port()
        wait_until(
            lambda: (
                self._client(next(n for n in self.nodes if n.port == new)).role()[0] == b"master"
            ),
            timeout,
            "the new master to take writes",
        )
        if rejoin:
            victim.start()
            client = self._client(victim)

            def synced() -> bool:
                # Point it at whichever node the sentinels name now, until it follows:
                # a sentinel may reconfigure it too, or not have reached it yet.
                info = client.info("replication")
                if info.get("role") == "master":
                    client.replicaof("127.0.0.1", self.master_port())
                return info.get("master_link_status") == "up"

            wait_until(synced, 2 * timeout, "the old master to sync as a replica")
            client.close()
        return self.master_port()

    def close(self) -> None:
        for proc in self.sentinels:
            proc.terminate()
        for proc in self.sentinels:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for node in self.nodes:
            node.close()
        shutil.rmtree(self.directory, ignore_errors=True)


# ---------------------------------------------------------------------------------------


class RedisClusterSet(_Context):
    """A 3-master Redis Cluster (no replicas) on loopback, created with ``redis-cli``."""

    def __init__(self, masters: int = 3, *, appendonly: bool = False) -> None:
        self.nodes = [
            _ExtraArgsServer(
                ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"],
                appendonly=appendonly,
                port=_cluster_port(),
            )
            for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes) + "/"

    def start(self) -> RedisClusterSet:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError("redis-cli is needed to create a cluster (Debian redis-tools)")
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for node in self.nodes:
            client = redis.Redis(port=node.port, socket_timeout=1)
            wait_until(
                lambda c=client: c.cluster("INFO")["cluster_state"] == "ok",  # type: ignore[misc]
                30,
                f"cluster node {node.port} to be ok",
            )
            client.close()
        return self

    def flushall(self) -> None:
        for node in self.nodes:
            with redis.Redis(port=node.port, socket_timeout=5) as client:
                client.flushall()

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""

    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


# ---------------------------------------------------------------------------------------

# The server itself, not /usr/sbin's wrapper (which switches to the rabbitmq user).
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def rabbitmq_missing() -> str | None:
    """Why no RabbitMQ node can be started here (None: it can)."""
    if not os.path.exists(RABBITMQ_SERVER):
        return "Debian's rabbitmq-server is not installed (apt-get install rabbitmq-server)"
    return None


# The marks of a RabbitMQ test module: slow, and skipped only off CI when the server is missing.
RABBITMQ_TEST = [
    pytest.mark.slow,
    pytest.mark.skipif(
        rabbitmq_missing() is not None and not os.environ.get("CI"),
        reason=str(rabbitmq_missing()),
    ),
]


class RabbitNode(_Context):
    """One RabbitMQ node in a private directory, on free loopback ports."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="etbridge-rabbit-")
        self.port = free_port()
        self.dist_port = free_port()
        self.name = f"etb{self.port}@localhost"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        conf = Path(self.directory) / "rabbitmq.conf"
        # consumer_timeout above the longest a worker holds a task unacknowledged
        # (the task time limit; an ETA task would be held until its time).
        conf.write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "consumer_timeout = 7200000\nloopback_users = none\n"
        )
        (Path(self.directory) / "enabled_plugins").write_text("[].\n")
        for sub in ("mnesia", "log"):
            (Path(self.directory) / sub).mkdir(exist_ok=True)
        env = dict(os.environ)
        env.update(
            RABBITMQ_FEATURE_FLAGS_FILE=str(Path(self.directory) / "feature_flags"),
            ERL_CRASH_DUMP=str(Path(self.directory) / "erl_crash.dump"),
            HOME=self.directory,
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(conf.with_suffix("")),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(Path(self.directory) / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(Path(self.directory) / "mnesia"),
            RABBITMQ_LOG_BASE=str(Path(self.directory) / "log"),
            RABBITMQ_PID_FILE=str(Path(self.directory) / "pid"),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def start(self, timeout: float = 90) -> RabbitNode:
        self.process = subprocess.Popen(
            [RABBITMQ_SERVER],
            env=self._env(),
            stdout=open(Path(self.directory) / "stdout.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

        def accepting() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (Path(self.directory) / "stdout.log").read_text()[-2000:]
                raise RuntimeError(f"rabbitmq-server exited: {log}")
            from kombu.connection import Connection  # noqa: PLC0415  (RabbitMQ runs only)

            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                pass
            with Connection(self.url, connect_timeout=2) as conn:
                conn.connect()
            return True

        wait_until(accepting, timeout, f"RabbitMQ on port {self.port}")
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, 15)
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait(10)
        except ProcessLookupError:
            pass
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def ctl(self, *args: str) -> str:
        """``rabbitmqctl -q ARGS`` against this node; its output."""
        env = {
            **os.environ,
            "HOME": self.directory,  # the node's Erlang cookie
            "RABBITMQ_NODENAME": self.name,
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        return subprocess.run(
            [RABBITMQCTL, "-q", "-n", self.name, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout

    def queues(self) -> dict[str, tuple[str, int]]:
        """Queue name -> (type, messages ready or unacknowledged)."""
        found = {}
        for line in self.ctl("list_queues", "name", "type", "messages").splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[2].isdigit():
                found[parts[0]] = (parts[1], int(parts[2]))
        return found

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
