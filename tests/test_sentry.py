"""Sentry with a real sentry-sdk, sending to a loopback endpoint that keeps every envelope.

sentry-sdk keeps global state (the client, the scopes, patched libraries), so
every ``sentry.init`` runs in a child process: the test process never inits it.
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from etbridge import sentry
from etbridge.replies import text
from tests.support.fleet import fleet, fleet_env, wait_for
from tests.support.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent


class SentryCapture:
    """A loopback HTTP server that answers like Sentry's ingest and keeps the envelopes."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    raw = gzip.decompress(raw)
                elif encoding == "deflate":
                    raw = zlib.decompress(raw)
                elif encoding:
                    raise AssertionError(f"unexpected Content-Encoding {encoding}")
                with capture._lock:
                    capture.bodies.append(raw)
                body = b'{"id": "00000000000000000000000000000000"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.server.server_address[1]}/1"

    def raw(self) -> list[bytes]:
        with self._lock:
            return list(self.bodies)

    def items(self) -> list[tuple[dict[str, Any], Any]]:
        """Every (item header, payload) of every envelope; JSON payloads decoded."""
        out: list[tuple[dict[str, Any], Any]] = []
        for body in self.raw():
            lines = body.split(b"\n")
            i = 1  # line 0 is the envelope header
            while i < len(lines):
                if not lines[i].strip():
                    i += 1
                    continue
                header = json.loads(lines[i])
                payload = lines[i + 1] if i + 1 < len(lines) else b""
                try:
                    out.append((header, json.loads(payload)))
                except ValueError:
                    out.append((header, payload))
                i += 2
        return out

    def events(self) -> list[dict[str, Any]]:
        return [p for h, p in self.items() if h.get("type") == "event"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def capture() -> Iterator[SentryCapture]:
    c = SentryCapture()
    yield c
    c.close()


def _assert_clean(capture: SentryCapture, forbidden: dict[str, str]) -> None:
    assert capture.raw(), "no envelope reached the endpoint"
    for body in capture.raw():
        text = body.decode("utf-8", "replace")
        for name, value in forbidden.items():
            assert value not in text, f"the {name} reached Sentry: {text[:2000]}"


# --- the scrubber, without sending --------------------------------------------------


def test_scrub_event_replaces_secrets_by_key_and_by_pattern() -> None:
    event = {
        "message": "call with Authorization: Bearer abc.def-123 and whsec_MfKQ9r8GKYqrTwjUPD8ILPZI",
        "request": {
            "headers": [["Authorization", "Bearer xyz"], ["X-API-ORG", "1001"]],
            "data": {"client_secret": "s3cr3t-value", "nested": {"token": "t0ken-value"}},
        },
        "extra": {"count": 3, "ok": None},
    }
    out = sentry.scrub_event(event)
    text = json.dumps(out)
    for value in ("abc.def-123", "xyz", "MfKQ9r8GKYqrTwjUPD8ILPZI", "s3cr3t-value", "t0ken-value"):
        assert value not in text
    assert out["request"]["headers"][1] == ["X-API-ORG", "1001"]
    assert out["extra"] == {"count": 3, "ok": None}


# --- a real sentry-sdk in a child process ---------------------------------------------

_SCRIPT = r"""
import json, logging, sys
import sentry_sdk
from etbridge import logs, runtime, sentry
from etbridge.settings import load_settings

settings = load_settings()
logs.configure("kv", "INFO")
sentry.init(settings)
secret = settings.client_secret.get_secret_value()
whsec = settings.webhook_secret.get_secret_value()
log = logging.getLogger("etbridge.test")

rt = runtime.Runtime(settings)
# The sandbox answers the first call with a 429: a retried condition, so only
# breadcrumbs (the budget pause, the retry) and no event.
rt.api.organizations()
token = rt.tokens.get()
log.warning("poll failed, retrying in 5s: API answered 503 for GET /v2/bookings")

sentry_sdk.add_breadcrumb(
    category="http",
    message=f"GET /v2/bookings Authorization: Bearer {token}",
    data={"headers": {"Authorization": f"Bearer {token}"}, "client_secret": secret,
          "note": f"signed with {whsec}", "bare": f"the token was {token}"},
)

def fail(client_secret, access_token, webhook_key):
    headers = {"Authorization": f"Bearer {access_token}"}
    raise RuntimeError(
        f"boom secret={client_secret} token {access_token} key={webhook_key} headers={headers}"
    )

try:
    fail(secret, token, whsec)
except RuntimeError:
    sentry_sdk.capture_exception()

log.error("request failed: Authorization: Bearer %s; secret %s; raw token %s", token, secret, token)
try:
    fail(secret, token, whsec)
except RuntimeError:
    log.exception("task crashed with %s", whsec)

sentry_sdk.capture_event({
    "message": f"with request data {token}",
    "level": "error",
    "request": {
        "url": "http://127.0.0.1/v2/bookings",
        "method": "GET",
        "headers": {"Authorization": f"Bearer {token}", "X-API-ORG": "1001"},
        "data": {"client_secret": secret, "webhook_secret": whsec, "grant_type": "x"},
    },
    "extra": {"grant": {"client_id": "c", "client_secret": secret}, "token_value": token,
              "words": f"secret {secret} and token {token}"},
})
sentry_sdk.flush(15)
print(json.dumps({"token": token}))
"""


def test_no_secret_reaches_sentry(capture: SentryCapture, redis_url: str) -> None:
    client_secret = "cs_" + secrets.token_hex(16)
    whsec = "whsec_" + secrets.token_urlsafe(24).replace("-", "A").replace("_", "B")
    with Sandbox.start(orgs=2, bookings=5, client_secret=client_secret) as sb:
        sb.force_429(1, retry_after=1)
        env = fleet_env(
            sb,
            redis_url,
            SENTRY_DSN=capture.dsn,
            ETBRIDGE_WEBHOOK_SECRET=whsec,
            ETBRIDGE_ENVIRONMENT="test",
        )
        proc = subprocess.run(
            [sys.executable, "-c", _SCRIPT],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        token = json.loads(proc.stdout.strip().splitlines()[-1])["token"]
        assert sb.counters()["forced_429"] == 1
    assert token and len(token) >= 16
    forbidden = {"client secret": client_secret, "access token": token, "webhook key": whsec}
    _assert_clean(capture, forbidden)
    # ...and the same for the process's own log lines.
    for name, value in forbidden.items():
        assert value not in proc.stderr, f"the {name} reached the log"

    events = capture.events()
    assert len(events) >= 4, events
    for event in events:
        assert event["release"].startswith("etbridge@")
        assert event["environment"] == "test"
        assert event["level"] in ("error", "fatal"), event.get("logentry")
    text = json.dumps(events)
    assert "[Filtered]" in text and "***" in text  # scrubbed, not dropped
    # Retried conditions are breadcrumbs of the error events, never events.
    messages = [json.dumps(e.get("logentry") or e.get("message") or "") for e in events]
    assert not any("retrying" in m or "budget pause" in m or "api retry" in m for m in messages)
    crumbs = [
        c.get("message") or ""
        for e in events
        for c in (e.get("breadcrumbs") or {}).get("values", [])
    ]
    assert any("poll failed, retrying" in c for c in crumbs), crumbs
    assert any("budget pause" in c or "api retry" in c for c in crumbs), crumbs
    # Frames carry no local variables at all.
    for event in events:
        for exc in (event.get("exception") or {}).get("values", []):
            for frame in (exc.get("stacktrace") or {}).get("frames", []):
                assert "vars" not in frame


@pytest.mark.slow
def test_fleet_with_sentry_checks_in_and_leaks_nothing(
    capture: SentryCapture, redis_url: str, tmp_path: Path
) -> None:
    """worker + beat with SENTRY_DSN: the plan task checks in; no envelope holds a secret."""
    client_secret = "cs_" + secrets.token_hex(16)
    with Sandbox.start(orgs=2, bookings=10, client_secret=client_secret, churn=2) as sb:
        env = fleet_env(sb, redis_url, SENTRY_DSN=capture.dsn, ETBRIDGE_RATE_LIMIT="600")
        with fleet(env, tmp_path) as f:
            f.worker(concurrency=2)
            f.beat()

            def checked_in() -> bool:
                return any(
                    h.get("type") == "check_in" and p.get("status") == "ok"
                    for h, p in capture.items()
                )

            try:
                wait_for(checked_in, 60, "a cron check-in of the plan task", interval=0.5)
            except AssertionError:
                raise AssertionError(f"{capture.items()[:5]}\n{f.logs()}") from None
        f_logs = "\n".join(p.output() for p in f.procs)
        client = redis.Redis.from_url(redis_url)
        cache_keys = [k for k in client.keys("etb:token:*") if text(k).count(":") == 2]
        assert cache_keys, "the fleet cached no token"
        token = client.hget(cache_keys[0], "token")
        assert token
        assert sb.counters()["token_requests"] >= 1
    check_ins = [p for h, p in capture.items() if h.get("type") == "check_in"]
    assert {c.get("monitor_slug") for c in check_ins} == {sentry.PLAN_MONITOR}
    assert check_ins[0]["monitor_config"]["schedule"] == {
        "type": "interval",
        "value": 1,
        "unit": "minute",
    }
    # Sentry Crons refuses sub-minute intervals: the 2 s tick must not be auto-monitored.
    assert "not supported by Sentry Crons" not in f_logs
    _assert_clean(capture, {"client secret": client_secret, "access token": text(token)})
    assert os.environ.get("SENTRY_DSN") is None  # the test process never touched Sentry
