"""The Helm chart (deploy/helm/etbridge): schema checks, its promises, and a fleet run from it.

No cluster runs here, so the chart is rendered (tests.support.helmlite), each
manifest validated against the Kubernetes schemas, and the worker and beat
containers it describes are started as real processes with the environment,
secret files and arguments the manifests give them.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from etbridge import keys
from etbridge.redisserver import free_port
from etbridge.settings import secret_variables
from tests.support import deploycheck
from tests.support.fleet import Proc, read_sink, wait_for
from tests.support.helmlite import TemplateError, manifests, render_chart
from tests.support.sandbox import Sandbox

CHART = deploycheck.CHART


def render(values: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(kind, name): manifest}``."""
    docs = manifests(render_chart(CHART, values))
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_chart_and_compose_pass_the_schema_checks() -> None:
    assert deploycheck.check_chart() == []
    assert deploycheck.check_compose() == []
    assert deploycheck.main() == 0


def test_the_checks_catch_mistakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(deploycheck.SCENARIOS["everything"])
    worker = copy.deepcopy(docs[("Deployment", "etbridge-worker")])
    worker["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}  # a typo
    assert any("livenessprobe" in p for p in deploycheck.validate_manifest(worker))
    scaled = copy.deepcopy(docs[("ScaledObject", "etbridge-worker")])
    scaled["spec"]["maxReplicas"] = 3  # KEDA's field is maxReplicaCount
    assert deploycheck.validate_manifest(scaled)
    unknown = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}}
    assert any("no schema" in p for p in deploycheck.validate_manifest(unknown))
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  worker:\n    image: x\n    stop_grace_perod: 30s\n")  # a typo
    monkeypatch.setattr(deploycheck, "COMPOSE", bad)
    assert deploycheck.check_compose()


def test_chart_refuses_contradictions() -> None:
    with pytest.raises(TemplateError, match="ETBRIDGE_CLIENT_ID is required"):
        render({})
    both = {
        **deploycheck.REQUIRED,
        "worker": {"autoscaling": {"enabled": True}, "keda": {"enabled": True}},
    }
    with pytest.raises(TemplateError, match="enable one of them"):
        render(both)


def container(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]["template"]["spec"]
    (only,) = spec["containers"]
    return dict(only)


