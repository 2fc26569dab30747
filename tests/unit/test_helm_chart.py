"""The Helm chart as a whole, rendered offline with each value set in deploy/helm/aicloud/ci/.

Every object passes Kubernetes 1.30's schemas strictly and helm lint; values.schema.json refuses
bad values naming the key; the NetworkPolicies open exactly the platform's edges; every service
has its own ServiceAccount, PodDisruptionBudget, NATS user and hardened container; and checkov
(its own venv, `make checkov`) finds no failed check. tests/unit/test_deploy_files.py covers the
default render's Deployments, Services and ConfigMaps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

chart_mod = pytest.importorskip("helm_python.chart", reason="helm-python-sdk is not installed")
helm = pytest.importorskip("helm_python")

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "deploy" / "helm" / "aicloud"
VALUE_SETS = {path.name.removesuffix("-values.yaml"): path
              for path in sorted((CHART_DIR / "ci").glob("*-values.yaml"))}
CHECKOV = ROOT / ".venvs" / "checkov" / "bin" / "checkov"
KUBE_VERSION = "1.30"
RELEASE, NAMESPACE = "t", "aicloud"
FULL = f"{RELEASE}-aicloud"

SERVICES = ("catalog", "quota", "provisioner", "cost-ledger", "inference-router", "agent-runtime",
            "observability-collector")
# caller -> callee, as the URL settings the services read (*_URL) say.
EDGES = {("catalog", "provisioner"), ("catalog", "cost-ledger"), ("provisioner", "catalog"),
         ("agent-runtime", "catalog"), ("agent-runtime", "inference-router"),
         ("observability-collector", "inference-router")}
DNS, NATS, POSTGRES, TEMPORAL = 53, 4222, 5432, 7233
Rendered = dict[str, list[dict[str, Any]]]  # value set -> its objects


def prefix(name: str) -> str:
    """The settings' environment prefix, as the services and the bus-auth contract spell it."""
    return f"AICLOUD_{name.upper().replace('-', '_')}_"


def values_of(name: str) -> dict[str, Any]:
    return yaml.safe_load(VALUE_SETS[name].read_text()) or {}


def render_texts(values: dict[str, Any] | None = None) -> dict[str, str]:
    with chart_mod.Chart.load(str(CHART_DIR)) as chart:
        return dict(chart.render(values=values, name=RELEASE, namespace=NAMESPACE))


def parse(texts: dict[str, str]) -> list[dict[str, Any]]:
    return [doc for path, text in sorted(texts.items()) if not path.endswith(".txt")
            for doc in yaml.safe_load_all(text) if doc]


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return parse(render_texts(values))


@pytest.fixture(scope="module")
def texts() -> dict[str, dict[str, str]]:
    return {name: render_texts(values_of(name)) for name in VALUE_SETS}


@pytest.fixture(scope="module")
def objects(texts: dict[str, dict[str, str]]) -> Rendered:
    return {name: parse(rendered) for name, rendered in texts.items()}


def of_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objs if obj["kind"] == kind}


def deployments(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["labels"]["app.kubernetes.io/component"]: obj
            for obj in of_kind(objs, "Deployment").values()}


def test_the_ci_value_sets_are_there() -> None:
    assert {"minimal", "production", "ray", "kubernetes"} <= set(VALUE_SETS)


# -- schema, lint, Kubernetes validation --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_value_set_passes_the_schema(name: str) -> None:
    with chart_mod.Chart.load(str(CHART_DIR)) as chart:
        chart.validate_schema(values_of(name))


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_object_passes_kubernetes_1_30_strictly(objects: Rendered,
                                                      name: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    failures = []
    for obj in objects[name]:
        try:
            kv.validate(obj, KUBE_VERSION, strict=True)
        except kv.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {exc.message}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_finds_nothing_above_info(name: str) -> None:
    report = helm.lint(str(CHART_DIR), values_of(name), strict=True, namespace=NAMESPACE,
                       kube_version=f"v{KUBE_VERSION}.0")
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert not serious and not report["errors"], report


BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"services": {"catalog": {"replicas": "two"}}},
     r"/services/catalog/replicas'?: got string, want integer"),
    ({"replicaCount": 3}, r"additional propert.*'replicaCount' not allowed"),
    ({"engine": {"kind": "slurm"}}, r"/engine/kind'?: value must be one of 'local', 'ray', 'kubernetes'"),
    ({"services": {"quota": {"replicas": -1}}}, r"/services/quota/replicas'?: minimum: got -1, want 0"),
    ({"image": {"digest": "sha256:abc"}}, r"/image/digest'?: 'sha256:abc' does not match pattern"),
    ({"networkPolicy": {"ingress": {"from": []}}}, r"/networkPolicy/ingress/from'?: minItems"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[m.split("'")[0] for _, m in BAD_VALUES])
