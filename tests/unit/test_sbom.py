"""The CycloneDX SBOM that CI keeps as .ci/sbom.cdx.json (`make sbom`).

The test runs the same tool on the environment running the tests, into tmp_path, and checks the
document against the CycloneDX JSON schema (strict) and against what is actually installed. Schema
validation is the slow part: jsonschema checks the IRI syntax of every URL in the document, about
13 s of CPU for the ~240 components here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TOOL = Path(sys.executable).parent / "cyclonedx-py"
# runtime (the bus, the workflows, the data plane) and dev (the in-memory broker the tests use)
KEY_DEPS = ("nats-py", "temporalio", "faststream", "sqlmodel", "fastapi", "structlog")


@pytest.fixture(scope="module")
def sbom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not TOOL.exists():
        pytest.skip("cyclonedx-bom is not installed (make install puts it in .venv)")
    out = tmp_path_factory.mktemp("sbom") / "sbom.cdx.json"
    # --no-validate: the test validates below, and reports the schema error if there is one
    subprocess.run(
        [str(TOOL), "environment", "--pyproject", str(ROOT / "pyproject.toml"), "--output-format", "JSON",
         "--no-validate", "--output-file", str(out), sys.executable],
        check=True, capture_output=True, timeout=60,
    )
    return {"text": out.read_text(), "doc": json.loads(out.read_text())}


def test_sbom_is_valid_cyclonedx_json(sbom: dict[str, Any]) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    doc = sbom["doc"]
    assert doc["bomFormat"] == "CycloneDX"
    version = SchemaVersion.from_version(doc["specVersion"])
    error = JsonStrictValidator(version).validate_str(sbom["text"])
    assert error is None, f"not valid CycloneDX {doc['specVersion']}: {error}"


def test_sbom_describes_aicloud_and_its_key_dependencies(sbom: dict[str, Any]) -> None:
    doc = sbom["doc"]
    assert doc["metadata"]["component"]["name"] == "aicloud"
    components = {c["name"].lower(): c for c in doc["components"]}
    for name in KEY_DEPS:
        component = components.get(name)
        assert component, f"{name} missing from the SBOM"
        assert component["version"] == metadata.version(name), name
        assert component["purl"] == f"pkg:pypi/{name}@{component['version']}"
    root_ref = doc["metadata"]["component"]["bom-ref"]
    direct = next(d["dependsOn"] for d in doc["dependencies"] if d["ref"] == root_ref)
    for name in ("nats-py", "temporalio"):
        assert components[name]["bom-ref"] in direct, f"{name} is a direct dependency of aicloud"
