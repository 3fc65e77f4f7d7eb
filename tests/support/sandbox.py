"""Start a real sandbox process for a test and steer it through its admin API.

with Sandbox.start(orgs=2, bookings=20) as sb:
    token = sb.token()
    sb.mutate(5, org="1001")
    assert sb.counters()["token_requests"] == 1
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import requests

#: A loaded CI machine can take a while to import uvicorn and generate data.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
HTTP_TIMEOUT = 30.0

_LISTENING = re.compile(r"sandbox listening on (http://\S+)")


@dataclass(frozen=True)
class SandboxApp:
    """One application of a sandbox started with several (``--app``)."""

    client_id: str
    client_secret: str
    orgs: Sequence[str] | None = None  # None: every org
    rate_limit: int | None = None  # None: the sandbox's rate_limit

    @property
    def argument(self) -> str:
        """Its ``--app`` value."""
        orgs = "*" if self.orgs is None else ",".join(self.orgs)
        return f"{self.client_id}:{self.client_secret}:{orgs}:{self.rate_limit or ''}"


class SandboxError(RuntimeError):
    """The sandbox process failed to start, died, or refused an admin call."""


class Sandbox:
    """A sandbox subprocess (``python -m etbridge.sandbox --port 0``) and its admin API."""

    def __init__(
        self,
        process: subprocess.Popen[str],
        url: str,
        client_id: str,
        client_secret: str,
        output: deque[str],
        reader: threading.Thread,
    ) -> None:
        self.process = process
        self._reader = reader
        self.url = url
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_url = f"{url}/oauth/token"
        self._output = output
        self._session = requests.Session()
        # requests.Session is not thread-safe; tests may call the helper from threads.
        self._lock = threading.Lock()

    # --------------------------------------------------------------- lifecycle

    @classmethod
    def start(  # noqa: PLR0913  (keyword-only sandbox knobs, all defaulted)
        cls,
        *,
        orgs: int = 3,
        bookings: int = 50,
        contacts: int | None = None,
        seed: int = 1,
        token_ttl: int = 7200,
        rate_limit: int = 100,
        churn: float = 0.0,
        client_id: str = "sandbox-client",
        client_secret: str = "sandbox-secret",
        apps: Sequence[SandboxApp] = (),
        extra_args: Sequence[str] = (),
    ) -> Sandbox:
        """Start a sandbox on a free loopback port and wait until it accepts connections.

        ``apps``: several applications (``--app``); the first one's credentials
        become ``client_id`` / ``client_secret``.
        """
        if apps:
            client_id, client_secret = apps[0].client_id, apps[0].client_secret
        command = [
            sys.executable,
            "-m",
            "etbridge.sandbox",
            "--port",
            "0",
            "--orgs",
            str(orgs),
            "--bookings",
            str(bookings),
            "--seed",
            str(seed),
            "--token-ttl",
            str(token_ttl),
            "--rate-limit",
            str(rate_limit),
            "--churn",
            str(churn),
            "--client-id",
            client_id,
            "--client-secret",
            client_secret,
            *([] if contacts is None else ["--contacts", str(contacts)]),
            *[arg for app in apps for arg in ("--app", app.argument)],
            *extra_args,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
        )
        output: deque[str] = deque(maxlen=200)
        lines: queue.Queue[str | None] = queue.Queue()
        # A reader thread keeps draining the pipe for the process's whole life, so a
        # chatty sandbox can never block on a full pipe.
        reader = threading.Thread(
            target=_drain, args=(process, output, lines), name="sandbox-output", daemon=True
        )
        reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _terminate(process, reader)
                raise SandboxError(
                    f"sandbox did not start within {START_TIMEOUT:.0f}s:\n" + "".join(output)
                )
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                _terminate(process, reader)
                raise SandboxError(
                    f"sandbox exited with status {process.returncode} before listening:\n"
                    + "".join(output)
                )
            match = _LISTENING.search(line)
            if match:
                return cls(process, match.group(1), client_id, client_secret, output, reader)

    def stop(self) -> None:
        """Terminate the process (SIGTERM), then kill it if it lingers."""
        self._session.close()
        _terminate(self.process, self._reader)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def output(self) -> str:
        """The last lines the process printed (for failure messages)."""
        return "".join(self._output)

    # --------------------------------------------------------------- admin API

    def admin(self, method: str, path: str, json: Any = None) -> Any:
        """Call ``/_admin/<path>``; returns the decoded JSON, raises SandboxError on non-2xx."""
        if self.process.poll() is not None:
            raise SandboxError(
                f"sandbox exited with status {self.process.returncode}:\n{self.output}"
            )
        url = f"{self.url}/_admin/{path.lstrip('/')}"
        with self._lock:
            try:
                resp = self._session.request(method, url, json=json, timeout=HTTP_TIMEOUT)
            except requests.ConnectionError:
                # A pooled keep-alive connection the server closed meanwhile: the
                # request never reached the handler, so sending it again is safe.
                self._session.close()
                resp = self._session.request(method, url, json=json, timeout=HTTP_TIMEOUT)
        if not resp.ok:
            raise SandboxError(f"{method} {url} -> {resp.status_code}: {resp.text}")
        return resp.json() if resp.content else None

    def mutate(
        self,
        count: int,
        org: str | None = None,
        kinds: Sequence[str] | None = None,
        resource: str | Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Apply ``count`` mutations now (of bookings unless ``resource``); their log entries."""
        body: dict[str, Any] = {"count": count}
        if resource is not None:
            body["resource"] = resource if isinstance(resource, str) else list(resource)
        if org is not None:
            body["org"] = org
        if kinds is not None:
            body["kinds"] = list(kinds)
        mutations: list[dict[str, Any]] = self.admin("POST", "mutate", body)["mutations"]
        return mutations

    def churn(self, rate: float, resource: str | Sequence[str] | None = None) -> None:
        """Steady background churn of ``rate`` mutations/s (0 stops), of bookings by default."""
        body: dict[str, Any] = {"rate": rate}
        if resource is not None:
            body["resource"] = resource if isinstance(resource, str) else list(resource)
        self.admin("POST", "churn", body)

    def faults(self, **rates: float) -> None:
        """Set fault knobs, e.g. ``faults(error_500=0.2, slow=0.1, slow_seconds=2)``."""
        self.admin("POST", "faults", rates)

    def glitch(self, org: str, **knobs: Any) -> dict[str, Any]:
        """Set one org's glitches, e.g. ``glitch("1001", empty_listings=True)``; all orgs'."""
        answer: dict[str, Any] = self.admin("POST", "glitches", {"org": org, **knobs})
        glitches: dict[str, Any] = answer["glitches"]
        return glitches

    def force_429(self, count: int, retry_after: int) -> None:
        """The next ``count`` API calls get 429 with ``Retry-After: retry_after``."""
        self.admin("POST", "force_429", {"count": count, "retry_after": retry_after})

    def revoke_tokens(self, app: str | None = None) -> None:
        """Every token issued so far (of the client id ``app`` if given) becomes invalid."""
        self.admin("POST", "revoke_tokens", None if app is None else {"app": app})

    def counters(self) -> dict[str, Any]:
        """``GET /_admin/counters``."""
        counters: dict[str, Any] = self.admin("GET", "counters")
        return counters

    def reset(self) -> None:
        """Counters to zero, faults off, churn off, limiter and knobs as at start."""
        self.admin("POST", "reset")

    def truth(self, org: str | None = None) -> dict[str, Any]:
        """``{"orgs": {org: {"bookings": {id: resource}, "deleted": [ids]}}, ...}``."""
        path = "truth" if org is None else f"truth?org={org}"
        truth: dict[str, Any] = self.admin("GET", path)
        return truth

    def log(self, since: int = 0) -> list[dict[str, Any]]:
        """Mutation log entries with ``seq`` > ``since``."""
        entries: list[dict[str, Any]] = self.admin("GET", f"log?since={since}")["log"]
        return entries

    def add_org(self, bookings: int = 10, apps: Sequence[str] = ()) -> str:
        """Add an organization (visible to these client ids too); returns its id."""
        body: dict[str, Any] = {"bookings": bookings}
        if apps:
            body["apps"] = list(apps)
        return str(self.admin("POST", "orgs", body)["org_id"])

    def remove_org(self, org_id: str) -> None:
        """Remove an organization."""
        self.admin("DELETE", f"orgs/{org_id}")

    def schema(self, add: str | None = None, value: Any = None, remove: str | None = None) -> None:
        """Every booking gains attribute ``add`` (= ``value``) or loses ``remove``."""
        if (add is None) == (remove is None):
            raise ValueError("give exactly one of add= and remove=")
        body = {"add": add, "value": value} if add is not None else {"remove": remove}
        self.admin("POST", "schema", body)

    def config(self, **settings: Any) -> dict[str, Any]:
        """Change ``rate_limit`` (of one ``app=`` client id, or all) / ``token_ttl`` until
        the next reset; returns ``rate_limit``, ``token_ttl`` and ``rate_limits``."""
        current: dict[str, Any] = self.admin("POST", "config", settings)
        return current

    def apps(self) -> dict[str, Any]:
        """``{client_id: {"orgs": [ids] | None, "rate_limit": n}}`` of every application."""
        answer: dict[str, Any] = self.admin("GET", "apps")["apps"]
        return answer

    # ----------------------------------------------------------------- public API

    def token(self, scope: str = "crm_read crm_manage", app: SandboxApp | None = None) -> str:
        """Fetch an access token with the client credentials (the first app's, or ``app``'s)."""
        resp = requests.post(
            self.token_url,
            json={
                "grant_type": "client_credentials",
                "client_id": app.client_id if app else self.client_id,
                "client_secret": app.client_secret if app else self.client_secret,
                "scope": scope,
            },
            timeout=HTTP_TIMEOUT,
        )
        if resp.status_code != 200:
            raise SandboxError(f"token request -> {resp.status_code}: {resp.text}")
        return str(resp.json()["access_token"])

    def api_session(self, org: str | None = None, token: str | None = None) -> requests.Session:
        """A keep-alive session sending a fresh (or the given) bearer token and ``X-API-ORG``."""
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token or self.token()}"
        session.headers["Accept"] = "application/vnd.api+json"
        if org is not None:
            session.headers["X-API-ORG"] = org
        return session


def _drain(
    process: subprocess.Popen[str], output: deque[str], lines: queue.Queue[str | None]
) -> None:
    assert process.stdout is not None
    with contextlib.suppress(ValueError, OSError):  # the pipe closed under us at shutdown
        for line in process.stdout:
            output.append(line)
            lines.put(line)
    lines.put(None)


def _terminate(process: subprocess.Popen[str], reader: threading.Thread) -> None:
    """SIGTERM, wait, SIGKILL after the deadline; then close the pipe (no ResourceWarning)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
    reader.join(timeout=STOP_TIMEOUT)
    if process.stdout is not None:
        process.stdout.close()
