"""The ``etbridge`` command.

Subcommands: ``demo``, ``sandbox``, ``check``, ``apps list | check NAME | reload``, ``status``,
``console``, ``orgs``,
``resync ORG_ID``, ``dlq list``, ``dlq redeliver (ID… | --all)``,
``replay --sink SINK_URL --since TIME [--org ORG_ID]``, ``sink enable SINK``,
``dlq purge (ID… | --before TIME)``, ``events show EVENT_ID``,
``events list --org ORG --booking ID``, ``deletions list [ORG] | approve ORG | reject ORG``.

Operator mistakes (settings, bad arguments) print one line and exit non-zero,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import redis

from etbridge import redisconn
from etbridge.errors import AuthenticationError, EtbridgeError
from etbridge.settings import Settings, SettingsError, load_settings, parse_sink

if TYPE_CHECKING:
    from etbridge.apps import AppConfig


def _settings() -> Settings:
    return load_settings()


def _redis(settings: Settings) -> redis.Redis:
    return redisconn.connect(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)


def _parse_time(text: str) -> datetime:
    """ISO 8601 (``2026-11-27T10:00:00Z``) or a relative age (``90m``, ``2h``, ``7d``)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return datetime.now(UTC) - timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected ISO 8601 or an age like 2h, got {text!r}"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cmd_sandbox(argv: Sequence[str]) -> int:
    from etbridge.sandbox import main as sandbox_main

    return sandbox_main(list(argv))


def cmd_demo(args: argparse.Namespace) -> int:
    from etbridge import demo

    return demo.run(
        duration=args.duration,
        orgs=args.orgs,
        bookings=args.bookings,
        churn=args.churn,
        poll_interval=args.poll_interval,
    )


