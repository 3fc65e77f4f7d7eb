"""The webhook sink: a signed POST per event, per the Standard Webhooks spec.

Each attempt sends the envelope JSON as committed, ``Content-Type:
application/cloudevents+json`` (CloudEvents structured mode), and the three
Standard Webhooks headers: ``webhook-id`` (the event id, the same on every
attempt, redelivery and replay, so receivers de-duplicate on it),
``webhook-timestamp`` (the send time of *this* attempt, so a receiver's
freshness check passes on a retry a day later) and ``webhook-signature``
(one ``v1,<base64 HMAC-SHA256>`` per key of the sink's secret, space-separated,
computed by the ``standardwebhooks`` package that receivers verify with, so a
receiver that knows any one key verifies: rotation without a failed window).

The receiver's answer becomes an error in exactly one function,
:func:`raise_for_delivery`. Redirects are not followed: requests would turn
the POST into a GET, and a moved endpoint is an operator's change to make.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import requests
from standardwebhooks.webhooks import Webhook

from etbridge import __version__ as _version
from etbridge import logs
from etbridge.errors import FatalError, RateLimited, ServerError, TransportError
from etbridge.settings import Settings, SinkSpec
from etbridge.sinks import OutboxEvent, ReceiverRejected, Sink, SinkGone

CONTENT_TYPE = "application/cloudevents+json"
# A Retry-After beyond a day is a receiver's mistake; the schedule's own
# longest wait is a day too.
MAX_RETRY_AFTER = 86400.0
# Bytes of an error answer kept for the log and `status` (never the whole page).
_SNIPPET_BYTES = 512
# Answers longer than this are not read to the end (receivers should answer briefly).
_MAX_BODY = 64 * 1024


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date).

    >>> parse_retry_after("120")
    120.0
    >>> parse_retry_after("soon") is None
    True
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def raise_for_delivery(
    status: int, headers: Mapping[str, str], where: str, snippet: str = ""
) -> None:
    """Turn a receiver's answer into the sink error that says what to do.

    2xx: delivered. 410: :class:`SinkGone`. 429: :class:`RateLimited`. 5xx:
    :class:`ServerError` (``Retry-After`` honoured on 503 and 429). Anything
    else (3xx, 4xx): :class:`ReceiverRejected`, retried on the schedule.
    """
    if 200 <= status < 300:
        return
    detail = f"HTTP {status} from {where}"
    if snippet:
        detail = f"{detail}: {snippet}"
    if status == 410:
        raise SinkGone(detail, status=410)
    retry_after = parse_retry_after(headers.get("Retry-After")) if status in (429, 503) else None
    if status == 429:
        raise RateLimited(detail, retry_after=retry_after)
    if status >= 500:
        raise ServerError(detail, retry_after=retry_after)
    raise ReceiverRejected(detail, status=status)


class WebhookSink(Sink):
    """POSTs each event, signed, to ``spec.target``."""

    max_batch = 1

    def __init__(
        self, spec: SinkSpec, settings: Settings, *, session: requests.Session | None = None
    ) -> None:
        super().__init__(spec)
        try:
            keys = settings.webhook_keys_for(spec)
        except ValueError as exc:
            raise FatalError(f"webhook sink {spec.display}: ETBRIDGE_{exc}") from None
        for key in keys:
            # Each key alone (not only the setting's whole value), with and without its prefix.
            logs.add_secret(key)
            logs.add_secret(key.removeprefix("whsec_"))
        self._signers = [Webhook(key) for key in keys]
        self.url = spec.target or spec.url
        self.timeout = settings.webhook_timeout
        self._own = session is None
        self.session = session or requests.Session()
        self.user_agent = f"etbridge/{_version}"

    def headers(self, event: OutboxEvent, sent_at: int) -> dict[str, str]:
        """The headers of one attempt sent at ``sent_at`` (epoch seconds)."""
        event_id = event.event_id
        when = datetime.fromtimestamp(sent_at, tz=UTC)
        data = event.body.decode()
        signature = " ".join(
            signer.sign(msg_id=event_id, timestamp=when, data=data) for signer in self._signers
        )
        return {
            "Content-Type": CONTENT_TYPE,
            "User-Agent": self.user_agent,
            "webhook-id": event_id,
            "webhook-timestamp": str(sent_at),
            "webhook-signature": signature,
        }

    def send(self, event: OutboxEvent, attempt_no: int) -> None:
        headers = self.headers(event, int(time.time()))
        deadline = time.monotonic() + self.timeout
        self.last_status, self.last_excerpt = None, ""
        try:
            response = self.session.post(
                self.url,
                data=event.body,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
                stream=True,
            )
        except requests.Timeout:
            raise TransportError(
                f"no answer from {self.spec.display} within {self.timeout:g}s"
            ) from None
        except requests.RequestException as exc:
            # requests' messages repeat the URL, query string included: keep the class only.
            raise TransportError(f"{type(exc).__name__} posting to {self.spec.display}") from None
        with response:
            body = self._read_body(response, deadline)
            text = body[:_SNIPPET_BYTES].decode("utf-8", "replace")
            self.last_status = f"HTTP {response.status_code}"
            self.last_excerpt = " ".join(text.split())[:200]
            snippet = "" if 200 <= response.status_code < 300 else self.last_excerpt
            raise_for_delivery(response.status_code, response.headers, self.spec.display, snippet)

    @staticmethod
    def _read_body(response: requests.Response, deadline: float) -> bytes:
        """The answer's body, up to a bound and within the attempt's deadline.

        Read to its end when small, so the keep-alive connection goes back to
        the pool; a longer or slower one is cut (and its connection closed).
        """
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(8192):
                chunks.append(chunk)
                size += len(chunk)
                if size > _MAX_BODY or time.monotonic() > deadline:
                    break
        except (requests.RequestException, OSError):
            pass  # a broken answer body must not hide the status
        return b"".join(chunks)

    def close(self) -> None:
        if self._own:
            self.session.close()
