"""``etbridge console``: its pages over real Redis state, served by the real command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from etbridge import console as console_module
from etbridge import consolepages, outbox
from etbridge.outbox import Relay
from etbridge.poller import Poller
from etbridge.redisserver import free_port
from tests.support import delivery
from tests.support.fleet import wait_for
from tests.support.receiver import Receiver, Reply
from tests.support.sandbox import Sandbox
from tests.support.stack import runtime_for

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CONSOLE_TOKEN = "console-token-4711-abcdef"
SINK_PASSWORD = "sink-pass-4711"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=2, bookings=10, seed=11, rate_limit=10_000) as sb:
        yield sb


def environ(sandbox: Sandbox, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETBRIDGE_")}
    env.update(
        ETBRIDGE_CLIENT_ID=sandbox.client_id,
        ETBRIDGE_CLIENT_SECRET=sandbox.client_secret,
        ETBRIDGE_API_URL=sandbox.url,
        ETBRIDGE_REDIS_URL=redis_url,
        ETBRIDGE_WEBHOOK_SECRET=WHSEC,
        ETBRIDGE_SINKS=(
            f"redis-stream://:{SINK_PASSWORD}@127.0.0.1:9/0/events,http://127.0.0.1:9/hook"
        ),
    )
    env.update(extra)
    return env


class Console:
    def __init__(self, env: dict[str, str], tmp_path: Path, *args: str) -> None:
        self.log = tmp_path / f"console-{free_port()}.log"
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "etbridge", "console", "--port", str(self.port), *args],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def wait_listening(self) -> str:
        line: str = wait_for(
            lambda: next(
                (x for x in self.log.read_text().splitlines() if "console listening on" in x),
                None,
            ),
            30,
            "the console's listening line",
        )
        return line.split(" on ", 1)[1]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        self._out.close()


def test_pages_show_the_fleet_without_secrets(
    sandbox: Sandbox, redis_url: str, tmp_path: Path
) -> None:
    rt = runtime_for(sandbox, redis_url, orgs=["1001", "1002"])
    Poller(rt.redis, rt.settings, rt.api).poll("1001")  # a token, a baseline, a budget used
    token = rt.tokens.get()
    console = Console(environ(sandbox, redis_url, ETBRIDGE_ORGS="1001,1002"), tmp_path)
    try:
        base = console.wait_listening()
        assert base == f"http://127.0.0.1:{console.port}/"
        fleet = requests.get(base, timeout=10)
        assert fleet.status_code == 200 and "text/html" in fleet.headers["content-type"]
        assert '<a href="/orgs/1001">1001</a>' in fleet.text
        assert "valid</span> until" in fleet.text  # the token card
        assert "requests a minute" in fleet.text
        # The budget chart: the poll's requests, sampled by the console itself.
        assert re.search(r"<title>\d\d:\d\d:\d\d: [1-9]\d* of 100</title>", fleet.text)
        org = requests.get(base + "orgs/1001", timeout=10)
        assert org.status_code == 200
        assert "<dt>baselined</dt><dd>yes</dd>" in org.text
        assert "<dt>records</dt><dd>10</dd>" in org.text
        assert requests.get(base + "orgs/9999", timeout=10).status_code == 404
        sinks = requests.get(base + "sinks", timeout=10)
        assert sinks.status_code == 200
        assert "http://127.0.0.1:9/hook" in sinks.text
        assert "redis-stream://:***@127.0.0.1:9/0/events" in sinks.text
        for body in (fleet.text, org.text, sinks.text):
            for secret in (sandbox.client_secret, WHSEC, SINK_PASSWORD, token):
                assert secret not in body
    finally:
        console.stop()


def test_other_addresses_need_the_token(sandbox: Sandbox, redis_url: str, tmp_path: Path) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "etbridge", "console", "--host", "0.0.0.0", "--port", "0"],
        env=environ(sandbox, redis_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0
    assert "ETBRIDGE_CONSOLE_TOKEN" in refused.stderr

    env = environ(sandbox, redis_url, ETBRIDGE_CONSOLE_TOKEN=CONSOLE_TOKEN, ETBRIDGE_ORGS="1001")
    console = Console(env, tmp_path, "--host", "0.0.0.0")
    try:
        console.wait_listening()
        base = f"http://127.0.0.1:{console.port}/"
        assert requests.get(base, timeout=10).status_code == 401
        assert requests.get(base + "?token=wrong", timeout=10).status_code == 403
        bearer = {"Authorization": f"Bearer {CONSOLE_TOKEN}"}
        assert requests.get(base + "sinks", headers=bearer, timeout=10).status_code == 200
        browser = requests.Session()
        first = browser.get(base + f"?token={CONSOLE_TOKEN}", timeout=10)
        assert first.status_code == 200 and first.url == base  # the token left the URL
        assert CONSOLE_TOKEN not in first.text
        assert browser.get(base + "orgs/1001", timeout=10).status_code == 200  # the cookie
    finally:
        console.stop()


def test_booking_timeline_and_redelivery_of_a_dead_letter(
    sandbox: Sandbox, redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    with Receiver(delivery.SECRET) as receiver:
        receiver.reply_default(Reply.error(500))
        sinks = ["redis-stream:console:events", receiver.url]
        # One attempt, then the dead-letter stream.
        settings = delivery.make_settings(redis_url, sinks, retry_schedule=[0.0])
        created = delivery.envelope("1001", "4711", "created")
        updated = delivery.envelope("1001", "4711", "updated", seq=1)
        other = delivery.envelope("1001", "4712", "created")
        delivery.commit(r, "1001", [created, updated, other])
        relay = Relay(r, settings)
        try:
            delivery.drive(relay, lambda: len(outbox.dlq_list(r, settings)) == 3, notify=["1001"])
        finally:
            relay.close()

        env = environ(
            sandbox,
            redis_url,
            ETBRIDGE_ORGS="1001",
            ETBRIDGE_SINKS=",".join(sinks),
            ETBRIDGE_WEBHOOK_SECRET=delivery.SECRET,
            ETBRIDGE_RETRY_SCHEDULE="0",
        )
        console = Console(env, tmp_path)
        try:
            base = console.wait_listening()
            browser = requests.Session()
            found = browser.get(base + "orgs/1001/bookings?id=4711", timeout=10)
            assert found.url == base + "orgs/1001/bookings/4711"
            rows = found.text.split('<tr class="event">')[1:]
            assert len(rows) == 2, found.text  # 4712's event is not 4711's
            assert ">created<" in rows[0] and ">updated<" in rows[1]
            assert '<b>status</b>: "tentative" → "definite"' in rows[1]
            for row in rows:
                assert ">delivered<" in row  # the Redis stream took it
                assert ">dead-lettered<" in row  # the webhook refused it
                # When, from the attempt log; and each sink's attempts with their outcome.
                assert re.search(r"<small>at \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ</small>", row)
                assert row.count("1 attempt(s)") == 2
                assert '<td class="ok">accepted</td>' in row
                assert re.search(r'<td class="bad">\w+Error HTTP 500</td><td>[\d.]+ ms</td>', row)

            # The event page, reached from the timeline's link: envelope and attempts per sink.
            link = f"/events/{updated['id']}?org=1001"
            assert f'href="{link}"' in rows[1]
            shown = browser.get(base + link.lstrip("/"), timeout=10)
            assert shown.status_code == 200
            assert f"<h1>Event {updated['id']}</h1>" in shown.text
            assert "<dt>type</dt><dd>com.eventtemple.booking.updated</dd>" in shown.text
            assert shown.text.count('<table class="attempts">') == 2
            assert "HTTP 500" in shown.text and '"definite"' in shown.text
            assert 'href="/orgs/1001/bookings/4711"' in shown.text
            # The fleet's lookup (no ?org=: the attempt log finds it); an unknown id is a 404.
            looked_up = browser.get(base + f"events?id={updated['id']}", timeout=10)
            assert looked_up.url == base + f"events/{updated['id']}"
            assert f"Event {updated['id']}" in looked_up.text
            assert browser.get(base + "events/" + "0" * 32, timeout=10).status_code == 404

            listing = browser.get(base + "sinks", timeout=10)
            link = f"/dlq/{settings.sinks[1].name}/{updated['id']}"
            assert f'href="{link}"' in listing.text
            confirm = browser.get(base + link.lstrip("/"), timeout=10)
            assert "Redeliver now" in confirm.text and "same id" in confirm.text
            assert browser.post(base + link.lstrip("/"), data={"confirm": "yes"}).status_code == 403
            csrf = confirm.text.split('name="csrf" value="')[1].split('"')[0]
            assert receiver.delivered_count() == 0

            receiver.reply_default(Reply.ok())
            done = browser.post(
                base + link.lstrip("/"), data={"csrf": csrf, "confirm": "yes"}, timeout=30
            )
            assert "redelivered" in done.text, done.text
            assert [(a.envelope or {}).get("id") for a in receiver.delivered()] == [updated["id"]]
            assert {x.event_id for x in outbox.dlq_list(r, settings)} == {
                created["id"],
                other["id"],
            }
            after = browser.get(base + "orgs/1001/bookings/4711", timeout=10).text
            rows = after.split('<tr class="event">')[1:]
            assert ">dead-lettered<" in rows[0] and ">dead-lettered<" not in rows[1]
            assert "2 attempt(s)" in rows[1]  # the redelivery is in the attempt log
            for body in (found.text, shown.text, listing.text, confirm.text, done.text, after):
                assert delivery.SECRET not in body and sandbox.client_secret not in body
        finally:
            console.stop()


def test_budget_chart() -> None:
    history = console_module.BudgetHistory(length=3)
    for n, used in enumerate((10, 100, 40, 5)):
        history.add(1_800_000_000.0 + 10 * n, used)
    assert [u for _t, u in history.snapshot()] == [100, 40, 5]  # the newest three
    history.add(1_800_000_031.0, 7)  # too soon after the last sample: dropped
    assert len(history.snapshot()) == 3
    svg = consolepages.budget_chart(history.snapshot(), 100)
    assert svg.count("<rect") == 4  # the background and three bars
    assert svg.count('fill="#b3261e"') == 1  # the full minute stands out
    assert "08:00:10: 100 of 100" in svg
