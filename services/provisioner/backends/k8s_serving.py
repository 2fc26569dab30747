"""One endpoint version served on the kubernetes backend, built with the official client.

A version becomes an ``apps/v1`` Deployment named ``{endpoint}-v{version}``, a ClusterIP
Service of the same name (port 80 to the container's 8080) that selects only that version's
pods, and an autoscaler:

* not scaling to zero: an ``autoscaling/v2`` HorizontalPodAutoscaler between ``max(min, 1)``
  and ``max`` replicas on the Pods metric ``aicloud_requests_in_flight`` (average per pod);
* scaling to zero (``scale_to_zero`` and ``min_replicas == 0``, the rule the endpoint workflow
  follows too): a KEDA ``ScaledObject`` (``keda.sh/v1alpha1``; the client has no model for it,
  so it is a plain dict) with ``minReplicaCount: 0``, ``cooldownPeriod`` = ``idle_s`` and a
  prometheus trigger on the same metric. KEDA's CRD is not among ``kubernetes_validate``'s
  schemas: the tests check its shape themselves.

Replicas: the Deployment always starts with ``max(min_replicas, 1)``, as the workflow starts a
version (a fresh version must prove healthy before it is routed to). Under KEDA that is one
replica, and ``initialCooldownPeriod`` = ``idle_s`` keeps KEDA from scaling it away before the
first idle period has passed (KEDA scales a never-active target down right after creation).

No Service spanning every version: the router splits canary traffic by ``EndpointReady.weight``
over per-version URLs; a Service over all versions would split by pod count instead.

The container runs ``modelserver.py`` (the image's entrypoint) with ``--port 8080`` instead of
the local backend's ``--socket``, on the model's files at ``/model`` (baked in from
``model_uri``, which is passed as ``AICLOUD_MODEL_URI`` and an annotation, for provenance): the
root filesystem is read-only and ``HF_HUB_OFFLINE=1``, so nothing is downloaded at start.
The ScaledObject scales on ``aicloud_requests_in_flight{endpoint}``, which the inference router
exports on ``/metrics``: requests in flight or held while the endpoint wakes, so KEDA sees
demand while no pod runs. The HPA's per-pod metric of the same name needs the model server to
export it (it reports ``in_flight`` on ``/healthz`` only) and a Prometheus adapter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from services.provisioner.backends.kubernetes import GPU_RESOURCE, GPU_TYPE_LABEL, to_manifest

PORT, SERVICE_PORT = 8080, 80
MODEL_PATH = "/model"
METRIC = "aicloud_requests_in_flight"
PROMETHEUS_URL = "http://prometheus.monitoring.svc:9090"
KINDS = ("embeddings", "chat", "predict")
RUN_AS = 65532  # a numeric uid, so the kubelet can check runAsNonRoot whatever the image's USER
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
DNS_1035_LABEL = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")  # Service names: start with a letter


@dataclass(frozen=True)
class ServingSpec:
    endpoint: str
    team: str
    version: str
    model: str
    model_uri: str
    image: str
    kind: str = "chat"
    min_replicas: int = 0
    max_replicas: int = 1
    gpus: int = 0
    gpu_type: str | None = None
    cpu: str = "2"
    memory: str = "8Gi"
    namespace: str = "aicloud-serving"
    scale_to_zero: bool = True
    idle_s: int = 900
    target_in_flight: int = 4


def _check(spec: ServingSpec) -> None:
    if not DNS_1035_LABEL.match(spec.endpoint) or len(spec.endpoint) > 63:
        raise ValueError(f"endpoint {spec.endpoint!r} is not a valid Kubernetes Service name: use lowercase "
                         "letters, digits and '-', starting with a letter, not ending with '-'")
    if not DNS_1123_LABEL.match(spec.version):
        raise ValueError(f"version {spec.version!r} is not usable in a Kubernetes name: resolve it to "
                         "lowercase letters, digits and '-' (a registry version number, 'hf', ...)")
    if not DNS_1123_LABEL.match(spec.team) or len(spec.team) > 63:
        raise ValueError(f"team {spec.team!r} is not a valid label value: use at most 63 lowercase "
                         "letters, digits and '-'")
    if spec.kind not in KINDS:
        raise ValueError(f"kind {spec.kind!r} is unknown: use one of {', '.join(KINDS)}")
    if not spec.image:
        raise ValueError("image is empty: give the model server's image reference")
    if spec.min_replicas < 0:
        raise ValueError(f"min_replicas ({spec.min_replicas}) is negative: use 0 or more")
    if spec.max_replicas < max(spec.min_replicas, 1):
        raise ValueError(f"max_replicas ({spec.max_replicas}) is below min_replicas "
                         f"({spec.min_replicas}) or 1: raise max_replicas")
    if spec.gpus < 0:
        raise ValueError(f"gpus ({spec.gpus}) is negative: use 0 for CPU serving")
    if spec.idle_s <= 0:
        raise ValueError(f"idle_s ({spec.idle_s}) must be positive: give the idle seconds before "
                         "scaling down")
    if spec.target_in_flight < 1:
        raise ValueError(f"target_in_flight ({spec.target_in_flight}) must be at least 1")
    name = f"{spec.endpoint}-v{spec.version}"
    if len(name) > 63:
        raise ValueError(f"the version's name {name!r} is {len(name)} characters, over Kubernetes' 63: "
                         "shorten the endpoint name or the version")


def version_name(spec: ServingSpec) -> str:
    """``{endpoint}-v{version}``: the Deployment's, Service's and autoscaler's name."""
    _check(spec)
    return f"{spec.endpoint}-v{spec.version}"


