"""Agent sandboxes as Pods: the objects validated against the Kubernetes schema (no cluster here),
and the chart's copies of the policies checked against them."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from services.kit.sandbox.kubernetes import (
    KubernetesSandboxes,
    PodLimits,
    default_deny_policy,
    egress_proxy_policy,
    gvisor_runtime_class,
    sandbox_pod,
    to_manifest,
)

pytestmark = pytest.mark.unit
kubernetes_validate = pytest.importorskip("kubernetes_validate")
KUBE_VERSION = "1.30"
CHART_DIR = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "aicloud"
IMAGE = "registry.example.com/sandboxes/python@sha256:" + "a" * 64
DAEMON = ["/usr/bin/python3", "-I", "-S", "/opt/sandboxd/sandboxd.py"]
LIMITS = PodLimits(cpu_millicores=500, memory_bytes=512 << 20, pids=64, workspace_bytes=256 << 20,
                   lifetime_s=3600)
ON = {"agentRuntime": {"sandboxes": {"kubernetes": {"enabled": True}}}}


def pod(**fields: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"sandbox_id": "sb-1", "team": "legal", "template_image": IMAGE,
                            "command": DAEMON, "limits": LIMITS, "egress_allowed": False, **fields}
    manifest = to_manifest(sandbox_pod(**args))
    kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
    return manifest


def test_sandbox_pod_runs_under_gvisor_with_nothing_to_escalate_with() -> None:
    spec = pod()["spec"]
    (container,) = spec["containers"]
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert not (spec["hostNetwork"] or spec["hostPID"] or spec["hostIPC"])
    assert spec["restartPolicy"] == "Never"
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}


def test_sandbox_pod_limits_are_the_inputs() -> None:
    manifest = pod()
    spec = manifest["spec"]
    resources = spec["containers"][0]["resources"]
    assert resources["limits"] == {"cpu": "500m", "memory": str(512 << 20),
                                   "ephemeral-storage": str(256 << 20)}
    assert resources["requests"] == resources["limits"]
    volumes = {v["name"]: v["emptyDir"] for v in spec["volumes"]}
    assert volumes["workspace"] == {"sizeLimit": str(256 << 20)}
    assert volumes["tmp"] == {"medium": "Memory", "sizeLimit": str(256 << 20)}
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert mounts == {"/workspace", "/tmp"}
    assert spec["activeDeadlineSeconds"] == 3600
    assert manifest["metadata"]["annotations"] == {"aicloud.dev/pids-limit": "64"}


@pytest.mark.parametrize(("allowed", "label"), [(True, "allowed"), (False, "none")])
def test_sandbox_pod_labels(allowed: bool, label: str) -> None:
    metadata = pod(egress_allowed=allowed)["metadata"]
    assert metadata["name"] == "sandbox-sb-1" and metadata["namespace"] == "aicloud-sandboxes"
    assert metadata["labels"] == {"app.kubernetes.io/managed-by": "aicloud", "aicloud.dev/sandbox": "sb-1",
                                  "aicloud.dev/team": "legal", "aicloud.dev/egress": label}


@pytest.mark.parametrize(("field", "value", "message"), [
    ("memory_bytes", -1, r"PodLimits\.memory_bytes must be a positive integer, got -1"),
    ("lifetime_s", 0, r"PodLimits\.lifetime_s must be a positive integer, got 0"),
    ("pids", True, r"PodLimits\.pids must be a positive integer, got True"),
])
def test_limits_must_be_positive(field: str, value: object, message: str) -> None:
    good = {"cpu_millicores": 1, "memory_bytes": 1, "pids": 1, "workspace_bytes": 1, "lifetime_s": 1}
    with pytest.raises(ValueError, match=message):
        PodLimits(**{**good, field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(("fields", "message"), [
    ({"sandbox_id": "Sb_1"}, "sandbox_id must be a DNS label"),
    ({"sandbox_id": "sb-"}, "sandbox_id must be a DNS label"),
    ({"sandbox_id": "s" * 64}, "sandbox_id must be a DNS label"),
    ({"team": "t" * 64}, "team must be a Kubernetes label value"),
    ({"namespace": "Sandboxes"}, "namespace must be a DNS label"),
    ({"template_image": " "}, "template_image must name an image"),
    ({"command": []}, "command must not be empty"),
])
def test_bad_pod_inputs_are_refused_with_their_reason(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pod(**fields)


def test_default_deny_admits_only_agent_runtime_on_the_daemon_port() -> None:
    manifest = to_manifest(default_deny_policy("aicloud-sandboxes", runtime_namespace="aicloud"))
    kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
    spec = manifest["spec"]
    assert spec["podSelector"] == {"matchExpressions": [{"key": "aicloud.dev/sandbox", "operator": "Exists"}]}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["egress"] == []
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 7070}]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "aicloud"}}
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "agent-runtime"


def test_egress_proxy_policy_allows_the_proxy_and_dns_only() -> None:
    manifest = to_manifest(egress_proxy_policy("aicloud-sandboxes", proxy_namespace="egress"))
    kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
    spec = manifest["spec"]
    assert spec["policyTypes"] == ["Egress"] and "ingress" not in spec
    assert spec["podSelector"]["matchLabels"] == {"aicloud.dev/egress": "allowed"}
    proxy, dns = spec["egress"]
    assert proxy["ports"] == [{"protocol": "TCP", "port": 3128}]
    assert proxy["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "egress"}},
                            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "agent-egress-proxy"}}}]
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    # An empty or missing peer or port list would allow every peer or port.
    assert all(rule["to"] and rule["ports"] for rule in spec["egress"])


def test_gvisor_runtime_class() -> None:
    manifest = to_manifest(gvisor_runtime_class())
    kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
    assert (manifest["metadata"]["name"], manifest["handler"]) == ("gvisor", "runsc")


async def test_sandboxes_refuse_a_pod_of_another_namespace() -> None:
    sandboxes = KubernetesSandboxes(client.ApiClient(), namespace="aicloud-sandboxes")
    other = sandbox_pod(sandbox_id="sb-1", team="legal", template_image=IMAGE, command=DAEMON,
                        limits=LIMITS, namespace="default", egress_allowed=False)
    with pytest.raises(ValueError, match="namespace 'aicloud-sandboxes'"):
        await sandboxes.create(other)


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    chart_mod = pytest.importorskip("helm_python.chart", reason="helm-python-sdk is not installed")
    with chart_mod.Chart.load(str(CHART_DIR)) as chart:
        rendered = chart.render(values=values, name="t", namespace="aicloud")
    return [doc for path, text in sorted(rendered.items()) if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


def by_name(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def test_chart_leaves_sandbox_objects_out_by_default() -> None:
    objects = render()
    kinds = {obj["kind"] for obj in objects}
    assert "Deployment" in kinds and "RuntimeClass" not in kinds
    # the platform's own NetworkPolicies are there; none for the sandboxes' namespace
    policies = by_name(objects, "NetworkPolicy")
    assert policies and not [name for name in policies if name.startswith("sandboxes-")]
    assert {p["metadata"]["namespace"] for p in policies.values()} == {"aicloud"}


def test_chart_renders_the_runtime_class_and_policies_when_enabled() -> None:
    objects = render(ON)
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    assert by_name(objects, "RuntimeClass")["gvisor"]["handler"] == "runsc"
    policies = {name: p for name, p in by_name(objects, "NetworkPolicy").items()
                if name.startswith("sandboxes-")}
    assert set(policies) == {"sandboxes-default-deny", "sandboxes-egress-proxy"}
    assert {p["metadata"]["namespace"] for p in policies.values()} == {"aicloud-sandboxes"}
    # The chart's copies must say what the module's builders say.
    assert policies["sandboxes-default-deny"]["spec"] == to_manifest(default_deny_policy())["spec"]
    assert policies["sandboxes-egress-proxy"]["spec"] == to_manifest(egress_proxy_policy())["spec"]


def test_chart_runtime_class_and_proxy_namespace_are_configurable() -> None:
    kubernetes = {"enabled": True, "createRuntimeClass": False, "egressProxyNamespace": "egress",
                  "namespace": "sbx"}
    objects = render({"agentRuntime": {"sandboxes": {"kubernetes": kubernetes}}})
    assert not by_name(objects, "RuntimeClass")
    policy = by_name(objects, "NetworkPolicy")["sandboxes-egress-proxy"]
    assert policy["metadata"]["namespace"] == "sbx"
    assert policy["spec"] == to_manifest(egress_proxy_policy("sbx", proxy_namespace="egress"))["spec"]


@pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="needs a cluster: set KUBECONFIG")
async def test_sandbox_pod_is_created_listed_and_deleted_by_a_live_cluster() -> None:
    from kubernetes import config

    namespace = os.environ.get("AICLOUD_SANDBOX_NAMESPACE", "default")
    sandboxes = KubernetesSandboxes(config.new_client_from_config(), namespace=namespace)
    sandbox_id, team = f"t-{uuid.uuid4().hex[:12]}", f"test-{uuid.uuid4().hex[:8]}"
    await sandboxes.create(sandbox_pod(sandbox_id=sandbox_id, team=team, template_image=IMAGE,
                                       command=DAEMON, limits=LIMITS, namespace=namespace,
                                       egress_allowed=False))
    try:
        assert await sandboxes.list(team) == [sandbox_id]
    finally:
        await sandboxes.delete(sandbox_id)
    await sandboxes.delete(sandbox_id)  # already gone: not an error
