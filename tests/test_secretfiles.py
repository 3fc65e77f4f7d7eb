"""Secrets from files: ``NAME_FILE``, ``ETBRIDGE_SECRETS_DIR``, dynamically named secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from etbridge.settings import SettingsError, load_settings, read_secrets, secret_variables
from tests.support.sandbox import Sandbox

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FERNET = "ZmDfcTF7_60GrrY167zsiPd67pEvs0aGOv2oasOM1Pg="


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("ETBRIDGE_") or name.startswith("SENTRY_DSN"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file
    monkeypatch.setenv("ETBRIDGE_CLIENT_ID", "client")


def secret_file(tmp_path: Path, name: str, content: str) -> str:
    path = tmp_path / name
    path.write_text(content)
    return str(path)


def test_the_secret_settings_are_the_ones_expected() -> None:
    assert set(secret_variables().values()) == {
        "ETBRIDGE_CLIENT_SECRET",
        "ETBRIDGE_WEBHOOK_SECRET",
        "ETBRIDGE_TOKEN_ENCRYPTION_KEY",
        "SENTRY_DSN",
        "ETBRIDGE_CONSOLE_TOKEN",
        "ETBRIDGE_REDIS_URL",
        "ETBRIDGE_BROKER_URL",
        "ETBRIDGE_SINKS",
    }


def test_every_secret_setting_reads_name_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values = {
        "ETBRIDGE_CLIENT_SECRET": "from-a-file \n",  # inner and trailing spaces are the value's
        "ETBRIDGE_WEBHOOK_SECRET": WHSEC,
        "ETBRIDGE_TOKEN_ENCRYPTION_KEY": FERNET,
        "SENTRY_DSN": "https://key@sentry.example/1",
        "ETBRIDGE_REDIS_URL": "redis://:pw@10.0.0.9:6379/3",
        "ETBRIDGE_BROKER_URL": "redis://:pw@10.0.0.9:6379/4",
        "ETBRIDGE_SINKS": "https://hooks.example/in?token=abc",
    }
    for name, value in values.items():
        # Kubernetes and `echo` leave one trailing newline: it is not part of the secret.
        monkeypatch.setenv(name + "_FILE", secret_file(tmp_path, name, value + "\n"))
    s = load_settings()
    assert s.client_secret.get_secret_value() == "from-a-file \n"
    assert s.webhook_secret is not None and s.webhook_secret.get_secret_value() == WHSEC
    assert s.token_encryption_key is not None
    assert s.token_encryption_key.get_secret_value() == FERNET
    assert s.sentry_dsn is not None
    assert s.sentry_dsn.get_secret_value() == "https://key@sentry.example/1"
    assert s.redis_url == "redis://:pw@10.0.0.9:6379/3"
    assert s.broker_url == "redis://:pw@10.0.0.9:6379/4"
    assert [sink.target for sink in s.sinks] == ["https://hooks.example/in?token=abc"]


def test_crlf_and_no_newline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ETBRIDGE_CLIENT_SECRET_FILE", secret_file(tmp_path, "a", "s3cret\r\n"))
    assert load_settings().client_secret.get_secret_value() == "s3cret"
    monkeypatch.setenv("ETBRIDGE_CLIENT_SECRET_FILE", secret_file(tmp_path, "b", "s3cret"))
    assert load_settings().client_secret.get_secret_value() == "s3cret"


def test_name_file_from_the_dotenv_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "cs", "dotenv-secret\n")
    (tmp_path / ".env").write_text(f"ETBRIDGE_CLIENT_SECRET_FILE={path}\n")
    assert load_settings().client_secret.get_secret_value() == "dotenv-secret"


def test_the_environment_wins_over_the_dotenv_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("ETBRIDGE_CLIENT_SECRET=dotenv-value\n")
    monkeypatch.setenv("ETBRIDGE_CLIENT_SECRET_FILE", secret_file(tmp_path, "cs", "env-file\n"))
    assert load_settings().client_secret.get_secret_value() == "env-file"


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing", "ETBRIDGE_CLIENT_SECRET_FILE: cannot read"),
        ("directory", "ETBRIDGE_CLIENT_SECRET_FILE: cannot read"),
        ("unreadable", "ETBRIDGE_CLIENT_SECRET_FILE: cannot read"),
        ("both", "ETBRIDGE_CLIENT_SECRET_FILE: ETBRIDGE_CLIENT_SECRET is set too"),
        ("bad_dir", "ETBRIDGE_SECRETS_DIR:"),
    ],
)
def test_file_mistakes_are_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, setup: str, expected: str
) -> None:
    path = tmp_path / "client-secret"
    if setup == "missing":
        monkeypatch.setenv("ETBRIDGE_CLIENT_SECRET_FILE", str(path))
    elif setup == "directory":
        path.mkdir()
        monkeypatch.setenv("ETBRIDGE_CLIENT_SECRET_FILE", str(path))
    elif setup == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        path.write_text("s3cret-value-xyz")
        path.chmod(0)
        monkeypatch.setenv("ETBRIDGE_CLIENT_SECRET_FILE", str(path))
    elif setup == "both":
        path.write_text("s3cret-value-xyz")
        monkeypatch.setenv("ETBRIDGE_CLIENT_SECRET_FILE", str(path))
        monkeypatch.setenv("ETBRIDGE_CLIENT_SECRET", "s3cret-value-xyz")
    else:
        monkeypatch.setenv("ETBRIDGE_CLIENT_SECRET", "s3cret-value-xyz")
        monkeypatch.setenv("ETBRIDGE_SECRETS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("configuration error: " + expected), message
    assert "\n" not in message
    assert "s3cret-value-xyz" not in message


def kubernetes_secret_volume(root: Path, files: dict[str, str]) -> Path:
    """The layout kubelet writes: NAME -> ..data/NAME, ..data -> a timestamped directory."""
    root.mkdir()
    stamped = root / "..2026_12_02_00_00_00.000000001"
    stamped.mkdir()
    for name, value in files.items():
        (stamped / name).write_text(value)
        (root / name).symlink_to(f"..data/{name}")
    (root / "..data").symlink_to(stamped.name)
    return root


def test_secrets_dir_reads_a_kubernetes_secret_volume(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    volume = kubernetes_secret_volume(
        tmp_path / "secrets",
        {"ETBRIDGE_CLIENT_SECRET": "mounted\n", "ETBRIDGE_WEBHOOK_SECRET": WHSEC},
    )
    monkeypatch.setenv("ETBRIDGE_SECRETS_DIR", str(volume))
    s = load_settings()
    assert s.client_secret.get_secret_value() == "mounted"
    assert s.webhook_secret is not None and s.webhook_secret.get_secret_value() == WHSEC
    # A variable set in the environment wins over the directory.
    monkeypatch.setenv("ETBRIDGE_CLIENT_SECRET", "from-env")
    assert load_settings().client_secret.get_secret_value() == "from-env"


def test_dynamically_named_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    volume = kubernetes_secret_volume(
        tmp_path / "secrets", {"etbridge_webhook_secret_billing": WHSEC + "\n"}
    )
    monkeypatch.setenv("ETBRIDGE_SECRETS_DIR", str(volume))
    monkeypatch.setenv("ETBRIDGE_WEBHOOK_SECRET_CRM", "whsec_crm")
    monkeypatch.setenv("ETBRIDGE_WEBHOOK_SECRET_PMS_FILE", secret_file(tmp_path, "p", "whsec_p\n"))
    monkeypatch.setenv("ETBRIDGE_WEBHOOK_SECRET_FILE", secret_file(tmp_path, "d", "whsec_d\n"))
    found = {k: v.get_secret_value() for k, v in read_secrets("ETBRIDGE_WEBHOOK_SECRET_").items()}
    assert found == {
        "ETBRIDGE_WEBHOOK_SECRET_BILLING": WHSEC,
        "ETBRIDGE_WEBHOOK_SECRET_CRM": "whsec_crm",
        "ETBRIDGE_WEBHOOK_SECRET_PMS": "whsec_p",
    }
    monkeypatch.setenv("ETBRIDGE_WEBHOOK_SECRET_GONE_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="ETBRIDGE_WEBHOOK_SECRET_GONE_FILE: cannot read"):
        read_secrets("ETBRIDGE_WEBHOOK_SECRET_")


# --- through real processes --------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=1, bookings=5, seed=5, rate_limit=10_000) as sb:
        yield sb


def process_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETBRIDGE_", "SENTRY_DSN"))}
    env.update(extra)
    return env


def test_check_gets_a_token_with_the_secret_from_a_file(
    sandbox: Sandbox, redis_url: str, tmp_path: Path
) -> None:
    env = process_env(
        ETBRIDGE_CLIENT_ID=sandbox.client_id,
        ETBRIDGE_CLIENT_SECRET_FILE=secret_file(tmp_path, "cs", sandbox.client_secret + "\n"),
        ETBRIDGE_API_URL=sandbox.url,
        ETBRIDGE_REDIS_URL_FILE=secret_file(tmp_path, "redis", redis_url + "\n"),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "etbridge", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "expires in" in proc.stdout
    assert sandbox.client_secret not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "etbridge", "status"],
        [sys.executable, "-m", "celery", "-A", "etbridge.worker", "worker", "--pool", "solo"],
        [sys.executable, "-m", "celery", "-A", "etbridge.worker", "beat"],
    ],
)
def test_entry_points_name_the_missing_file(argv: list[str], tmp_path: Path) -> None:
    env = process_env(
        ETBRIDGE_CLIENT_ID="client",
        ETBRIDGE_CLIENT_SECRET_FILE=str(tmp_path / "not-mounted"),
    )
    proc = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
    )
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert "ETBRIDGE_CLIENT_SECRET_FILE: cannot read" in err[0]
    assert "not-mounted" in err[0]
    assert "Traceback" not in proc.stderr