def scales_to_zero(spec: ServingSpec) -> bool:
    """As in the endpoint workflow: a minimum above zero keeps replicas whatever ``scale_to_zero`` says."""
    return spec.scale_to_zero and spec.min_replicas == 0


def selector(spec: ServingSpec) -> dict[str, str]:
    return {"aicloud.dev/endpoint": spec.endpoint, "aicloud.dev/version": spec.version}


def labels(spec: ServingSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": "aicloud-modelserver", "app.kubernetes.io/instance": version_name(spec),
            "app.kubernetes.io/managed-by": "aicloud", "aicloud.dev/team": spec.team, **selector(spec)}


def _metadata(spec: ServingSpec) -> client.V1ObjectMeta:
    return client.V1ObjectMeta(name=version_name(spec), namespace=spec.namespace, labels=labels(spec),
                               annotations={"aicloud.dev/model": spec.model,
                                            "aicloud.dev/model-uri": spec.model_uri})


def _probe(**fields: int) -> client.V1Probe:
    return client.V1Probe(http_get=client.V1HTTPGetAction(path="/healthz", port="http"), **fields)


def build_deployment(spec: ServingSpec, *, runtime_class: str | None = "gvisor") -> client.V1Deployment:
    limits = {"cpu": spec.cpu, "memory": spec.memory}
    if spec.gpus:
        limits[GPU_RESOURCE] = str(spec.gpus)
    env = {"HF_HUB_OFFLINE": "1", "HOME": "/tmp", "AICLOUD_ENDPOINT": spec.endpoint,
           "AICLOUD_MODEL_NAME": spec.model, "AICLOUD_MODEL_URI": spec.model_uri,
           "AICLOUD_SERVING_KIND": spec.kind, "AICLOUD_PORT": str(PORT)}
    container = client.V1Container(
        name="modelserver", image=spec.image,
        # the image's entrypoint is `python modelserver.py`; the model is baked in at /model
        args=["--model-dir", MODEL_PATH, "--port", str(PORT), "--name", spec.endpoint],
        ports=[client.V1ContainerPort(name="http", container_port=PORT, protocol="TCP")],
        env=[client.V1EnvVar(name=k, value=v) for k, v in env.items()],
        resources=client.V1ResourceRequirements(limits=limits, requests=limits),
        volume_mounts=[client.V1VolumeMount(name="tmp", mount_path="/tmp")],
        # Loading a large model takes minutes: liveness starts only once the startup probe passed.
        startup_probe=_probe(period_seconds=5, failure_threshold=120),
        readiness_probe=_probe(period_seconds=5, timeout_seconds=2, failure_threshold=3),
        liveness_probe=_probe(period_seconds=10, timeout_seconds=5, failure_threshold=3),
        security_context=client.V1SecurityContext(
            allow_privilege_escalation=False, read_only_root_filesystem=True, run_as_non_root=True,
            capabilities=client.V1Capabilities(drop=["ALL"]),
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
    )
    pod = client.V1PodSpec(
        containers=[container], runtime_class_name=runtime_class, automount_service_account_token=False,
        enable_service_links=False,
        volumes=[client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource(size_limit="1Gi"))],
        node_selector={GPU_TYPE_LABEL: spec.gpu_type} if spec.gpus and spec.gpu_type else None,
        security_context=client.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=RUN_AS, run_as_group=RUN_AS, fs_group=RUN_AS,
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
        termination_grace_period_seconds=30,  # the server drains for a few seconds on SIGTERM
    )
    return client.V1Deployment(
        api_version="apps/v1", kind="Deployment", metadata=_metadata(spec),
        spec=client.V1DeploymentSpec(
            replicas=max(spec.min_replicas, 1),
            selector=client.V1LabelSelector(match_labels=selector(spec)),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels(spec)), spec=pod),
        ),
    )


