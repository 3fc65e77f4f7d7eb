"""The deploy files' schema checks, offline: the Helm chart and docker/compose.yaml.

``python -m tests.support.deploycheck`` (``scripts/test`` runs it before pytest)
renders deploy/helm/etbridge with :mod:`tests.support.helmlite` for each of
:data:`SCENARIOS`, validates every manifest with ``kubernetes-validate``
(strict, Kubernetes 1.25 and the newest it knows) or, for custom resources,
with deploy/helm/crd-schemas, and validates docker/compose.yaml with
``check-jsonschema``'s bundled compose-spec schema.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

from tests.support.helmlite import TemplateError, manifests, render_chart

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "etbridge"
CRD_SCHEMAS = ROOT / "deploy" / "helm" / "crd-schemas"
COMPOSE = ROOT / "docker" / "compose.yaml"
K8S_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())

REQUIRED = {"config": {"ETBRIDGE_CLIENT_ID": "example-client"}}
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": REQUIRED,
    "everything": {
        **REQUIRED,
        "imagePullSecrets": [{"name": "registry"}],
        "secrets": {
            "create": True,
            "values": {"ETBRIDGE_CLIENT_SECRET": "example", "ETBRIDGE_REDIS_URL": "redis://r/0"},
            "keys": [
                "ETBRIDGE_CLIENT_SECRET",
                "ETBRIDGE_REDIS_URL",
                "ETBRIDGE_WEBHOOK_SECRET",
                "ETBRIDGE_TOKEN_ENCRYPTION_KEY",
                "SENTRY_DSN",
            ],
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "worker": {
            "keda": {"enabled": True, "redis": {"passwordKey": "REDIS_PASSWORD"}},
            "nodeSelector": {"kubernetes.io/arch": "amd64"},
            "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "beat": {"replicas": 1},
    },
    "hpa": {
        **REQUIRED,
        "worker": {"autoscaling": {"enabled": True}, "podDisruptionBudget": {"enabled": False}},
        "serviceAccount": {"create": False},
    },
}


def crd_schema(doc: dict[str, Any]) -> dict[str, Any] | None:
    group_version = str(doc.get("apiVersion", "")).replace("/", "_")
    path = CRD_SCHEMAS / f"{group_version}_{doc.get('kind')}.json"
    if not path.is_file():
        return None
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


def validate_manifest(doc: dict[str, Any]) -> list[str]:
    """Problems with one manifest (empty when it is valid)."""
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    schema = crd_schema(doc)
    if schema is not None:
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=str)
        return [f"{name}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    problems = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(
                f"{name}: no schema for {doc.get('apiVersion')} in Kubernetes {version}"
            )
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{name} (Kubernetes {version}): {str(exc).splitlines()[0]}")
    return problems


def check_chart() -> list[str]:
    problems = []
    for scenario, values in SCENARIOS.items():
        try:
            docs = manifests(render_chart(CHART, values))
        except TemplateError as exc:
            problems.append(f"chart ({scenario}): {exc}")
            continue
        for doc in docs:
            problems.extend(f"chart ({scenario}): {p}" for p in validate_manifest(doc))
    return problems


def check_compose() -> list[str]:
    tool = Path(sys.executable).parent / "check-jsonschema"
    proc = subprocess.run(
        [str(tool), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        return [f"docker/compose.yaml: {proc.stdout.strip()} {proc.stderr.strip()}"]
    return []


def main() -> int:
    problems = check_chart() + check_compose()
    for problem in problems:
        print(f"deploycheck: {problem}", file=sys.stderr)
    if problems:
        return 1
    kinds = sum(len(manifests(render_chart(CHART, v))) for v in SCENARIOS.values())
    print(
        f"deploycheck: chart ok ({kinds} manifests in {len(SCENARIOS)} scenarios, "
        f"Kubernetes {' and '.join(K8S_VERSIONS)}), docker/compose.yaml ok"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
