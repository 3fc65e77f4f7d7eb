"""Record digests (digest.py): exact, apart for values that differ, fast for a page as served."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from etbridge import digest
from etbridge.changes import MalformedRecord, canonical
from etbridge.digest import record_digest
from tests.test_changes import canon


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (None, "null"),
        (1, 1.0),
        (1, True),
        (0, False),
        (1, "1"),
        (2**70, 2**70 + 1),  # past 64 bits: orjson refuses, canonical_json hashes
        ("bad \ud800", "bad \ud801"),  # lone surrogates: the same fallback
        ([1, 2], [2, 1]),
        ({"a": 1}, {"a": 1, "b": None}),
    ],
)
def test_the_digest_tells_apart_values_that_differ(one: Any, other: Any) -> None:
    a, b = canon(notes=one), canon(notes=other)
    assert record_digest(a) != record_digest(b)
    assert record_digest(a) == record_digest(copy.deepcopy(a))
    assert len(record_digest(a)) == digest.DIGEST_SIZE


def test_the_digest_tells_nan_and_infinity_from_null_as_the_api_parser_reads_them() -> None:
    # orjson writes a plain float NaN as null; the API parser reads NaN as NonFinite,
    # which the digest hashes through canonical_json.
    body = '{"notes": %s}'
    digests = {
        token: record_digest(
            canon(**json.loads(body % token, parse_constant=digest.parse_constant))
        )
        for token in ("null", "NaN", "Infinity", "-Infinity")
    }
    assert len(set(digests.values())) == 4


def test_a_plainly_shaped_object_is_digested_as_served() -> None:
    c = canon()
    _ids, digests, made = digest.page_digests([c])
    assert digests["1"] == record_digest(c) and made == {}  # a canonical form is plain
    served = json.loads(json.dumps(c))
    served["relationships"]["owner"]["links"] = {"self": "/v2/bookings/1/owner"}
    # Plain at the top: digested as served, which differs from its canonical form's
    # digest (a stored digest of either kind then says "moved": a diff, never an event).
    _ids, digests, made = digest.page_digests([served])
    assert made == {} and digests["1"] == record_digest(served) != record_digest(c)
    assert record_digest(canonical(served)) == record_digest(c)
    # orjson refuses what record_digest hashes through canonical_json: the same digest.
    odd = canon(notes=2**70)
    assert digest.page_digests([odd])[1]["1"] == record_digest(odd)
    for not_plain in (
        {**c, "links": {"self": "/v2/bookings/1"}},  # digest the canonical form
        {**c, "meta": {"etag": "x"}},
    ):
        _ids, digests, made = digest.page_digests([not_plain])
        assert made == {"1": c} and digests["1"] == record_digest(c)
    for malformed in ({**c, "id": 1}, {**c, "id": ""}, ["not", "an", "object"]):
        with pytest.raises(MalformedRecord):
            digest.page_digests([malformed])


def test_the_digest_is_of_the_bytes_key_order_included() -> None:
    # Reordered keys digest apart (one diff that finds nothing; never an event), while
    # canonical_json, which is stored and compared by the diff, sorts them.
    a = canon()
    b = json.loads(json.dumps(a))
    b["attributes"] = dict(reversed(list(b["attributes"].items())))
    assert record_digest(a) != record_digest(b)
    assert record_digest(a) == record_digest(json.loads(json.dumps(a)))


def test_a_page_as_served_is_digested_like_its_canonical_form_where_it_is_plain() -> None:
    plain = canon()
    with_links = {**canon(), "id": "2", "links": {"self": "/v2/bookings/2"}}
    ids, digests, made = digest.page_digests([plain, with_links])
    assert ids == ["1", "2"]
    assert digests[plain["id"]] == record_digest(plain)
    # Not plain: made canonical on the way (links dropped) and digested so.
    assert made == {"2": canonical(with_links)} and "links" not in made["2"]
    assert digests["2"] == record_digest(canonical(with_links))