def build_service(spec: ServingSpec) -> client.V1Service:
    return client.V1Service(
        api_version="v1", kind="Service", metadata=_metadata(spec),
        spec=client.V1ServiceSpec(
            type="ClusterIP", selector=selector(spec),
            ports=[client.V1ServicePort(name="http", port=SERVICE_PORT, target_port=PORT, protocol="TCP")],
        ),
    )


def service_url(spec: ServingSpec) -> str:
    """The version's base URL inside the cluster (what ``EndpointReady.url`` would carry)."""
    return f"http://{version_name(spec)}.{spec.namespace}.svc.cluster.local"


def build_autoscaler(spec: ServingSpec, *, prometheus: str = PROMETHEUS_URL
                     ) -> client.V2HorizontalPodAutoscaler | dict[str, Any]:
    name = version_name(spec)
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    if not scales_to_zero(spec):
        return client.V2HorizontalPodAutoscaler(
            api_version="autoscaling/v2", kind="HorizontalPodAutoscaler", metadata=_metadata(spec),
            spec=client.V2HorizontalPodAutoscalerSpec(
                scale_target_ref=client.V2CrossVersionObjectReference(
                    api_version=target["apiVersion"], kind=target["kind"], name=name),
                min_replicas=max(spec.min_replicas, 1), max_replicas=spec.max_replicas,
                metrics=[client.V2MetricSpec(type="Pods", pods=client.V2PodsMetricSource(
                    metric=client.V2MetricIdentifier(name=METRIC),
                    target=client.V2MetricTarget(type="AverageValue",
                                                 average_value=str(spec.target_in_flight))))],
            ),
        )
    # The router's demand for the endpoint (held requests included, so it wakes from zero); the
    # router does not know versions while the endpoint sleeps, so the series is per endpoint.
    query = f'sum({METRIC}{{endpoint="{spec.endpoint}"}}) or vector(0)'
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": to_manifest(_metadata(spec)),
        "spec": {
            "scaleTargetRef": target,
            "minReplicaCount": 0, "maxReplicaCount": spec.max_replicas,
            "cooldownPeriod": spec.idle_s, "initialCooldownPeriod": spec.idle_s,
            "triggers": [{"type": "prometheus", "metadata": {
                "serverAddress": prometheus, "query": query,
                "threshold": str(spec.target_in_flight), "activationThreshold": "0"}}],
        },
    }


def build_all(spec: ServingSpec, *, runtime_class: str | None = "gvisor") -> list[dict[str, Any]]:
    """Deployment, Service and autoscaler, as manifests, in the order to apply them."""
    return [to_manifest(build_deployment(spec, runtime_class=runtime_class)),
            to_manifest(build_service(spec)), to_manifest(build_autoscaler(spec))]