def test_the_schema_refuses_a_bad_value_naming_it(values: dict[str, Any], message: str) -> None:
    with chart_mod.Chart.load(str(CHART_DIR)) as chart:
        with pytest.raises(helm.HelmValuesError, match=message):
            chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError, match=message):  # and so does an install
        render(values)


def test_a_bad_values_file_is_refused_with_every_problem_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad-values.yaml"
    bad.write_text("image:\n  digest: latest\nengine:\n  kind: slurm\nservices:\n  catalog:\n"
                   "    replicas: -2\nreplicaCount: 3\n")
    with pytest.raises(helm.HelmValuesError) as refused:
        render(yaml.safe_load(bad.read_text()))
    message = str(refused.value)
    for key in ("/image/digest", "/engine/kind", "/services/catalog/replicas", "'replicaCount'"):
        assert key in message, message


# -- NetworkPolicies ----------------------------------------------------------------------------


def matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (op == "Exists" and key not in labels) or (op == "In" and labels.get(key) not in values) \
                or (op == "DoesNotExist" and key in labels) or (op == "NotIn" and labels.get(key) in values):
            return False
    return True


def pod(objs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    spec = deployments(objs)[name]["spec"]["template"]
    (container,) = spec["spec"]["containers"]
    return {"labels": spec["metadata"]["labels"],
            "ports": {p["name"]: p["containerPort"] for p in container["ports"]}}


def peer_is(peer: dict[str, Any], target: dict[str, Any]) -> bool:
    """Whether a peer names ``target``, a pod of this release in NAMESPACE."""
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer and not matches(peer["namespaceSelector"],
                                                   {"kubernetes.io/metadata.name": NAMESPACE}):
        return False
    return matches(peer.get("podSelector"), target["labels"])


def port_open(rule: dict[str, Any], port: int, target: dict[str, Any]) -> bool:
    ports = rule.get("ports")
    return not ports or any(target["ports"].get(p["port"], p["port"]) == port for p in ports)


def rules(objs: list[dict[str, Any]], subject: dict[str, Any], direction: str) -> Iterator[dict[str, Any]]:
    for policy in of_kind(objs, "NetworkPolicy").values():
        spec = policy["spec"]
        if direction.capitalize() in spec["policyTypes"] and matches(spec["podSelector"], subject["labels"]):
            yield from spec.get(direction) or []


def allowed(objs: list[dict[str, Any]], caller: str, callee: str, port: int) -> bool:
    src, dst = pod(objs, caller), pod(objs, callee)
    out = any(port_open(r, port, dst) and any(peer_is(p, dst) for p in r["to"])
              for r in rules(objs, src, "egress"))
    into = any(port_open(r, port, dst) and any(peer_is(p, src) for p in r["from"])
               for r in rules(objs, dst, "ingress"))
    return out and into


def outside_egress_ports(objs: list[dict[str, Any]], name: str) -> set[int]:
    """Ports a service may reach outside the release."""
    own = [pod(objs, other) for other in deployments(objs)]
    return {p["port"] for r in rules(objs, pod(objs, name), "egress")
            if not all(any(peer_is(peer, o) for o in own) for peer in r["to"]) for p in r["ports"]}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_a_default_deny_policy_covers_every_pod_both_ways(objects: Rendered,
                                                          name: str) -> None:
    objs = objects[name]
    policies = of_kind(objs, "NetworkPolicy")
    deny = policies[f"{FULL}-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny and "egress" not in deny
    for service in deployments(objs):
        assert matches(deny["podSelector"], pod(objs, service)["labels"]), service
    for policy in policies.values():  # no rule anywhere lets every peer through
        for direction, peers in (("egress", "to"), ("ingress", "from")):
            for rule in policy["spec"].get(direction) or []:
                assert rule.get(peers) and rule.get("ports"), policy["metadata"]["name"]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_services_reach_exactly_the_services_they_call(objects: Rendered,
                                                       name: str) -> None:
    objs = objects[name]
    http = {service: pod(objs, service)["ports"]["http"] for service in SERVICES}
    open_edges = {(a, b) for a in SERVICES for b in SERVICES if a != b and allowed(objs, a, b, http[b])}
    assert open_edges == EDGES
    # ... and those are the URLs the chart hands out
    handed = set()
    for configmap in of_kind(objs, "ConfigMap").values():
        caller = configmap["metadata"]["labels"]["app.kubernetes.io/component"]
        for value in configmap["data"].values():
            found = re.fullmatch(rf"http://{FULL}-([a-z-]+):(\d+)", value)
            if found:
                assert int(found[2]) == http[found[1]]
                handed.add((caller, found[1]))
    assert handed == EDGES


def test_the_edges_to_the_platform_outside(objects: Rendered) -> None:
    base = {DNS, NATS, POSTGRES}
    expected = {service: set(base) for service in SERVICES}
    expected["provisioner"] |= {TEMPORAL}
    expected["agent-runtime"] |= {TEMPORAL}
    expected["inference-router"] |= {443}
    expected["observability-collector"] |= {9090, 9093}
    minimal = objects["minimal"]
    assert {s: outside_egress_ports(minimal, s) for s in SERVICES} == expected

    expected_ray = {**expected, "provisioner": expected["provisioner"] | {8265}}
    assert {s: outside_egress_ports(objects["ray"], s) for s in SERVICES} == expected_ray
    expected_k8s = {**expected, "provisioner": expected["provisioner"] | {443}}
    assert {s: outside_egress_ports(objects["kubernetes"], s) for s in SERVICES} == expected_k8s

    # production: traces to the collector, the provisioner's MLflow, the agents' sandboxes
    production = {s: ports | {4318} for s, ports in expected.items()}
    production["provisioner"] |= {5000}
    production["agent-runtime"] |= {7070}
    assert {s: outside_egress_ports(objects["production"], s) for s in SERVICES} == production


def test_the_router_reaches_the_providers_only_on_the_configured_cidrs(
        objects: Rendered) -> None:
    policies = of_kind(objects["production"], "NetworkPolicy")
    (rule,) = policies[f"{FULL}-inference-router-to-model-providers"]["spec"]["egress"]
    assert rule["to"] == values_of("production")["networkPolicy"]["modelProviders"]["to"]
    assert rule["ports"] == [{"port": 443, "protocol": "TCP"}]
    # the default: anywhere but the private ranges and the cloud metadata address
    (default,) = of_kind(objects["minimal"], "NetworkPolicy")[
        f"{FULL}-inference-router-to-model-providers"]["spec"]["egress"]
    (block,) = default["to"]
    assert block["ipBlock"]["cidr"] == "0.0.0.0/0"
    private = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"}
    assert private <= set(block["ipBlock"]["except"])


def test_only_the_public_apis_admit_the_ingress_controller(objects: Rendered) -> None:
    objs = objects["production"]
    gateway = values_of("production")["networkPolicy"]["ingress"]["from"]
    opened: dict[str, set[int]] = {}
    for service in SERVICES:
        target = pod(objs, service)
        for rule in rules(objs, target, "ingress"):
            if rule["from"] == gateway:
                opened.setdefault(service, set()).update(target["ports"].get(p["port"], p["port"])
                                                         for p in rule["ports"])
    assert opened == {"catalog": {8000}, "inference-router": {8004}, "agent-runtime": {8005},
                      "provisioner": {8890}}  # the notebook proxy, not the provisioner's API


def test_network_policies_can_be_turned_off() -> None:
    objs = render({"networkPolicy": {"enabled": False}})
    assert not of_kind(objs, "NetworkPolicy")


@pytest.mark.parametrize(("to", "message"), [([], r"/to'?: minItems"), ([{}], r"/to/0'?: minProperties")])
def test_an_allow_all_rule_is_refused(to: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=r"/networkPolicy/extraEgress/quota/0" + message):
        render({"networkPolicy": {"extraEgress": {"quota": [{"to": to, "ports": [{"port": 1}]}]}}})


# -- workloads: identity, disruption, scaling, hardening, credentials --------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_each_service_has_its_own_account_and_only_the_kubernetes_engine_gets_a_role(
        objects: Rendered, name: str) -> None:
    objs = objects[name]
    accounts = of_kind(objs, "ServiceAccount")
    assert set(accounts) == {f"{FULL}-{s}" for s in SERVICES}
    assert not of_kind(objs, "ClusterRole") and not of_kind(objs, "ClusterRoleBinding")
    k8s = name == "kubernetes"
    for service, deployment in deployments(objs).items():
        spec = deployment["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == f"{FULL}-{service}"
        token = k8s and service == "provisioner"
        assert spec["automountServiceAccountToken"] is token, service
        assert accounts[f"{FULL}-{service}"]["automountServiceAccountToken"] is token, service
    roles, bindings = of_kind(objs, "Role"), of_kind(objs, "RoleBinding")
    if not k8s:
        assert not roles and not bindings
        return
    (role,) = roles.values()
    (binding,) = bindings.values()
    assert role["metadata"]["namespace"] == "aicloud-jobs" == binding["metadata"]["namespace"]
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == {("batch", "jobs", v) for v in ("create", "delete", "get", "list", "watch")} \
        | {("networking.k8s.io", "networkpolicies", v) for v in ("create", "delete", "get")} \
        | {("", "pods", v) for v in ("get", "list", "watch")} | {("", "pods/log", "get")}
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{FULL}-provisioner",
                                    "namespace": NAMESPACE}]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_a_disruption_budget_per_service(objects: Rendered, name: str) -> None:
    objs = objects[name]
    budgets = of_kind(objs, "PodDisruptionBudget")
    assert set(budgets) == {f"{FULL}-{s}" for s in SERVICES}
    for service, deployment in deployments(objs).items():
        spec = budgets[f"{FULL}-{service}"]["spec"]
        assert spec["selector"] == deployment["spec"]["selector"] and spec["maxUnavailable"] == 1


