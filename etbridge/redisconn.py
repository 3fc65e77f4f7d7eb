"""The one place that turns ``ETBRIDGE_REDIS_URL`` into a Redis client.

Forms (docs/scaling.md, README): ``redis://``, ``rediss://`` and ``unix://``
(one server); ``redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT…]/SERVICE/DB``
(``rediss+sentinel://`` for TLS): the master of SERVICE as the sentinels name
it, followed across failovers; ``redis+cluster://[:PASSWORD@]HOST:PORT[,…]/``
(``rediss+cluster://``): a Redis Cluster, db 0 only. The TLS forms take the
``ssl_*`` query options of ``rediss://`` (:data:`TLS_OPTIONS`), for sentinels
and data nodes alike. :func:`parse` is pure (the
settings call it to validate); :func:`connect` builds the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

SINGLE = ("redis", "rediss", "unix")
SENTINEL = ("redis+sentinel", "rediss+sentinel")
CLUSTER = ("redis+cluster", "rediss+cluster")
SCHEMES = SINGLE + SENTINEL + CLUSTER
FORM_SENTINEL = "redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT…]/SERVICE/DB"
FORM_CLUSTER = "redis+cluster://[:PASSWORD@]HOST:PORT[,HOST:PORT…]/"
# TLS options of a rediss+sentinel:// or rediss+cluster:// URL's query, as for rediss://
# (redis-py's names); they apply to the sentinels and to the data nodes alike.
TLS_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
_CERT_REQS = ("none", "optional", "required")
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


@dataclass(frozen=True)
class Target:
    """What a Redis URL names (never printed: it may hold the password)."""

    kind: str  # "single", "sentinel" or "cluster"
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    password: str | None = None
    sentinel_password: str | None = None
    tls: bool = False
    tls_options: tuple[tuple[str, str], ...] = ()

    def tls_kwargs(self) -> dict[str, Any]:
        """The URL's TLS options as redis-py connection keyword arguments."""
        out: dict[str, Any] = dict(self.tls_options)
        if "ssl_check_hostname" in out:
            out["ssl_check_hostname"] = _BOOLS[out["ssl_check_hostname"].lower()]
        return out


def _tls_options(query: dict[str, list[str]], tls: bool) -> tuple[tuple[str, str], ...]:
    found = tuple((name, query[name][0]) for name in TLS_OPTIONS if name in query)
    if found and not tls:
        raise ValueError("ssl_… options need a rediss+sentinel:// or rediss+cluster:// URL")
    values = dict(found)
    if values.get("ssl_cert_reqs", "required").lower() not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
    if values.get("ssl_check_hostname", "true").lower() not in _BOOLS:
        raise ValueError("ssl_check_hostname must be true or false")
    return found


def _hosts(netloc: str) -> tuple[tuple[str, int], ...]:
    out = []
    for item in netloc.rpartition("@")[2].split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:  # noqa: PLR2004
            raise ValueError("each address must be HOST:PORT")
        out.append((host.strip("[]"), int(port)))
    return tuple(out)


def parse(url: str) -> Target:
    """The target of ``url``; ``ValueError`` with a one-line reason (no secrets)."""
    scheme = url.partition("://")[0].lower()
    if scheme in SINGLE:
        return Target("single", url)
    if scheme not in SENTINEL + CLUSTER:
        raise ValueError(f"expected a {', '.join(SCHEMES)} URL")
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password else None
    hosts = _hosts(parts.netloc)
    tls = scheme.startswith("rediss")
    query = parse_qs(parts.query)
    tls_options = _tls_options(query, tls)
    segments = [s for s in parts.path.split("/") if s]
    if scheme in CLUSTER:
        if segments and segments != ["0"]:
            raise ValueError(f"a cluster has db 0 only: expected {FORM_CLUSTER}")
        return Target("cluster", url, hosts, password=password, tls=tls, tls_options=tls_options)
    # /SERVICE or /SERVICE/DB
    if len(segments) not in (1, 2) or not all(s.isdigit() for s in segments[1:]):
        raise ValueError(f"expected {FORM_SENTINEL}")
    sentinel_password = query.get("sentinel_password", [None])[0]
    db = int(segments[1]) if segments[1:] else 0
    return Target(
        "sentinel", url, hosts, segments[0], db, password, sentinel_password, tls, tls_options
    )


def connect(url: str, **options: Any) -> redis.Redis:
    """A client of ``url``; ``options`` are redis-py connection options (timeouts…).

    A cluster client is typed as :class:`redis.Redis`: etbridge only uses the
    commands, scripts and non-transactional pipelines both have.
    """
    target = parse(url)
    if target.kind == "single":
        return redis.Redis.from_url(url, **options)
    if target.kind == "cluster":
        # Not cluster options: it retries timeouts itself and checks its nodes.
        options.pop("health_check_interval", None)
        options.pop("retry_on_timeout", None)
        cluster = RedisCluster(
            startup_nodes=[
                ClusterNode(h, p)  # type: ignore[no-untyped-call]
                for h, p in target.hosts
            ],
            password=target.password,
            ssl=target.tls,
            **target.tls_kwargs(),
            **options,
        )
        return cluster  # type: ignore[return-value]
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": options.get("socket_connect_timeout", 5),
        "ssl": target.tls,
        **target.tls_kwargs(),
    }
    if target.sentinel_password:
        sentinel_kwargs["password"] = target.sentinel_password
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.hosts),
        sentinel_kwargs=sentinel_kwargs,
        ssl=target.tls,
        **target.tls_kwargs(),
        **options,
    )
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        target.service, db=target.db, password=target.password, ssl=target.tls
    )
    return master


def broker_url(url: str) -> str:
    """The Celery broker URL for state at ``url`` (kombu's ``sentinel://`` for a Sentinel
    set); ``ValueError`` for a cluster, which cannot be a Celery broker."""
    target = parse(url)
    if target.kind == "single":
        return url
    if target.kind == "cluster":
        raise ValueError("a Redis Cluster cannot be the Celery broker: set it explicitly")
    if target.tls:
        raise ValueError("no broker URL is derived for TLS to a Sentinel set: set it explicitly")
    auth = f":{urlsplit(url).password}@" if target.password else ""
    nodes = ";".join(f"sentinel://{auth}{h}:{p}" for h, p in target.hosts)
    return f"{nodes}/{target.db}"


def broker_transport_options(redis_url: str, broker: str) -> dict[str, Any]:
    """Transport options a ``sentinel://`` broker needs: the service name of ``redis_url``."""
    if not broker.startswith("sentinel://"):
        return {}
    target = parse(redis_url)
    options: dict[str, Any] = {"master_name": target.service}
    if target.sentinel_password:
        options["sentinel_kwargs"] = {"password": target.sentinel_password}
    return options


def queue_time(client: redis.Redis, pipe: Any) -> tuple[int, int] | None:
    """Queue ``TIME`` on ``pipe``; a cluster's pipelines refuse it, so ask it now there.

    Returns the (seconds, µs) read now, or None: then ``TIME`` is the first reply of ``pipe``.
    """
    if isinstance(client, RedisCluster):
        seconds, micros = client.time()
        return int(seconds), int(micros)
    pipe.time()
    return None
