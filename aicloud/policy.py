"""``aicloud policy test`` (offline dry run) and ``aicloud catalog list``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aicloud.output import Format, console, emit, fail
from contracts import JobRequested
from contracts.catalog import CatalogDataError, Product, load_attestations, load_org, load_products
from guardrails import POLICY_DIR
from guardrails.cedar import PolicyEngine, PolicyError

policy_app = typer.Typer(help="Guardrails as code (Cedar policies under policies/).",
                         no_args_is_help=True)
catalog_app = typer.Typer(help="What the platform offers.", no_args_is_help=True)
PolicyDir = Annotated[Path, typer.Option(help="Folder with *.cedar, products.yaml, org.yaml.")]
Output = Annotated[Format, typer.Option("--output", "-o", help="table or json")]


@policy_app.command("test")
def test(
    team: Annotated[str, typer.Option(envvar="AICLOUD_TEAM", help="Team asking.")],
    gpus: Annotated[int, typer.Option(min=0)] = 0,
    product: Annotated[str | None, typer.Option(help="Default: fine-tune with GPUs, else cpu-small.")] = None,
    dataset: Annotated[str | None, typer.Option()] = None,
    max_runtime: Annotated[int | None, typer.Option(min=1, help="Seconds.")] = None,
    backend: Annotated[str, typer.Option(help="local or kubernetes")] = "local",
    image: Annotated[str | None, typer.Option(help="registry/name@sha256:... (kubernetes)")] = None,
    policy_dir: PolicyDir = POLICY_DIR,
    output: Output = Format.table,
) -> None:
    """Evaluate a job request against the policies offline. Exit code 1 when it would be refused."""
    try:
        engine = PolicyEngine.from_dir(policy_dir)
        org = load_org(policy_dir / "org.yaml")
        products = load_products(policy_dir / "products.yaml")
        request = JobRequested(
            tenant=team, job_id="dry-run", command=["true"], gpus=gpus, dataset=dataset,
            product=product or ("fine-tune" if gpus else "cpu-small"), max_runtime_s=max_runtime,
            image=image,
        )
        attestations = load_attestations(policy_dir / "image-attestations.yaml")
    except (PolicyError, CatalogDataError, ValueError) as exc:
        raise fail(str(exc), code=2) from None
    decision = engine.evaluate_job(request, org=org, product=products.get(request.product),
                                   backend=backend, attestations=attestations)
    row = {"decision": "allow" if decision.admitted else "deny",
           "policy_ids": list(decision.policy_ids), "reason": decision.reason,
           "audit_findings": list(decision.audit_findings)}
    emit(row, fmt=output, columns=("decision", "policy_ids", "reason", "audit_findings"))
    if not decision.admitted:
        raise typer.Exit(1)


@catalog_app.command("list")
def list_products(policy_dir: PolicyDir = POLICY_DIR, output: Output = Format.table) -> None:
    """Compute products: GPUs, max runtime, network, price class."""
    try:
        products = load_products(policy_dir / "products.yaml")
    except CatalogDataError as exc:
        raise fail(str(exc), code=2) from None
    rows = [{**p.model_dump(mode="json"), "engine": _engine(p),
             "sandbox": SANDBOX_BY_ENGINE[p.engine or ("" if p.workload == "job" else "local")]}
            for p in products.values()]
    if output is Format.table:
        console.print("[dim]GPU types and capacity of the local stack are simulated[/]")
    emit(rows, fmt=output, columns=("name", "workload", "gpu_types", "max_gpus", "max_runtime_s",
                                    "network", "price_class", "engine", "sandbox"))
    if output is Format.table:
        console.print(
            "[dim]engine platform's: the provisioner's backend (local, or ray with `dev up --engine "
            "ray`); a product bound to an engine (products.yaml `engine:`) runs there. sandbox: the "
            "strongest available, in that order; a Ray node without runsc or bwrap runs jobs bare "
            "and the job's log says so[/]")


def _engine(product: Product) -> str:
    if product.workload != "job":
        return "local"  # notebooks and endpoints run on the provisioner's machine
    return product.engine or "platform's"


SANDBOX_BY_ENGINE = {
    "local": "gvisor>bwrap>rlimits",
    "ray": "node's gvisor>bwrap>bare",
    "kubernetes": "gvisor runtimeclass",
    "": "the engine's",
}
"""How each engine isolates a job (docs/architecture.md says more)."""
