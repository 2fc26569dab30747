"""The kubernetes backend's objects, validated against the Kubernetes schema (no cluster here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from contracts import JobRequested
from contracts.catalog import load_products
from services.provisioner.backends.kubernetes import (
    JobSpec,
    build_job,
    build_network_policy,
    to_manifest,
)

pytestmark = pytest.mark.unit
kubernetes_validate = pytest.importorskip("kubernetes_validate")
PRODUCTS = load_products(Path(__file__).resolve().parents[2] / "policies" / "products.yaml")
IMAGE = "registry.example.com/team/train@sha256:" + "a" * 64


def request(**fields: object) -> JobRequested:
    return JobRequested(tenant="legal", job_id="ft-1", command=["python", "train.py"],
                        params={"epochs": "3"}, **fields)  # type: ignore[arg-type]


def test_gpu_fine_tune_job_is_a_valid_batch_v1_job() -> None:
    manifest = to_manifest(build_job(JobSpec(
        request=request(gpus=2, product="fine-tune", max_runtime_s=3600),
        product=PRODUCTS["fine-tune"], image=IMAGE, dataset_claim="legal-rag-v2")))
    kubernetes_validate.validate(manifest, "1.30", strict=True)
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"aicloud.io/gpu-type": "a100-80gb"}
    assert pod["runtimeClassName"] == "gvisor"
    assert manifest["spec"]["activeDeadlineSeconds"] == 3600
    assert manifest["spec"]["backoffLimit"] == 0
    assert {"name": "dataset", "mountPath": "/data", "readOnly": True} in container["volumeMounts"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "tolerations" not in pod
    env = {e["name"]: e["value"] for e in container["env"]}  # MLflow logs to the job's own store
    assert env["MLFLOW_TRACKING_URI"] == "sqlite:////workspace/mlflow.db"


def test_spot_product_tolerates_spot_nodes_and_runtime_is_capped_by_the_product() -> None:
    manifest = to_manifest(build_job(JobSpec(
        request=request(gpus=1, product="fine-tune-spot", max_runtime_s=10**6),
        product=PRODUCTS["fine-tune-spot"], image=IMAGE)))
    kubernetes_validate.validate(manifest, "1.30", strict=True)
    assert manifest["spec"]["template"]["spec"]["tolerations"][0]["key"] == "aicloud.io/spot"
    assert manifest["spec"]["activeDeadlineSeconds"] == PRODUCTS["fine-tune-spot"].max_runtime_s


def test_cpu_job_has_no_gpu_limits_or_selector() -> None:
    manifest = to_manifest(build_job(JobSpec(request=request(), product=PRODUCTS["cpu-small"],
                                             image=IMAGE)))
    kubernetes_validate.validate(manifest, "1.30", strict=True)
    pod = manifest["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in pod


def test_the_requests_own_image_is_the_one_run() -> None:
    pinned = "registry.example.com/legal/trainer@sha256:" + "a" * 64
    job = request().model_copy(update={"image": pinned})
    manifest = to_manifest(build_job(JobSpec(request=job, product=PRODUCTS["cpu-small"], image=IMAGE)))
    kubernetes_validate.validate(manifest, "1.30", strict=True)
    assert manifest["spec"]["template"]["spec"]["containers"][0]["image"] == pinned


def test_network_policy_denies_everything() -> None:
    manifest = to_manifest(build_network_policy(request()))
    kubernetes_validate.validate(manifest, "1.30", strict=True)
    assert manifest["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert manifest["spec"]["ingress"] == [] and manifest["spec"]["egress"] == []


def test_a_product_that_allows_egress_opens_outbound_only() -> None:
    manifest = to_manifest(build_network_policy(request(), egress=True))
    kubernetes_validate.validate(manifest, "1.30", strict=True)
    assert manifest["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert manifest["spec"]["ingress"] == [] and manifest["spec"]["egress"] == [{}]  # any destination


@pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="needs a cluster: set KUBECONFIG")
def test_job_is_accepted_by_a_live_cluster() -> None:
    from kubernetes import client, config

    config.load_kube_config()
    job = build_job(JobSpec(request=request(), product=PRODUCTS["cpu-small"], image=IMAGE,
                            namespace="default"))
    client.BatchV1Api().create_namespaced_job("default", job, dry_run="All")
