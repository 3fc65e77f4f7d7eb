"""Plumbing of the fault suite (tests/faults/): a fleet under churn, bad things, a verdict.

A :class:`FaultRun` is one sandbox, one private Redis with AOF (so a test may
restart or kill it), a fleet of real ``celery worker`` processes and a beat,
and optionally a loopback webhook receiver. A scenario waits for the baseline,
starts churn, does its bad things, then calls :meth:`FaultRun.settle`: churn
and faults off, and a deadline within which every sink must match the
sandbox's truth (tests/support/grader.py). :meth:`FaultRun.check_api` then
checks the sandbox's counters: no request with an expired token, never more
requests in a window than the limit.

Copies: delivery is at-least-once. A worker killed between a sink's accept and
the ``XACK`` (or a Redis restart at that moment) legitimately sends a copy
again, with the same id and the same content. Scenarios that kill workers or
Redis pass ``copies_allowed=True``: copies must be exact (all but
``detected_at``, and ``time`` of deleted events), are collapsed before
grading, and are counted in :attr:`FaultRun.copies`. Elsewhere a second
event with one id is a failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis
from celery import Celery

from etbridge import keys, redisconn, replies
from etbridge.redisserver import RedisServer, free_port
from etbridge.settings import parse_sink
from tests.support.fleet import Fleet, Proc, fleet, fleet_env, read_sink, wait_for
from tests.support.grader import grade
from tests.support.receiver import Receiver, _Handler, _Server
from tests.support.replies import stream_events
from tests.support.sandbox import Sandbox

log = logging.getLogger("tests.faults")

STREAM_KEY = "test:events"
STREAM_SINK = f"redis-stream:{STREAM_KEY}"
WEBHOOK_SECRET = "whsec_ZmF1bHQtc3VpdGUtd2ViaG9vay1rZXktMDEyMzQ1"
# What a bad day's API looks like (issue 9): rates per /v2 request.
BAD_DAY = {
    "error_500": 0.1,
    "html_502": 0.05,
    "truncated": 0.05,
    "slow": 0.05,
    "slow_seconds": 1.5,
    "storm_429": 0.03,
    "storm_retry_after": 2,
}
FAULTS_OFF = {"error_500": 0, "html_502": 0, "truncated": 0, "slow": 0, "storm_429": 0}


# ---------------------------------------------------------------------------
# A webhook receiver that can go down and come back on the same port


class RestartableReceiver(Receiver):
    """A :class:`Receiver` bound to a fixed port, so :meth:`stop` then :meth:`start`
    is an outage (connection refused) and a recovery at the same URL.

    What arrived is kept across restarts.
    """

    def __init__(self, secret: str, *, port: int | None = None, path: str = "/hook") -> None:
        super().__init__(secret, path=path)
        self.port = port or free_port()

    def start(self) -> RestartableReceiver:
        self._stopping.clear()
        self._released.clear()
        self._server = _Server((self.host, self.port), _Handler)
        self._server.receiver = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    def delivered_envelopes(self) -> list[dict[str, Any]]:
        """Envelopes of the verified, 2xx-answered requests, in arrival order."""
        return [a.envelope for a in self.delivered() if a.envelope is not None]


# ---------------------------------------------------------------------------
# Grading helpers


def _content(event: dict[str, Any]) -> str:
    """An event without what may differ between copies (contract: detected_at; time of
    deleted and schema events, which is a detection time)."""
    copy = json.loads(json.dumps(event))
    copy.get("data", {}).pop("detected_at", None)
    if str(copy.get("type", "")).endswith((".deleted", "schema.changed")):
        copy.pop("time", None)
    return json.dumps(copy, sort_keys=True)


def collapse_copies(
    events: Sequence[dict[str, Any]],
) -> tuple[list[dict[str, Any]], int, list[str]]:
    """First arrivals in order, the number of copies dropped, and problems
    (two events with one id that differ in content)."""
    first: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    copies = 0
    problems: list[str] = []
    for event in events:
        content = _content(event)
        seen = first.get(event["id"])
        if seen is None:
            first[event["id"]] = content
            out.append(event)
            continue
        copies += 1
        if seen != content:
            problems.append(f"event id {event['id']} carried two different contents")
    return out, copies, problems


class HasUrl(Protocol):
    """A Redis deployment the fleet runs on (a Sentinel set, a cluster: tests/support/engines)."""

    @property
    def url(self) -> str: ...


@dataclass
class Kill:
    """One SIGKILL the scenario did."""

    at: float
    name: str
    doing: list[str]


@dataclass
class FaultRun:
    """One scenario's world; built by :func:`fault_run`."""

    sandbox: Sandbox
    redis_server: RedisServer | HasUrl
    fleet: Fleet
    env: dict[str, str]
    limit: int
    logdir: Path
    receiver: RestartableReceiver | None = None
    concurrency: int = 2
    copies: dict[str, int] = field(default_factory=dict)
    kills: list[Kill] = field(default_factory=list)
    _inspector: Celery | None = None

    # -- sinks -------------------------------------------------------------------------

    def client(self) -> redis.Redis:
        return redisconn.connect(self.redis_server.url, socket_timeout=10)

    def sink_events(self) -> dict[str, list[dict[str, Any]]]:
        """What each sink holds, in arrival order."""
        with contextlib.closing(self.client()) as client:
            out = {"stream": read_sink(client, STREAM_KEY)}
        if self.receiver is not None:
            out["webhook"] = self.receiver.delivered_envelopes()
        return out

    def problems(self, *, copies_allowed: bool) -> list[str]:
        """Everything wrong with the sinks against the truth now (empty: all is right).

        Copies in a sink may come from a delivery cut short (allowed with
        ``copies_allowed``); a copy in an org's outbox would mean a change was
        committed twice, which nothing allows.
        """
        truth = self.sandbox.truth()
        found = self.outbox_problems()
        for name, received in self.sink_events().items():
            events = received
            if copies_allowed:
                events, copies, bad = collapse_copies(received)
                self.copies[name] = copies
                found += [f"{name}: {p}" for p in bad]
            found += [f"{name}: {p}" for p in grade(events, truth)]
        return found

    def outbox_problems(self) -> list[str]:
        """Event ids committed more than once to an org's outbox."""
        found: list[str] = []
        with contextlib.closing(self.client()) as client:
            for raw in client.hkeys(keys.DEFAULT.orgs):
                org_id = replies.text(raw)
                ids = [env["id"] for env in stream_events(client, keys.DEFAULT.outbox(org_id))]
                if len(set(ids)) != len(ids):
                    found.append(f"outbox of org {org_id}: an event committed twice")
        return found

    def dead_letters(self) -> int:
        with contextlib.closing(self.client()) as client:
            return sum(
                int(client.xlen(keys.DEFAULT.dead_letters(parse_sink(url).name)))
                for url in self.env["ETBRIDGE_SINKS"].split(",")
            )

    # -- phases --------------------------------------------------------------------------

    def wait_baseline(self, timeout: float = 90.0) -> None:
        """Every booking has its ``snapshot`` in every sink."""
        self._wait_right(timeout, "the baseline snapshots in every sink", copies_allowed=False)

    def settle(self, timeout: float, *, copies_allowed: bool = False) -> float:
        """Stop churn and faults, then wait until every sink matches the truth.

        Returns the seconds it took; raises with the problems and the fleet's logs.
        """
        self.sandbox.churn(0)
        self.sandbox.faults(**FAULTS_OFF)
        started = time.monotonic()
        self._wait_right(timeout, "every sink to match the truth", copies_allowed=copies_allowed)
        return time.monotonic() - started

    def _wait_right(self, timeout: float, what: str, *, copies_allowed: bool) -> None:
        problems: list[str] = []

        def right() -> bool:
            try:
                problems[:] = self.problems(copies_allowed=copies_allowed)
            except redis.ConnectionError as exc:  # Redis restarting under the test
                problems[:] = [f"redis: {exc}"]
            return not problems

        try:
            wait_for(right, timeout, what, interval=1.0)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}: {len(problems)} problems, e.g. {problems[:6]}\n"
                f"kills: {[(k.name, k.doing) for k in self.kills]}\n{self.fleet.logs()}"
            ) from None

    def check_api(self, *, exempt_windows: Sequence[int] = ()) -> dict[str, Any]:
        """The sandbox's counters: no expired token served, no window over the limit."""
        counters = self.sandbox.counters()
        assert counters["expired_token_requests"] == 0, counters["unauthorized_by_reason"]
        exempt = {str(w) for w in exempt_windows}
        over = {
            w: n
            for w, n in counters["requests_per_window"].items()
            if n > self.limit and w not in exempt
        }
        assert not over, f"windows over the limit of {self.limit}: {over}"
        if not exempt:
            assert counters["served_429"] == 0, counters["served_429"]
        return counters

    def check_logs(self) -> None:
        """No secret in anything a fleet process printed: the client secret, the
        webhook key, the token the fleet holds now."""
        secrets = [
            self.sandbox.client_secret,
            WEBHOOK_SECRET,
            WEBHOOK_SECRET.removeprefix("whsec_"),
        ]
        with contextlib.closing(self.client()) as client:
            for key in client.scan_iter(match=f"{keys.ROOT}:token:*"):
                if client.type(key) == b"hash" and (token := client.hget(key, "token")):
                    secrets.append(replies.text(token))
        for proc in self.fleet.procs:
            text = proc.output()
            leaked = [s[:4] + "…" for s in secrets if s in text]
            assert not leaked, f"{proc.name} logged a secret: {leaked}"

    # -- bad things ----------------------------------------------------------------------

    def workers(self) -> list[Proc]:
        return [p for p in self.fleet.procs if p.name.startswith("worker") and p.alive()]

    def active_tasks(self) -> dict[str, list[str]]:
        """Worker name -> names of the tasks it runs right now (Celery remote control)."""
        if self._inspector is None:
            self._inspector = Celery("fault-inspector", broker=self.redis_server.url)
            self._inspector.conf.broker_connection_retry_on_startup = True
        try:
            replies = self._inspector.control.inspect(timeout=1.0).active() or {}
        except Exception as exc:  # a broker hiccup: no information this time
            log.warning("inspect failed: %s", exc)
            return {}
        return {
            host.split("@", 1)[0]: [str(task.get("name")) for task in tasks]
            for host, tasks in replies.items()
        }

    def kill_a_worker(self, prefer: str, rng: random.Random, search: float = 6.0) -> Kill:
        """SIGKILL a worker that runs a ``prefer`` task right now, and start a replacement.

        Asks the workers what they run for up to ``search`` seconds; then settles
        for any busy worker, else any worker.
        """
        deadline = time.monotonic() + search
        while True:
            workers = self.workers()
            active = self.active_tasks()
            preferred = [p for p in workers if prefer in active.get(p.name, [])]
            busy = [p for p in workers if active.get(p.name)]
            if preferred or time.monotonic() > deadline:
                break
        victim = rng.choice(preferred or busy or workers)
        doing = active.get(victim.name, [])
        victim.kill()
        kill = Kill(time.monotonic(), victim.name, doing)
        self.kills.append(kill)
        self.fleet.worker(concurrency=self.concurrency)
        return kill

    def close(self) -> None:
        if self._inspector is not None:
            self._inspector.close()
            self._inspector = None


