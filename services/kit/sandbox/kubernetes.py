"""Agent sandboxes on Kubernetes: one Pod per sandbox, built with the official client.

A pod here is what ``box.py`` starts locally, translated: gVisor through the ``gvisor``
RuntimeClass, a read-only root, a memory-backed ``/tmp`` and a ``/workspace`` with sizes, CPU
and memory as cgroup limits (requests = limits, so a sandbox is never throttled below what it
was promised nor allowed past it) and a hard lifetime as ``activeDeadlineSeconds``.

Three things differ from a local box:

* sandboxd cannot listen on a Unix socket bound in from the host, since agent-runtime is not on
  the pod's node; on Kubernetes it listens on TCP ``DAEMON_PORT`` in the pod network, and
  ``default_deny_policy`` lets only agent-runtime pods reach that port.
* A sandbox has no network but, when egress is allowed, the egress proxy: locally sandboxd
  relays 127.0.0.1:3128 to a proxy the runtime owns; here ``egress_proxy_policy`` lets the pod
  reach the proxy pods on 3128 and DNS (to find the proxy's Service), nothing else.
* Disk: ``/workspace`` lives on the node's disk, and kubelet enforces its ``sizeLimit`` and
  the pod's ``ephemeral-storage`` by evicting the pod, not with ENOSPC as a local tmpfs does.
  ``/tmp`` is memory-backed (tmpfs sized by ``sizeLimit``), so it fails writes with ENOSPC but
  its contents count against the memory limit.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, fields
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

RUNTIME_CLASS, RUNTIME_HANDLER = "gvisor", "runsc"
SANDBOX_NAMESPACE, RUNTIME_NAMESPACE = "aicloud-sandboxes", "aicloud"
DAEMON_PORT, EGRESS_PROXY_PORT, DNS_PORT = 7070, 3128, 53
SANDBOX_UID = 65532
MANAGED_BY = {"app.kubernetes.io/managed-by": "aicloud"}
SANDBOX_LABEL, TEAM_LABEL, EGRESS_LABEL = "aicloud.dev/sandbox", "aicloud.dev/team", "aicloud.dev/egress"
PIDS_ANNOTATION = "aicloud.dev/pids-limit"
# The chart labels agent-runtime's pods with its component and part-of (deploy/helm/aicloud).
RUNTIME_PODS = {"app.kubernetes.io/part-of": "aicloud", "app.kubernetes.io/component": "agent-runtime"}
EGRESS_PROXY_PODS = {"app.kubernetes.io/name": "agent-egress-proxy"}
KUBE_DNS_PODS = {"k8s-app": "kube-dns"}
NAMESPACE_NAME = "kubernetes.io/metadata.name"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class PodLimits:
    """What one sandbox pod may use, for its whole life.

    ``pids`` is not in the Pod spec: Kubernetes caps processes per pod only through the
    kubelet's ``podPidsLimit`` (one value per node). The wanted value is recorded on the pod as
    the ``aicloud.dev/pids-limit`` annotation so the node pool can be checked against it; the
    gVisor sentry still bounds what one sandbox can spawn with its memory limit.
    """

    cpu_millicores: int
    memory_bytes: int
    pids: int
    workspace_bytes: int
    lifetime_s: int

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"PodLimits.{field.name} must be a positive integer, got {value!r}")


def pod_name(sandbox_id: str) -> str:
    return f"sandbox-{sandbox_id}"


def sandbox_pod(*, sandbox_id: str, team: str, template_image: str, command: list[str],
                limits: PodLimits, namespace: str = SANDBOX_NAMESPACE,
                egress_allowed: bool) -> client.V1Pod:
    """The pod of one sandbox; ``command`` must start sandboxd listening on ``DAEMON_PORT``."""
    _check_inputs(sandbox_id=sandbox_id, team=team, template_image=template_image,
                  command=command, namespace=namespace)
    labels = {**MANAGED_BY, SANDBOX_LABEL: sandbox_id, TEAM_LABEL: team,
              EGRESS_LABEL: "allowed" if egress_allowed else "none"}
    return client.V1Pod(
        api_version="v1", kind="Pod",
        metadata=client.V1ObjectMeta(name=pod_name(sandbox_id), namespace=namespace, labels=labels,
                                     annotations={PIDS_ANNOTATION: str(limits.pids)}),
        spec=client.V1PodSpec(
            runtime_class_name=RUNTIME_CLASS, restart_policy="Never",
            active_deadline_seconds=limits.lifetime_s, termination_grace_period_seconds=0,
            automount_service_account_token=False, enable_service_links=False,
            host_network=False, host_pid=False, host_ipc=False,
            security_context=client.V1PodSecurityContext(
                run_as_non_root=True, run_as_user=SANDBOX_UID, run_as_group=SANDBOX_UID,
                fs_group=SANDBOX_UID, seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault")),
            containers=[_container(template_image, command, limits)],
            volumes=_volumes(limits),
        ),
    )


def _container(image: str, command: list[str], limits: PodLimits) -> client.V1Container:
    resources = {"cpu": f"{limits.cpu_millicores}m", "memory": str(limits.memory_bytes),
                 "ephemeral-storage": str(limits.workspace_bytes)}
    return client.V1Container(
        name="sandbox", image=image, command=command, working_dir="/workspace",
        env=[client.V1EnvVar(name="HOME", value="/workspace")],
        ports=[client.V1ContainerPort(name="sandboxd", container_port=DAEMON_PORT, protocol="TCP")],
        resources=client.V1ResourceRequirements(requests=resources, limits=resources),
        security_context=client.V1SecurityContext(
            read_only_root_filesystem=True, allow_privilege_escalation=False, privileged=False,
            capabilities=client.V1Capabilities(drop=["ALL"])),
        volume_mounts=[client.V1VolumeMount(name="workspace", mount_path="/workspace"),
                       client.V1VolumeMount(name="tmp", mount_path="/tmp")],
    )


def _volumes(limits: PodLimits) -> list[client.V1Volume]:
    size = str(limits.workspace_bytes)
    return [
        client.V1Volume(name="workspace", empty_dir=client.V1EmptyDirVolumeSource(size_limit=size)),
        client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource(medium="Memory",
                                                                            size_limit=size)),
    ]


def _check_inputs(*, sandbox_id: str, team: str, template_image: str, command: list[str],
                  namespace: str) -> None:
    # Checked here rather than left to the API server so a bad request fails with its reason
    # before anything is sent, and the same way with or without a cluster.
    if not DNS_LABEL.match(sandbox_id):
        raise ValueError(f"sandbox_id must be a DNS label (lowercase letters, digits and '-', "
                         f"at most 63, alphanumeric at both ends), got {sandbox_id!r}")
    if not LABEL_VALUE.match(team):
        raise ValueError(f"team must be a Kubernetes label value (at most 63 characters), got {team!r}")
    if not DNS_LABEL.match(namespace):
        raise ValueError(f"namespace must be a DNS label, got {namespace!r}")
    if not template_image.strip():
        raise ValueError("template_image must name an image")
    if not command:
        raise ValueError("command must not be empty: it starts sandboxd")


def default_deny_policy(namespace: str = SANDBOX_NAMESPACE, *,
                        runtime_namespace: str = RUNTIME_NAMESPACE) -> client.V1NetworkPolicy:
    """No traffic in or out of any sandbox pod, except agent-runtime reaching sandboxd."""
    runtime = client.V1NetworkPolicyPeer(namespace_selector=_namespace(runtime_namespace),
                                         pod_selector=client.V1LabelSelector(match_labels=RUNTIME_PODS))
    # By its wire name: this client drops ``var_from=`` silently, leaving a rule open to all.
    rule = client.V1NetworkPolicyIngressRule.model_validate(
        {"from": [runtime], "ports": [_port("TCP", DAEMON_PORT)]})
    return _policy("sandboxes-default-deny", namespace, ["Ingress", "Egress"], _all_sandboxes(),
                   ingress=[rule], egress=[])


def egress_proxy_policy(namespace: str = SANDBOX_NAMESPACE, *,
                        proxy_namespace: str = RUNTIME_NAMESPACE) -> client.V1NetworkPolicy:
    """Sandboxes with egress may reach the egress proxy on 3128 and kube-dns, nothing else.

    Policies add up: these pods are also selected by the default deny, whose empty egress adds
    nothing, so this policy's two rules are all they get.
    """
    selector = _all_sandboxes()
    selector.match_labels = {EGRESS_LABEL: "allowed"}
    proxy = client.V1NetworkPolicyPeer(namespace_selector=_namespace(proxy_namespace),
                                       pod_selector=client.V1LabelSelector(match_labels=EGRESS_PROXY_PODS))
    dns = client.V1NetworkPolicyPeer(namespace_selector=_namespace("kube-system"),
                                     pod_selector=client.V1LabelSelector(match_labels=KUBE_DNS_PODS))
    return _policy("sandboxes-egress-proxy", namespace, ["Egress"], selector, egress=[
        client.V1NetworkPolicyEgressRule(to=[proxy], ports=[_port("TCP", EGRESS_PROXY_PORT)]),
        client.V1NetworkPolicyEgressRule(to=[dns], ports=[_port("UDP", DNS_PORT), _port("TCP", DNS_PORT)]),
    ])


def _policy(name: str, namespace: str, types: list[str], selector: client.V1LabelSelector,
            **rules: Any) -> client.V1NetworkPolicy:
    return client.V1NetworkPolicy(
        api_version="networking.k8s.io/v1", kind="NetworkPolicy",
        metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(MANAGED_BY)),
        spec=client.V1NetworkPolicySpec(pod_selector=selector, policy_types=types, **rules),
    )


def _all_sandboxes() -> client.V1LabelSelector:
    return client.V1LabelSelector(match_expressions=[
        client.V1LabelSelectorRequirement(key=SANDBOX_LABEL, operator="Exists")])


def _namespace(name: str) -> client.V1LabelSelector:
    # The API server sets this label on every namespace (1.22+); a podSelector alone would only
    # match pods in the policy's own namespace.
    return client.V1LabelSelector(match_labels={NAMESPACE_NAME: name})


def _port(protocol: str, port: int) -> client.V1NetworkPolicyPort:
    return client.V1NetworkPolicyPort(protocol=protocol, port=port)


def gvisor_runtime_class() -> client.V1RuntimeClass:
    """Cluster-wide; nodes need containerd configured with the ``runsc`` handler."""
    return client.V1RuntimeClass(api_version="node.k8s.io/v1", kind="RuntimeClass",
                                 metadata=client.V1ObjectMeta(name=RUNTIME_CLASS, labels=dict(MANAGED_BY)),
                                 handler=RUNTIME_HANDLER)


def to_manifest(obj: Any) -> dict[str, Any]:
    """The object as the API server would receive it (camelCase keys, no nulls)."""
    return dict(client.ApiClient().sanitize_for_serialization(obj))


class KubernetesSandboxes:
    """Sandbox pods in one namespace, through the API server.

    The official client blocks, so each call runs in a worker thread to keep the event loop free.
    """

    def __init__(self, api_client: client.ApiClient, *, namespace: str = SANDBOX_NAMESPACE) -> None:
        self._core = client.CoreV1Api(api_client)
        self._namespace = namespace

    async def create(self, pod: client.V1Pod) -> None:
        if pod.metadata is None or pod.metadata.namespace != self._namespace:
            raise ValueError(f"pod must be in namespace {self._namespace!r}")
        await asyncio.to_thread(self._core.create_namespaced_pod, self._namespace, pod)

    async def delete(self, sandbox_id: str) -> None:
        """Idempotent: a pod already gone is not an error. No grace: a sandbox saves nothing."""
        try:
            await asyncio.to_thread(self._core.delete_namespaced_pod, pod_name(sandbox_id),
                                    self._namespace, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def list(self, team: str) -> list[str]:
        """The ids of the team's sandbox pods, terminating ones included."""
        selector = f"{TEAM_LABEL}={team},{SANDBOX_LABEL}"
        pods = await asyncio.to_thread(self._core.list_namespaced_pod, self._namespace,
                                       label_selector=selector)
        return sorted((pod.metadata.labels or {})[SANDBOX_LABEL] for pod in pods.items if pod.metadata)
