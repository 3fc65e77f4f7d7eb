"""``etbridge console``: held deletions, lost access and sink breakers, over real Redis.

Holds, lost access and sink states are written by the same functions the
poller and the relay use (:mod:`etbridge.holds`, :mod:`etbridge.outbox.sinkstate`);
the pages are served by the real command and approve/reject go through its
confirmation forms.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from etbridge import consoleviews, holds, keys
from etbridge.outbox import sinkstate
from etbridge.outbox.attempts import Attempt
from etbridge.settings import parse_sink
from tests.support.sandbox import Sandbox
from tests.test_console import SINK_PASSWORD, WHSEC, Console, environ

BREAKER = "http://127.0.0.1:9/breaker"
GONE = "http://127.0.0.1:9/gone"
FLAKY = f"redis-stream://:{SINK_PASSWORD}@127.0.0.1:9/0/flaky"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=3, bookings=4, seed=5, rate_limit=10_000) as sb:
        yield sb


def csrf_of(html: str) -> str:
    return html.split('name="csrf" value="')[1].split('"', maxsplit=1)[0]


def test_held_deletions_lost_access_and_breakers(
    sandbox: Sandbox, redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    holds.write(r, keys.DEFAULT, "1003", "bookings", ["b1", "b2", "b3"], reason="ratio", stored=4)
    holds.write(r, keys.DEFAULT, "1002", "bookings", ["b9"], reason="mass-disappearance", stored=5)
    since = holds.read(r, keys.DEFAULT, "1003", "bookings").since  # type: ignore[union-attr]
    holds.mark_inaccessible(
        r,
        keys.DEFAULT,
        "1001",
        "bookings",
        f"HTTP 403 Forbidden for secret {sandbox.client_secret}",
    )
    breaker, gone, flaky = (parse_sink(u) for u in (BREAKER, GONE, FLAKY))
    sinkstate.disable(
        r, keys.DEFAULT, breaker, "every attempt failed for 3 days: ServerError HTTP 503"
    )
    sinkstate.disable(r, keys.DEFAULT, gone, "HTTP 410 Gone from the receiver")
    sinkstate.note_failure(r, keys.DEFAULT, flaky, "ConnectionError", time.time())
    for n in range(3):  # as the relay writes them (deadletters.add)
        r.xadd(
            keys.DEFAULT.dead_letters(breaker.name),
            {
                "event_id": f"e{n}",
                "org_id": "1002",
                "type": "t",
                "entry_id": f"{n}-1",
                "attempts": "1",
                "error": "ServerError HTTP 503",
                "failed_at": repr(time.time()),
                "event": "{}",
            },
        )

    env = environ(
        sandbox,
        redis_url,
        ETBRIDGE_ORGS="1001,1002,1003",
        ETBRIDGE_SINKS=",".join((BREAKER, GONE, FLAKY)),
        ETBRIDGE_DLQ_MAXLEN="10",
    )
    console = Console(env, tmp_path)
    try:
        base = console.wait_listening()
        browser = requests.Session()
        fleet = browser.get(base, timeout=10).text
        # Orgs with holds first (then by id), the inaccessible one marked.
        table = fleet.split("<th>deletions held</th>")[1]
        order = re.findall(r'<tr class="[a-z]*"><td><a href="/orgs/(\d+)">', table)
        assert order == ["1002", "1003", "1001"], fleet
        assert "<h2>Held deletions</h2>" in fleet
        assert "ratio" in fleet and "mass-disappearance" in fleet
        assert '<span class="bad">INACCESSIBLE</span>' in fleet
        assert 'href="/deletions/1003/bookings/approve"' in fleet

        org = browser.get(base + "orgs/1003", timeout=10).text
        held = org.split('<tr class="held">')[1]
        assert '<td class="bad">3 of 4</td><td>ratio</td>' in held
        assert time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(since)) in held
        lost = browser.get(base + "orgs/1001", timeout=10).text
        assert "INACCESSIBLE since" in lost and "HTTP 403 Forbidden" in lost
        assert "no deletions held" in lost

        # Approve: a confirmation page, a CSRF-checked POST, then the hold is approved.
        confirm = browser.get(base + "deletions/1003/bookings/approve", timeout=10)
        assert "Approve the 3 held deletion(s) of org 1003" in confirm.text
        url = base + "deletions/1003/bookings/approve"
        assert browser.post(url, data={"confirm": "yes"}, timeout=10).status_code == 403
        assert holds.read(r, keys.DEFAULT, "1003", "bookings").approved_ids == ()  # type: ignore[union-attr]
        done = browser.post(url, data={"csrf": csrf_of(confirm.text), "confirm": "yes"})
        assert "approved 3 held deletion(s)" in done.text
        assert holds.read(r, keys.DEFAULT, "1003", "bookings").approved_ids == ("b1", "b2", "b3")  # type: ignore[union-attr]
        assert (
            r.hget(keys.DEFAULT.org_meta("1003", "bookings"), "resync") == b"1"
        )  # a sweep is asked for
        assert "yes, 3 at" in browser.get(base + "orgs/1003", timeout=10).text

        # Reject: the hold goes, the bookings stay.
        url = base + "deletions/1002/bookings/reject"
        confirm = browser.get(url, timeout=10)
        assert "Reject the hold of 1 deletion(s)" in confirm.text
        done = browser.post(url, data={"csrf": csrf_of(confirm.text), "confirm": "yes"})
        assert "hold of 1 dropped" in done.text
        assert holds.read(r, keys.DEFAULT, "1002", "bookings") is None
        assert browser.get(url, timeout=10).status_code == 404

        sinks = browser.get(base + "sinks", timeout=10).text
        sections = {s.split("</h2>")[0]: s for s in sinks.split("<h2>")[1:]}
        assert "DISABLED by its circuit breaker" in sections[breaker.display]
        assert "3 of 10 (30.0%)" in sections[breaker.display]
        assert "DISABLED by 410 Gone" in sections[gone.display]
        assert "0 of 10 (0.0%)" in sections[gone.display]
        assert "failing since" in sections[flaky.display]
        assert "DISABLED" not in sections[flaky.display]

        for body in (fleet, org, lost, confirm.text, done.text, sinks):
            for secret in (sandbox.client_secret, WHSEC, SINK_PASSWORD):
                assert secret not in body
    finally:
        console.stop()


def test_breaker_states_and_attempt_cells() -> None:
    breaker = consoleviews.breaker
    tripped = {"disabled": True, "disabled_reason": "every attempt failed for 3 days: X"}
    assert "by its circuit breaker" in breaker(tripped)
    assert "by 410 Gone" in breaker({"disabled": True, "disabled_reason": "HTTP 410 Gone"})
    assert "failing since T" in breaker({"failing_since": "T"})
    assert "closed" in breaker({})

    failed = Attempt(1_800_000_000.0, 1, False, "ServerError HTTP 503", 12.5, "<b>busy</b>", "1-0")
    ok = Attempt(1_800_000_060.0, 2, True, "HTTP 200", 3.0, "", "1-0")
    cell = consoleviews.delivery_cell("delivered", [failed, ok])
    assert "<small>at 2027-01-15 08:01:00Z</small>" in cell  # the successful attempt's time
    assert "2 attempt(s)" in cell and "12.5 ms" in cell
    assert "&lt;b&gt;busy&lt;/b&gt;" in cell and "<b>busy" not in cell  # excerpts are escaped
    waiting = consoleviews.delivery_cell("pending", [failed])
    assert "<small>at" not in waiting and '<span class="bad">pending</span>' in waiting
