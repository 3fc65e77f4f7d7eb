"""ETBRIDGE_APPS_FILE: the applications' TOML, parsed once, with one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from etbridge import keys, runtime
from etbridge.apps import IMPLICIT_NAME
from etbridge.settings import SettingsError, load_settings

# The same clean environment (ETBRIDGE_CLIENT_ID and _SECRET set) as the settings' tests.
from tests.test_settings import clean_env

__all__ = ["clean_env"]  # an autouse fixture, used by being here

APP_SECRET = "acme-app-secret-987"
HOOK_KEY = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

TWO_APPS = f"""
[apps.acme]
client_id = "acme-client"
client_secret = "{APP_SECRET}"
orgs = [1001, "1002"]
rate_limit = 30
scope = "crm_read crm_manage"
sinks = ["redis-stream:acme:events", "https://u:pw@hooks.example/et?secret=crm"]
webhook_secrets = {{ crm = "{HOOK_KEY}" }}

[apps.globex]
client_id = "globex-client"
secret_file = "SECRET_FILE"
api_url = "http://127.0.0.1:9/"
sinks = "redis-stream:globex:events, https://hooks.example/g"
webhook_secret = "{HOOK_KEY}"
"""


def write_apps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> Path:
    secret = tmp_path / "globex.secret"
    secret.write_text("globex-file-secret\n")
    path = tmp_path / "apps.toml"
    path.write_text(text.replace("SECRET_FILE", str(secret)))
    monkeypatch.setenv("ETBRIDGE_APPS_FILE", str(path))
    return path


def test_without_the_file_one_implicit_application_of_the_settings() -> None:
    settings = load_settings()
    (app,) = settings.apps()
    assert app.name == IMPLICIT_NAME
    assert app.client_id == "client"
    assert app.client_secret is not None
    assert app.client_secret.get_secret_value() == "s3cret-value-xyz"
    assert (app.api_url, app.token_url) == (settings.api_url, settings.token_url)
    assert (app.rate_limit, app.orgs, app.discovery) == (100, [], True)
    assert [s.url for s in app.sinks] == ["redis-stream:etbridge:events"]
    # Its settings are the settings: nothing changes for a single application.
    assert app.settings(settings).model_dump() == settings.model_dump()
    # ... nor its Redis keys (etb:…, the layout of before).
    assert settings.app is None and app.settings(settings).app is None
    assert app.settings(settings).keyspace == settings.keyspace == keys.DEFAULT


def test_implicit_application_keeps_webhook_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETBRIDGE_SINKS", "https://hooks.example/x?secret=crm")
    monkeypatch.setenv("ETBRIDGE_WEBHOOK_SECRET_CRM", HOOK_KEY)
    monkeypatch.setenv("ETBRIDGE_ORGS", "12,34")
    settings = load_settings()
    (app,) = settings.apps()
    assert (app.orgs, app.discovery) == (["12", "34"], False)
    assert app.webhook_keys_for(app.sinks[0]) == (HOOK_KEY,)


def test_two_applications(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_apps(monkeypatch, tmp_path, TWO_APPS)
    settings = load_settings()
    acme, globex = settings.apps()
    assert acme.name == "acme"
    assert acme.orgs == ["1001", "1002"]
    assert (acme.discovery, acme.rate_limit, acme.scopes) == (False, 30, ("crm_read", "crm_manage"))
    assert acme.token_url == "https://api.eventtemple.com/oauth/token"
    assert acme.webhook_key_names == ("CRM",)
    assert acme.webhook_keys_for(acme.sinks[1]) == (HOOK_KEY,)
    assert globex.client_secret is not None
    assert globex.client_secret.get_secret_value() == "globex-file-secret"
    assert (globex.api_url, globex.token_url) == (
        "http://127.0.0.1:9",
        "http://127.0.0.1:9/oauth/token",
    )
    assert (globex.discovery, globex.rate_limit) == (True, 100)
    assert [s.key or s.target for s in globex.sinks] == ["globex:events", "https://hooks.example/g"]
    assert globex.webhook_key_names == ("default",)
    assert APP_SECRET not in repr(acme)
    # The single-application settings stay what the environment says.
    assert settings.client_id == "client"
    # An application's settings: its credentials, API, budget, orgs and sinks.
    as_globex = globex.settings(settings)
    assert as_globex.client_id == "globex-client"
    assert as_globex.client_secret.get_secret_value() == "globex-file-secret"
    assert (as_globex.api_url, as_globex.token_url) == (globex.api_url, globex.token_url)
    assert as_globex.webhook_keys_for(as_globex.sinks[1]) == (HOOK_KEY,)
    as_acme = acme.settings(settings)
    assert (as_acme.rate_limit, as_acme.orgs) == (30, ["1001", "1002"])
    assert as_acme.redis_url == settings.redis_url
    # Each its own Redis keyspace, named after the application.
    assert (as_acme.app, as_globex.app) == ("acme", "globex")
    assert as_acme.keyspace == keys.Keyspace("acme")
    assert as_acme.keyspace.orgs == "etb:app:acme:orgs"
    assert as_globex.keyspace.outbox("7") == "etb:app:globex:{org:7}:outbox"
    assert settings.keyspace == keys.DEFAULT


def test_named_webhook_key_falls_back_to_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    text = f"""
[apps.acme]
client_id = "acme-client"
client_secret = "{APP_SECRET}"
sinks = ["https://hooks.example/et?secret=shared"]
"""
    write_apps(monkeypatch, tmp_path, text)
    monkeypatch.setenv("ETBRIDGE_WEBHOOK_SECRET_SHARED", HOOK_KEY)
    (app,) = load_settings().apps()
    assert app.webhook_keys_for(app.sinks[0]) == (HOOK_KEY,)


GOOD = f'client_id = "acme-client"\nclient_secret = "{APP_SECRET}"\nsinks = "redis-stream:a"\n'


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('client_secret = "x"\nsinks = "redis-stream:a"', "app 'acme': client_id: is required"),
        (GOOD + 'secret_file = "/nope"', "app 'acme': client_secret|secret_file: give exactly one"),
        (
            GOOD.replace(f'client_secret = "{APP_SECRET}"', 'secret_file = "/nonexistent/s"'),
            "app 'acme': secret_file: cannot read '/nonexistent/s'",
        ),
        (GOOD + "rate_limit = 0", "app 'acme': rate_limit: Input should be greater than 0"),
        (GOOD + 'client_secert = "typo"', "app 'acme': client_secert: is not a known field"),
        (GOOD + 'orgs = ["1"]\ndiscovery = true', "app 'acme': orgs|discovery: list orgs"),
        (GOOD + "discovery = false", "app 'acme': orgs: no orgs listed and discovery is off"),
        (GOOD.replace("redis-stream:a", "ftp://x/y"), "app 'acme': sinks: unknown sink scheme"),
        (GOOD.replace('"redis-stream:a"', "[]"), "app 'acme': sinks: at least one sink URL"),
        (
            GOOD.replace("redis-stream:a", "https://h.example/x"),
            "app 'acme': webhook_secret: required by sink https://h.example/x",
        ),
        (
            GOOD.replace("redis-stream:a", "https://h.example/x") + 'webhook_secret = "nope"',
            "app 'acme': webhook_secret: the key is not a whsec_",
        ),
        (
            GOOD.replace("redis-stream:a", "https://h.example/x?secret=crm"),
            "app 'acme': webhook_secrets.CRM: is required but not set",
        ),
        (GOOD + 'api_url = "ftp://h"', "app 'acme': api_url: expected an http or https URL"),
        (GOOD + "client_secret = 5", "not valid TOML"),  # a key given twice
    ],
)
def test_mistakes_are_one_line_naming_the_app_and_field(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, table: str, expected: str
) -> None:
    write_apps(monkeypatch, tmp_path, f"[apps.acme]\n{table}\n")
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("configuration error: ETBRIDGE_APPS_FILE: "), message
    assert expected in message
    assert "\n" not in message
    assert APP_SECRET not in message
    assert "s3cret-value-xyz" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no applications"),
        ("[other]\nx = 1\n", "unknown top-level key 'other'"),
        (f"[apps.'Acme Corp']\n{GOOD}", "app 'Acme Corp': name: expected 1-40 lower-case"),
        (f"[apps.a]\n{GOOD}[apps.b]\n{GOOD}", "apps 'a' and 'b' have the same client_id"),
        (f'[apps.a]\nname = "b"\n{GOOD}', "app 'a': name: is the table's name"),
    ],
)
def test_file_level_mistakes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, expected: str
) -> None:
    write_apps(monkeypatch, tmp_path, text)
    with pytest.raises(SettingsError, match="ETBRIDGE_APPS_FILE: ") as info:
        load_settings()
    assert expected in str(info.value)
    assert APP_SECRET not in str(info.value)


def test_a_missing_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ETBRIDGE_APPS_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsError, match=r"ETBRIDGE_APPS_FILE: cannot read .*missing\.toml"):
        load_settings()


def test_with_the_file_client_id_and_secret_are_not_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ETBRIDGE_CLIENT_ID")
    monkeypatch.delenv("ETBRIDGE_CLIENT_SECRET")
    with pytest.raises(SettingsError) as missing:
        load_settings()
    assert str(missing.value) == (
        "configuration error: ETBRIDGE_CLIENT_ID: is required but not set; "
        "ETBRIDGE_CLIENT_SECRET: is required but not set"
    )
    write_apps(monkeypatch, tmp_path, TWO_APPS)
    settings = load_settings()
    assert [app.name for app in settings.apps()] == ["acme", "globex"]


def test_a_process_serves_every_application_of_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert runtime.served(load_settings()) == (None,)
    write_apps(monkeypatch, tmp_path, TWO_APPS)
    monkeypatch.setenv("ETBRIDGE_REDIS_URL", "redis://127.0.0.1:9/0")  # never connected here
    settings = load_settings()
    assert runtime.served(settings) == ("acme", "globex")
    acme, globex = runtime.every(settings)
    assert (acme.app, globex.app) == ("acme", "globex")
    assert acme.keyspace == keys.Keyspace("acme")
    assert acme.settings.rate_limit == 30
    assert acme.budget is not globex.budget and acme.tokens is not globex.tokens
    assert acme.redis is globex.redis  # one connection pool per process
    assert runtime.get(settings, "acme") is acme  # built once per process
    for unknown in (None, "initech"):
        with pytest.raises(runtime.UnknownApplication):
            runtime.get(settings, unknown)