def test_the_router_autoscales_and_that_can_be_turned_off(objects: Rendered) -> None:
    (hpa,) = of_kind(objects["production"], "HorizontalPodAutoscaler").values()
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": f"{FULL}-inference-router"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 20)
    targets = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in spec["metrics"]}
    assert targets == {"cpu": 65, "memory": 80}
    assert "replicas" not in deployments(objects["production"])["inference-router"]["spec"]  # the HPA's

    objs = render({"services": {"inference-router": {"autoscaling": {"enabled": False}}}})
    assert not of_kind(objs, "HorizontalPodAutoscaler")
    assert deployments(objs)["inference-router"]["spec"]["replicas"] == 2
    with pytest.raises(helm.HelmError, match=r"minReplicas \(9\) is above maxReplicas \(3\)"):
        render({"services": {"inference-router": {"autoscaling": {"enabled": True, "minReplicas": 9,
                                                                  "maxReplicas": 3}}}})


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_container_is_hardened_and_bounded(objects: Rendered, name: str) -> None:
    for service, deployment in deployments(objects[name]).items():
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec.get("initContainers", []) + spec["containers"]:
            resources = container["resources"]
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[bound]), (service, bound)
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], "a writable /tmp on a read-only root"


def test_the_image_is_pinned_by_digest_where_one_is_set(objects: Rendered) -> None:
    digest = values_of("production")["image"]["digest"]
    for deployment in deployments(objects["production"]).values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == f"registry.example.internal/aicloud/aicloud@{digest}"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_each_service_logs_into_nats_as_itself(objects: Rendered, name: str) -> None:
    for service, deployment in deployments(objects[name]).items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        p = prefix(service)
        assert env[f"{p}NATS_USER"]["value"] == service
        password = env[f"{p}NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert password == {"name": "aicloud-nats-users", "key": service}
        assert not [k for k in env if "NATS" in k and not k.startswith(p)]


def test_nats_auth_follows_its_values() -> None:
    objs = render({"nats": {"auth": {"existingSecret": "bus-users"}}})
    (container,) = deployments(objs)["cost-ledger"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["AICLOUD_COST_LEDGER_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "bus-users",
                                                                                    "key": "cost-ledger"}
    objs = render({"nats": {"auth": {"enabled": False}}})
    for deployment in deployments(objs).values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert not [e for e in container["env"] if "_NATS_" in e["name"]]


def test_the_engine_settings_reach_the_provisioner(objects: Rendered) -> None:
    def config(name: str) -> dict[str, str]:
        return of_kind(objects[name], "ConfigMap")[f"{FULL}-provisioner"]["data"]

    p = prefix("provisioner")
    assert config("minimal")[f"{p}BACKEND"] == "local" and f"{p}RAY_ADDRESS" not in config("minimal")
    ray = config("ray")
    assert (ray[f"{p}BACKEND"], ray[f"{p}RAY_ADDRESS"], ray[f"{p}PLACEMENT_TIMEOUT_S"]) == (
        "ray", "http://aicloud-ray-head-svc.ray.svc:8265", "600")
    assert config("kubernetes")[f"{p}BACKEND"] == "kubernetes"
    for name in VALUE_SETS:  # the agent runtime's runs go through Temporal too
        runtime = of_kind(objects[name], "ConfigMap")[f"{FULL}-agent-runtime"]["data"]
        assert runtime[f"{prefix('agent-runtime')}TEMPORAL_ADDRESS"] == config(name)[f"{p}TEMPORAL_ADDRESS"]


def test_the_notebook_proxy_listens_on_its_own_port(objects: Rendered) -> None:
    objs = objects["minimal"]
    data = of_kind(objs, "ConfigMap")[f"{FULL}-provisioner"]["data"]
    p = prefix("provisioner")
    assert (data[f"{p}NOTEBOOK_PROXY_HOST"], data[f"{p}NOTEBOOK_PROXY_PORT"]) == ("0.0.0.0", "8890")
    assert pod(objs, "provisioner")["ports"] == {"http": 8002, "notebook": 8890}
    ports = of_kind(objs, "Service")[f"{FULL}-provisioner"]["spec"]["ports"]
    assert [(s["name"], s["port"], s["targetPort"]) for s in ports] == [("http", 8002, "http"),
                                                                         ("notebook", 8890, "notebook")]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_namespaced_object_names_its_namespace(objects: Rendered, name: str) -> None:
    cluster_wide = {"RuntimeClass", "ClusterRole", "ClusterRoleBinding"}
    for obj in objects[name]:
        if obj["kind"] not in cluster_wide:
            assert obj["metadata"].get("namespace"), f"{obj['kind']}/{obj['metadata']['name']}"


# -- checkov ------------------------------------------------------------------------------------


def documented_skips() -> set[str]:
    """The checks values.yaml lists as skipped, each with its reason."""
    return set(re.findall(r"(?m)^#\s{2,}(CKV2?_K8S_\d+)\s{2,}\S", (CHART_DIR / "values.yaml").read_text()))


@pytest.fixture(scope="module")
def checkov_report(texts: dict[str, dict[str, str]],
                   tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    binary = CHECKOV if CHECKOV.exists() else shutil.which("checkov")
    if binary is None:
        pytest.skip("checkov is not installed (make checkov: its own venv in .venvs/checkov)")
    out = tmp_path_factory.mktemp("rendered")
    for name, rendered in texts.items():
        for path, text in rendered.items():
            if not path.endswith(".txt"):
                (out / name).mkdir(exist_ok=True)
                (out / name / Path(path).name).write_text(text)
    # BC_SKIP_MAPPING, --skip-download: offline, nothing fetched from the vendor's API
    done = subprocess.run([str(binary), "-d", str(out), "--framework", "kubernetes", "--skip-download",
                           "--compact", "-o", "json"], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    assert done.returncode in (0, 1), done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["summary"]["parsing_errors"] == 0 and report["summary"]["resource_count"] > 0
    return dict(report)


def by_set(checks: list[dict[str, Any]]) -> dict[str, set[tuple[str, str]]]:
    found: dict[str, set[tuple[str, str]]] = {name: set() for name in VALUE_SETS}
    for check in checks:
        found[check["file_path"].strip("/").split("/")[0]].add((check["check_id"], check["resource"]))
    return found


def test_checkov_finds_no_failed_check_where_the_image_is_pinned(checkov_report: dict[str, Any]) -> None:
    results = checkov_report["results"]
    failed = by_set(results["failed_checks"])
    for name in VALUE_SETS:
        if name != "minimal":
            assert not failed[name], sorted(failed[name])
    # by tag, only the two image-pinning checks fail, once per Deployment: the scanner does look
    assert {check for check, _ in failed["minimal"]} == {"CKV_K8S_43", "CKV_K8S_15"}
    assert len(failed["minimal"]) == 2 * len(SERVICES)
    assert all(by_set(results["passed_checks"]).values())


def test_every_skipped_check_is_documented_with_its_reason(checkov_report: dict[str, Any]) -> None:
    skipped = checkov_report["results"]["skipped_checks"]
    assert {check["check_id"] for check in skipped} == documented_skips() == {"CKV_K8S_35", "CKV_K8S_38"}
    assert all(check["check_result"].get("suppress_comment") for check in skipped)
    # the token's skip is the kubernetes engine's provisioner alone
    tokens = {(name, resource) for name, found in by_set(skipped).items()
              for check, resource in found if check == "CKV_K8S_38"}
    assert tokens == {("kubernetes", f"Deployment.{NAMESPACE}.{FULL}-provisioner")}