@contextlib.contextmanager
def fault_run(  # noqa: PLR0913  (keyword-only knobs, all defaulted)
    logdir: Path,
    redis_server: RedisServer | HasUrl,
    *,
    orgs: int = 3,
    bookings: int = 30,
    seed: int = 1,
    rate_limit: int = 600,
    token_ttl: int = 7200,
    workers: int = 2,
    concurrency: int = 2,
    receiver: RestartableReceiver | None = None,
    **env_overrides: str,
) -> Iterator[FaultRun]:
    """A sandbox, a fleet on ``redis_server`` and, optionally, a webhook sink; torn down after."""
    sinks = [STREAM_SINK] + ([receiver.url] if receiver is not None else [])
    with Sandbox.start(
        orgs=orgs, bookings=bookings, seed=seed, rate_limit=rate_limit, token_ttl=token_ttl
    ) as sandbox:
        env = fleet_env(
            sandbox,
            redis_server.url,
            ETBRIDGE_EMIT_BASELINE="true",
            ETBRIDGE_RATE_LIMIT=str(rate_limit),
            ETBRIDGE_SINKS=",".join(sinks),
            ETBRIDGE_WEBHOOK_SECRET=WEBHOOK_SECRET,
            # The relay's reclaim timeout is this + 30 s: a killed delivery comes back sooner.
            ETBRIDGE_WEBHOOK_TIMEOUT="2",
            ETBRIDGE_POLL_INTERVAL="2",
            ETBRIDGE_SWEEP_INTERVAL="10",
            ETBRIDGE_LOG_LEVEL="INFO",
        )
        env.update(env_overrides)
        with fleet(env, logdir) as f:
            run = FaultRun(
                sandbox=sandbox,
                redis_server=redis_server,
                fleet=f,
                env=env,
                limit=rate_limit,
                logdir=logdir,
                receiver=receiver,
                concurrency=concurrency,
            )
            try:
                for _ in range(workers):
                    f.worker(concurrency=concurrency)
                f.beat()
                yield run
            finally:
                run.close()
