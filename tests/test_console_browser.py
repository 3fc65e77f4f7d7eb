"""The console in a real browser: Debian's headless Chromium driven by Selenium.

Clicks through every page over a polled sandbox, a dead-lettered webhook and
a held deletion, including a confirmed redelivery and a confirmed approval.
``ETBRIDGE_SCREENSHOTS=docs/console`` saves a screenshot of each page there
(the README shows them). Skipped where no
chromedriver is installed, except in CI (``CI=true``), where .ci/run installs it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from etbridge import holds, keys, outbox
from etbridge.outbox import Relay
from etbridge.poller import Poller
from etbridge.settings import parse_sink
from tests.support import delivery
from tests.support.receiver import Receiver, Reply
from tests.support.sandbox import Sandbox
from tests.support.stack import runtime_for
from tests.test_console import Console, environ

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    (CHROMEDRIVER is None or CHROMIUM is None) and os.environ.get("CI") != "true",
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=2, bookings=12, seed=21, rate_limit=10_000) as sb:
        yield sb


@pytest.fixture
def browser() -> Iterator[object]:
    # selenium is imported where a browser starts, as the rest of the suite never needs it.
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_click_through_every_page_and_redeliver(
    sandbox: Sandbox, redis_url: str, r: redis.Redis, tmp_path: Path, browser: object
) -> None:
    from selenium.webdriver.common.by import By  # noqa: PLC0415  (as in the fixture)
    from selenium.webdriver.remote.webdriver import WebDriver  # noqa: PLC0415
    from selenium.webdriver.support.wait import WebDriverWait  # noqa: PLC0415

    assert isinstance(browser, WebDriver)
    shots = os.environ.get("ETBRIDGE_SCREENSHOTS")

    def titled(prefix: str) -> None:
        """Wait until the page that a click asked for has loaded."""
        WebDriverWait(browser, 30).until(lambda d: d.title.startswith(prefix))

    def shot(name: str) -> None:
        browser.save_screenshot(str(tmp_path / f"{name}.png"))
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(Path(shots) / f"{name}.png"))

    with Receiver(delivery.SECRET) as receiver:
        receiver.reply_default(Reply.error(500))
        sinks = ["redis-stream:etbridge:events", receiver.url]
        rt = runtime_for(
            sandbox,
            redis_url,
            orgs=["1001", "1002"],
            sinks=[parse_sink(s) for s in sinks],
            webhook_secret=delivery.SECRET,
            retry_schedule=[0.0],
        )
        poller = Poller(rt.redis, rt.settings, rt.api)
        for org in ("1001", "1002"):
            poller.poll(org)  # the baselines
        changed = sandbox.mutate(count=1, org="1001", kinds=["update"])[0]["id"]
        poller.poll("1001")
        relay = Relay(r, rt.settings)
        try:
            delivery.drive(relay, lambda: bool(outbox.dlq_list(r, rt.settings)), notify=["1001"])
        finally:
            relay.close()
        (letter,) = outbox.dlq_list(r, rt.settings)
        # A sweep of 1002 that missed most of its bookings: held for an operator.
        holds.write(
            r, keys.DEFAULT, "1002", "bookings", ["b1", "b2", "b3", "b4"], reason="ratio", stored=12
        )

        env = environ(
            sandbox,
            redis_url,
            ETBRIDGE_ORGS="1001,1002",
            ETBRIDGE_SINKS=",".join(sinks),
            ETBRIDGE_WEBHOOK_SECRET=delivery.SECRET,
            ETBRIDGE_RETRY_SCHEDULE="0",
        )
        console = Console(env, tmp_path)
        try:
            base = console.wait_listening()
            browser.get(base)
            titled("Fleet")
            assert browser.find_element(By.TAG_NAME, "h1").text == "Fleet"
            assert "valid until" in browser.page_source.replace("</span>", "")
            first = browser.find_elements(By.CSS_SELECTOR, "tr.held td a")[0]
            assert first.text == "1002"  # the org with held deletions comes first
            shot("fleet")

            browser.find_element(By.LINK_TEXT, "1001").click()
            titled("Org 1001")
            assert browser.find_element(By.TAG_NAME, "h1").text == "Org 1001"
            shot("org")

            browser.find_element(By.NAME, "id").send_keys(changed)
            browser.find_element(By.CSS_SELECTOR, "form button").click()
            titled("Booking")
            assert browser.current_url == f"{base}orgs/1001/bookings/{changed}"
            cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "td")]
            assert "updated" in cells
            assert any(c.startswith("delivered\nat ") for c in cells)  # and when
            assert any(c.startswith("dead-lettered") for c in cells)
            for summary in browser.find_elements(By.TAG_NAME, "summary"):
                summary.click()  # unfold the attempts
            statuses = [
                td.text for td in browser.find_elements(By.CSS_SELECTOR, "table.attempts td")
            ]
            assert "accepted" in statuses and any(s.endswith("HTTP 500") for s in statuses)
            shot("booking")

            browser.find_elements(By.CSS_SELECTOR, "tr.event td a")[-1].click()
            titled("Event")
            assert len(browser.find_elements(By.CSS_SELECTOR, "table.attempts")) == 2
            assert (
                "com.eventtemple.booking.updated" in browser.find_element(By.TAG_NAME, "pre").text
            )
            shot("event")

            browser.find_element(By.LINK_TEXT, "Sinks").click()
            titled("Sinks")
            assert browser.find_element(By.TAG_NAME, "h1").text == "Sinks"
            shot("sinks")
            browser.find_element(By.LINK_TEXT, "redeliver…").click()
            titled("Redeliver a dead letter")
            assert "same id" in browser.page_source
            shot("redeliver")
            receiver.reply_default(Reply.ok())
            browser.find_element(By.CSS_SELECTOR, "button[name=confirm]").click()
            titled("Redelivery")
            assert "redelivered" in browser.find_element(By.TAG_NAME, "main").text
            assert [(a.envelope or {}).get("id") for a in receiver.delivered()] == [letter.event_id]
            assert outbox.dlq_list(r, rt.settings) == []

            browser.get(f"{base}orgs/1001/bookings/{changed}")
            titled("Booking")
            cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "td")]
            assert not any(c.startswith("dead-lettered") for c in cells)

            # Held deletions: the org page, approve, confirm.
            browser.get(base)
            titled("Fleet")
            browser.find_element(By.LINK_TEXT, "1002").click()
            titled("Org 1002")
            held = browser.find_element(By.CSS_SELECTOR, "tr.held").text
            assert "4 of 12" in held and "ratio" in held
            shot("org-held")
            browser.find_element(By.LINK_TEXT, "Approve…").click()
            titled("Approve held deletions")
            shot("approve")
            browser.find_element(By.CSS_SELECTOR, "button[name=confirm]").click()
            titled("Held deletions")
            assert "approved 4 held deletion(s)" in browser.find_element(By.TAG_NAME, "main").text
            hold = holds.read(r, keys.DEFAULT, "1002", "bookings")
            assert hold is not None and hold.approved_ids == ("b1", "b2", "b3", "b4")
            for secret in (sandbox.client_secret, delivery.SECRET, rt.tokens.get()):
                assert secret not in browser.page_source
        finally:
            console.stop()
