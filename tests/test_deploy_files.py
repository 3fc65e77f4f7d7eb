"""The deploy files: Procfile, docker/Dockerfile, docker/compose.yaml.

No Docker engine runs here, so the files are parsed and checked for what they
promise, and the commands they run are run for real: Redis with the compose
flags, the sandbox, worker and beat with the compose commands, and the
Dockerfile's healthcheck against that worker.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from etbridge.redisserver import find_server_binary, free_port
from tests.support.fleet import Proc, read_sink, wait_for

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return doc


def procfile() -> dict[str, list[str]]:
    out = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            out[name.strip()] = shlex.split(command)
    return out


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


# --- Dockerfile ------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions per stage, continuation lines joined: [[(INSTRUCTION, args), ...], ...]."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    stages: list[list[tuple[str, str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        assert stages, f"instruction before FROM: {line}"
        stages[-1].append((instruction, args.strip()))
    return stages


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a build stage and a runtime stage"
    final = stages[-1]
    base = final[0][1].split()[0]
    assert base.startswith("python:3.11") and "slim" in base
    for stage in stages:
        assert "latest" not in stage[0][1], "pinned base images"
    instructions = [i for i, _ in final]
    users = [args for i, args in final if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runs as a non-root user"
    assert users[-1].split(":")[0].isdigit(), "numeric user (Kubernetes runAsNonRoot)"
    assert instructions.index("USER") > max(
        n for n, i in enumerate(instructions) if i in ("RUN", "COPY")
    ), "USER comes after every RUN/COPY of the final stage"
    # No build tools in the final image: nothing compiled or installed there.
    runs = " ".join(args for i, args in final if i == "RUN")
    for tool in ("gcc", "build-essential", "make", "pip install", "apt-get install", "git"):
        assert tool not in runs, f"{tool!r} in the final stage"
    copies = [args for i, args in final if i == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), "only built artefacts"
    assert any(i == "HEALTHCHECK" for i in instructions)
    cmd = json.loads(next(args for i, args in final if i == "CMD"))
    assert cmd == procfile()["worker"], "the image's default command is the Procfile's worker"


def healthcheck_command() -> str:
    args = next(a for i, a in dockerfile_stages()[-1] if i == "HEALTHCHECK")
    return args.split(" CMD ", 1)[1].strip()


def test_healthcheck_pings_this_worker() -> None:
    command = healthcheck_command()
    assert command.startswith("celery -A etbridge.worker inspect ping")
    assert '--destination "celery@$HOSTNAME"' in command
    assert re.search(r"--timeout \d+", command)


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in lines and "!etbridge/" in lines and "!pyproject.toml" in lines


# --- compose.yaml ------------------------------------------------------------------------


def test_compose_services_commands_and_healthchecks() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) >= {"redis", "worker", "beat", "sandbox"}
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[0] == "redis-server"
    flags = dict(zip(redis_cmd[1::2], redis_cmd[2::2], strict=True))
    assert flags["--appendonly"] == "yes" and flags["--appendfsync"] == "everysec"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    procs = procfile()
    assert services["worker"]["command"] == procs["worker"]
    assert services["beat"]["command"] == procs["beat"]
    worker = services["worker"]
    # Scalable with --scale: no fixed name, no host port binding.
    assert "container_name" not in worker and "ports" not in worker
    assert "healthcheck" not in worker, "the worker keeps the image's HEALTHCHECK"
    assert services["beat"]["healthcheck"] == {"disable": True}
    for name in ("worker", "beat"):
        svc = services[name]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["environment"]["ETBRIDGE_REDIS_URL"] == "redis://redis:6379/0"
        assert svc["build"]["dockerfile"] == "docker/Dockerfile"
        files = [e["path"] for e in svc["env_file"]]
        assert files == ["./sandbox.env", "../.env"], "the operator's .env overrides the defaults"
        assert "ETBRIDGE_CLIENT_SECRET" not in svc["environment"], "credentials come from files"
    assert services["sandbox"]["profiles"] == ["sandbox"]
    assert services["sandbox"]["command"][:2] == ["etbridge", "sandbox"]
    sandbox_env = env_file(DOCKER / "sandbox.env")
    assert sandbox_env["ETBRIDGE_API_URL"] == "http://sandbox:8000"
    assert "redis-data" in doc["volumes"]


# --- the commands, run for real ------------------------------------------------------------


def _compose_command(service: str) -> list[str]:
    command: list[str] = list(compose()["services"][service]["command"])
    if command[0] in ("celery", "etbridge"):
        command[0] = str(BIN / command[0])
    return command


def test_compose_redis_command_runs_with_aof(tmp_path: Path) -> None:
    command = _compose_command("redis")
    command[0] = find_server_binary()
    port = free_port()
    command += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, socket_timeout=2)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.exceptions.ConnectionError:
                return False

        wait_for(up, 20, "the compose redis command")
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        client.set("k", "v")
        health = subprocess.run(
            ["redis-cli", "-p", str(port), "ping"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert health.stdout.strip() == "PONG"
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_compose_commands_run_a_pipeline_and_pass_the_healthcheck(
    redis_url: str, tmp_path: Path
) -> None:
    services = compose()["services"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETBRIDGE_")}
    env.pop("SENTRY_DSN", None)
    env.update(env_file(DOCKER / "sandbox.env"))
    env.update({k: str(v) for k, v in services["worker"]["environment"].items()})
    env["PYTHONUNBUFFERED"] = "1"
    # Loopback instead of the compose network; everything else as in the file.
    port = free_port()
    sandbox_cmd = _compose_command("sandbox")
    sandbox_cmd[sandbox_cmd.index("--port") + 1] = str(port)
    sandbox_cmd[sandbox_cmd.index("--host") + 1] = "127.0.0.1"
    env.update(
        ETBRIDGE_REDIS_URL=redis_url,
        ETBRIDGE_API_URL=f"http://127.0.0.1:{port}",
        ETBRIDGE_METRICS_PORT=str(free_port()),
        ETBRIDGE_POLL_INTERVAL="2",
        ETBRIDGE_EMIT_BASELINE="true",
    )
    beat_cmd = [*_compose_command("beat"), "--schedule", str(tmp_path / "beat-schedule")]
    procs = [
        Proc("sandbox", sandbox_cmd, env, tmp_path),
        Proc("worker", _compose_command("worker"), env, tmp_path),
        Proc("beat", beat_cmd, env, tmp_path),
    ]
    client = redis.Redis.from_url(redis_url)
    try:
        wait_for(lambda: "listening on" in procs[0].output(), 60, "the sandbox")
        wait_for(lambda: len(read_sink(client, "etbridge:events")) >= 3 * 50, 90, "baselines")
        # The image's HEALTHCHECK, as Docker runs it (/bin/sh -c, $HOSTNAME set).
        health_env = dict(env, HOSTNAME=socket.gethostname(), PATH=f"{BIN}:{env['PATH']}")
        health = subprocess.run(
            ["/bin/sh", "-c", healthcheck_command()],
            env=health_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert health.returncode == 0, health.stdout + health.stderr
        assert "pong" in health.stdout
        for proc in procs:
            assert proc.alive(), proc.output()[-2000:]
    finally:
        for proc in reversed(procs):
            proc.stop()
        client.close()
