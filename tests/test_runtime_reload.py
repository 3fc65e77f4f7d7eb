"""Following ``etbridge apps reload`` in one process (runtime.refresh), on a real Redis.

A new generation makes the process read the file again: applications added
are served, removed ones retired (no polls; their outbox still delivered),
changed ones rebuilt. A bad file is logged once and keeps the last good
applications; without the file nothing is read and Redis is not asked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from etbridge import appsreload, runtime
from etbridge.settings import Settings
from tests.test_status import make_settings


def table(name: str, rate_limit: int = 100) -> str:
    return (
        f'[apps.{name}]\nclient_id = "{name}-id"\nclient_secret = "{name}-secret-1234"\n'
        f'rate_limit = {rate_limit}\norgs = ["1001"]\nsinks = "redis-stream:{name}:events"\n'
    )


@pytest.fixture
def setup(redis_url: str, tmp_path: Path) -> tuple[Settings, Path, redis.Redis]:
    path = tmp_path / "apps.toml"
    path.write_text(table("a") + table("b"))
    return make_settings(redis_url, apps_file=str(path)), path, redis.Redis.from_url(redis_url)


def test_a_new_generation_adds_retires_and_rebuilds(
    setup: tuple[Settings, Path, redis.Redis],
) -> None:
    settings, path, client = setup
    assert runtime.refresh(settings, force=True)  # the first look reads the file
    first_a = runtime.get(settings, "a")
    path.write_text(table("a", rate_limit=50) + table("c"))
    assert not runtime.refresh(settings, force=True)  # no reload yet: nothing changes
    assert runtime.served(settings) == ("a", "b")
    appsreload.bump(client)
    assert not runtime.refresh(settings)  # looked less than CHECK_EVERY ago
    assert runtime.refresh(settings, force=True)
    assert runtime.served(settings) == ("a", "c")
    assert runtime.retired(settings) == ("b",)
    with pytest.raises(runtime.UnknownApplication, match="removed"):
        runtime.get(settings, "b")
    retired_b = runtime.get(settings, "b", retired=True)
    assert retired_b.keyspace.prefix == "etb:app:b"
    new_a = runtime.get(settings, "a")
    assert new_a is not first_a and new_a.settings.rate_limit == 50
    runtime.forget(settings, "b")
    assert runtime.retired(settings) == ()
    # b added back: served again; c removed in turn is retired.
    path.write_text(table("a") + table("b"))
    appsreload.bump(client)
    assert runtime.refresh(settings, force=True)
    assert runtime.served(settings) == ("a", "b")
    assert runtime.retired(settings) == ("c",)


def test_a_bad_file_keeps_the_last_good_applications(
    setup: tuple[Settings, Path, redis.Redis], caplog: pytest.LogCaptureFixture
) -> None:
    settings, path, client = setup
    runtime.refresh(settings, force=True)
    path.write_text(table("a") + table("b", rate_limit=0).replace("b-secret", "hidden"))
    appsreload.bump(client)
    for _ in range(3):
        assert not runtime.refresh(settings, force=True)
    assert runtime.served(settings) == ("a", "b")
    refused = [r for r in caplog.records if "not reloaded" in r.getMessage()]
    assert len(refused) == 1
    assert refused[0].levelname == "ERROR"
    assert "app 'b': rate_limit" in refused[0].getMessage()
    assert "hidden" not in caplog.text
    # Fixed (no new reload needed for the same generation): read at the next look.
    path.write_text(table("a"))
    assert runtime.refresh(settings, force=True)
    assert runtime.served(settings) == ("a",)


def test_without_the_file_nothing_is_read(redis_url: str) -> None:
    settings = make_settings(redis_url)
    redis.Redis.from_url(redis_url).set(appsreload.GENERATION, "7")
    assert not runtime.refresh(settings, force=True)
    assert runtime.served(settings) == (None,)
