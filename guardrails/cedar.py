"""Guardrails as code: Cedar policies from ``policies/*.cedar`` evaluated with cedarpy.

Policies annotated ``@mode("audit")`` are evaluated apart: what they would refuse is logged
with the decision, never enforced. Every decision names the policy ids that made it and
their ``@reason`` text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cedarpy

from contracts import JobRequested
from contracts.catalog import ImageAttestation, Org, Product, dataset_project, image_digest

ALLOW_ALL = '@id("audit.baseline")\npermit (principal, action, resource);'


class PolicyError(ValueError):
    """The policy files do not parse or validate; the message names the file."""


@dataclass(frozen=True)
class PolicyDecision:
    admitted: bool
    policy_ids: tuple[str, ...]
    reason: str
    audit_findings: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Policy:
    id: str
    reason: str
    audit: bool
    json: dict[str, Any]


class PolicyEngine:
    def __init__(self, policies: list[_Policy]) -> None:
        self._by_cedar_id: dict[str, dict[str, _Policy]] = {}
        self._enforced = self._policy_set("enforced", [p for p in policies if not p.audit])
        self._audit = self._policy_set("audit", [p for p in policies if p.audit])

    @classmethod
    def from_dir(cls, directory: Path) -> PolicyEngine:
        policies: list[_Policy] = []
        files = sorted(directory.glob("*.cedar"))
        if not files:
            raise PolicyError(f"no *.cedar files in {directory}")
        for path in files:
            try:
                parsed = json.loads(cedarpy.policies_to_json_str(path.read_text()))
            except Exception as exc:  # cedarpy raises plain exceptions with the parse error
                raise PolicyError(f"{path}: {exc}") from None
            for cedar_id, body in parsed["staticPolicies"].items():
                notes = body.get("annotations", {})
                policies.append(_Policy(
                    id=notes.get("id", f"{path.stem}.{cedar_id}"),
                    reason=notes.get("reason", ""),
                    audit=notes.get("mode") == "audit",
                    json=body,
                ))
        return cls(policies)

    def _policy_set(self, name: str, policies: list[_Policy]) -> cedarpy.PolicySet | None:
        if not policies:
            return None
        document = {"staticPolicies": {f"p{i}": p.json for i, p in enumerate(policies)},
                    "templates": {}, "templateLinks": []}
        text = cedarpy.policies_from_json_str(json.dumps(document))
        if name == "audit":
            text += "\n" + ALLOW_ALL
        self._by_cedar_id[name] = {f"policy{i}": p for i, p in enumerate(policies)}
        return cedarpy.PolicySet.from_str(text)

    def evaluate_job(self, request: JobRequested, *, org: Org, product: Product | None,
                     backend: str = "local",
                     attestations: Mapping[str, ImageAttestation] | None = None) -> PolicyDecision:
        products = {request.product: product} if product is not None else {}
        return self.evaluate_jobs([request], org=org, products=products, backend=backend,
                                  attestations=attestations)[0]

    def evaluate_jobs(self, requests: list[JobRequested], *, org: Org, products: dict[str, Product],
                      backend: str = "local",
                      attestations: Mapping[str, ImageAttestation] | None = None
                      ) -> list[PolicyDecision]:
        """Decide many requests in one call to Cedar per policy set (a batch of admissions)."""
        entities = []
        for tenant in sorted({r.tenant for r in requests}):
            team = org.team(tenant)
            entities.append({"uid": {"type": "Team", "id": tenant},
                             "attrs": {"projects": list(team.projects) if team else []},
                             "parents": []})
        queries = [{
            "principal": {"type": "Team", "id": r.tenant},
            "action": {"type": "Action", "id": "SubmitJob"},
            "resource": {"type": "Job", "id": r.job_id},
            "context": job_context(r, products.get(r.product), backend, attestations or {}),
        } for r in requests]
        enforced = self._run("enforced", self._enforced, queries, entities)
        audited = (self._run("audit", self._audit, queries, entities) if self._audit is not None
                   else [(True, (), [])] * len(requests))
        decisions = []
        for (admitted, ids, reasons), (allowed, audit_ids, _) in zip(enforced, audited, strict=True):
            findings = () if allowed else tuple(audit_ids)
            if admitted:
                decisions.append(PolicyDecision(True, ids, "all policies passed", findings))
            else:
                decisions.append(PolicyDecision(False, ids, "; ".join(reasons) or "denied by policy",
                                                findings))
        return decisions

    def _run(self, name: str, policy_set: cedarpy.PolicySet | None, queries: list[dict[str, Any]],
             entities: list[dict[str, Any]]) -> list[tuple[bool, tuple[str, ...], list[str]]]:
        if policy_set is None:
            return [(False, (), ["no policies are loaded: nothing permits the request"])] * len(queries)
        order = list(self._by_cedar_id[name])
        outcomes = []
        for result in cedarpy.is_authorized_batch(queries, policy_set, entities):
            if result.diagnostics.errors:
                raise PolicyError(f"policy evaluation failed: {result.diagnostics.errors}")
            cedar_ids = sorted((r for r in result.diagnostics.reasons if r in order), key=order.index)
            matched = [self._by_cedar_id[name][r] for r in cedar_ids]
            outcomes.append((result.allowed, tuple(p.id for p in matched),
                             [p.reason or p.id for p in matched]))
        return outcomes


def job_context(request: JobRequested, product: Product | None, backend: str,
                attestations: Mapping[str, ImageAttestation] | None = None) -> dict[str, Any]:
    """The facts policies decide on. Unknown products get limits that nothing satisfies; an
    image counts as scanned only with a "passed" attestation for its digest."""
    digest = image_digest(request.image) if request.image else None
    attestation = (attestations or {}).get(digest) if digest else None
    max_runtime = product.max_runtime_s if product else 0
    context: dict[str, Any] = {
        "gpus": request.gpus,
        "product": request.product,
        "product_known": product is not None,
        "product_min_gpus": product.min_gpus if product else 0,
        "product_max_gpus": product.max_gpus if product else 0,
        "product_max_runtime_s": max_runtime,
        "max_runtime_s": request.max_runtime_s or max_runtime,
        "manager_approved": False,
        "backend": backend,
        "image_pinned": digest is not None,
        "scan_passed": attestation is not None and attestation.verdict == "passed",
    }
    if request.dataset is not None:
        context["dataset_project"] = dataset_project(request.dataset) or ""
    return context
