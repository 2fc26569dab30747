"""Histories recorded before a workflow change still replay on today's workflow code.

``histories/`` holds JobWorkflow, EndpointWorkflow and NotebookWorkflow runs recorded on the
time-skipping server before the workflows began building contract events themselves (they
then emitted ``emit_*_event`` string-kind facts). A workflow change that alters the command
sequence for such a run without ``workflow.patched`` makes the replay raise a
nondeterminism error here, before it strands a running workflow in production. The ``-v2``
JobWorkflow histories were recorded on the code before runs stopped at their own deadline and
job events were published in local activities (typed publish, every activity remote).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.endpoint import EndpointWorkflow
from workflows.job import JobWorkflow
from workflows.notebook import NotebookWorkflow

pytestmark = pytest.mark.integration
HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_the_recorded_histories_cover_every_workflow_and_ending() -> None:
    names = {path.stem for path in HISTORIES}
    assert {"job-ok", "job-failed", "job-noprov", "job-cancel", "endpoint-lifecycle",
            "endpoint-refused", "nb-idle", "nb-stop", "job-ok-v2", "job-maxrt-v2"} <= names


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_a_history_recorded_before_the_change_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=[JobWorkflow, EndpointWorkflow, NotebookWorkflow],
                        data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
