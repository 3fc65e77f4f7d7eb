"""A real webhook receiver on loopback, for the delivery tests and the benchmark.

It verifies every request's Standard Webhooks signature with the
``standardwebhooks`` package (as a production receiver would), records each
arrival, and answers what the test tells it to: a scripted sequence of
replies, a default, or a reply per event id. Replies can be slow (longer than
the sender's timeout), rate limits with ``Retry-After``, ``410 Gone``, or held
open until the test releases them.

    with Receiver(secret) as rx:
        rx.reply_next(Reply.error(500), Reply.too_many(retry_after=2))
        ...
        rx.wait_for(lambda: len(rx.delivered_ids()) == 10, timeout=30)
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Reply:
    """What the receiver answers to one request."""

    status: int = 200
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b"ok"
    hold: bool = False  # answer only after release() (or stop())

    @classmethod
    def ok(cls) -> Reply:
        return cls()

    @classmethod
    def error(cls, status: int = 500) -> Reply:
        return cls(status=status, body=b"internal error")

    @classmethod
    def too_many(cls, retry_after: float) -> Reply:
        return cls(status=429, headers=(("Retry-After", f"{retry_after:g}"),), body=b"slow down")

    @classmethod
    def unavailable(cls, retry_after: float) -> Reply:
        return cls(status=503, headers=(("Retry-After", f"{retry_after:g}"),), body=b"later")

    @classmethod
    def gone(cls) -> Reply:
        return cls(status=410, body=b"gone")

    @classmethod
    def timeout(cls, seconds: float) -> Reply:
        """Answer after ``seconds`` (longer than the sender waits): the sender sees a timeout.

        Recorded with status 504, since the sender never sees the answer.
        """
        return cls(status=504, delay=seconds, body=b"too late")

    @classmethod
    def held(cls, status: int = 200) -> Reply:
        return cls(status=status, hold=True)


@dataclass
class Arrival:
    """One request as received."""

    webhook_id: str
    timestamp: str
    signature: str
    content_type: str
    body: bytes
    envelope: dict[str, Any] | None
    verified: bool
    status: int
    received_at: float = field(default_factory=time.time)

    @property
    def delivered(self) -> bool:
        """Verified and answered 2xx: the sender counts it as delivered."""
        return self.verified and 200 <= self.status < 300


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a production receiver
    # Buffered, so status line, headers and body leave in one segment (no
    # Nagle / delayed-ACK stall of 40 ms between headers and body).
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.receiver._handle(self, body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Senders that time out or are killed reset their connections: expected here.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class Receiver:
    """A threaded HTTP server on 127.0.0.1 that verifies and records webhooks."""

    def __init__(self, secret: str, *, host: str = "127.0.0.1", path: str = "/hook") -> None:
        self._verifier = Webhook(secret)
        self.host = host
        self.path = path
        self._lock = threading.Lock()
        self._script: deque[Reply] = deque()
        self._default = Reply.ok()
        self._per_id: dict[str, Reply] = {}
        self._arrivals: list[Arrival] = []
        self._delivered_count = 0
        self._released = threading.Event()
        self._stopping = threading.Event()
        self.in_flight = threading.Event()  # set when a held request arrives
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> Receiver:
        self._server = _Server((self.host, 0), _Handler)
        self._server.receiver = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "receiver not started"
        port = self._server.server_address[1]
        return f"http://{self.host}:{port}{self.path}"

    # -- what to answer ----------------------------------------------------------------

    def reply_next(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order (then the default)."""
        with self._lock:
            self._script.extend(replies)

    def reply_default(self, reply: Reply) -> None:
        with self._lock:
            self._default = reply

    def reply_for(self, event_id: str, reply: Reply | None) -> None:
        """Answer every request for one event id this way (None: back to normal)."""
        with self._lock:
            if reply is None:
                self._per_id.pop(event_id, None)
            else:
                self._per_id[event_id] = reply

    def release(self) -> None:
        """Let held requests answer."""
        self._released.set()

    # -- what arrived ------------------------------------------------------------------

    @property
    def arrivals(self) -> list[Arrival]:
        with self._lock:
            return list(self._arrivals)

    def delivered_count(self) -> int:
        """How many arrivals were delivered (cheap: no copy)."""
        with self._lock:
            return self._delivered_count

    def delivered(self) -> list[Arrival]:
        return [a for a in self.arrivals if a.delivered]

    def delivered_ids(self) -> list[str]:
        """Event ids the sender saw accepted, in arrival order (duplicates kept)."""
        return [a.webhook_id for a in self.delivered()]

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.02
    ) -> None:
        """Wait until ``predicate()`` holds; ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"receiver: condition not met within {timeout}s")
            time.sleep(interval)

    # -- the handler -------------------------------------------------------------------

    def _choose(self, event_id: str) -> Reply:
        with self._lock:
            if event_id in self._per_id:
                return self._per_id[event_id]
            if self._script:
                return self._script.popleft()
            return self._default

    def _handle(self, handler: _Handler, body: bytes) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        envelope: dict[str, Any] | None = None
        try:
            parsed = self._verifier.verify(body, headers)
            verified = True
            envelope = parsed if isinstance(parsed, dict) else None
        except WebhookVerificationError:
            verified = False
            try:
                loaded = json.loads(body)
                envelope = loaded if isinstance(loaded, dict) else None
            except ValueError:
                envelope = None
        event_id = headers.get("webhook-id", "")
        reply = self._choose(event_id) if verified else Reply(status=401, body=b"bad signature")
        arrival = Arrival(
            webhook_id=event_id,
            timestamp=headers.get("webhook-timestamp", ""),
            signature=headers.get("webhook-signature", ""),
            content_type=headers.get("content-type", ""),
            body=body,
            envelope=envelope,
            verified=verified,
            status=reply.status,
        )
        with self._lock:
            self._arrivals.append(arrival)
            self._delivered_count += arrival.delivered
        if reply.hold:
            self.in_flight.set()
            self._released.wait(120)
        if reply.delay:
            self._stopping.wait(reply.delay)
        try:
            handler.send_response(reply.status)
            for name, value in reply.headers:
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(reply.body)))
            handler.end_headers()
            handler.wfile.write(reply.body)
            handler.wfile.flush()
        except OSError:
            # The sender gave up (timeout, or it was killed): nothing to answer.
            handler.close_connection = True
