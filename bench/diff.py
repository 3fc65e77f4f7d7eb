"""Change detection per page: etbridge's atomic commit vs a naive GET/SET store.

Pages of 100 realistic bookings, fetched once from a sandbox over its public
API, are committed against a private Redis on loopback, in three cases:

* ``unchanged``: the stored state already holds every record of the page;
* ``10 changes``: 10 records of the page differ (1-3 attribute groups and
  ``updated_at``, as the sandbox's ``update`` mutation changes them);
* ``new``: no record of the page is stored yet (100 ``created`` events).

Two implementations, side by side in one run, on the same pages:

* ``etbridge``: what the poller does with one page (``Poller.commit_page``):
  digests of the page as served, one ``HMGET`` of the
  stored values (each starts with its digest), the pure diff of the moved ones,
  CloudEvents envelopes, and one Lua script that checks the lease and the
  digests and writes snapshots, outbox entries and marks atomically;
* ``naive``: the full JSON per booking in its own string key, one ``GET`` and
  (when it differs) one ``SET`` per record, then one ``XADD`` per event after
  the writes, not atomically (a crash between them loses or repeats events).

Measured per page: worker CPU ms (``time.process_time``), Redis round trips
(counted on the connection: one per packet sent, so a pipeline or an
``EVALSHA`` is one), commands and Redis-side µs (``INFO commandstats``
deltas). Then Redis bytes per stored booking (``MEMORY USAGE`` of the
``snap`` + ``fp`` hashes / count, exact: ``SAMPLES 0``) for a large org
(hashtable encoding) and a 100-booking org, against the raw JSON size of a
booking as the API sends it; the same again with free text drawn from a
large vocabulary (:func:`vocabulary_records`), as real notes compress worse.

The etbridge store is measured again (CPU per page, bytes per booking) on the
large-vocabulary bookings. Targets: unchanged page <= 1 ms CPU (issue 15; 3 ms
in issue 5) and <= 2 round trips; >= 10x fewer round trips than the naive
store; stored bytes per booking <= 0.35x raw (issue 15; 0.5x in issue 5).

    python bench/diff.py [--quick] [--bookings N] [--repeats R]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import requests
from _common import hash_encodings, machine_facts, write_results
from redis.connection import Connection

from etbridge import changes, digest, keys
from etbridge.client import EventTempleClient
from etbridge.poller import Poller, PollResult
from etbridge.redisserver import RedisServer
from etbridge.replies import text
from etbridge.settings import Settings
from etbridge.state import Lease, OrgState
from tests.support import legacy_state
from tests.support.sandbox import Sandbox

PAGE = 100
CHANGES_PER_PAGE = 10
# Issue 15 (issue 5 had 3 ms and 0.5x): unchanged page CPU, stored bytes over raw JSON.
CPU_TARGET_MS = 1.0
STORED_TARGET = 0.35
CASES = ("unchanged", "10 changes", "new")


class CountingConnection(Connection):
    """A connection that counts the packets it sends: one per round trip.

    redis-py sends a plain command, an ``EVALSHA`` or a whole pipeline with one
    ``send_packed_command`` and then reads the replies, so the count is the
    number of times the worker waited for Redis.
    """

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]  # redis-py


def counting_client(url: str) -> redis.Redis:
    pool = redis.ConnectionPool.from_url(url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    client.ping()  # connect (and send the client's hello) before anything is counted
    return client


def commandstats(client: redis.Redis) -> tuple[int, int]:
    """(calls, usec) summed over every command but INFO itself."""
    stats = client.info("commandstats")
    calls = usec = 0
    for name, row in stats.items():
        if name in ("cmdstat_info",):
            continue
        calls += int(row["calls"])
        usec += int(row["usec"])
    return calls, usec


class Measure:
    """CPU, round trips, commands and Redis µs of each call, per case."""

    def __init__(self, client: redis.Redis, admin: redis.Redis) -> None:
        self.client = client
        self.admin = admin
        self.rows: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}

    def __call__(self, case: str, fn: Callable[..., int]) -> int:
        # fn is called with no arguments; Callable[..., int] lets `lambda p=page: ...` bind a
        # loop variable (mypy cannot infer a lambda with defaults against Callable[[], int]).
        calls0, usec0 = commandstats(self.admin)
        sends0 = CountingConnection.sends
        cpu0 = time.process_time()
        events = fn()
        cpu = time.process_time() - cpu0
        sends = CountingConnection.sends - sends0
        calls1, usec1 = commandstats(self.admin)
        self.rows[case].append(
            {
                "cpu_ms": cpu * 1000,
                "round_trips": sends,
                "commands": calls1 - calls0,
                "redis_us": usec1 - usec0,
                "events": events,
            }
        )
        return events

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for case, rows in self.rows.items():
            if not rows:
                continue
            cpu = [r["cpu_ms"] for r in rows]
            out[case] = {
                "pages": len(rows),
                "cpu_ms_median": round(statistics.median(cpu), 3),
                "cpu_ms_mean": round(statistics.fmean(cpu), 3),
                "cpu_ms_min": round(min(cpu), 3),
                "round_trips": round(statistics.fmean(r["round_trips"] for r in rows), 2),
                "round_trips_max": max(r["round_trips"] for r in rows),
                "commands": round(statistics.fmean(r["commands"] for r in rows), 1),
                "redis_us": round(statistics.median(r["redis_us"] for r in rows), 1),
                "events": round(statistics.fmean(r["events"] for r in rows), 1),
            }
        return out


# --- the pages -------------------------------------------------------------------


PARSE_MS: list[float] = []


def fetch_pages(sb: Sandbox, org: str) -> list[list[dict[str, Any]]]:
    """Every page of 100 bookings of one org, as the API serves them.

    Also times ``json.loads`` of each body (``PARSE_MS``): the client's share of a
    page, the same for both implementations, so it is reported beside them.
    """
    session = sb.api_session(org=org)
    pages: list[list[dict[str, Any]]] = []
    cursor = ""
    while True:
        params = {"page[size]": str(PAGE), "sort": "id"}
        if cursor:
            params["page[after]"] = cursor
        resp = session.get(f"{sb.url}/v2/bookings", params=params, timeout=60)
        resp.raise_for_status()
        cpu0 = time.process_time()
        doc = json.loads(resp.content)
        PARSE_MS.append((time.process_time() - cpu0) * 1000)
        if doc["data"]:
            pages.append(doc["data"])
        if not doc["meta"].get("has_more"):
            break
        cursor = doc["meta"]["after_cursor"]
    session.close()
    return pages


def raw_size(resource: dict[str, Any]) -> int:
    """Bytes of one resource object as the API sends it (compact UTF-8 JSON)."""
    return len(json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode())


_STATUSES = ("lead", "tentative", "definite", "lost")


def edit(resource: dict[str, Any], rng: random.Random, when: datetime) -> dict[str, Any]:
    """A copy of a booking as the sandbox's ``update`` would leave it: 1-3 groups change."""
    out = copy.deepcopy(resource)
    attrs = out["attributes"]
    groups = rng.sample(["status", "guests", "notes", "name", "stage"], rng.randint(1, 3))
    for group in groups:
        if group == "status":
            attrs["status"] = rng.choice([s for s in _STATUSES if s != attrs.get("status")])
        elif group == "guests":
            attrs["guest_count"] = int(attrs.get("guest_count") or 0) + rng.randint(1, 40)
            attrs["total_amount"] = f"{rng.uniform(500, 50000):.2f}"
        elif group == "notes":
            attrs["notes"] = f"Rückruf erbeten — call back ☎ #{rng.randint(1, 10**6)}"
        elif group == "name":
            attrs["name"] = f"{attrs.get('name', '')} (rev {rng.randint(2, 99)})"
        else:
            attrs["stage_id"] = int(attrs.get("stage_id") or 0) % 7 + 1
    if rng.random() < 0.2:
        out["relationships"]["owner"] = {"data": {"type": "users", "id": str(rng.randint(1, 60))}}
    attrs["updated_at"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


def edited_page(
    page: list[dict[str, Any]], rng: random.Random, when: datetime
) -> list[dict[str, Any]]:
    picks = set(rng.sample(range(len(page)), min(CHANGES_PER_PAGE, len(page))))
    return [edit(r, rng, when) if i in picks else r for i, r in enumerate(page)]


# --- etbridge ----------------------------------------------------------------------


class EtbridgeStore:
    """One org's state, committed page by page exactly as the poller does it.

    Every page gets a fresh :class:`OrgState`, as every poll does: an incremental
    poll is one page in the common case, so each page pays what the first page of
    a poll pays (e.g. reading the org's snapshot dictionary once).
    """

    def __init__(self, client: redis.Redis, settings: Settings, org: str) -> None:
        api = EventTempleClient(settings, auth=requests.auth.HTTPBasicAuth("unused", "unused"))
        self.poller = Poller(client, settings, api)
        self.state = OrgState(client, keys.DEFAULT, org, "bookings")
        lease = self.state.acquire_lease(3600)
        assert lease is not None
        self.lease: Lease = lease
        self.known: set[str] = set()
        self.absorbed: set[str] = set()
        self.result = PollResult(org, "bookings", "incremental")

    def commit(self, page: list[dict[str, Any]]) -> int:
        before = self.result.events
        state = OrgState(self.state.redis, keys.DEFAULT, self.state.org_id, self.state.resource)
        self.known, self.absorbed = self.poller.commit_page(
            state,
            self.lease,
            page,
            self.result,
            baseline=False,
            seen=False,
            known=self.known,
            absorbed=self.absorbed,
            meta_updates={},
        )
        return self.result.events - before

    def memory(self, admin: redis.Redis) -> dict[str, Any]:
        count = self.state.count()
        snap = int(admin.memory_usage(self.state.k_snap, samples=0) or 0)
        fp = int(admin.memory_usage(self.state.k_fp, samples=0) or 0)
        # The org's snapshot dictionary (one key per org and resource), if state.py
        # keeps one: its bytes are shared by the org's bookings.
        k_zdict = getattr(self.state, "k_zdict", None)
        zdict = int(admin.memory_usage(k_zdict, samples=0) or 0) if k_zdict else 0
        return {
            "bookings": count,
            "snap_bytes": snap,
            "fp_bytes": fp,
            "dictionary_bytes": zdict,
            "bytes_per_booking": round((snap + fp + zdict) / count, 1),
            "snap_per_booking": round(snap / count, 1),
            "fp_per_booking": round(fp / count, 1),
            "dictionary_per_booking": round(zdict / count, 1),
            "encoding": {
                "snap": _text(admin.object("encoding", self.state.k_snap)),
                "fp": _text(admin.object("encoding", self.state.k_fp)),
            },
        }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- the naive baseline ------------------------------------------------------------


class NaiveStore:
    """Full JSON per booking, GET + SET per record, XADD per event after the writes."""

    def __init__(self, client: redis.Redis, org: str) -> None:
        self.client = client
        self.org = org
        self.stream = f"naive:{org}:events"

    def key(self, rid: str) -> str:
        return f"naive:{self.org}:bookings:{rid}"

    def commit(self, page: list[dict[str, Any]]) -> int:
        events = []
        for resource in page:
            rid = resource["id"]
            new = json.dumps(resource, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
            old = self.client.get(self.key(rid))
            if old is None:
                events.append({"type": "created", "id": rid, "before": None, "after": resource})
            elif text(old) != new:
                before = json.loads(old)
                diff = {
                    k: {"from": before["attributes"].get(k), "to": v}
                    for k, v in resource["attributes"].items()
                    if before["attributes"].get(k) != v and k != "updated_at"
                }
                events.append(
                    {
                        "type": "updated",
                        "id": rid,
                        "before": before,
                        "after": resource,
                        "changes": diff,
                    }
                )
            else:
                continue
            self.client.set(self.key(rid), new)
        for event in events:
            self.client.xadd(self.stream, {"event": json.dumps(event, ensure_ascii=False)})
        return len(events)

    def memory(self, admin: redis.Redis) -> dict[str, Any]:
        total = count = 0
        for key in admin.scan_iter(match=f"naive:{self.org}:bookings:*", count=1000):
            total += int(admin.memory_usage(key, samples=0) or 0)
            count += 1
        return {
            "bookings": count,
            "bytes": total,
            "bytes_per_booking": round(total / max(1, count), 1),
        }


# --- what other layouts would store (measured here, not used by etbridge) ------------


def _canonical_bytes(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def layout_alternatives(
    admin: redis.Redis, records: list[dict[str, Any]], raw_mean: float
) -> dict[str, dict[str, float]]:
    """Bytes per booking of the layouts etbridge stored before and stores now, same records."""
    from etbridge import state  # noqa: PLC0415  (`state` is a local name elsewhere in this file)

    zdict = state.build_dictionary(records[:32])
    old = legacy_state

    layouts: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
        "before: generic dictionary (format 1) + hex fp": lambda p, r: (
            p.hset("fp", r["id"], old.old_digest(r)),
            p.hset("snap", r["id"], old.old_blob(r)),
        ),
        "before: the org's dictionary (format 2) + hex fp": lambda p, r: (
            p.hset("fp", r["id"], old.old_digest(r)),
            p.hset("snap", r["id"], old.old_blob(r, zdict)),
        ),
        "now: one hash, digest + org's dictionary (format 3)": lambda p, r: p.hset(
            "snap", r["id"], state.pack_record(r, digest.record_digest(r), zdict)
        ),
    }
    out: dict[str, dict[str, float]] = {}
    for name, write in layouts.items():
        admin.flushall()
        pipe = admin.pipeline(transaction=False)
        for record in records:
            write(pipe, record)
        pipe.execute()
        total = sum(int(admin.memory_usage(k, samples=0) or 0) for k in admin.scan_iter())
        if "org's" in name:
            total += len(zdict)
        per = total / len(records)
        out[name] = {"bytes_per_booking": round(per, 1), "over_raw": round(per / raw_mean, 3)}
    admin.flushall()
    return out


# --- records whose free text comes from a large vocabulary ---------------------------

VOCABULARY = 50_000


def vocabulary_records(
    records: list[dict[str, Any]], seed: int, words: int = VOCABULARY
) -> list[dict[str, Any]]:
    """The same bookings with ``name`` and ``notes`` drawn from ``words`` random words.

    The sandbox draws its free text from small pools, which a preset dictionary
    compresses unusually well; real notes are written by people. Here each word
    is a random string of 3-10 letters (so zlib finds no shared substrings to
    lean on), picked Zipf-like (rank ``k`` with weight ``1/k``) as words of a
    language are, 2-6 words for a name and 5-40 for the notes.
    """
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyzäöüéß"
    vocab = ["".join(rng.choices(letters, k=rng.randint(3, 10))) for _ in range(words)]
    weights = [1 / (k + 1) for k in range(words)]

    def text(low: int, high: int) -> str:
        return " ".join(rng.choices(vocab, weights, k=rng.randint(low, high)))

    out = []
    for record in records:
        copy_ = copy.deepcopy(record)
        attrs = copy_["attributes"]
        attrs["name"] = text(2, 6).title()
        attrs["notes"] = text(5, 40)
        out.append(copy_)
    return out


# --- the run -------------------------------------------------------------------------


def run_cases(
    measure: Measure,
    commit: Callable[[list[dict[str, Any]]], int],
    pages: list[list[dict[str, Any]]],
    repeats: int,
    seed: int,
) -> None:
    """new (every page once), then unchanged and 10-changes pages, ``repeats`` times."""
    for page in pages:
        measure("new", lambda p=page: commit(p))
    rng = random.Random(seed)
    current = list(pages)
    when = datetime(2026, 11, 28, 9, 0, 0, tzinfo=UTC)
    for _ in range(repeats):
        for page in current:
            measure("unchanged", lambda p=page: commit(p))
        for n, page in enumerate(current):
            when += timedelta(seconds=1)
            changed = edited_page(page, rng, when)
            measure("10 changes", lambda p=changed: commit(p))
            current[n] = changed


# The benchmark script, in order.
def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--bookings", type=int, help="bookings of the large org (default 2000)")
    parser.add_argument("--repeats", type=int, help="rounds of unchanged / changed pages")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    bookings = args.bookings or (600 if args.quick else 2000)
    repeats = args.repeats or (2 if args.quick else 5)

    print(f"diff: fetching {bookings} + 100 bookings from a sandbox ...", flush=True)
    with Sandbox.start(orgs=2, bookings=bookings, seed=3, rate_limit=1_000_000) as sb:
        pages = fetch_pages(sb, "1001")
        small_pages = fetch_pages(sb, "1002")[:1]
    raw = [raw_size(r) for page in pages for r in page]
    raw_mean = statistics.fmean(raw)

    with RedisServer() as server:
        client = counting_client(server.url)
        admin = redis.Redis.from_url(server.url)
        settings = Settings(
            _env_file=None,
            client_id="bench",
            client_secret="bench-secret",
            api_url="http://127.0.0.1:9",
            redis_url=server.url,
        )
        results: dict[str, Any] = {}
        for name in ("etbridge", "naive"):
            admin.flushall()
            admin.config_resetstat()
            store: EtbridgeStore | NaiveStore
            if name == "etbridge":
                store = EtbridgeStore(client, settings, "1001")
            else:
                store = NaiveStore(client, "1001")
            # One unmeasured page on another org: scripts loaded, code paths warm.
            warm = (
                EtbridgeStore(client, settings, "9")
                if name == "etbridge"
                else NaiveStore(client, "9")
            )
            warm.commit(pages[0])
            measure = Measure(client, admin)
            print(f"  {name}: {len(pages)} pages x {repeats} rounds ...", flush=True)
            run_cases(measure, store.commit, pages, repeats, seed=11)
            results[name] = {"per_page": measure.summary(), "memory": store.memory(admin)}
            small: EtbridgeStore | NaiveStore
            small = (
                EtbridgeStore(client, settings, "2")
                if name == "etbridge"
                else NaiveStore(client, "2")
            )
            for page in small_pages:
                small.commit(page)
            results[name]["memory_small_org"] = small.memory(admin)
        # etbridge again on the same bookings with large-vocabulary free text.
        wide = vocabulary_records([r for page in pages for r in page], seed=5)
        wide_raw_mean = statistics.fmean(raw_size(r) for r in wide)
        wide_pages = [wide[n : n + PAGE] for n in range(0, len(wide), PAGE)]
        admin.flushall()
        EtbridgeStore(client, settings, "9").commit(wide_pages[0])
        wide_store = EtbridgeStore(client, settings, "1001")
        measure = Measure(client, admin)
        print(f"  etbridge, large vocabulary: {len(wide_pages)} pages x {repeats} rounds ...")
        run_cases(measure, wide_store.commit, wide_pages, repeats, seed=13)
        results["etbridge_large_vocabulary"] = {
            "per_page": measure.summary(),
            "memory": wide_store.memory(admin),
        }
        canon = [changes.canonical(r) for page in pages for r in page]
        alternatives = layout_alternatives(admin, canon, raw_mean)
        wide_alternatives = layout_alternatives(
            admin, [changes.canonical(r) for r in wide], wide_raw_mean
        )
        info = admin.info("server")
        redis_version = str(info.get("redis_version", "?"))
        for key in ("hash-max-listpack-entries", "hash-max-listpack-value"):
            results.setdefault("redis_config", {}).update(admin.config_get(key))
        client.close()
        admin.close()

    ours, base = results["etbridge"], results["naive"]
    ratios: dict[str, Any] = {}
    for case in CASES:
        o, b = ours["per_page"][case], base["per_page"][case]
        ratios[case] = {
            "round_trips": round(b["round_trips"] / max(o["round_trips"], 1e-9), 1),
            "cpu": round(b["cpu_ms_median"] / max(o["cpu_ms_median"], 1e-9), 2),
        }
    mem = ours["memory"]
    stored_ratio = mem["bytes_per_booking"] / raw_mean
    unchanged = ours["per_page"]["unchanged"]
    wide_ours = results["etbridge_large_vocabulary"]
    wide_ratio = wide_ours["memory"]["bytes_per_booking"] / wide_raw_mean
    wide_unchanged = wide_ours["per_page"]["unchanged"]
    targets = {
        "unchanged_cpu_ms_max": CPU_TARGET_MS,
        "unchanged_round_trips_max": 2,
        "round_trip_ratio_min": 10.0,
        "stored_over_raw_max": STORED_TARGET,
        "unchanged_cpu_met": unchanged["cpu_ms_median"] <= CPU_TARGET_MS,
        "unchanged_round_trips_met": unchanged["round_trips_max"] <= 2,
        "round_trip_ratio_met": all(r["round_trips"] >= 10 for r in ratios.values()),
        "stored_bytes_met": stored_ratio <= STORED_TARGET,
        "large_vocabulary_unchanged_cpu_met": wide_unchanged["cpu_ms_median"] <= CPU_TARGET_MS,
        "large_vocabulary_stored_bytes_met": wide_ratio <= STORED_TARGET,
    }
    document = {
        "benchmark": "diff",
        "quick": args.quick,
        "page_size": PAGE,
        "changes_per_changed_page": CHANGES_PER_PAGE,
        "bookings": bookings,
        "pages": len(pages),
        "repeats": repeats,
        "raw_json_bytes_per_booking": round(raw_mean, 1),
        "json_parse_cpu_ms_per_page": round(statistics.median(PARSE_MS), 3),
        "stored_over_raw": round(stored_ratio, 3),
        "stored_over_raw_small_org": round(
            ours["memory_small_org"]["bytes_per_booking"] / raw_mean, 3
        ),
        "naive_stored_over_raw": round(base["memory"]["bytes_per_booking"] / raw_mean, 3),
        "etbridge": ours,
        "naive": base,
        "naive_over_etbridge": ratios,
        "layout_alternatives": alternatives,
        "vocabulary_words": VOCABULARY,
        "vocabulary_raw_json_bytes_per_booking": round(wide_raw_mean, 1),
        "etbridge_large_vocabulary": wide_ours,
        "stored_over_raw_large_vocabulary": round(wide_ratio, 3),
        "layout_alternatives_large_vocabulary": wide_alternatives,
        "targets": targets,
        "machine": {**machine_facts(), "redis_server": redis_version},
    }
    print_table(document)
    path = write_results("diff", document, args.output)
    print(f"wrote {path}")
    return 0


def print_table(doc: dict[str, Any]) -> None:
    ours, base = doc["etbridge"]["per_page"], doc["naive"]["per_page"]
    print()
    print(
        f"per page of {doc['page_size']} bookings ({doc['pages']} pages x {doc['repeats']} rounds)"
    )
    print(
        f"(not included: json.loads of the page body, {doc['json_parse_cpu_ms_per_page']:.2f} ms, "
        "the same for both; the poller's scan loop adds one lease extension per page)"
    )
    header = (
        f"{'case':<11} {'':>9} {'CPU ms':>7} {'RTs':>5} {'cmds':>6} {'redis µs':>9} {'events':>7}"
    )
    print(header)
    print("-" * len(header))
    for case in CASES:
        for name, rows in (("etbridge", ours), ("naive", base)):
            r = rows[case]
            print(
                f"{case if name == 'etbridge' else '':<11} {name:>9} {r['cpu_ms_median']:>7.2f} "
                f"{r['round_trips']:>5.0f} {r['commands']:>6.0f} {r['redis_us']:>9.0f} "
                f"{r['events']:>7.0f}"
            )
        ratio = doc["naive_over_etbridge"][case]
        print(
            f"{'':<11} {'ratio':>9} {ratio['cpu']:>6.2f}x {ratio['round_trips']:>4.0f}x "
            "(naive / etbridge)"
        )
    m, ms, nm = (
        doc["etbridge"]["memory"],
        doc["etbridge"]["memory_small_org"],
        doc["naive"]["memory"],
    )
    raw = doc["raw_json_bytes_per_booking"]
    print()
    print(f"stored bytes per booking (raw JSON as served: {raw:.0f} B)")
    print(
        f"  etbridge, {m['bookings']} bookings ({hash_encodings(m)}): "
        f"{m['bytes_per_booking']:.0f} B = snap {m['snap_per_booking']:.0f} + "
        f"fp {m['fp_per_booking']:.0f} + dictionary {m['dictionary_per_booking']:.0f}"
        f"  -> {doc['stored_over_raw']:.2f} x raw"
    )
    print(
        f"  etbridge, {ms['bookings']} bookings ({hash_encodings(ms)}): "
        f"{ms['bytes_per_booking']:.0f} B  -> {doc['stored_over_raw_small_org']:.2f} x raw"
    )
    print(
        f"  naive (string per booking), {nm['bookings']} bookings: "
        f"{nm['bytes_per_booking']:.0f} B  -> {doc['naive_stored_over_raw']:.2f} x raw"
    )
    print("  layouts measured on the same records (bench only, for comparison):")
    for name, row in doc["layout_alternatives"].items():
        print(f"    {name:<50} {row['bytes_per_booking']:>6.0f} B  {row['over_raw']:.2f} x raw")
    print(
        f"  the same bookings, name and notes from {doc['vocabulary_words']:,} words "
        f"(raw JSON {doc['vocabulary_raw_json_bytes_per_booking']:.0f} B):"
    )
    for name, row in doc["layout_alternatives_large_vocabulary"].items():
        print(f"    {name:<50} {row['bytes_per_booking']:>6.0f} B  {row['over_raw']:.2f} x raw")
    w, wm = doc["etbridge_large_vocabulary"]["per_page"], doc["etbridge_large_vocabulary"]["memory"]
    print(
        f"  etbridge on them: unchanged page {w['unchanged']['cpu_ms_median']:.2f} ms CPU, "
        f"10 changes {w['10 changes']['cpu_ms_median']:.2f} ms, new {w['new']['cpu_ms_median']:.2f}"
        f" ms; {wm['bytes_per_booking']:.0f} B per booking "
        f"-> {doc['stored_over_raw_large_vocabulary']:.2f} x raw"
    )
    t = doc["targets"]
    print()
    names = {
        "unchanged_cpu_met": f"unchanged <= {t['unchanged_cpu_ms_max']} ms CPU",
        "unchanged_round_trips_met": "<= 2 RTs",
        "round_trip_ratio_met": ">= 10x fewer RTs",
        "stored_bytes_met": f"<= {t['stored_over_raw_max']}x raw",
        "large_vocabulary_unchanged_cpu_met": "large vocabulary: unchanged CPU",
        "large_vocabulary_stored_bytes_met": "large vocabulary: stored bytes",
    }
    print(
        "targets: "
        + "; ".join(f"{label}: {'met' if t[key] else 'MISSED'}" for key, label in names.items())
    )


if __name__ == "__main__":
    sys.exit(main())
