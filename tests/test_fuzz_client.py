"""Bad input for the client: whatever the API (or a proxy in front of it) answers,
etbridge fails with its own typed errors, and a malformed page commits nothing.

- :func:`etbridge.jsonapi.parse_page` and :func:`etbridge.jsonapi.raise_for_response`
  are fuzzed with hypothesis: odd unicode (lone surrogates, controls,
  private use), huge strings, nulls, deeply nested values, missing
  ``attributes``, missing, duplicate and non-string ids, non-object data,
  wrong types for ``meta`` and its cursors, any status with any body and any
  ``Retry-After``. Anything but an :class:`~etbridge.errors.EtbridgeError` is
  a crash.
- A page with a duplicate or a missing id is rejected as malformed, whole.
- The token endpoint's ``Retry-After`` is parsed and capped like the API's (a
  regression: its own copy had no cap), and the failure script's ceiling comes
  after the Retry-After floor.
- Against the sandbox and a real Redis, a poll whose page is malformed (crafted
  by a requests transport adapter that rewrites the sandbox's real answer)
  commits nothing: outbox, snapshots and progress marks are unchanged, and a
  later clean poll emits every change.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter

from etbridge import keys
from etbridge.auth import BearerAuth
from etbridge.client import EventTempleClient
from etbridge.errors import EtbridgeError, MalformedResponse, RateLimited, RetriableError
from etbridge.jsonapi import MAX_RETRY_AFTER, Page, parse_page, raise_for_response
from etbridge.oauth import TokenEndpoint
from etbridge.poller import Mode, Poller
from etbridge.runtime import Runtime
from etbridge.settings import Settings
from etbridge.tokencache import TokenCache
from etbridge.tokenfailure import RECORD_FAILURE
from tests.support.sandbox import Sandbox
from tests.support.stack import outbox_events, runtime_for

FUZZ = settings(
    max_examples=300,
    deadline=None,  # a loaded CI machine; this is about outcomes, not speed
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
WHERE = {"org_id": "1001", "path": "/v2/bookings"}

# Every code point, lone surrogates and private use included.
odd_text = st.text(st.characters(codec=None, categories=None, exclude_categories=()), max_size=40)
# Big without making hypothesis generate megabytes: a short text repeated.
huge_text = st.builds(lambda s, n: s * n, odd_text.filter(bool), st.integers(1_000, 100_000))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    odd_text,
    huge_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(odd_text, inner, max_size=4)
    ),
    max_leaves=20,
)
# A key's value: usually well-formed, often not.
ids = st.one_of(st.integers(1, 10**6).map(str), st.none(), st.integers(), st.just(""), odd_text)
linkage = st.one_of(
    st.none(),
    st.fixed_dictionaries({"type": st.sampled_from(["accounts", "users"]), "id": ids}),
    json_values,
)


@st.composite
def records(draw: st.DrawFn) -> Any:
    """A booking resource object, well-formed or broken in one of many ways."""
    record: dict[str, Any] = {}
    if draw(st.booleans()) or draw(st.booleans()):
        record["type"] = draw(st.one_of(st.just("bookings"), st.just("contacts"), json_values))
    if draw(st.integers(0, 9)):
        record["id"] = draw(ids)
    shape = draw(st.integers(0, 5))
    if shape == 0:
        pass  # no attributes member at all
    elif shape == 1:
        record["attributes"] = draw(json_values)
    else:
        record["attributes"] = draw(
            st.dictionaries(
                st.one_of(st.sampled_from(["name", "status", "updated_at", "notes"]), odd_text),
                json_values,
                max_size=6,
            )
        )
    if draw(st.booleans()):
        record["relationships"] = draw(
            st.one_of(
                st.dictionaries(
                    odd_text, st.one_of(st.fixed_dictionaries({"data": linkage}), json_values)
                ),
                json_values,
            )
        )
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # not an object at all
    return record


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """A listing document: mostly its shape, with any member broken."""
    doc: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        doc["data"] = draw(st.one_of(st.lists(records(), max_size=6), json_values))
    if draw(st.booleans()):
        doc["included"] = draw(
            st.one_of(st.lists(st.dictionaries(odd_text, json_values)), json_values)
        )
    if draw(st.integers(0, 3)):
        meta = draw(st.one_of(st.dictionaries(odd_text, json_values, max_size=3), json_values))
        if isinstance(meta, dict):
            if draw(st.booleans()):
                meta["after_cursor"] = draw(st.one_of(odd_text, json_values))
            if draw(st.booleans()):
                meta["before_cursor"] = draw(st.one_of(odd_text, json_values))
            if draw(st.booleans()):
                meta["has_more"] = draw(st.one_of(st.booleans(), json_values))
        doc["meta"] = meta
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    return doc


def _page(doc: Any) -> Page:
    return parse_page(doc, resource="bookings", cursor=None, **WHERE)


# ---------------------------------------------------------------------------
# parse_page


@FUZZ
@given(documents().filter(lambda d: isinstance(d, dict)))
def test_parse_page_accepts_a_valid_page_or_raises_a_typed_error(doc: dict[str, Any]) -> None:
    """Any JSON object (what raise_for_response hands on) is a valid page or malformed."""
    try:
        page = _page(doc)
    except EtbridgeError:
        return
    # What it accepted is what the poller relies on.
    assert isinstance(page.data, list)
    page_ids = [item["id"] for item in page.data]
    assert all(isinstance(i, str) and i for i in page_ids)
    assert len(set(page_ids)) == len(page_ids)
    assert all(item["type"] == "bookings" for item in page.data)
    assert page.next_cursor is None or (isinstance(page.next_cursor, str) and page.next_cursor)
    assert page.has_more == (page.next_cursor is not None)


def _valid_record(n: int) -> dict[str, Any]:
    return {
        "type": "bookings",
        "id": str(100001 + n),
        "attributes": {"name": f"B{n} ☃ \u202e", "updated_at": "2026-11-27T20:04:03Z"},
        "relationships": {"contact": {"data": None}},
    }


@FUZZ
@given(st.integers(1, 8), st.data())
def test_a_duplicate_id_rejects_the_whole_page(size: int, data: st.DataObject) -> None:
    page = [_valid_record(n) for n in range(size)]
    twin = copy.deepcopy(page[data.draw(st.integers(0, size - 1))])
    twin["attributes"] = data.draw(st.dictionaries(odd_text, json_values, max_size=3))
    page.insert(data.draw(st.integers(0, size)), twin)
    with pytest.raises(MalformedResponse, match="twice"):
        _page({"data": page, "meta": {"after_cursor": "c", "has_more": True}})


@FUZZ
@given(
    st.integers(1, 8),
    st.data(),
    st.one_of(st.just("absent"), st.none(), st.just(""), st.integers(), st.lists(st.text())),
)
def test_a_missing_or_non_string_id_rejects_the_whole_page(
    size: int, data: st.DataObject, bad: Any
) -> None:
    page = [_valid_record(n) for n in range(size)]
    victim = page[data.draw(st.integers(0, size - 1))]
    if bad == "absent":
        del victim["id"]
    else:
        victim["id"] = bad
    with pytest.raises(MalformedResponse, match="no string id"):
        _page({"data": page, "meta": {"has_more": False}})


@pytest.mark.parametrize(
    "doc",
    [
        {"data": {"type": "bookings", "id": "1"}},
        {"data": None},
        {"data": "bookings"},
        {"data": [["bookings", "1"]]},
        {"data": [], "meta": []},
        {"data": [], "meta": {"has_more": "true"}},
        {"data": [], "meta": {"has_more": True, "after_cursor": 7}},
        {"data": [], "included": {}},
        {"data": [], "included": [None]},
        {"data": [_valid_record(0) | {"type": "contacts"}]},
    ],
    ids=lambda d: json.dumps(d)[:40],
)
def test_structural_mistakes_are_malformed(doc: dict[str, Any]) -> None:
    with pytest.raises(MalformedResponse):
        _page(doc)


def test_a_page_without_attributes_is_still_a_page() -> None:
    """``attributes`` is optional in JSON:API; the canonical form treats it as empty."""
    page = _page({"data": [{"type": "bookings", "id": "100001"}], "meta": {"has_more": False}})
    assert page.data == [{"type": "bookings", "id": "100001"}]


# ---------------------------------------------------------------------------
# raise_for_response


def _response(
    status: int, body: bytes, content_type: str | None, retry_after: str | None = None
) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp._content = body
    if content_type is not None:
        resp.headers["Content-Type"] = content_type
    if retry_after is not None:
        resp.headers["Retry-After"] = retry_after
    request = requests.Request(
        "GET",
        "http://127.0.0.1:1/v2/bookings",
        params={"filter[updated_at][gt]": "2026-11-27T20:04:03Z"},
        headers={"Authorization": "Bearer secret-token-value"},
    )
    resp.request = request.prepare()
    resp.url = resp.request.url or ""
    return resp


def _encode(value: Any, how: int) -> bytes:
    """JSON bytes in one of several spellings (escaped, raw UTF-8, cut short)."""
    text = json.dumps(value, ensure_ascii=how == 0)
    raw = text.encode("utf-8", "surrogatepass")  # a lone surrogate: invalid UTF-8
    if how == 2:
        return raw[: len(raw) // 2]
    return raw


bodies = st.one_of(
    st.builds(_encode, documents(), st.integers(0, 2)),
    st.builds(_encode, json_values, st.integers(0, 2)),
    st.binary(max_size=200),
    st.sampled_from(
        [
            b"",
            b"<html><body><h1>502 Bad Gateway</h1></body></html>",
            b'{"data": [',
            b"\xef\xbb\xbf{}",
            b'{"errors": [{"title": "x", "source": {"parameter": "filter[updated_at][gt]"}}]}',
            b'{"errors": "nope"}',
            b"null",
            b"NaN",
        ]
    ),
)
content_types = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/vnd.api+json; charset=utf-8",
            "application/json",
            "text/html",
            "text/plain; charset=latin-1",
            "",
            ";;;",
        ]
    ),
    odd_text.filter(lambda t: t.isprintable() and "\n" not in t),
)
retry_afters = st.one_of(
    st.none(),
    st.integers(-(10**6), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(
        [
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Mon, 01 Jan 0001 00:00:00 GMT",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "tomorrow",
            "",
            "1e400",
            "\u0663",
        ]
    ),
    odd_text,
)


@FUZZ
@given(st.integers(100, 599), bodies, content_types, retry_afters)
def test_raise_for_response_returns_a_document_or_raises_a_typed_error(
    status: int, body: bytes, content_type: str | None, retry_after: str | None
) -> None:
    resp = _response(status, body, content_type, retry_after)
    try:
        doc = raise_for_response(resp, **WHERE)
    # The property is "a document or a typed error", so the error is inspected in place
    # (pytest.raises would demand the error for every fuzzed answer).
    except EtbridgeError as exc:
        assert "secret-token-value" not in str(exc)  # noqa: PT017
        if isinstance(exc, RetriableError) and exc.retry_after is not None:
            assert 0 <= exc.retry_after <= MAX_RETRY_AFTER  # noqa: PT017
        return
    assert 200 <= status < 300
    assert isinstance(doc, dict) and "data" in doc


@FUZZ
@given(st.builds(_encode, documents(), st.integers(0, 1)))
def test_any_answer_is_either_a_page_or_a_typed_error(body: bytes) -> None:
    """The two functions the paginator chains, over the same fuzzed answers."""
    resp = _response(200, body, "application/vnd.api+json")
    try:
        page = _page(raise_for_response(resp, **WHERE))
    except EtbridgeError as exc:  # a page or a typed error: inspected in place, as above
        assert "secret-token-value" not in str(exc)  # noqa: PT017
        return
    # Accepted: the body was a JSON:API listing, and the page holds exactly its data.
    doc = json.loads(body)
    assert page.data == doc["data"]
    assert all(isinstance(item["id"], str) and item["id"] for item in page.data)
    assert page.has_more == (page.next_cursor is not None)


@pytest.mark.parametrize("status", [200, 404, 500])
def test_a_deeply_nested_body_is_malformed_not_a_crash(status: int) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(EtbridgeError):
        raise_for_response(_response(status, body, "application/json"), **WHERE)


# ---------------------------------------------------------------------------
# A malformed page at the transport: nothing is committed


def _corrupt_duplicate(doc: dict[str, Any]) -> None:
    twin = copy.deepcopy(doc["data"][0])
    twin["attributes"]["name"] = "a twin that must never be stored"
    doc["data"].append(twin)


def _corrupt_missing_id(doc: dict[str, Any]) -> None:
    del doc["data"][-1]["id"]


def _corrupt_numeric_id(doc: dict[str, Any]) -> None:
    doc["data"][0]["id"] = int(doc["data"][0]["id"])


def _corrupt_object_data(doc: dict[str, Any]) -> None:
    doc["data"] = doc["data"][0]


def _corrupt_attributes(doc: dict[str, Any]) -> None:
    doc["data"][-1]["attributes"] = ["not", "an", "object"]


CORRUPTIONS: dict[str, Callable[[dict[str, Any]], None] | None] = {
    "duplicate id": _corrupt_duplicate,
    "missing id": _corrupt_missing_id,
    "numeric id": _corrupt_numeric_id,
    "data is an object": _corrupt_object_data,
    "attributes is a list": _corrupt_attributes,
    "truncated body": None,
}


class _Intercepting(HTTPAdapter):
    """A real adapter whose ``answer`` may replace, spoil or pass on the real response."""

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        def forward() -> requests.Response:
            return super(_Intercepting, self).send(request, stream, timeout, verify, cert, proxies)

        return self.answer(request, forward)

    def answer(
        self, request: requests.PreparedRequest, forward: Callable[[], requests.Response]
    ) -> requests.Response:
        return forward()


class CorruptingAdapter(_Intercepting):
    """Passes requests to the real sandbox and spoils its listings on the way back."""

    def __init__(self, corruption: str) -> None:
        super().__init__(max_retries=0)
        self.corruption = corruption
        self.spoiled = 0

    def answer(
        self, request: requests.PreparedRequest, forward: Callable[[], requests.Response]
    ) -> requests.Response:
        resp = forward()
        path = urlsplit(request.url or "").path
        if path != "/v2/bookings" or resp.status_code != 200:
            return resp
        body = resp.content
        mutate = CORRUPTIONS[self.corruption]
        if mutate is None:
            resp._content = body[: len(body) // 2]
        else:
            doc = json.loads(body)
            mutate(doc)
            resp._content = json.dumps(doc).encode()
        self.spoiled += 1
        return resp


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=1, bookings=12, seed=7) as sb:
        yield sb


def _state(client: redis.Redis, org_id: str) -> dict[str, Any]:
    """What a commit would move: the outbox, the stored records, the progress marks.

    (A failed poll records its error, and a sweep marks itself started before
    its first page; neither is a commit.)
    """
    meta = client.hgetall(keys.DEFAULT.org_meta(org_id, "bookings"))
    marks = (b"watermark", b"scan_max", b"sweep_cursor", b"baselined", b"attrs", b"absorbed")
    return {
        "outbox": client.xlen(keys.DEFAULT.outbox(org_id)),
        "snap": client.hgetall(keys.DEFAULT.snapshots(org_id, "bookings")),
        "marks": {name: meta.get(name) for name in marks},
    }


def _strict_poller(rt: Runtime) -> Poller:
    """A poller whose client does not retry: one malformed answer ends the poll."""
    api = EventTempleClient(
        rt.settings,
        auth=BearerAuth(rt.tokens),
        budget=rt.budget,
        session=rt.session,
        max_retries=0,
    )
    return Poller(rt.redis, rt.settings, api)


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("mode", ["incremental", "sweep"])
def test_a_malformed_page_commits_nothing(
    sandbox: Sandbox, redis_url: str, r: redis.Redis, corruption: str, mode: Mode
) -> None:
    org = "1001"
    rt = runtime_for(sandbox, redis_url, emit_baseline=True)
    try:
        _strict_poller(rt).poll(org, "sweep")  # the baseline
        baseline = len(outbox_events(r, org))
        assert baseline == len(sandbox.truth(org)["orgs"][org]["bookings"])
        changed = sandbox.mutate(3, org=org, kinds=["update"])
        before = _state(r, org)

        adapter = CorruptingAdapter(corruption)
        rt.session.mount("http://", adapter)
        with pytest.raises(MalformedResponse):
            _strict_poller(rt).poll(org, mode)
        assert adapter.spoiled >= 1
        assert _state(r, org) == before

        rt.session.mount("http://", HTTPAdapter(max_retries=0))
        _strict_poller(rt).poll(org, mode)
        new = outbox_events(r, org)[baseline:]
        assert {e["subject"] for e in new} == {m["id"] for m in changed}
        assert all(e["type"].endswith(".updated") for e in new)
        assert "a twin that must never be stored" not in json.dumps(new)
    finally:
        rt.session.close()
        rt.redis.close()


class FutureDating(_Intercepting):
    """Passes requests to the sandbox; dates the first booking of one listing in 2999."""

    def __init__(self) -> None:
        super().__init__(max_retries=0)
        self.dated = 0

    def answer(
        self, request: requests.PreparedRequest, forward: Callable[[], requests.Response]
    ) -> requests.Response:
        resp = forward()
        path = urlsplit(request.url or "").path
        if path == "/v2/bookings" and resp.status_code == 200 and not self.dated:
            doc = json.loads(resp.content)
            if doc["data"]:
                doc["data"][0]["attributes"]["updated_at"] = "2999-01-01T00:00:00Z"
                self.dated += 1
            resp._content = json.dumps(doc).encode()
        return resp


def test_a_booking_dated_in_the_future_does_not_blind_incremental_polls(
    sandbox: Sandbox, redis_url: str, r: redis.Redis
) -> None:
    org = "1001"
    rt = runtime_for(sandbox, redis_url, emit_baseline=True)
    try:
        _strict_poller(rt).poll(org, "sweep")
        sandbox.mutate(1, org=org, kinds=["update"])
        adapter = FutureDating()
        rt.session.mount("http://", adapter)
        _strict_poller(rt).poll(org, "incremental")
        assert adapter.dated == 1
        rt.session.mount("http://", HTTPAdapter(max_retries=0))
        seen = len(outbox_events(r, org))
        changed = sandbox.mutate(2, org=org, kinds=["update"])
        _strict_poller(rt).poll(org, "incremental")
        new = outbox_events(r, org)[seen:]
        assert {e["subject"] for e in new} == {m["id"] for m in changed}
    finally:
        rt.session.close()
        rt.redis.close()


def test_the_adapter_spoils_only_listings(sandbox: Sandbox, redis_url: str) -> None:
    """Sanity of the harness: the token endpoint and single GETs pass untouched."""
    rt = runtime_for(sandbox, redis_url)
    try:
        adapter = CorruptingAdapter("truncated body")
        rt.session.mount("http://", adapter)
        some_id = next(iter(sandbox.truth("1001")["orgs"]["1001"]["bookings"]))
        assert rt.api.get_one("1001", "bookings", some_id) is not None
        assert adapter.spoiled == 0
    finally:
        rt.session.close()
        rt.redis.close()


# ---------------------------------------------------------------------------
# A 429 with an absurd Retry-After, through the real client and the fleet's budget


class Answering429(_Intercepting):
    """Answers every ``/v2`` call with a 429 carrying ``retry_after``; the rest goes through."""

    def __init__(self, retry_after: str) -> None:
        super().__init__(max_retries=0)
        self.retry_after = retry_after

    def answer(
        self, request: requests.PreparedRequest, forward: Callable[[], requests.Response]
    ) -> requests.Response:
        if not urlsplit(request.url or "").path.startswith("/v2/"):
            return forward()
        resp = _response(429, b'{"errors": []}', "application/vnd.api+json", self.retry_after)
        resp.request = request
        resp.connection = self
        return resp


def test_a_retry_after_of_1e300_is_a_typed_error(sandbox: Sandbox, redis_url: str) -> None:
    rt = runtime_for(sandbox, redis_url)
    try:
        rt.session.mount("http://", Answering429("1e300"))
        with pytest.raises(EtbridgeError):
            rt.api.get_document("1001", "/v2/bookings", {})
    finally:
        rt.session.close()
        rt.redis.close()


def test_a_retry_after_in_the_year_9999_does_not_stop_the_fleet_for_ever(
    sandbox: Sandbox, redis_url: str, r: redis.Redis
) -> None:
    rt = runtime_for(sandbox, redis_url)
    try:
        rt.session.mount("http://", Answering429("Fri, 31 Dec 9999 23:59:59 GMT"))
        with pytest.raises(RateLimited):
            rt.api.get_document("1001", "/v2/bookings", {})
        # The API's windows are a minute long; an hour is more than any 429 can mean.
        assert 0 < r.pttl(rt.budget.pause_key) <= 3600 * 1000
    finally:
        rt.session.close()
        rt.redis.close()


# ---------------------------------------------------------------------------
# The token endpoint's Retry-After: the same parser and the same cap as the API's.
# (It once had its own parser without the cap: one "Retry-After: 1e9" from the
# token endpoint stopped every token request of the fleet for the failure
# record's 7-day TTL.)


class TokenEndpointAnswers(_Intercepting):
    """Answers the token endpoint with ``status`` and ``retry_after``; the rest goes through."""

    def __init__(self, status: int, retry_after: str | None) -> None:
        super().__init__(max_retries=0)
        self.status = status
        self.retry_after = retry_after
        self.answered = 0

    def answer(
        self, request: requests.PreparedRequest, forward: Callable[[], requests.Response]
    ) -> requests.Response:
        if urlsplit(request.url or "").path != "/oauth/token":
            return forward()
        self.answered += 1
        resp = _response(self.status, b'{"error": "slow_down"}', "application/json")
        if self.retry_after is not None:
            resp.headers["Retry-After"] = self.retry_after
        resp.request = request
        resp.connection = self
        return resp


def _token_settings(token_url: str = "http://127.0.0.1:1/oauth/token", **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "client_id": "fuzz-client",
        "client_secret": "fuzz-secret-value",
        "token_url": token_url,
        "sinks": "redis-stream:test:events",
        "webhook_secret": None,
        "sentry_dsn": None,
    }
    values.update(extra)
    return Settings(**values)


@FUZZ
@given(st.sampled_from([429, 408, 500, 503]), retry_afters)
def test_the_token_endpoints_retry_after_is_capped_like_the_apis(
    status: int, retry_after: str | None
) -> None:
    session = requests.Session()
    adapter = TokenEndpointAnswers(status, retry_after)
    session.mount("http://", adapter)
    endpoint = TokenEndpoint(_token_settings(), session=session, timeout=1)
    with pytest.raises(RetriableError) as exc:
        endpoint.request()
    assert adapter.answered == 1
    assert "fuzz-secret-value" not in str(exc.value)
    if exc.value.retry_after is not None:
        assert 0 <= exc.value.retry_after <= MAX_RETRY_AFTER


@pytest.mark.parametrize("retry_after", ["1e9", "Fri, 31 Dec 9999 23:59:59 GMT", "1e300"])
def test_a_huge_retry_after_from_the_token_endpoint_stops_token_requests_briefly(
    sandbox: Sandbox, redis_url: str, r: redis.Redis, retry_after: str
) -> None:
    """Regression: the fleet's failure record must not outlast the 15-minute cap."""
    session = requests.Session()
    adapter = TokenEndpointAnswers(429, retry_after)
    session.mount("http://", adapter)
    settings = _token_settings(sandbox.token_url, api_url=sandbox.url, redis_url=redis_url)
    cache = TokenCache(r, settings, session=session, attempts=1)
    with pytest.raises(RateLimited) as first:
        cache.get()
    assert first.value.retry_after == MAX_RETRY_AFTER
    record = r.hgetall(keys.DEFAULT.token_failure(cache.cache_id))
    delay_ms = int(record[b"next_attempt_at_ms"]) - int(record[b"failed_at_ms"])
    assert 0 < delay_ms <= MAX_RETRY_AFTER * 1000
    # The remembered error says so too, and no second request goes out.
    with pytest.raises(RateLimited) as remembered:
        cache.get()
    assert remembered.value.retry_after is not None
    assert remembered.value.retry_after <= MAX_RETRY_AFTER
    assert adapter.answered == 1
    r.delete(keys.DEFAULT.token_failure(cache.cache_id))


