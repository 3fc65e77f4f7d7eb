"""Real ``celery worker`` and ``celery beat`` processes for fleet tests.

Each process runs in its own process group with its output in a file, so a
test can SIGKILL one (and its prefork children) and read what it logged.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

from tests.support.replies import stream_events
from tests.support.sandbox import Sandbox

REPO = Path(__file__).resolve().parents[2]


def fleet_env(sandbox: Sandbox, redis_url: str, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETBRIDGE_")}
    env.pop("SENTRY_DSN", None)
    env.update(
        ETBRIDGE_CLIENT_ID=sandbox.client_id,
        ETBRIDGE_CLIENT_SECRET=sandbox.client_secret,
        ETBRIDGE_API_URL=sandbox.url,
        ETBRIDGE_REDIS_URL=redis_url,
        ETBRIDGE_POLL_INTERVAL="2",
        ETBRIDGE_SWEEP_INTERVAL="20",
        ETBRIDGE_SINKS="redis-stream:test:events",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


class Proc:
    def __init__(self, name: str, args: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group, as an OOM kill or host loss would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(30)

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class Fleet:
    """Workers and beats against one sandbox and one Redis."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = env
        self.logdir = logdir
        self.procs: list[Proc] = []
        self._n = 0

    def _celery(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "etbridge.worker", *args]

    def worker(
        self, concurrency: int = 2, queues: str = "plan,poll,deliver", pool: str | None = None
    ) -> Proc:
        """A ``celery worker``; ``pool``: ``--pool`` (Celery's default, prefork, when None)."""
        self._n += 1
        name = f"worker{self._n}"
        proc = Proc(
            name,
            self._celery(
                "worker",
                "--concurrency",
                str(concurrency),
                "--queues",
                queues,
                "--hostname",
                f"{name}@%h",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                *(["--pool", pool] if pool else []),
            ),
            self.env,
            self.logdir,
        )
        self.procs.append(proc)
        return proc

    def beat(self) -> Proc:
        self._n += 1
        name = f"beat{self._n}"
        schedule = self.logdir / f"{name}-schedule"
        proc = Proc(
            name,
            self._celery("beat", "--loglevel", "INFO", "--schedule", str(schedule)),
            self.env,
            self.logdir,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"==> {p.name}\n{p.output()[-3000:]}" for p in self.procs)


@contextlib.contextmanager
def fleet(env: dict[str, str], logdir: Path) -> Iterator[Fleet]:
    f = Fleet(env, logdir)
    try:
        yield f
    finally:
        f.stop()


def wait_for(
    condition: Callable[..., Any], timeout: float, message: str = "", interval: float = 0.25
) -> Any:
    """Poll ``condition`` until it returns a truthy value or ``timeout`` seconds pass.

    ``condition`` is called with no arguments (``Callable[..., Any]`` so that a lambda
    binding a loop variable as a default, ``lambda p=port: ...``, type-checks).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)


def read_sink(client: redis.Redis, key: str = "test:events") -> list[dict[str, Any]]:
    return stream_events(client, key)


def celery_sink_worker(
    broker: str, record: str, log: Path, queue: str, **env: str
) -> subprocess.Popen[bytes]:
    """A real Celery worker of tests/support/celery_sink_app.py consuming ``queue``."""
    app = ["-m", "celery", "-A", "tests.support.celery_sink_app", "worker", "-Q", queue]
    options = ["--pool", "solo", "--loglevel", "WARNING", "--without-gossip", "--without-mingle"]
    options.append("--without-heartbeat")
    return subprocess.Popen(
        [sys.executable, *app, *options, "--hostname", f"etb-sink-{os.getpid()}@localhost"],
        cwd=REPO,
        env={**os.environ, "ETB_TEST_BROKER": broker, "ETB_TEST_RECORD_REDIS": record, **env},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 20 s."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
