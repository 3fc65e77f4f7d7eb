"""``etbridge demo``: the real pipeline on one machine, watched live.

Starts, as child processes: a private Redis (``redis-server`` on PATH, else
the embedded valkey-server), the sandbox with a few orgs and steady churn, a
``celery worker`` and a ``celery beat`` configured against them. Then it reads
the Redis-stream sink and prints each change event as it arrives, with a
footer of budget, token and per-org lag every few seconds. Ctrl-C or
``--duration`` stops every child; nothing is left running.

Every child runs in its own session, so the terminal's Ctrl-C reaches the
demo alone, and the demo stops them in order: worker and beat, the sandbox,
Redis last (a worker that loses Redis mid-shutdown would log errors). The
children run in a temporary directory with the ``ETBRIDGE_*`` variables set
anew, so neither the environment nor a ``.env`` can point at production.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import etbridge
from etbridge import redisconn
from etbridge.redisserver import RedisServer, free_port

SINK_KEY = "etbridge:events"
CLIENT_ID = "sandbox-client"
# The sandbox's default credential: a local, throwaway value, not a secret.
CLIENT_SECRET = "sandbox-secret"  # noqa: S105
FOOTER_EVERY = 5.0
STOP_TIMEOUT = 15.0


class Child:
    """A child process in its own session (process group), its output in a log file."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], logdir: Path, cwd: Path
    ) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.killed = False
        self.proc = subprocess.Popen(  # noqa: S603  (our own command line, no shell)
            args,
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM the group, SIGKILL it after ``timeout``; return the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        # The leader is gone; a grandchild of it (a pool process) must not linger.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()
        return self.proc.returncode


def _wait_for_line(path: Path, needle: str, child: Child, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines():
            if needle in line:
                return line
        if not child.alive():
            raise RuntimeError(f"{child.name} exited early; see {path}:\n{text[-2000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"{child.name} did not start within {timeout:.0f}s; see {path}")


def format_event(env: dict[str, Any], now: float) -> str:
    """One line per change event: type, org, booking, latency, changed fields."""
    data = env.get("data")
    data = data if isinstance(data, dict) else {}
    kind = str(env.get("type", "")).rsplit(".", 1)[-1]
    org = str(env.get("orgid", "?"))
    subject = str(env.get("subject", "?"))
    if kind == "changed":  # com.eventtemple.schema.changed
        fields = f"attributes +{data.get('added')} -{data.get('removed')}"
    else:
        fields = ", ".join(sorted(data.get("changes") or {}))
    latency = ""
    after = data.get("after")
    updated = after.get("attributes", {}).get("updated_at") if isinstance(after, dict) else None
    if updated:
        # updated_at has one-second precision: the latency is good to about a second.
        with contextlib.suppress(ValueError):
            ts = datetime.fromisoformat(str(updated).replace("Z", "+00:00")).timestamp()
            latency = f"{max(0.0, now - ts):.1f}s"
    return f"  {kind:<9} org {org:<6} booking {subject:<8} {latency:>6}  {fields}".rstrip()


def _until(iso: str | None, now: float) -> str:
    if not iso:
        return "-"
    try:
        left = datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() - now
    except ValueError:
        return "-"
    minutes = int(left // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if left > 0 else "expired"


def format_footer(st: dict[str, Any], now: float) -> str:
    """The status line: budget, token, per-org lag, outbox."""
    budget = st.get("rate_budget", {})
    token = st.get("token", {})
    lags = []
    for org_id, org in sorted(st.get("orgs", {}).items()):
        lag = org.get("lag")
        lags.append(f"{org_id}:{lag:.0f}s" if isinstance(lag, (int, float)) else f"{org_id}:-")
    if token.get("error"):
        tok = f"token ERROR {token['error']}"
    elif token.get("expires_at"):
        tok = f"token expires in {_until(token['expires_at'], now)}"
    else:
        tok = "no token yet"
    paused = f" (paused until {budget['paused_until']})" if budget.get("paused_until") else ""
    return (
        f"  -- budget {budget.get('used', '?')}/{budget.get('limit', '?')} per 60s{paused}"
        f" | {tok}"
        f" | lag {' '.join(lags) or '-'}"
        f" | outbox pending {st.get('outbox', {}).get('pending', '?')}"
    )


def _exit(code: int | None) -> str:
    """An exit status for people: ``0``, ``3``, or ``SIGTERM`` for a death by signal."""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-code).name
    return str(code)


def _child_env(redis_url: str, api_url: str, poll_interval: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETBRIDGE_")}
    env.pop("SENTRY_DSN", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # The children run in a temporary directory: make sure they import this etbridge.
    root = str(Path(etbridge.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.update(
        PYTHONUNBUFFERED="1",
        ETBRIDGE_CLIENT_ID=CLIENT_ID,
        ETBRIDGE_CLIENT_SECRET=CLIENT_SECRET,
        ETBRIDGE_API_URL=api_url,
        ETBRIDGE_REDIS_URL=redis_url,
        ETBRIDGE_BROKER_URL=redis_url,
        ETBRIDGE_POLL_INTERVAL=str(poll_interval),
        ETBRIDGE_SWEEP_INTERVAL="120",
        ETBRIDGE_SINKS=f"redis-stream:{SINK_KEY}",
    )
    return env


# The demo script, step by step.
def run(  # noqa: PLR0915
    *,
    duration: float | None = None,
    orgs: int = 3,
    bookings: int = 40,
    churn: float = 0.5,
    poll_interval: float = 5.0,
    out: IO[str] | None = None,
) -> int:
    """Run the demo; return the exit code (0 when every child ran and stopped cleanly)."""
    out = out or sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    say(
        f"etbridge demo: starting a private Redis, the sandbox ({orgs} orgs, "
        f"{churn:g} changes/s), a celery worker, a celery beat and the console; "
        + (f"stops after {duration:g}s or on Ctrl-C" if duration else "Ctrl-C stops everything")
    )
    try:
        server = RedisServer(new_session=True)
    except FileNotFoundError as exc:
        say(f"etbridge demo: {exc}")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="etbridge-demo-"))
    children: list[Child] = []
    stop = {"now": False}

    def _on_signal(signum: int, _frame: Any) -> None:
        stop["now"] = True

    old_int = signal.signal(signal.SIGINT, _on_signal)
    old_term = signal.signal(signal.SIGTERM, _on_signal)
    code = 1
    try:
        server.start()
        port = free_port()
        sandbox = Child(
            "sandbox",
            [
                sys.executable,
                "-m",
                "etbridge.sandbox",
                "--port",
                str(port),
                "--orgs",
                str(orgs),
                "--bookings",
                str(bookings),
                "--churn",
                str(churn),
                "--client-id",
                CLIENT_ID,
                "--client-secret",
                CLIENT_SECRET,
            ],
            _child_env(server.url, "", poll_interval),
            workdir,
            workdir,
        )
        children.append(sandbox)
        line = _wait_for_line(sandbox.log_path, "listening on", sandbox, 60)
        api_url = line.rsplit(" ", 1)[-1].strip()
        env = _child_env(server.url, api_url, poll_interval)
        celery = [sys.executable, "-m", "celery", "-A", "etbridge.worker"]
        children.append(
            Child(
                "worker",
                [*celery, "worker", "--concurrency", "2", "--loglevel", "INFO"],
                env,
                workdir,
                workdir,
            )
        )
        children.append(
            Child(
                "beat",
                [
                    *celery,
                    "beat",
                    "--loglevel",
                    "INFO",
                    "--schedule",
                    str(workdir / "beat-schedule"),
                ],
                env,
                workdir,
                workdir,
            )
        )
        console = Child(
            "console",
            [sys.executable, "-m", "etbridge", "console", "--port", "0"],
            env,
            workdir,
            workdir,
        )
        children.append(console)
        console_url = _wait_for_line(console.log_path, "listening on", console, 60).split()[-1]
        say(
            f"etbridge demo: Redis {server.url}, sandbox {api_url}, logs in {workdir}; "
            "change events appear below as they are detected"
        )
        say(f"etbridge demo: the console is at {console_url} (open it in a browser)")
        code = _watch(server.url, api_url, children, duration, stop, say)
    except (RuntimeError, TimeoutError, OSError) as exc:
        say(f"etbridge demo: could not start: {exc}")
        code = 1
    finally:
        # Our handler stays on until every child is stopped: a second Ctrl-C
        # must not interrupt the shutdown halfway and leave children behind.
        codes = {}
        for child in children[::-1]:
            codes[child.name] = child.stop()
        server.close()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        killed = [c.name for c in children if c.killed]
        summary = ", ".join(f"{name} {_exit(rc)}" for name, rc in codes.items())
        if killed:
            say(f"etbridge demo: had to kill {', '.join(killed)} (exit codes: {summary})")
            code = code or 1
        else:
            say(f"etbridge demo: every child process stopped (exit codes: {summary})")
    return code


def _watch(
    redis_url: str,
    api_url: str,
    children: list[Child],
    duration: float | None,
    stop: dict[str, bool],
    say: Callable[[str], None],
) -> int:
    from etbridge import status as status_mod
    from etbridge.settings import load_settings, parse_sink

    # The same view of the fleet as the children's, whatever the demo's own
    # environment or working directory holds.
    settings = load_settings(
        _env_file=None,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        api_url=api_url,
        redis_url=redis_url,
        broker_url=redis_url,
        orgs=[],
        sinks=[parse_sink(f"redis-stream:{SINK_KEY}")],
        rate_limit=100,
        webhook_secret=None,
    )
    client = redisconn.connect(redis_url, socket_timeout=10)
    started = time.monotonic()
    last_id = "0-0"
    last_footer = 0.0
    seen = 0
    try:
        while not stop["now"]:
            if duration is not None and time.monotonic() - started >= duration:
                break
            for child in children:
                if not child.alive():
                    say(f"etbridge demo: {child.name} exited early; see {child.log_path}")
                    return 1
            reply: Any = client.xread({SINK_KEY: last_id}, count=100, block=500)
            for _key, entries in reply or []:
                for entry_id, fields in entries:
                    last_id = entry_id.decode()
                    seen += 1
                    say(format_event(json.loads(fields[b"event"]), time.time()))
            if time.monotonic() - last_footer >= FOOTER_EVERY:
                last_footer = time.monotonic()
                try:
                    say(format_footer(status_mod.collect(client, settings), time.time()))
                except Exception as exc:  # the footer never stops the demo
                    say(f"  -- status unavailable: {type(exc).__name__}")
    finally:
        client.close()
    say(f"etbridge demo: {seen} change events received; stopping")
    return 0