def test_a_retry_after_longer_than_the_transient_backoff_is_still_honoured(
    sandbox: Sandbox, redis_url: str, r: redis.Redis
) -> None:
    """The floor (Retry-After) beats the backoff's own 60 s cap; only 15 min bound it."""
    session = requests.Session()
    session.mount("http://", TokenEndpointAnswers(429, "120"))
    settings = _token_settings(sandbox.token_url, api_url=sandbox.url, redis_url=redis_url)
    cache = TokenCache(r, settings, session=session, attempts=1)
    with pytest.raises(RateLimited):
        cache.get()
    record = r.hgetall(keys.DEFAULT.token_failure(cache.cache_id))
    assert int(record[b"next_attempt_at_ms"]) - int(record[b"failed_at_ms"]) == 120_000
    r.delete(keys.DEFAULT.token_failure(cache.cache_id))


@settings(
    max_examples=100,
    deadline=None,
    # The Redis client is the same for every example; each example cleans up its key.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.integers(1, 40), st.integers(0, 10**13))
def test_the_failure_script_puts_its_ceiling_after_the_retry_after_floor(
    r: redis.Redis, attempts: int, floor_ms: int
) -> None:
    """Even a caller that hands the script an unbounded floor gets at most the ceiling."""
    script = r.register_script(RECORD_FAILURE)
    key = keys.DEFAULT.token_failure("fuzz-ceiling")
    r.hset(key, mapping={"kind": "transient", "secret_fp": "fp", "attempts": attempts - 1})
    ceiling_ms, base_ms, cap_ms, now_ms = 900_000, 2_000, 60_000, 1_000_000
    fields: list[str | int] = [
        "transient",
        "rate_limited",
        "",
        "fp",
        now_ms,
        base_ms,
        cap_ms,
        floor_ms,
    ]
    got, next_ms = script(keys=[key], args=[*fields, 60_000, "RateLimited", ceiling_ms])
    delay = int(next_ms) - now_ms
    backoff = min(cap_ms, base_ms * 2 ** min(attempts - 1, 30))
    assert int(got) == attempts
    assert delay == min(max(backoff, floor_ms), ceiling_ms)
    r.delete(key)
