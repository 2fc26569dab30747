"""Kit pieces that need no server: settings, logging redaction, architecture rules."""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import pytest
import structlog

from services.kit.logging import configure_logging
from services.kit.settings import ConfigError, load_settings
from services.provisioner.settings import ProvisionerSettings
from services.quota.settings import QuotaSettings

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_missing_settings_fail_fast_naming_each_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NATS_URL", "DATABASE_URL", "TEMPORAL_ADDRESS"):
        monkeypatch.delenv(f"AICLOUD_PROVISIONER_{var}", raising=False)
    with pytest.raises(ConfigError) as info:
        load_settings(ProvisionerSettings)
    message = str(info.value)
    assert "AICLOUD_PROVISIONER_NATS_URL: is required but not set" in message
    assert "AICLOUD_PROVISIONER_DATABASE_URL: is required but not set" in message
    assert "AICLOUD_PROVISIONER_TEMPORAL_ADDRESS: is required but not set" in message


def test_a_backend_that_is_not_wired_is_refused_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AICLOUD_PROVISIONER_NATS_URL", "nats://127.0.0.1:4222")
    monkeypatch.setenv("AICLOUD_PROVISIONER_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("AICLOUD_PROVISIONER_TEMPORAL_ADDRESS", "127.0.0.1:7233")
    monkeypatch.setenv("AICLOUD_PROVISIONER_BACKEND", "kubernetes")
    with pytest.raises(ConfigError) as info:
        load_settings(ProvisionerSettings)
    assert "AICLOUD_PROVISIONER_BACKEND" in str(info.value) and "set it to 'local'" in str(info.value)
    monkeypatch.setenv("AICLOUD_PROVISIONER_BACKEND", "local")
    assert load_settings(ProvisionerSettings).backend == "local"


def test_invalid_settings_say_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AICLOUD_QUOTA_NATS_URL", "http://localhost:4222")
    monkeypatch.setenv("AICLOUD_QUOTA_DATABASE_URL", "mysql://x")
    monkeypatch.setenv("AICLOUD_QUOTA_HTTP_PORT", "99999")
    with pytest.raises(ConfigError) as info:
        load_settings(QuotaSettings)
    message = str(info.value)
    assert "AICLOUD_QUOTA_NATS_URL" in message and "nats://" in message
    assert "AICLOUD_QUOTA_DATABASE_URL" in message and "postgresql://" in message
    assert "AICLOUD_QUOTA_HTTP_PORT" in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [("AICLOUD_QUOTA_TEAM_BUDGETS_USD", '{"legal": -5}'), ("AICLOUD_QUOTA_TEAM_GPU_QUOTAS", '{"legal": -1}'),
     ("AICLOUD_QUOTA_TEAM_GPU_QUOTAS", "not json"), ("AICLOUD_QUOTA_NODE_GPUS", "-2")],
)
def test_invalid_quota_numbers_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv("AICLOUD_QUOTA_NATS_URL", "nats://127.0.0.1:4222")
    monkeypatch.setenv("AICLOUD_QUOTA_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings(QuotaSettings)
    assert variable in str(info.value)


def test_settings_read_the_service_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AICLOUD_QUOTA_NATS_URL", "nats://127.0.0.1:4222")
    monkeypatch.setenv("AICLOUD_QUOTA_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("AICLOUD_QUOTA_TEAM_GPU_QUOTAS", '{"legal": 16}')
    settings = load_settings(QuotaSettings)
    assert settings.team_gpu_quotas == {"legal": 16}
    assert settings.schema_name == "quota"


def test_logs_are_json_with_secrets_redacted() -> None:
    stream = io.StringIO()
    configure_logging(service="test", stream=stream)
    structlog.get_logger().info(
        "upstream.called", api_key="sk-abcdefghijklmnop", url="postgresql://app:hunter2@db/x",
        note="header was Bearer abcdefghijklmnopqrstuvwxyz", team="legal",
    )
    record = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert record["event"] == "upstream.called" and record["service"] == "test"
    assert record["api_key"] == "[REDACTED]"
    assert "hunter2" not in stream.getvalue() and "abcdefghijklmnop" not in stream.getvalue()
    assert record["team"] == "legal"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_services_never_import_each_other() -> None:
    services = [p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists()]
    for service in services:
        if service == "kit":
            continue
        for path in (ROOT / "services" / service).rglob("*.py"):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] == "services" and len(parts) > 1:
                    assert parts[1] in (service, "kit"), f"{path} imports {name}"


def test_kit_and_workflows_do_not_depend_on_services_or_io_frameworks() -> None:
    for path in (ROOT / "services" / "kit").rglob("*.py"):
        assert not {n for n in _imports(path) if n.startswith("services.")
                    and not n.startswith("services.kit")}, path
    for path in (ROOT / "workflows").rglob("*.py"):
        banned = {n for n in _imports(path)
                  if n.split(".")[0] in {"faststream", "httpx", "nats", "sqlalchemy", "asyncpg"}}
        assert not banned, f"{path} imports {banned}: workflows must stay deterministic"
