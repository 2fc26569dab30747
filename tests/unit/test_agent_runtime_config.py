"""The agent runtime refuses configurations that would run untrusted code unsafely or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.agent_runtime.app import build
from services.agent_runtime.errors import InvalidCommand, check_command
from services.agent_runtime.settings import AgentRuntimeSettings
from services.agent_runtime.templates import TemplateError, load_templates
from services.kit.settings import ConfigError

pytestmark = pytest.mark.unit
ENV = {"nats_url": "nats://127.0.0.1:1", "database_url": "postgresql://x@127.0.0.1:1/x"}


def test_no_sandbox_installed_means_no_start_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match="neither runsc nor bwrap"):
        build(AgentRuntimeSettings(**ENV))
    build(AgentRuntimeSettings(**ENV, isolation="rlimits"))  # an explicit choice is honoured


def test_a_bad_templates_file_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("templates:\n  python:\n    limits: {memory_mb: 1}\n    pool: -1\n")
    with pytest.raises(TemplateError) as info:
        load_templates(bad)
    assert "python.limits.memory_mb" in str(info.value) and "python.pool" in str(info.value)
    with pytest.raises(TemplateError, match="no such templates file"):
        load_templates(tmp_path / "missing.yaml")


def test_a_bad_master_key_stops_the_start() -> None:
    with pytest.raises(ConfigError, match="must be 32"):
        build(AgentRuntimeSettings(**ENV, isolation="rlimits", state_master_keys='{"k1": "c2hvcnQ="}',
                                   state_active_key="k1"))


@pytest.mark.parametrize(("argv", "words"), [
    ([], "empty"), (["a\x00"], "NUL"), (["\udcff"], "UTF-8"), (["x" * 300_000], "limit is"),
])
def test_commands_that_cannot_run_are_refused(argv: list[str], words: str) -> None:
    with pytest.raises(InvalidCommand, match=words):
        check_command(argv)
