"""The kubernetes backend's objects, built with the official client.

A job becomes a ``batch/v1`` Job (GPU limits, a node selector for the GPU type, spot
tolerations, ``runtimeClassName: gvisor``, ``activeDeadlineSeconds`` = max runtime, no
retries by Kubernetes: Temporal owns retries) plus a default-deny NetworkPolicy for its pods.
Tests validate every object against the Kubernetes schema; applying them needs a cluster
(``KUBECONFIG``), which is exercised only where one exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubernetes import client

from contracts import JobRequested
from contracts.catalog import Product
from services.provisioner.jobs import tracking

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TYPE_LABEL = "aicloud.io/gpu-type"
SPOT_TAINT = "aicloud.io/spot"


@dataclass(frozen=True)
class JobSpec:
    request: JobRequested
    product: Product
    image: str  # the platform's default; the request's own (pinned, scanned) image wins
    namespace: str = "aicloud-jobs"
    gpu_type: str | None = None
    cpu: str = "2"
    memory: str = "8Gi"
    runtime_class: str = "gvisor"
    dataset_claim: str | None = None


def job_name(request: JobRequested) -> str:
    return f"{request.tenant}-{request.job_id}"[:63].rstrip("-")


def labels(request: JobRequested) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": "aicloud", "aicloud.io/team": request.tenant,
            "aicloud.io/job": request.job_id}


def build_job(spec: JobSpec) -> client.V1Job:
    request, product = spec.request, spec.product
    gpu_type = spec.gpu_type or (product.gpu_types[0] if product.gpu_types else None)
    limits = {"cpu": spec.cpu, "memory": spec.memory}
    if request.gpus:
        limits[GPU_RESOURCE] = str(request.gpus)
    env = [client.V1EnvVar(name=k, value=v) for k, v in {
        "AICLOUD_JOB_ID": request.job_id, "AICLOUD_TEAM": request.tenant,
        "AICLOUD_OUTPUT_DIR": "/workspace/output", "AICLOUD_CHECKPOINT_DIR": "/workspace/checkpoints",
        "AICLOUD_METRICS_FILE": "/workspace/metrics.jsonl",
        **({"AICLOUD_DATASET_DIR": "/data"} if spec.dataset_claim else {}),
        **tracking.job_env("/workspace"),
        **{f"AICLOUD_PARAM_{k.upper()}": v for k, v in request.params.items()},
    }.items()]
    mounts = [client.V1VolumeMount(name="workspace", mount_path="/workspace")]
    volumes = [client.V1Volume(name="workspace", empty_dir=client.V1EmptyDirVolumeSource())]
    if spec.dataset_claim:
        mounts.append(client.V1VolumeMount(name="dataset", mount_path="/data", read_only=True))
        volumes.append(client.V1Volume(name="dataset", persistent_volume_claim=(
            client.V1PersistentVolumeClaimVolumeSource(claim_name=spec.dataset_claim, read_only=True))))
    container = client.V1Container(
        name="job", image=request.image or spec.image, command=request.command, env=env,
        working_dir="/workspace",
        resources=client.V1ResourceRequirements(limits=limits, requests=limits),
        volume_mounts=mounts,
        security_context=client.V1SecurityContext(
            allow_privilege_escalation=False, read_only_root_filesystem=True, run_as_non_root=True,
            capabilities=client.V1Capabilities(drop=["ALL"]),
        ),
    )
    spot = product.price_class == "spot"
    pod = client.V1PodSpec(
        restart_policy="Never", runtime_class_name=spec.runtime_class, containers=[container],
        volumes=volumes, automount_service_account_token=False,
        node_selector={GPU_TYPE_LABEL: gpu_type} if gpu_type and request.gpus else None,
        tolerations=[client.V1Toleration(key=SPOT_TAINT, operator="Exists", effect="NoSchedule")]
        if spot else None,
        termination_grace_period_seconds=30,
    )
    return client.V1Job(
        api_version="batch/v1", kind="Job",
        metadata=client.V1ObjectMeta(name=job_name(request), namespace=spec.namespace,
                                     labels=labels(request)),
        spec=client.V1JobSpec(
            backoff_limit=0,
            active_deadline_seconds=min(request.max_runtime_s or product.max_runtime_s,
                                        product.max_runtime_s),
            ttl_seconds_after_finished=3600,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels(request)), spec=pod),
        ),
    )


def build_network_policy(request: JobRequested, *, namespace: str = "aicloud-jobs",
                         egress: bool = False) -> client.V1NetworkPolicy:
    """Default deny, both ways, for the job's pods; with ``egress`` (the product allows it)
    outbound traffic is allowed, inbound still denied."""
    return client.V1NetworkPolicy(
        api_version="networking.k8s.io/v1", kind="NetworkPolicy",
        metadata=client.V1ObjectMeta(name=f"{job_name(request)}-deny", namespace=namespace,
                                     labels=labels(request)),
        spec=client.V1NetworkPolicySpec(
            pod_selector=client.V1LabelSelector(match_labels={"aicloud.io/job": request.job_id}),
            policy_types=["Ingress", "Egress"], ingress=[],
            egress=[client.V1NetworkPolicyEgressRule()] if egress else [],
        ),
    )


def to_manifest(obj: Any) -> dict[str, Any]:
    """The object as the API server would receive it (camelCase keys, no nulls)."""
    return dict(client.ApiClient().sanitize_for_serialization(obj))
