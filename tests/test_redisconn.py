"""redisconn: the Redis URL forms, what the settings derive from them, their one-line errors."""

from __future__ import annotations

import pytest

from etbridge import cli, redisconn
from etbridge.redisserver import free_port
from etbridge.settings import SettingsError, load_settings

BASE = {"_env_file": None, "client_id": "c", "client_secret": "s"}


def test_sentinel_url_names_hosts_service_db_and_passwords() -> None:
    target = redisconn.parse(
        "redis+sentinel://:p%40ss@10.0.0.1:26379,10.0.0.2:26380/mymaster/3?sentinel_password=sp"
    )
    assert target.kind == "sentinel"
    assert target.hosts == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert (target.service, target.db) == ("mymaster", 3)
    assert (target.password, target.sentinel_password, target.tls) == ("p@ss", "sp", False)
    assert redisconn.parse("rediss+sentinel://h:1/svc").tls
    assert redisconn.parse("redis+sentinel://h:1/svc").db == 0


def test_tls_forms_carry_the_ssl_options_of_rediss() -> None:
    target = redisconn.parse(
        "rediss+sentinel://:pw@h:1/svc/0?sentinel_password=sp&ssl_cert_reqs=required"
        "&ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false&other=x"
    )
    assert target.tls_kwargs() == {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_check_hostname": False,
    }
    cluster = redisconn.parse("rediss+cluster://a:1/?ssl_certfile=/c.pem&ssl_keyfile=/k.pem")
    assert cluster.tls_kwargs() == {"ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem"}


def test_cluster_url_names_its_seed_nodes() -> None:
    target = redisconn.parse("redis+cluster://:pw@a:7000,b:7001/")
    assert (target.kind, target.hosts, target.password) == (
        "cluster",
        (("a", 7000), ("b", 7001)),
        "pw",
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://h:1/", "expected redis+sentinel://"),
        ("redis+sentinel://h:1/svc/x", "expected redis+sentinel://"),
        ("redis+sentinel://h/svc/0", "HOST:PORT"),
        ("redis+cluster://a:1/2", "db 0 only"),
        ("redis+cluster://a:1,b/", "HOST:PORT"),
        ("memcached://h:1", "expected a redis, rediss"),
        ("redis+sentinel://h:1/svc?ssl_ca_certs=/ca.pem", "need a rediss+sentinel://"),
        ("rediss+sentinel://h:1/svc?ssl_cert_reqs=maybe", "ssl_cert_reqs must be"),
        ("rediss+cluster://a:1/?ssl_check_hostname=perhaps", "ssl_check_hostname must be"),
    ],
)
def test_bad_urls_say_why_in_one_line(url: str, reason: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(**BASE, redis_url=url)
    message = str(info.value)
    assert "ETBRIDGE_REDIS_URL" in message and reason in message and "\n" not in message


def test_sentinel_state_derives_a_kombu_sentinel_broker() -> None:
    settings = load_settings(**BASE, redis_url="redis+sentinel://:pw@h1:1,h2:2/etb/4")
    assert settings.broker_url == "sentinel://:pw@h1:1;sentinel://:pw@h2:2/4"
    assert redisconn.broker_transport_options(settings.redis_url, settings.broker_url) == {
        "master_name": "etb"
    }
    assert redisconn.broker_transport_options("redis://h:1/0", "redis://h:1/0") == {}


def test_a_cluster_needs_an_explicit_broker() -> None:
    with pytest.raises(SettingsError, match="ETBRIDGE_BROKER_URL: a Redis Cluster cannot be"):
        load_settings(**BASE, redis_url="redis+cluster://a:1/")
    settings = load_settings(**BASE, redis_url="redis+cluster://a:1/", broker_url="amqp://h//")
    assert settings.broker_url == "amqp://h//"


def test_wait_replicas_is_refused_on_a_cluster() -> None:
    with pytest.raises(SettingsError, match="ETBRIDGE_REDIS_WAIT_REPLICAS: not supported"):
        load_settings(
            **BASE, redis_url="redis+cluster://a:1/", broker_url="amqp://h//", redis_wait_replicas=1
        )
    assert load_settings(**BASE, redis_url="redis+sentinel://h:1/s/0", redis_wait_replicas=1)


def test_a_sentinel_broker_needs_the_service_name_of_sentinel_state() -> None:
    with pytest.raises(SettingsError, match="ETBRIDGE_BROKER_URL: a sentinel:// broker"):
        load_settings(**BASE, redis_url="redis://h:1/0", broker_url="sentinel://h:2")


def test_errors_never_carry_the_password() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(**BASE, redis_url="redis+sentinel://:hunter2@h:1/")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://:hunter2@127.0.0.1:{port}/svc/0", "No master found for 'svc'"),
        ("redis+cluster://:hunter2@127.0.0.1:{port}/", "Redis Cluster cannot be connected"),
    ],
)
def test_the_cli_names_an_unreachable_engine_in_one_line(
    url: str, reason: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {
        "ETBRIDGE_CLIENT_ID": "c",
        "ETBRIDGE_CLIENT_SECRET": "s",
        "ETBRIDGE_REDIS_URL": url.format(port=free_port()),
        "ETBRIDGE_BROKER_URL": "memory://",
    }.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["status"]) == 1
    err = capsys.readouterr().err
    assert reason in err and "hunter2" not in err and err.count("\n") == 1
