"""What ``aicloud create job`` makes of quota's decision, and the durations it takes."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from aicloud.durations import parse_duration
from aicloud.jobs import create_app, decision_line, decision_of

pytestmark = pytest.mark.unit


def job(status: str, *history: tuple[str, str], reason: str = "") -> dict[str, Any]:
    entries = [{"status": s, "at": None, "reason": why} for s, why in (("requested", ""), *history)]
    return {"job_id": "j-1", "team": "legal", "status": status, "reason": reason, "history": entries}


@pytest.mark.parametrize(("text", "seconds"), [
    ("3s", 3), ("90s", 90), ("30m", 1800), ("12h", 43200), ("900", 900), (" 5m ", 300),
])
def test_a_duration_is_seconds_minutes_hours_or_bare_seconds(text: str, seconds: int) -> None:
    assert parse_duration(text, option="--max-runtime") == seconds


@pytest.mark.parametrize("text", ["3x", "0", "0s", "-5", "1.5h", "m", "", "3 s", "²"])
def test_a_bad_duration_exits_2_naming_the_option_and_an_example(
        text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exited:
        parse_duration(text, option="--max-runtime")
    assert exited.value.exit_code == 2
    err = capsys.readouterr().err
    assert f"--max-runtime {text!r} is not a duration" in err and "e.g. --max-runtime 90s" in err


def test_create_job_refuses_a_bad_max_runtime_before_submitting_anything() -> None:
    result = CliRunner().invoke(create_app, ["job", "--max-runtime", "3x", "--", "true"])
    assert result.exit_code == 2
    assert "--max-runtime '3x' is not a duration" in result.output


@pytest.mark.parametrize("param", ["lr.rate=0.1", "a b=1", "1st=x", "lr-rate=0.1"])
def test_create_job_refuses_a_param_key_that_cannot_be_a_variable_before_submitting_anything(
        param: str) -> None:
    result = CliRunner().invoke(create_app, ["job", "--param", param, "--", "true"])
    assert result.exit_code == 2
    key, said = param.partition("=")[0], " ".join(result.output.split())
    assert f"the key {key!r} cannot be an environment variable name" in said
    assert "AICLOUD_PARAM_<KEY>" in said


def test_notebooks_extend_refuses_a_bad_duration_naming_its_own_option(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from aicloud import endpoints

    sent: list[Any] = []
    monkeypatch.setattr(endpoints, "_call", lambda *args, **kwargs: sent.append(args))
    result = CliRunner().invoke(endpoints.notebooks_app, ["extend", "nb-1", "--by", "3x"])
    assert result.exit_code == 2
    assert "--by '3x' is not a duration" in result.output and sent == [], "nothing reaches the API"


def test_a_job_still_requested_has_no_decision() -> None:
    assert decision_of(job("requested")) is None


@pytest.mark.parametrize("decided", ["admitted", "queued", "rejected"])
def test_the_decision_is_the_status_quota_gave_with_its_reason(decided: str) -> None:
    assert decision_of(job(decided, (decided, "why"), reason="why")) == (decided, "why")


def test_the_latest_decision_counts_when_a_queued_job_was_admitted_since() -> None:
    seen = job("running", ("queued", "queued: 1 job(s) ahead"), ("admitted", "from the queue"),
               ("running", ""))
    assert decision_of(seen) == ("admitted", "from the queue")


def test_a_job_past_its_decision_without_one_in_its_history_was_admitted() -> None:
    # `admitted` arrived after `provisioning`: the catalog never moves a status backwards
    assert decision_of(job("provisioning", ("provisioning", ""))) == ("admitted", "")


def test_an_admitted_job_says_so_with_quotas_reason_and_where_it_is_now() -> None:
    assert decision_line(job("admitted", ("admitted", "team legal uses 0 of 8 GPUs; this job's 1 fit"))) == (
        "job j-1 admitted: team legal uses 0 of 8 GPUs; this job's 1 fit")
    assert decision_line(job("running", ("admitted", "fits"), ("running", ""))) == (
        "job j-1 admitted (now running): fits")


def test_a_queued_job_says_why_and_how_many_wait_ahead_and_how_to_follow_it() -> None:
    reason = ("queued: team legal uses 8 of 8 GPUs (0 free, 1 needed, 2 job(s) ahead); it starts "
              "when running work ends")
    assert decision_line(job("queued", ("queued", reason))).splitlines() == [
        "job j-1 is queued: team legal uses 8 of 8 GPUs (0 free, 1 needed, 2 job(s) ahead); it "
        "starts when running work ends",
        "follow it with `aicloud jobs wait j-1`",
    ]
