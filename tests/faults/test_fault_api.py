"""The API on a bad day, and every token revoked mid-run.

Bad day: 5xx, proxies' HTML 502s (no rate-limit headers), truncated JSON,
slow answers (first within the read timeout, then beyond it) and 429 storms at the rates
of :data:`tests.support.faults.BAD_DAY` on every ``/v2`` call, plus a burst of
forced 429s, while bookings change. Revocation: every token revoked three
times while the fleet works under a tight request budget.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from etbridge.redisserver import RedisServer
from tests.support.faults import BAD_DAY, fault_run
from tests.support.fleet import wait_for
from tests.support.sandbox import Sandbox
from tests.support.stack import runtime_for

pytestmark = pytest.mark.slow


def test_a_bad_day_of_the_api_loses_nothing(fault_redis: RedisServer, tmp_path: Path) -> None:
    with fault_run(
        tmp_path,
        fault_redis,
        orgs=4,
        bookings=25,
        seed=41,
        rate_limit=300,
        workers=2,
        ETBRIDGE_POLL_INTERVAL="1",
        ETBRIDGE_HTTP_TIMEOUT="2.5",
    ) as run:
        run.wait_baseline()
        run.sandbox.faults(**BAD_DAY)
        run.sandbox.churn(3)
        kinds = ("error_500", "html_502", "truncated", "slow", "storm_429")

        def bad_day_done() -> bool:
            served = run.sandbox.counters()["faults_served"]
            return len(run.sandbox.log()) >= 45 and all(served.get(k, 0) for k in kinds)

        # Until every kind of fault has been served at least once, and bookings changed.
        wait_for(lambda: len(run.sandbox.log()) >= 20, 60, "changes on a bad day")
        run.sandbox.force_429(5, retry_after=3)
        run.sandbox.faults(slow_seconds=3.0)  # from now on a slow answer is a timeout
        wait_for(bad_day_done, 120, "a bad day with every kind of fault", interval=1.0)
        run.settle(90)
        counters = run.check_api()
        run.check_logs()
        assert run.dead_letters() == 0
        assert counters["forced_429"] == 5
        print(f"faults served {counters['faults_served']}; status codes {counters['status_codes']}")


def test_revoked_tokens_mid_run_lose_nothing(fault_redis: RedisServer, tmp_path: Path) -> None:
    with fault_run(
        tmp_path,
        fault_redis,
        orgs=4,
        bookings=20,
        seed=51,
        # Four orgs polled every second keep a budget of 120/min busy, so the requests
        # retried after a 401 come on top of a full window.
        rate_limit=120,
        workers=2,
        ETBRIDGE_POLL_INTERVAL="1",
    ) as run:
        run.wait_baseline()
        run.sandbox.churn(4)
        revocations = 3
        for n in range(revocations):
            wait_for(
                lambda n=n: len(run.sandbox.log()) >= 12 * (n + 1),
                60,
                f"churn before revocation {n + 1}",
            )
            run.sandbox.revoke_tokens()
        wait_for(lambda: len(run.sandbox.log()) >= 12 * (revocations + 1), 60, "churn after")
        run.settle(90)
        counters = run.check_api()
        run.check_logs()
        assert counters["unauthorized_by_reason"].get("revoked", 0) >= 1
        # One token per revocation for the whole fleet (two if a fetch was in flight).
        assert counters["token_requests"] <= 1 + 2 * revocations, counters["token_requests"]
        print(
            f"token requests {counters['token_requests']}, "
            f"401s {counters['unauthorized_by_reason']}"
        )


def test_a_request_that_waited_for_the_budget_carries_a_live_token(redis_url: str) -> None:
    """The sandbox never sees an expired token, even after a wait for the fleet's budget.

    A 5 s token (leeway 0.5 s) is fetched; the fleet is paused (as a 429's
    Retry-After does) for 6 s; a request made right away waits for the pause
    inside ``get_document`` and must then carry a token that is still alive.
    """
    with Sandbox.start(orgs=1, bookings=5, token_ttl=5) as sandbox:
        rt = runtime_for(sandbox, redis_url)
        try:
            rt.tokens.get()
            rt.budget.pause(5.0)  # plus the budget's margin of 1 s
            doc = rt.api.get_document("1001", "/v2/bookings", {})
            assert doc["data"]
            counters = sandbox.counters()
        finally:
            rt.session.close()
            rt.redis.close()
    assert counters["expired_token_requests"] == 0, counters["unauthorized_by_reason"]
