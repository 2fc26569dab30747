"""An endpoint version's Kubernetes objects, validated against the Kubernetes schema (no cluster here)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import httpx
import pytest

from services.inference_router.telemetry import EndpointDemand
from services.provisioner.backends.k8s_serving import (
    METRIC,
    ServingSpec,
    build_all,
    build_autoscaler,
    build_deployment,
    build_service,
    service_url,
)
from services.provisioner.backends.kubernetes import to_manifest
from services.provisioner.endpoints.serving import modelserver

pytestmark = pytest.mark.unit
kubernetes_validate = pytest.importorskip("kubernetes_validate")
IMAGE = "registry.example.com/aicloud/modelserver@sha256:" + "b" * 64
SPEC = ServingSpec(endpoint="legal-embed", team="legal", version="3", model="legal-minilm",
                   model_uri="s3://artifacts/legal/legal-minilm/3", image=IMAGE, kind="embeddings",
                   min_replicas=1, max_replicas=4, scale_to_zero=False)
GPU_SPEC = replace(SPEC, endpoint="legal-chat", kind="chat", gpus=2, gpu_type="a100-80gb")


def valid(obj: Any) -> dict[str, Any]:
    manifest = to_manifest(obj)
    kubernetes_validate.validate(manifest, "1.30", strict=True)
    return manifest


def test_cpu_deployment_is_valid_hardened_and_probed() -> None:
    manifest = valid(build_deployment(SPEC))
    assert manifest["metadata"]["name"] == "legal-embed-v3"
    assert manifest["metadata"]["namespace"] == "aicloud-serving"
    assert manifest["metadata"]["annotations"]["aicloud.dev/model-uri"] == SPEC.model_uri
    assert manifest["spec"]["replicas"] == 1
    template = manifest["spec"]["template"]
    assert manifest["spec"]["selector"]["matchLabels"] == {"aicloud.dev/endpoint": "legal-embed",
                                                           "aicloud.dev/version": "3"}
    for key, value in {"app.kubernetes.io/name": "aicloud-modelserver", "aicloud.dev/team": "legal",
                       "aicloud.dev/endpoint": "legal-embed", "aicloud.dev/version": "3"}.items():
        assert template["metadata"]["labels"][key] == value
    pod = template["spec"]
    container = pod["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "nodeSelector" not in pod
    assert container["resources"]["limits"] == container["resources"]["requests"] == {"cpu": "2",
                                                                                      "memory": "8Gi"}
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    assert pod["runtimeClassName"] == "gvisor"
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["AICLOUD_MODEL_URI"] == SPEC.model_uri


def test_gpu_deployment_limits_gpus_and_selects_the_gpu_type() -> None:
    pod = valid(build_deployment(GPU_SPEC))["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"aicloud.io/gpu-type": "a100-80gb"}


def test_gpu_type_without_gpus_selects_no_node_and_runtime_class_is_optional() -> None:
    pod = valid(build_deployment(replace(SPEC, gpu_type="a100-80gb"), runtime_class=None))["spec"][
        "template"]["spec"]
    assert "nodeSelector" not in pod
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "runtimeClassName" not in pod


def test_service_maps_port_80_to_the_versions_pods() -> None:
    manifest = valid(build_service(SPEC))
    assert manifest["metadata"]["name"] == "legal-embed-v3"
    assert manifest["spec"]["type"] == "ClusterIP"
    assert manifest["spec"]["selector"] == {"aicloud.dev/endpoint": "legal-embed", "aicloud.dev/version": "3"}
    assert manifest["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    assert service_url(SPEC) == "http://legal-embed-v3.aicloud-serving.svc.cluster.local"


def test_hpa_scales_between_min_and_max_on_requests_in_flight() -> None:
    manifest = valid(build_autoscaler(replace(SPEC, min_replicas=2, max_replicas=6, target_in_flight=8)))
    assert manifest["apiVersion"] == "autoscaling/v2"
    assert manifest["kind"] == "HorizontalPodAutoscaler"
    spec = manifest["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "legal-embed-v3"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 6)
    assert spec["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": METRIC}, "target": {"type": "AverageValue", "averageValue": "8"}}}]


def test_no_scale_to_zero_with_min_zero_still_keeps_one_replica() -> None:
    spec = replace(SPEC, min_replicas=0, scale_to_zero=False)
    assert valid(build_autoscaler(spec))["spec"]["minReplicas"] == 1
    assert valid(build_deployment(spec))["spec"]["replicas"] == 1


def test_a_minimum_above_zero_wins_over_scale_to_zero() -> None:
    manifest = valid(build_autoscaler(replace(SPEC, min_replicas=2, scale_to_zero=True)))
    assert manifest["kind"] == "HorizontalPodAutoscaler"
    assert manifest["spec"]["minReplicas"] == 2


def test_scale_to_zero_is_a_keda_scaled_object() -> None:
    # KEDA's CRD is not among kubernetes_validate's schemas: its shape is checked here.
    spec = replace(SPEC, min_replicas=0, max_replicas=3, scale_to_zero=True, idle_s=600)
    manifests = build_all(spec)
    deployment, service, scaled = manifests
    valid(deployment)
    valid(service)
    assert deployment["spec"]["replicas"] == 1  # the first replica proves the version healthy
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["kind"] == "ScaledObject"
    assert scaled["metadata"]["name"] == deployment["metadata"]["name"] == "legal-embed-v3"
    assert scaled["metadata"]["namespace"] == "aicloud-serving"
    body = scaled["spec"]
    assert body["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert body["scaleTargetRef"]["kind"] == "Deployment"
    assert (body["minReplicaCount"], body["maxReplicaCount"]) == (0, 3)
    assert body["cooldownPeriod"] == body["initialCooldownPeriod"] == 600
    assert body["triggers"]
    trigger = body["triggers"][0]
    assert trigger["type"] == "prometheus"
    # the series the inference router exports (held requests included: wakes from zero)
    assert EndpointDemand.NAME == METRIC
    assert trigger["metadata"]["query"] == f'sum({METRIC}{{endpoint="legal-embed"}}) or vector(0)'
    assert trigger["metadata"]["threshold"] == "4"
    assert all(isinstance(v, str) for v in trigger["metadata"].values())  # KEDA wants strings


def test_build_all_without_scale_to_zero_is_all_valid() -> None:
    manifests = build_all(GPU_SPEC)
    assert [m["kind"] for m in manifests] == ["Deployment", "Service", "HorizontalPodAutoscaler"]
    for manifest in manifests:
        kubernetes_validate.validate(manifest, "1.30", strict=True)


def test_hf_version_names_are_accepted() -> None:
    assert valid(build_service(replace(SPEC, version="hf")))["metadata"]["name"] == "legal-embed-vhf"


def test_a_name_over_63_characters_is_refused() -> None:
    spec = replace(SPEC, endpoint="e" * 60, version="12")
    with pytest.raises(ValueError, match=r"over Kubernetes' 63: shorten the endpoint name or the version"):
        build_deployment(spec)
    build_deployment(replace(spec, endpoint="e" * 59, version="1"))  # exactly 63: fine


@pytest.mark.parametrize(("fields", "message"), [
    ({"max_replicas": 1, "min_replicas": 2}, r"max_replicas \(1\) is below min_replicas \(2\)"),
    ({"min_replicas": -1}, r"min_replicas \(-1\) is negative"),
    ({"gpus": -1}, r"gpus \(-1\) is negative"),
    ({"endpoint": "Legal_Embed"}, r"endpoint 'Legal_Embed' is not a valid Kubernetes Service name"),
    ({"endpoint": "1legal"}, r"starting with a letter"),
    ({"endpoint": "legal-"}, r"not ending with '-'"),
    ({"version": "v1.2"}, r"version 'v1.2' is not usable"),
    ({"team": "Legal"}, r"team 'Legal' is not a valid label value"),
    ({"kind": "rerank"}, r"kind 'rerank' is unknown"),
    ({"image": ""}, r"image is empty"),
    ({"idle_s": 0}, r"idle_s \(0\) must be positive"),
    ({"target_in_flight": 0}, r"target_in_flight \(0\) must be at least 1"),
])
def test_bad_input_names_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_all(replace(SPEC, **fields))


@pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="needs a cluster: set KUBECONFIG")
def test_objects_are_accepted_by_a_live_cluster() -> None:
    from kubernetes import client, config

    config.load_kube_config()
    spec = replace(SPEC, namespace="default")
    apps, core = client.AppsV1Api(), client.CoreV1Api()
    apps.create_namespaced_deployment("default", build_deployment(spec), dry_run="All")
    core.create_namespaced_service("default", build_service(spec), dry_run="All")
    hpa = build_autoscaler(spec)
    assert isinstance(hpa, client.V2HorizontalPodAutoscaler)  # not scaling to zero: no KEDA needed
    client.AutoscalingV2Api().create_namespaced_horizontal_pod_autoscaler("default", hpa, dry_run="All")


def test_the_containers_arguments_start_the_real_model_server_on_its_port(tmp_path: Any) -> None:
    """What the pod runs, run here: the Deployment's args, with the local model folder for
    /model, serve /healthz on the container port the probes and the Service point at."""
    (tmp_path / "model.json").write_text(
        '{"kind": "logistic-regression", "features": ["a"], "weights": [0.1, 1.0], "scaling": {}}')
    container = valid(build_deployment(SPEC))["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--port") + 1] == str(container["ports"][0]["containerPort"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args[args.index("--model-dir") + 1], args[args.index("--port") + 1] = str(tmp_path), str(port)
    server = subprocess.Popen([sys.executable, modelserver.__file__, *args])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "the server never listened"
                time.sleep(0.1)
        assert health.status_code == 200 and health.json()["ok"] is True
        predicted = httpx.post(f"http://127.0.0.1:{port}/v1/predict", json={"instances": [{"a": 1}]})
        assert predicted.status_code == 200 and 0 < predicted.json()["predictions"][0]["probability"] < 1
    finally:
        server.terminate()
        server.wait(10)
