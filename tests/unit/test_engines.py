"""Products bound to an engine (policies/products.yaml ``engine:``): the provisioner runs their
jobs there, refuses clearly what it cannot run, and `aicloud catalog list` says where each runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from aicloud.cli import app
from contracts import JobRequested
from contracts.catalog import Product, load_products
from guardrails import POLICY_DIR
from services.provisioner.backends.engines import Engines, EngineUnavailable
from services.provisioner.backends.local import LocalBackend

pytestmark = pytest.mark.unit


def product(name: str, engine: str | None) -> Product:
    return Product(name=name, description=name, workload="job", max_runtime_s=60, engine=engine)  # type: ignore[arg-type]


def job(product: str) -> JobRequested:
    return JobRequested(tenant="legal", job_id="j-1", command=["true"], product=product)


def test_a_bound_product_runs_on_its_engine_and_the_rest_on_the_platforms(tmp_path: Path) -> None:
    cluster, local = (LocalBackend(work_dir=tmp_path / n, memory_limit_mb=256) for n in ("ray", "local"))
    engines = Engines("ray", {"ray": cluster, "local": local},
                      {"small": product("small", "local"), "tune": product("tune", None)})
    assert engines.for_request(job("small")) is local
    assert engines.for_request(job("tune")) is cluster
    assert engines.for_request(job("not-in-the-catalog")) is cluster


def test_a_product_bound_to_an_engine_the_platform_does_not_run_is_refused_naming_both(
        tmp_path: Path) -> None:
    engines = Engines("local", {"local": LocalBackend(work_dir=tmp_path, memory_limit_mb=256)},
                      {"big": product("big", "ray")})
    with pytest.raises(EngineUnavailable, match=r"product big runs on the ray engine .* but this "
                                                r"platform runs local"):
        engines.for_request(job("big"))


def test_only_jobs_are_bound_to_an_engine() -> None:
    with pytest.raises(ValidationError, match="only jobs are bound to an engine"):
        Product(name="nb", description="nb", workload="notebook", max_runtime_s=60, engine="ray")


def test_catalog_list_says_which_engine_and_sandbox_each_product_runs_on(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    products = policies / "products.yaml"
    products.write_text(products.read_text().replace(
        "  cpu-small:\n", "  cpu-small:\n    engine: local\n", 1))
    assert load_products(products)["cpu-small"].engine == "local"
    result = CliRunner().invoke(app, ["catalog", "list", "--policy-dir", str(policies), "-o", "json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert (rows["cpu-small"]["engine"], rows["cpu-small"]["sandbox"]) == ("local", "gvisor>bwrap>rlimits")
    assert rows["fine-tune"]["engine"] == "platform's"
    assert rows["notebook"]["engine"] == "local"  # notebooks run on the provisioner's machine
