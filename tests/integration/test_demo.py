"""``etbridge demo``: the real pipeline, shown live, and nothing left running afterwards."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.fleet import wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent.parent
EVENT = re.compile(r"^  (created|updated|deleted|snapshot|changed)\s+org (\d+)\s+booking (\S+)")


class Demo:
    """``python -m etbridge demo ...`` in its own session, its output collected line by line."""

    def __init__(self, *args: str, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETBRIDGE_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "etbridge", "demo", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            self._reader.join(10)
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        return code

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def events(self) -> list[re.Match[str]]:
        return [m for m in (EVENT.match(line) for line in self.lines) if m]

    def ports(self) -> tuple[int, int]:
        """The Redis and sandbox ports the demo announced."""
        match = re.search(
            r"Redis redis://127\.0\.0\.1:(\d+)/0, sandbox http://127\.0\.0\.1:(\d+)", self.text
        )
        assert match, self.text
        return int(match.group(1)), int(match.group(2))


def leftovers(redis_port: int, sandbox_port: int) -> list[str]:
    """Processes still running that belong to the demo: by port on the command line, or env."""
    found = []
    redis_url = f"127.0.0.1:{redis_port}/".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if (
            f"127.0.0.1:{redis_port}".encode() in cmdline
            or f"--port {sandbox_port} ".encode() in cmdline + b" "
            or (b"ETBRIDGE_REDIS_URL=" in environ and redis_url in environ)
        ):
            found.append(f"{entry.name}: {cmdline.decode(errors='replace')[:200]}")
    return found


def _check_output(demo: Demo, code: int) -> None:
    lines = demo.lines
    assert code == 0, demo.text
    assert lines[0].startswith("etbridge demo: starting a private Redis, the sandbox"), lines[0]
    assert "Ctrl-C" in lines[0]
    events = demo.events()
    assert events, demo.text
    assert {m.group(2) for m in events} <= {"1001", "1002", "1003"}
    assert any(
        "budget" in line and "token expires in" in line and "lag 1001:" in line for line in lines
    )
    assert "every child process stopped" in lines[-1], lines[-3:]
    assert "had to kill" not in demo.text
    assert "Traceback" not in demo.text


def test_demo_with_duration_shows_events_and_leaves_nothing(tmp_path: Path) -> None:
    demo = Demo("--duration", "40", "--churn", "1", "--poll-interval", "3", cwd=tmp_path)
    code = demo.wait(150)
    _check_output(demo, code)
    redis_port, sandbox_port = demo.ports()
    assert leftovers(redis_port, sandbox_port) == []
    received = re.search(r"(\d+) change events received", demo.text)
    assert received and int(received.group(1)) == len(demo.events())


def test_demo_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    demo = Demo("--churn", "2", "--poll-interval", "2", cwd=tmp_path)
    try:
        wait_for(
            lambda: (
                (demo.events() and any("token expires in" in x for x in demo.lines))
                or demo.proc.poll() is not None
            ),
            90,
            "a first event and a footer with the token",
        )
    except AssertionError:
        demo.wait(0.1)
        raise AssertionError(demo.text) from None
    redis_port, sandbox_port = demo.ports()
    assert leftovers(redis_port, sandbox_port), "the children run while the demo does"
    # The demo started the console and said where: it shows the demo's orgs.
    said = re.search(r"the console is at (http://127\.0\.0\.1:\d+/)", demo.text)
    assert said, demo.text
    with urllib.request.urlopen(said.group(1), timeout=10) as page:  # noqa: S310  (http://127.0.0.1)
        assert page.status == 200
        assert '<a href="/orgs/1001">1001</a>' in page.read().decode()
    # What a terminal's Ctrl-C does: SIGINT to the foreground process group.
    os.killpg(demo.proc.pid, signal.SIGINT)
    started = time.monotonic()
    code = demo.wait(60)
    _check_output(demo, code)
    assert time.monotonic() - started < 60
    assert leftovers(redis_port, sandbox_port) == []