def test_chart_keeps_its_promises() -> None:
    values: dict[str, Any] = copy.deepcopy(deploycheck.REQUIRED)
    values["secrets"] = {"keys": sorted(secret_variables().values())}
    with pytest.raises(TemplateError, match=r"ETBRIDGE_SINKS is in both config and secrets\.keys"):
        render(values)  # NAME and NAME_FILE together would stop the pods
    values["config"]["ETBRIDGE_SINKS"] = None  # null removes a default, as with helm
    docs = render(values)
    config = docs[("ConfigMap", "etbridge")]["data"]
    assert config["ETBRIDGE_CLIENT_ID"] == "example-client"
    for name in ("etbridge-worker", "etbridge-beat"):
        deployment = docs[("Deployment", name)]
        pod = deployment["spec"]["template"]["spec"]
        box = container(deployment)
        ports = {p["name"]: p["containerPort"] for p in box["ports"]}
        assert ports["health"] == int(config["ETBRIDGE_HEALTH_PORT"])
        assert box["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
        assert box["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert box["securityContext"]["readOnlyRootFilesystem"] is True
        assert box["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"name": "tmp", "mountPath": "/tmp"} in box["volumeMounts"]
        assert box["resources"]["requests"] and box["resources"]["limits"]
        # Every secret comes from the mounted Secret through NAME_FILE, none from the env.
        env = {e["name"]: e["value"] for e in box["env"]}
        for variable in secret_variables().values():
            assert env[variable + "_FILE"] == f"/etc/etbridge/secrets/{variable}"
            assert variable not in env and variable not in config
        assert box["envFrom"] == [{"configMapRef": {"name": "etbridge"}}]
    worker = docs[("Deployment", "etbridge-worker")]
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(config["ETBRIDGE_SHUTDOWN_GRACE"])
    assert docs[("Deployment", "etbridge-beat")]["spec"]["replicas"] == 2
    assert docs[("PodDisruptionBudget", "etbridge-worker")]["spec"]["maxUnavailable"] == 1
    assert ("HorizontalPodAutoscaler", "etbridge-worker") not in docs
    assert ("ScaledObject", "etbridge-worker") not in docs
    assert ("ServiceMonitor", "etbridge-worker") not in docs

    everything = render(deploycheck.SCENARIOS["everything"])
    scaled = everything[("ScaledObject", "etbridge-worker")]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == "poll"
    assert "replicas" not in everything[("Deployment", "etbridge-worker")]["spec"]
    monitor = everything[("ServiceMonitor", "etbridge-worker")]
    service = everything[("Service", "etbridge-worker-metrics")]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    hpa = render(deploycheck.SCENARIOS["hpa"])[("HorizontalPodAutoscaler", "etbridge-worker")]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


# --- the rendered containers, run for real ---------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=2, bookings=20, seed=7, rate_limit=10_000) as sb:
        yield sb


def process(
    doc: dict[str, Any], config: dict[str, str], secret_dir: Path, tmp: Path
) -> tuple[list[str], dict[str, str]]:
    """argv and environment of the container, as the kubelet would start it."""
    box = container(doc)
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp)}
    env.update(config)
    mount = next(m["mountPath"] for m in box["volumeMounts"] if m["name"] == "secrets")
    for item in box["env"]:
        env[item["name"]] = item["value"].replace(mount, str(secret_dir))
    args = list(box["args"])
    assert args[0] == "celery"
    return [sys.executable, "-m", "celery", *args[1:]], env


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except Exception:
        return 0, {}


def test_the_rendered_worker_and_beat_run_a_fleet(
    sandbox: Sandbox, redis_url: str, tmp_path: Path, r: redis.Redis
) -> None:
    health_port = free_port()
    values = {
        "config": {
            "ETBRIDGE_CLIENT_ID": sandbox.client_id,
            "ETBRIDGE_API_URL": sandbox.url,
            "ETBRIDGE_POLL_INTERVAL": "2",
        },
        "healthPort": health_port,
        "metricsPort": free_port(),
        "worker": {"concurrency": 1},
    }
    docs = render(values)
    config = docs[("ConfigMap", "etbridge")]["data"]
    # The Secret the operator created, as the kubelet mounts it.
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    (secret_dir / "ETBRIDGE_CLIENT_SECRET").write_text(sandbox.client_secret + "\n")
    (secret_dir / "ETBRIDGE_REDIS_URL").write_text(redis_url + "\n")
    procs = []
    try:
        for name in ("worker", "beat"):
            doc = docs[("Deployment", f"etbridge-{name}")]
            (tmp_path / name).mkdir()
            argv, env = process(doc, config, secret_dir, tmp_path / name)
            if name == "beat":
                env["ETBRIDGE_HEALTH_PORT"] = str(free_port())  # two pods, one host here
            procs.append((Proc(name, argv, env, tmp_path), int(env["ETBRIDGE_HEALTH_PORT"])))
        for proc, port in procs:
            _code, doc = wait_for(
                lambda p=port: (x := probe(p, "/readyz"))[0] == 200 and x, 90, f"{proc.name} ready"
            )
            assert doc["status"] == "ok"
        wait_for(
            lambda: all(
                r.hget(keys.DEFAULT.org_meta(o, "bookings"), "baselined") == b"1"
                for o in ("1001", "1002")
            ),
            90,
            "both orgs baselined",
        )
        changed = {m["id"] for m in sandbox.mutate(count=3, kinds=["update"])}
        wait_for(
            lambda: {e["subject"] for e in read_sink(r, "etbridge:events")} == changed,
            60,
            "an updated event per changed booking in the chart's default sink",
        )
    finally:
        for proc, _ in procs:
            proc.stop()
        shutil.rmtree(secret_dir, ignore_errors=True)
