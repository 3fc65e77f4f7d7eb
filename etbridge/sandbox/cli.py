"""``etbridge sandbox`` / ``python -m etbridge.sandbox``: run the sandbox on uvicorn."""

from __future__ import annotations

import argparse
import importlib.util
import socket
from collections.abc import Callable, Sequence

import uvicorn

from etbridge.sandbox.app import create_app
from etbridge.sandbox.config import AppSpec, SandboxConfig, parse_app


def _whole_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}")
        return value

    parse.__name__ = "integer"
    return parse


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _app(text: str) -> AppSpec:
    try:
        return parse_app(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_app.__name__ = "application"


def build_parser(prog: str = "etbridge sandbox") -> argparse.ArgumentParser:
    """The command line of docs/sandbox.md (plus --log-level and --access-log)."""
    defaults = SandboxConfig()
    parser = argparse.ArgumentParser(
        prog=prog, description="Serve a local, faithful Event Temple API for tests and demos."
    )
    parser.add_argument(
        "--port", type=_whole_at_least(0), required=True, help="0 picks a free port"
    )
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--orgs", type=_whole_at_least(0), default=defaults.orgs)
    parser.add_argument(
        "--bookings", type=_whole_at_least(0), default=defaults.bookings, help="per org"
    )
    parser.add_argument(
        "--contacts", type=_whole_at_least(0), default=defaults.contacts, help="per org"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--token-ttl", type=_whole_at_least(1), default=defaults.token_ttl, help="seconds"
    )
    parser.add_argument(
        "--rate-limit",
        type=_whole_at_least(1),
        default=defaults.rate_limit,
        help="requests per minute per application",
    )
    parser.add_argument(
        "--churn", type=_non_negative, default=defaults.churn, help="mutations/s over all orgs"
    )
    parser.add_argument("--client-id", default=defaults.client_id)
    parser.add_argument("--client-secret", default=defaults.client_secret)
    parser.add_argument(
        "--app",
        dest="apps",
        action="append",
        type=_app,
        default=[],
        metavar="CLIENT_ID:SECRET[:ORGS[:RATE_LIMIT]]",
        help="serve this application (repeatable; replaces --client-id/--client-secret); "
        "ORGS: ids like 1001,1002 or * for all; RATE_LIMIT: its requests per minute",
    )
    parser.add_argument(
        "--log-level",
        default=defaults.log_level,
        choices=["critical", "error", "warning", "info", "debug"],
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log every request (off by default)"
    )
    return parser


def parse_config(argv: Sequence[str] | None = None) -> SandboxConfig:
    """Parse the command line into a :class:`SandboxConfig` (exits on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    client_ids = [app.client_id for app in args.apps]
    if len(set(client_ids)) != len(client_ids):
        parser.error("argument --app: two applications have the same client id")
    return SandboxConfig(
        host=args.host,
        port=args.port,
        orgs=args.orgs,
        bookings=args.bookings,
        contacts=args.contacts,
        seed=args.seed,
        token_ttl=args.token_ttl,
        rate_limit=args.rate_limit,
        churn=args.churn,
        client_id=args.client_id,
        client_secret=args.client_secret,
        log_level=args.log_level,
        access_log=args.access_log,
        apps=tuple(args.apps),
    )


class _AnnouncingServer(uvicorn.Server):
    """A uvicorn server that prints ``sandbox listening on URL`` once it accepts."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"sandbox listening on http://{shown}:{port}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the sandbox until SIGINT/SIGTERM; returns the exit status."""
    config = parse_config(argv)
    app = create_app(config)
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    server = _AnnouncingServer(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            http=http,
            lifespan="on",
            # uvicorn closes idle keep-alive connections after 5 s by default, which
            # races with clients reusing them; API servers keep them far longer.
            timeout_keep_alive=75,
            log_level=config.log_level,
            access_log=config.access_log,
            # The admin API trusts loopback peers; a forwarded header must not fake one.
            proxy_headers=False,
            timeout_graceful_shutdown=5,
        )
    )
    try:
        server.run()
    except KeyboardInterrupt:
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0 if server.started else 1
