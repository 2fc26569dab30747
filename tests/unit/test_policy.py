"""The Cedar guardrails: each policy, audit mode, and bad policy or catalog files."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from contracts import JobRequested
from contracts.catalog import (
    CatalogDataError,
    dataset_project,
    load_attestations,
    load_org,
    load_products,
)
from guardrails import POLICY_DIR
from guardrails.cedar import PolicyEngine, PolicyError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine.from_dir(POLICY_DIR)


Verdict = tuple[bool, tuple[str, ...], str]


def evaluate(engine: PolicyEngine, backend: str = "local", **fields: object) -> Verdict:
    team = str(fields.pop("tenant", "legal"))
    request = JobRequested(tenant=team, job_id="j1", command=["python", "train.py"], **fields)  # type: ignore[arg-type]
    org = load_org(POLICY_DIR / "org.yaml")
    product = load_products(POLICY_DIR / "products.yaml").get(request.product)
    decision = engine.evaluate_job(request, org=org, product=product, backend=backend)
    return decision.admitted, decision.policy_ids, decision.reason


def test_a_normal_fine_tune_passes(engine: PolicyEngine) -> None:
    admitted, ids, _ = evaluate(engine, product="fine-tune", gpus=2,
                                dataset="projects/legal-rag/datasets/v2")
    assert admitted and ids == ("jobs.allow-submit",)


def test_sixteen_gpus_need_manager_approval(engine: PolicyEngine) -> None:
    admitted, ids, reason = evaluate(engine, product="fine-tune", gpus=16)
    assert not admitted
    assert "jobs.gpus-need-manager-approval" in ids
    assert reason.startswith("more than 4 GPUs needs manager approval")


def test_five_gpus_within_the_product_still_need_approval(engine: PolicyEngine) -> None:
    admitted, ids, _ = evaluate(engine, product="fine-tune", gpus=5)
    assert not admitted and ids == ("jobs.gpus-need-manager-approval",)


@pytest.mark.parametrize(
    ("team", "dataset"),
    [("research", "projects/legal-rag/datasets/v2"),  # a project the team is not authorised for
     ("legal", "projects/../legal-rag/datasets/v2"),  # path traversal
     ("legal", "/etc/passwd"),
     ("ghost-team", "projects/legal-rag/datasets/v2")],  # a team the org does not know
)
def test_datasets_only_from_authorised_projects(engine: PolicyEngine, team: str, dataset: str) -> None:
    admitted, ids, reason = evaluate(engine, tenant=team, product="cpu-small", dataset=dataset)
    assert not admitted and ids == ("jobs.dataset-from-authorised-project",)
    assert "not authorised" in reason


def test_no_job_longer_than_its_products_max_runtime(engine: PolicyEngine) -> None:
    admitted, ids, reason = evaluate(engine, product="fine-tune", gpus=1, max_runtime_s=8 * 3600 + 1)
    assert not admitted and ids == ("jobs.max-runtime-of-product",)
    assert "lower --max-runtime" in reason
    assert evaluate(engine, product="fine-tune", gpus=1, max_runtime_s=8 * 3600)[0]


def test_unknown_product_and_gpu_range(engine: PolicyEngine) -> None:
    admitted, ids, _ = evaluate(engine, product="gpu-farm")
    assert not admitted and "jobs.known-product" in ids
    admitted, ids, _ = evaluate(engine, product="cpu-small", gpus=1)
    assert not admitted and ids == ("jobs.product-gpu-range",)


SCANNED = "registry.example.com/aicloud/python-job@sha256:" + (
    "3f1e7c5a9b2d4e6f8a0c1b3d5e7f9a2c4b6d8e0f1a3c5e7b9d2f4a6c8e0b1d3f")
FAILED_SCAN = "registry.example.com/research/old-trainer@sha256:" + (
    "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b")


@pytest.mark.parametrize(("image", "allowed"), [
    (None, False),  # no image named
    ("registry.example.com/aicloud/python-job:latest", False),  # a tag can move: not pinned
    ("registry.example.com/aicloud/python-job@sha256:" + "0" * 64, False),  # pinned, never scanned
    (FAILED_SCAN, False),  # scanned, and it failed
    (SCANNED, True),
])
def test_kubernetes_images_must_be_pinned_and_scanned(engine: PolicyEngine, image: str | None,
                                                      allowed: bool) -> None:
    attestations = load_attestations(POLICY_DIR / "image-attestations.yaml")
    request = JobRequested(tenant="legal", job_id="j1", command=["x"], product="cpu-small", image=image)
    decision = engine.evaluate_job(request, org=load_org(POLICY_DIR / "org.yaml"),
                                   product=load_products(POLICY_DIR / "products.yaml")["cpu-small"],
                                   backend="kubernetes", attestations=attestations)
    assert decision.admitted is allowed, decision.reason
    if not allowed:
        assert decision.policy_ids == ("jobs.image-pinned-and-scanned",)
        assert "pinned by digest" in decision.reason
    assert evaluate(engine, backend="local", product="cpu-small", image=image)[0]  # local: no images


def test_a_broken_attestation_file_is_refused_with_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "image-attestations.yaml"
    bad.write_text("attestations:\n  - digest: sha256:abc\n    verdict: passed\n"
                   "    scanner: x\n    scanned_at: now\n")
    with pytest.raises(CatalogDataError, match="digest"):
        load_attestations(bad)


def test_audit_mode_logs_without_enforcing(tmp_path: Path) -> None:
    shutil.copytree(POLICY_DIR, tmp_path, dirs_exist_ok=True)
    (tmp_path / "trial.cedar").write_text(
        '@id("trial.no-evaluation-jobs")\n@mode("audit")\n'
        '@reason("evaluation jobs are being phased out")\n'
        'forbid (principal, action == Action::"SubmitJob", resource)\n'
        'when { context.product == "cpu-small" };\n'
    )
    engine = PolicyEngine.from_dir(tmp_path)
    request = JobRequested(tenant="legal", job_id="j1", command=["x"], product="cpu-small")
    decision = engine.evaluate_job(request, org=load_org(tmp_path / "org.yaml"),
                                   product=load_products(tmp_path / "products.yaml")["cpu-small"])
    assert decision.admitted
    assert decision.audit_findings == ("trial.no-evaluation-jobs",)


def test_a_broken_policy_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.cedar").write_text("permit (principal, action, resource) when { oops };")
    with pytest.raises(PolicyError, match=r"broken\.cedar"):
        PolicyEngine.from_dir(tmp_path)
    with pytest.raises(PolicyError, match=r"no \*\.cedar files"):
        PolicyEngine.from_dir(tmp_path / "empty")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("products: {x: {description: d, workload: job, max_runtime_s: -1}}", "max_runtime_s"),
     ("products: {x: {description: d, workload: job, max_runtime_s: 1, max_gpus: 2}}", "gpu_types"),
     ("products: {x: {description: d, workload: laser, max_runtime_s: 1}}", "workload"),
     ("- just a list", "expected a mapping"),
     ("products: {x: [unclosed", "cannot read")],
)
def test_bad_products_file_names_the_file_and_field(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "products.yaml"
    path.write_text(content)
    with pytest.raises(CatalogDataError) as info:
        load_products(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_dataset_paths() -> None:
    assert dataset_project("projects/legal-rag/datasets/v2") == "legal-rag"
    assert dataset_project("projects/legal-rag/datasets/../v2") is None
    assert dataset_project("s3://bucket/x") is None


def test_the_cli_and_the_guardrails_never_import_a_service() -> None:
    """Quota enforces the policies and the CLI dry-runs them: both take the engine from the
    shared ``guardrails`` package, so neither side reaches into the other."""
    for package in ("aicloud", "guardrails"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                assert not [n for n in names if n.split(".")[0] == "services"], path
