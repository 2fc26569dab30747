"""Bus identities: the declaration in contracts/flows.py matches what each service really
consumes and publishes, and the NATS permissions generated from it are least privilege."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

import pytest

from contracts import MESSAGES, Envelope
from contracts.flows import FLOWS, PUBLISHER, SERVICES, consumers, producers
from contracts.permissions import OPS, grant, grants, matches
from contracts.wire import inbox_prefix
from services.kit.runtime import Service

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]

SETTINGS = {
    "catalog": "CatalogSettings", "quota": "QuotaSettings", "provisioner": "ProvisionerSettings",
    "cost-ledger": "CostLedgerSettings", "inference-router": "RouterSettings",
    "agent-runtime": "AgentRuntimeSettings", "observability-collector": "CollectorSettings",
}
BUILT_BUT_NOT_PUBLISHED = {
    ("provisioner", "CancelJob"): "a budget stop cancels each job through its own cancel handler",
}


def build(name: str, tmp_path: Path) -> Service:
    """The service as ``python -m services.<name>`` wires it (nothing connects yet)."""
    package = f"services.{name.replace('-', '_')}"
    settings_type = getattr(importlib.import_module(f"{package}.settings"), SETTINGS[name])
    extra: dict[str, Any] = {
        "provisioner": {"temporal_address": "127.0.0.1:1", "work_dir": str(tmp_path / "jobs"),
                        "serving_root": tmp_path / "serving", "notebook_root": tmp_path / "notebooks",
                        "volume_root": tmp_path / "volumes"},
        "agent-runtime": {"isolation": "rlimits", "sandbox_dir": tmp_path / "sandboxes"},
    }.get(name, {})
    settings = settings_type(nats_url="nats://127.0.0.1:1", database_url="postgresql://u@127.0.0.1:1/d",
                             **extra)
    service: Service = importlib.import_module(f"{package}.app").build(settings)
    return service


@pytest.mark.parametrize("name", SERVICES)
def test_a_service_consumes_exactly_what_the_contracts_say(name: str, tmp_path: Path) -> None:
    service = build(name, tmp_path)
    subscribed = sorted(sub.filter_subject for sub in service.bus._subscriptions)
    assert subscribed == sorted(FLOWS[name].filters)


def _sources(name: str) -> list[Path]:
    """The service's package and the workflow modules it imports (their events are its own:
    its activities publish them)."""
    files = list((ROOT / "services" / name.replace("-", "_")).rglob("*.py"))
    seen: set[Path] = set()
    todo = list(files)
    while todo:
        for node in ast.walk(ast.parse(todo.pop().read_text())):
            modules = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                       else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for module in modules:
                path = ROOT / (module.replace(".", "/") + ".py")
                if module.startswith("workflows.") and path.exists() and path not in seen:
                    seen.add(path)
                    todo.append(path)
    return files + sorted(seen)


NOT_FACTORIES = {"isinstance", "issubclass", "consume", "consume_batch", "typed_decoder"}


def _built(name: str) -> set[str]:
    """Contracts the service's code constructs, or hands to a factory first
    (``self._event(SandboxCreated, team, ...)``)."""
    names = {m.__name__ for m in MESSAGES}
    found = set()
    for path in _sources(name):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            called = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            first = node.args[0] if node.args and isinstance(node.args[0], ast.Name) else None
            if called in names:
                found.add(called)
            elif first is not None and first.id in names and called not in NOT_FACTORIES:
                found.add(first.id)
    return found


@pytest.mark.parametrize("name", SERVICES)
def test_a_service_publishes_exactly_the_contracts_its_code_builds(name: str) -> None:
    built = _built(name) - {m for (svc, m) in BUILT_BUT_NOT_PUBLISHED if svc == name}
    assert built == {m.__name__ for m in FLOWS[name].publishes}


def test_every_message_has_a_producer_and_a_reader() -> None:
    for message in MESSAGES:
        assert producers(message), f"nobody publishes {message.__name__}"
        assert consumers(message), f"nobody reads {message.__name__}"
    assert set(SERVICES) == set(SETTINGS)


def test_outside_systems_may_only_ask() -> None:
    publisher = grant(PUBLISHER)
    assert set(publisher.publish) == {"aicloud.jobs.requested.v1", "aicloud.endpoints.requested.v1",
                                      "aicloud.notebooks.requested.v1", "aicloud.sandboxes.create.v1"}
    assert publisher.subscribe == (f"{inbox_prefix(PUBLISHER)}.>",)
    assert not publisher.may_publish("aicloud.jobs.admitted.v1")
    assert not publisher.may_publish("$JS.API.STREAM.INFO.AICLOUD_JOBS")


def test_a_service_publishes_its_own_messages_and_the_dead_letters_of_what_it_reads() -> None:
    quota = grant("quota")
    assert quota.may_publish("aicloud.jobs.admitted.v1")
    assert quota.may_publish("aicloud.dlq.aicloud.jobs.requested.v1")
    assert not quota.may_publish("aicloud.jobs.requested.v1")  # the catalog's, and outsiders'
    assert not quota.may_publish("aicloud.usage.recorded.v1")
    assert not quota.may_publish("aicloud.dlq.aicloud.usage.recorded.v1")


def test_a_service_may_create_and_pull_only_its_own_consumers_with_their_own_filter() -> None:
    quota = grant("quota")
    mine = "AICLOUD_JOBS.quota--aicloud_jobs_requested_v1"
    assert quota.may_publish(f"$JS.API.CONSUMER.CREATE.{mine}.aicloud.jobs.requested.v1")
    assert quota.may_publish(f"$JS.API.CONSUMER.MSG.NEXT.{mine}")
    assert quota.may_publish(f"$JS.ACK.{mine}.1.7.7.1700000000000000000.0")
    assert not quota.may_publish(f"$JS.API.CONSUMER.CREATE.{mine}.aicloud.jobs.>")  # wider filter
    assert not quota.may_publish("$JS.API.CONSUMER.CREATE.AICLOUD_JOBS")  # an ephemeral reader
    assert not quota.may_publish("$JS.API.CONSUMER.DURABLE.CREATE.AICLOUD_JOBS.quota--x")
    theirs = "AICLOUD_JOBS.catalog--aicloud_jobs_admitted_v1"
    assert not quota.may_publish(f"$JS.API.CONSUMER.MSG.NEXT.{theirs}")
    assert not quota.may_publish(f"$JS.ACK.{theirs}.1.7.7.1700000000000000000.0")
    for reader in ("STREAM.MSG.GET.AICLOUD_JOBS", "DIRECT.GET.AICLOUD_JOBS", "STREAM.DELETE.AICLOUD_JOBS",
                   "STREAM.PURGE.AICLOUD_JOBS", "STREAM.UPDATE.AICLOUD_USAGE", "STREAM.LIST"):
        assert not quota.may_publish(f"$JS.API.{reader}"), reader
    assert quota.may_publish("$JS.API.STREAM.CREATE.AICLOUD_JOBS")


def test_a_service_subscribes_to_its_own_inbox_only() -> None:
    for name in SERVICES:
        found = grant(name)
        assert found.subscribe == (f"{inbox_prefix(name)}.>",)
        assert not found.may_subscribe("_INBOX.abc.1")
        assert not found.may_subscribe("aicloud.jobs.requested.v1")
        assert ">" not in found.publish and "$JS.API.>" not in found.publish


def test_the_collector_reads_every_domain_and_the_dead_letters() -> None:
    collector = grant("observability-collector")
    for stream, what in (("AICLOUD_JOBS", "aicloud_jobs_all.aicloud.jobs.>"),
                         ("AICLOUD_DLQ", "aicloud_dlq_all.aicloud.dlq.>")):
        assert collector.may_publish(f"$JS.API.CONSUMER.CREATE.{stream}.observability-collector--{what}")
    assert collector.may_publish("aicloud.alerts.fired.v1")
    assert not collector.may_publish("aicloud.jobs.requested.v1")


def test_only_the_router_reaches_its_key_value_buckets() -> None:
    assert grant("inference-router").may_publish("$KV.aicloud_router_limits.legal.rpm")
    assert grant("inference-router").may_publish("$JS.API.DIRECT.GET.KV_aicloud_router_routes.$KV.x.y")
    assert not grant("quota").may_publish("$KV.aicloud_router_limits.legal.rpm")


def test_an_isolation_prefix_prefixes_every_subject_stream_and_bucket() -> None:
    quota = grant("quota", prefix="t1")
    assert quota.may_publish("t1.aicloud.jobs.admitted.v1")
    assert not quota.may_publish("aicloud.jobs.admitted.v1")
    assert quota.may_publish("$JS.API.CONSUMER.CREATE.T1_AICLOUD_JOBS.quota--aicloud_jobs_requested_v1."
                             "t1.aicloud.jobs.requested.v1")
    assert grant("inference-router", prefix="t1").may_publish("$KV.t1_aicloud_router_limits.k")


def test_ops_may_do_anything_and_every_identity_has_a_grant() -> None:
    every = grants()
    assert set(every) == {*SERVICES, PUBLISHER, OPS}
    assert every[OPS].may_publish("$JS.API.STREAM.DELETE.AICLOUD_JOBS") and every[OPS].may_subscribe("x.y")


@pytest.mark.parametrize(("pattern", "subject", "expected"), [
    ("a.b", "a.b", True), ("a.*", "a.b", True), ("a.*", "a.b.c", False), ("a.>", "a.b.c", True),
    ("a.>", "a", False), ("a.b", "a.b.c", False), ("a.b.c", "a.b", False),
])
def test_subject_matching_follows_nats(pattern: str, subject: str, expected: bool) -> None:
    assert matches(pattern, subject) is expected


def test_every_declared_message_is_a_contract() -> None:
    for flows in FLOWS.values():
        for message in (*flows.publishes, *flows.consumes):
            assert issubclass(message, Envelope) and message in MESSAGES