def cmd_check(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings.apps_file and not settings.client_id:
        print(
            "etbridge check: ETBRIDGE_APPS_FILE is set and ETBRIDGE_CLIENT_ID is not: "
            "check an application with `etbridge apps check NAME`",
            file=sys.stderr,
        )
        return 2
    return _check(settings, orgs_from="ETBRIDGE_ORGS")


def _check(settings: Settings, *, orgs_from: str) -> int:
    """Token, organizations and rate-limit headers of one application (never its secret)."""
    import requests

    from etbridge.auth import fetch_token
    from etbridge.client import EventTempleClient

    session = requests.Session()
    limits: dict[str, str] = {}

    def _remember_limits(resp: requests.Response, *_: object, **__: object) -> None:
        for name in ("X-Api-Request-Limit", "X-Api-Request-Remaining"):
            if name in resp.headers:
                limits[name] = resp.headers[name]

    session.hooks["response"].append(_remember_limits)
    print(f"api       {settings.api_url}")
    print(f"token url {settings.token_url}")
    print(f"client id {settings.client_id}  secret ***")
    try:
        token = fetch_token(settings, session)
    except AuthenticationError as exc:
        print(f"check failed: token request refused: {exc}", file=sys.stderr)
        return 1
    except EtbridgeError as exc:
        print(f"check failed: token endpoint unreachable: {exc}", file=sys.stderr)
        return 1
    print(f"token     ok, expires in {token.expires_in:.0f}s (value not shown)")

    class _Fixed(requests.auth.AuthBase):
        def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
            r.headers["Authorization"] = f"Bearer {token.access_token}"
            return r

    api = EventTempleClient(settings, auth=_Fixed(), session=session)
    try:
        orgs = api.organizations()
    except EtbridgeError as exc:
        print(f"check failed: organizations endpoint: {exc}", file=sys.stderr)
        return 1
    print(f"orgs      {len(orgs)}: " + ", ".join(f"{o.org_id} ({o.name})" for o in orgs))
    if limits:
        print(
            f"rate      limit {limits.get('X-Api-Request-Limit', '?')} per minute, "
            f"remaining {limits.get('X-Api-Request-Remaining', '?')}"
        )
        announced = limits.get("X-Api-Request-Limit", "")
        if announced.isdigit() and settings.rate_limit > int(announced):
            print(
                f"warning   the budget ({settings.rate_limit}/min) is above the API's limit "
                f"({announced}/min): expect 429s"
            )
    if settings.orgs:
        missing = sorted(set(settings.orgs) - {o.org_id for o in orgs})
        if missing:
            print(f"warning   {orgs_from} lists unknown orgs: {', '.join(missing)}")
    return 0


def cmd_apps(args: argparse.Namespace) -> int:
    settings = _settings()
    apps = settings.apps()
    if args.apps_command == "list":
        if settings.apps_file:
            print(f"{len(apps)} application(s) from ETBRIDGE_APPS_FILE ({settings.apps_file})")
        else:
            print("one application from ETBRIDGE_CLIENT_ID (ETBRIDGE_APPS_FILE is not set)")
        for app in apps:
            print()
            for line in _app_lines(app, settings):
                print(line)
        return 0
    if args.apps_command == "reload":
        return _reload(settings, apps)
    found = [app for app in apps if app.name == args.name]
    if not found:
        known = ", ".join(app.name for app in apps)
        print(f"apps check: no application named {args.name!r} (known: {known})", file=sys.stderr)
        return 2
    print(f"app       {args.name}")
    orgs_from = "ETBRIDGE_ORGS" if not settings.apps_file else f"app {args.name}'s orgs"
    return _check(found[0].settings(settings), orgs_from=orgs_from)


def _reload(settings: Settings, apps: tuple[AppConfig, ...]) -> int:
    """The file was read and checked with the settings (a mistake: exit 2 before this)."""
    from etbridge import appsreload, runtime

    if not settings.apps_file:
        print("apps reload: ETBRIDGE_APPS_FILE is not set (nothing to reload)", file=sys.stderr)
        return 2
    generation = appsreload.bump(runtime.connect_redis(settings))
    names = ", ".join(app.name for app in apps)
    print(
        f"reloaded {len(apps)} application(s) from ETBRIDGE_APPS_FILE: {names} "
        f"(generation {generation}; workers and beat follow within "
        f"{appsreload.CHECK_EVERY:g} s of their next task)"
    )
    return 0


def _app_lines(app: AppConfig, settings: Settings) -> list[str]:
    """``apps list``'s block for one application: no secret, sink URLs masked."""
    if app.orgs:
        orgs = ", ".join(app.orgs)
    else:
        orgs = f"discovery (every {settings.discovery_interval:.0f}s)"
    lines = [
        app.name,
        f"  api         {app.api_url}",
        f"  token url   {app.token_url}",
        f"  client id   {app.client_id}  secret ***"
        + (f" (from {app.secret_file})" if app.secret_file else ""),
        f"  scope       {app.scope}",
        f"  orgs        {orgs}",
        f"  rate limit  {app.rate_limit} per minute",
    ]
    for index, sink in enumerate(app.sinks):
        lines.append(f"  {'sinks' if index == 0 else '':<11} {sink.display}")
    if app.webhook_key_names:
        lines.append(f"  webhooks    keys {', '.join(app.webhook_key_names)} (values not shown)")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    from etbridge import status

    settings = _settings()
    client = _redis(settings)
    doc = status.document(client, settings)
    print(
        json.dumps(doc, indent=None if args.json else 2, sort_keys=True)
        if args.json
        else status.render_document(doc)
    )
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    from etbridge import console

    try:
        return console.serve(_settings(), args.host, args.port)
    except console.ConsoleError as exc:
        print(f"etbridge: {exc}", file=sys.stderr)
        return 2


def cmd_orgs(args: argparse.Namespace) -> int:
    from etbridge import state

    settings = _settings()
    registry = state.known_orgs(_redis(settings), settings.keyspace)
    if settings.orgs:
        print("configured (ETBRIDGE_ORGS):")
        for org_id in settings.orgs:
            print(f"  {org_id}")
        return 0
    print("discovered:" if registry else "none discovered yet (the planner discovers them)")
    for org_id, facts in registry.items():
        gone = "  (gone from the organizations endpoint)" if "removed_at" in facts else ""
        print(f"  {org_id}  {facts.get('name', '')}{gone}")
    return 0


def cmd_resync(args: argparse.Namespace) -> int:
    from etbridge import planstore

    settings = _settings()
    client = _redis(settings)
    for resource in settings.resources:
        planstore.request_resync(client, settings.keyspace, args.org_id, resource)
    print(f"org {args.org_id}: the next poll is a full sweep")
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    from etbridge import state, stateformat

    settings = _settings()
    client = _redis(settings)
    orgs = sorted(set(state.known_orgs(client, settings.keyspace)) | set(settings.orgs))
    print(f"waiting {args.wait:.0f} s for every process to read the new format ...")
    removed = stateformat.finish_upgrade(
        client, settings.keyspace, orgs, settings.resources, settle=args.wait
    )
    print(f"state format 3 only: {removed} pre-format-3 digest hashes removed")
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from etbridge import outbox

    settings = _settings()
    client = _redis(settings)
    if args.dlq_command == "list":
        for line in outbox.dlq_lines(client, settings):
            print(line)
        return 0
    if args.dlq_command == "purge":
        if bool(args.ids) == (args.before is not None):
            print("dlq purge: name event ids, or --before TIME (not both)", file=sys.stderr)
            return 2
        purged = outbox.dlq_purge(client, settings, args.ids or None, before=args.before)
        print(f"purged {purged} dead letter(s)")
        return 0
    if not args.ids and not args.all:
        print("dlq redeliver: name event ids, or --all", file=sys.stderr)
        return 2
    count = outbox.dlq_redeliver(client, settings, None if args.all else list(args.ids))
    print(f"redelivered {count} event(s)")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from etbridge import outbox

    settings = _settings()
    try:
        sink = parse_sink(args.sink)
    except ValueError as exc:
        print(f"replay: --sink: {exc}", file=sys.stderr)
        return 2
    count = outbox.replay(_redis(settings), settings, sink, args.since, args.org)
    print(f"replayed {count} event(s) to {sink.display}")
    return 0


def cmd_deletions(args: argparse.Namespace) -> int:
    from etbridge import holds, state

    settings = _settings()
    client = _redis(settings)
    if args.deletions_command == "list":
        org_ids = (
            [args.org]
            if args.org
            else list(settings.orgs) or list(state.known_orgs(client, settings.keyspace))
        )
        found = 0
        for resource in settings.resources:
            for org_id, hold in holds.read_many(
                client, settings.keyspace, org_ids, resource
            ).items():
                if hold is None:
                    continue
                found += 1
                since = datetime.fromtimestamp(hold.since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                line = (
                    f"{org_id}  {resource}  held {hold.count} of {hold.stored} stored  "
                    f"reason={hold.reason}  since={since}"
                )
                if hold.approved_ids:
                    line += f"  approved ({len(hold.approved_ids)}; the next sweep applies it)"
                print(line)
                if args.org:
                    print("  ids: " + " ".join(hold.ids))
        if not found:
            print("no deletions held" + (f" for org {args.org}" if args.org else ""))
        return 0
    verb = args.deletions_command
    done = 0
    for resource in settings.resources:
        hold = (holds.approve if verb == "approve" else holds.reject)(
            client, settings.keyspace, args.org, resource
        )
        if hold is None:
            continue
        done += 1
        if verb == "approve":
            print(
                f"org {args.org} {resource}: {hold.count} held deletions approved; the next "
                "sweep (requested now) announces those still missing from the listing"
            )
        else:
            print(
                f"org {args.org} {resource}: hold of {hold.count} dropped, the bookings stay "
                "stored; a sweep that misses them again holds them again"
            )
    if not done:
        print(f"deletions {verb}: org {args.org} has no held deletions", file=sys.stderr)
        return 1
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    from etbridge import outbox

    settings = _settings()
    try:
        outbox.enable_sink(_redis(settings), settings, args.sink)
    except (KeyError, ValueError) as exc:
        print(f"sink enable: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    print(f"sink {args.sink}: enabled; delivery resumes with the event it stopped at")
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from etbridge.outbox import attempts

    settings = _settings()
    client = _redis(settings)
    if args.events_command == "show":
        lines = attempts.show_lines(client, settings, args.event_id, args.org)
        if lines is None:
            print(f"events show: no retained event has id {args.event_id}", file=sys.stderr)
            return 1
    else:
        lines = attempts.history_lines(
            client, settings.keyspace, args.org, args.booking, args.limit
        )
        if not lines:
            print(f"no retained event of booking {args.booking} in org {args.org}")
    for line in lines:
        print(line)
    return 0


# One add_argument per option: long, not complex.
def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915
    parser = argparse.ArgumentParser(
        prog="etbridge", description="Event Temple change events over Celery and Redis."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole pipeline against the sandbox, live")
    demo.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    demo.add_argument("--orgs", type=int, default=3)
    demo.add_argument("--bookings", type=int, default=40)
    demo.add_argument("--churn", type=float, default=0.5, help="sandbox mutations per second")
    demo.add_argument("--poll-interval", type=float, default=5.0)
    demo.set_defaults(func=cmd_demo)

    sub.add_parser("sandbox", help="serve the local Event Temple (see --help)", add_help=False)

    check = sub.add_parser("check", help="fetch a token and list the organizations")
    check.set_defaults(func=cmd_check)

    apps = sub.add_parser("apps", help="the Event Temple applications (ETBRIDGE_APPS_FILE)")
    apps_sub = apps.add_subparsers(dest="apps_command", required=True)
    apps_sub.add_parser("list", help="each application: API, orgs, budget, sinks (no secrets)")
    apps_check = apps_sub.add_parser("check", help="as `etbridge check`, for one application")
    apps_check.add_argument("name")
    apps_sub.add_parser(
        "reload", help="check the file and have workers and beat read it again (no restart)"
    )
    apps.set_defaults(func=cmd_apps)

    st = sub.add_parser("status", help="orgs, token, budget, outbox and sinks (reads Redis)")
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.set_defaults(func=cmd_status)

    console = sub.add_parser("console", help="the fleet, orgs and sinks in a browser")
    console.add_argument("--host", default="127.0.0.1", help="other than loopback: a token")
    console.add_argument("--port", type=int, default=8090)
    console.set_defaults(func=cmd_console)
    orgs = sub.add_parser("orgs", help="configured or discovered orgs")
    orgs.set_defaults(func=cmd_orgs)

    resync = sub.add_parser("resync", help="make the next poll of an org a full sweep")
    resync.add_argument("org_id")
    resync.set_defaults(func=cmd_resync)

    st_ = sub.add_parser("state", help="the stored state's format (upgrades)")
    st_sub = st_.add_subparsers(dest="state_command", required=True)
    finish = st_sub.add_parser(
        "finish-upgrade",
        help="every worker runs this version: stop keeping the pre-format-3 digests, drop them",
    )
    finish.add_argument(
        "--wait", type=float, default=31.0, help="seconds for every process to see it (31)"
    )
    st_.set_defaults(func=cmd_state)

    dlq = sub.add_parser("dlq", help="dead-lettered events")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_sub.add_parser("list", help="one line per dead-lettered event, id first")
    redeliver = dlq_sub.add_parser("redeliver", help="send dead-lettered events again")
    redeliver.add_argument("ids", nargs="*")
    redeliver.add_argument("--all", action="store_true")
    purge = dlq_sub.add_parser("purge", help="drop dead letters for good")
    purge.add_argument("ids", nargs="*", help="event ids")
    purge.add_argument("--before", type=_parse_time, help="those that failed before: ISO or 7d")
    dlq.set_defaults(func=cmd_dlq)

    sink = sub.add_parser("sink", help="manage sinks")
    sink_sub = sink.add_subparsers(dest="sink_command", required=True)
    enable = sink_sub.add_parser("enable", help="re-enable a disabled sink (410 Gone, or failing)")
    enable.add_argument("sink", help="the sink's URL (as in ETBRIDGE_SINKS) or its name")
    sink.set_defaults(func=cmd_sink)

    dele = sub.add_parser("deletions", help="deletions held by the mass-delete guard")
    dele_sub = dele.add_subparsers(dest="deletions_command", required=True)
    dl = dele_sub.add_parser("list", help="one line per org with held deletions")
    dl.add_argument("org", nargs="?", default=None, help="one org (its held ids too)")
    for verb, text in (
        ("approve", "announce the held deletions (those still missing at the next sweep)"),
        ("reject", "drop the hold and keep the bookings"),
    ):
        dele_sub.add_parser(verb, help=text).add_argument("org")
    dele.set_defaults(func=cmd_deletions)

    events = sub.add_parser("events", help="retained change events and their attempts")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    show = events_sub.add_parser("show", help="an event and its delivery attempts per sink")
    show.add_argument("event_id")
    show.add_argument("--org", default=None, help="its org (faster when given)")
    history = events_sub.add_parser("list", help="a booking's change events, newest first")
    history.add_argument("--org", required=True)
    history.add_argument("--booking", required=True)
    history.add_argument("--limit", type=int, default=100)
    events.set_defaults(func=cmd_events)

    replay = sub.add_parser("replay", help="re-send retained events to a sink (same ids)")
    replay.add_argument("--sink", required=True, help="a sink URL, e.g. redis-stream:KEY")
    replay.add_argument("--since", required=True, type=_parse_time, help="ISO 8601 or 2h, 7d")
    replay.add_argument("--org", default=None)
    replay.set_defaults(func=cmd_replay)
    return parser


_REDIS_AUTH = "etbridge: Redis refused the password in ETBRIDGE_REDIS_URL (authentication failed)"


# One exit code per command.
def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sandbox"]:
        # The sandbox reads no settings: it is the API, not a client of it.
        return cmd_sandbox(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except SettingsError as exc:
        print(f"etbridge: {exc}", file=sys.stderr)
        return 2
    except redis.exceptions.AuthenticationError:
        print(_REDIS_AUTH, file=sys.stderr)
        return 1
    except (redis.exceptions.ConnectionError, redis.exceptions.RedisClusterException) as exc:
        # RedisClusterException: no seed node of a redis+cluster:// URL answered.
        # A Sentinel's "No master found for 'SVC' : <client repr…>": the reason only.
        reason = str(exc).split(" : <", 1)[0]
        print(f"etbridge: cannot reach Redis (ETBRIDGE_REDIS_URL): {reason}", file=sys.stderr)
        return 1
    except redis.exceptions.ResponseError as exc:
        if "AUTH" in str(exc).upper():
            print(_REDIS_AUTH, file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
