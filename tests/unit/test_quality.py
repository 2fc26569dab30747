"""Answer quality (LLM-as-judge): the policy file, the router's sampling, the collector's judge
against the fake upstream's deterministic evaluator (real wire format), and the alert rule."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from aicloud.local.fake_llm import FakeLlm
from contracts import InferenceSampled
from guardrails.model_alerts import model_alert_rules
from guardrails.quality import QUALITY_FILE, QualityFileError, load_quality, score_of
from services.inference_router.quality import Sampler, answer_text
from services.inference_router.requests import parse_call
from services.inference_router.telemetry import Outcome
from services.observability_collector.quality import JudgeAccess, QualityJudge
from tests.unit.promtool_fixtures import run_promtool

pytestmark = pytest.mark.unit
SCORE = "aicloud_endpoint_quality_score"


def policy(**changes: Any) -> Any:
    return load_quality().model_copy(update=changes)


def test_the_shipped_policy_loads_and_a_broken_one_names_the_field(tmp_path: Path) -> None:
    shipped = load_quality()
    assert 0 < shipped.sample_rate <= 1 and shipped.judge_model == "judge"
    broken = tmp_path / "quality.yaml"
    broken.write_text(QUALITY_FILE.read_text().replace("sample_rate: 0.2", "sample_rate: 7"))
    with pytest.raises(QualityFileError, match=r"quality.yaml: sample_rate: Input should be less"):
        load_quality(broken)
    broken.write_text("judge_model: judge\n")
    with pytest.raises(QualityFileError, match="sample_rate: Field required"):
        load_quality(broken)


@pytest.mark.parametrize(("reply", "score"), [
    ('{"score": 4, "reason": "fine"}', 4), ('Sure! {"score": 2, "reason": "vague"}', 2),
    ("I would give it a 3 out of 5.", 3), ('{"score": 9}', None), ("no idea", None),
])
def test_the_judges_score_is_read_or_refused_never_guessed(reply: str, score: int | None) -> None:
    if score is None:
        with pytest.raises(ValueError, match="no score 1-5"):
            score_of(reply)
    else:
        assert score_of(reply) == score


def chat(text: str = "What is the capital of France?", *, stream: bool = False) -> Any:
    raw = json.dumps({"model": "qa", "stream": stream,
                      "messages": [{"role": "user", "content": text}]}).encode()
    return parse_call(raw, operation="chat", client="openai", request_id="r1", headers={},
                      max_tokens_cap=1000)


def served(call: Any, *, target: str = "platform/qa/1/qa", status: str = "ok",
           pii: list[str] | None = None, answer: str = "Paris.") -> Outcome:
    outcome = Outcome(call, "legal", "key-1", span=None)  # type: ignore[arg-type]
    outcome.target, outcome.version, outcome.status = target, "1", status
    outcome.pii, outcome.sampled, outcome.answer = pii or [], True, answer
    return outcome


async def test_the_router_samples_only_clean_successful_platform_answers() -> None:
    sent: list[InferenceSampled] = []

    async def publish(event: Any) -> None:
        sent.append(event)

    sampler = Sampler(publish, policy(sample_rate=1.0, max_chars=100), rng=random.Random(1))
    assert sampler.pick(chat()) and not sampler.pick(chat(stream=True))
    assert not Sampler(publish, policy(sample_rate=0.0)).pick(chat())
    assert not Sampler(publish, None).pick(chat())
    sampler.offer(served(chat(), answer="Paris is the capital. " * 20))
    sampler.offer(served(chat(), target="openai/fake-gpt"))  # an outside provider
    sampler.offer(served(chat(), status="error"))
    sampler.offer(served(chat(), pii=["email"]))  # personal data never goes on the bus
    await asyncio.sleep(0.05)
    [event] = sent
    assert (event.endpoint, event.version, event.tenant) == ("qa", "1", "legal")
    assert event.question == "What is the capital of France?" and len(event.answer) == 100
    half = Sampler(publish, policy(sample_rate=0.5), rng=random.Random(7))
    assert 400 < sum(half.pick(chat()) for _ in range(1000)) < 600


def test_answer_text_reads_both_wire_formats() -> None:
    assert answer_text({"choices": [{"message": {"content": "hi"}}]}) == "hi"
    assert answer_text({"content": [{"type": "text", "text": "a"}, {"type": "tool_use"},
                                    {"type": "text", "text": "b"}]}) == "ab"
    assert answer_text({"choices": "odd"}) == ""


def sample(answer: str, *, endpoint: str = "qa", version: str = "1") -> InferenceSampled:
    return InferenceSampled(tenant="legal", request_id="r", model="qa", endpoint=endpoint,
                            version=version, question="What is the capital of France?", answer=answer)


def gauge(registry: CollectorRegistry, endpoint: str, version: str = "1") -> float | None:
    return registry.get_sample_value(SCORE, {"endpoint": endpoint, "version": version})


async def test_the_judge_scores_through_the_wire_exactly_and_the_window_moves() -> None:
    fake = FakeLlm(api_key="judge-key")
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    registry = CollectorRegistry()
    judge = QualityJudge(registry, policy=policy(judge_model="fake-judge", window=4),
                         access=JudgeAccess(f"http://127.0.0.1:{port}", lambda: "judge-key"))
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(4):
                await judge.judge(client, sample("Paris is the capital of France."))
            assert gauge(registry, "qa") == 1.0
            for expected in (0.75, 0.5, 0.25, 0.0):  # the answers turn into refusals
                assert await judge.judge(client, sample("Sorry, I cannot help with that.")) == expected
            assert gauge(registry, "qa") == 0.0
            await judge.judge(client, sample("", version="2"))
            assert gauge(registry, "qa", "2") == 0.0 and gauge(registry, "qa") == 0.0
            judged = fake.requests[-1]["body"]
            assert judged["model"] == "fake-judge" and judged["messages"][0]["role"] == "system"
            assert "Score it from 1 to 5" in judged["messages"][0]["content"]
            wrong = QualityJudge(registry=None, policy=policy(judge_model="fake-judge"),
                                 access=JudgeAccess(f"http://127.0.0.1:{port}", lambda: "bad-key"))
            assert await wrong.judge(client, sample("Paris.")) is None  # 401: nothing recorded
            assert wrong.windows == {}
    finally:
        await runner.cleanup()
    assert registry.get_sample_value("aicloud_quality_judgements_total", {"outcome": "scored"}) == 9
    judge.forget("qa")
    assert gauge(registry, "qa") is None and judge.windows == {}


def test_the_judge_without_a_key_or_room_drops_and_counts() -> None:
    registry = CollectorRegistry()
    judge = QualityJudge(registry, policy=policy(), access=JudgeAccess("http://unused", lambda: None))
    for n in range(1200):
        judge.offer(sample("x", endpoint=f"e{n}"))
    assert judge.queue.qsize() == 1000
    assert registry.get_sample_value("aicloud_quality_judgements_total", {"outcome": "dropped"}) == 200
    for n in range(600):
        judge.record(f"endpoint-{n}", "1", 1.0)
    assert len(judge.windows) == 500  # the endpoint label cap: the rest are not tracked


def test_a_quality_below_the_threshold_for_five_minutes_opens_a_ticket(promtool: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(model_alert_rules(quality_threshold=0.6), sort_keys=False))
    poor = f'{SCORE}{{endpoint="qa",version="2",instance="c"}}'
    good = f'{SCORE}{{endpoint="qa",version="1",instance="c"}}'
    spec = tmp_path / "tests.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": poor, "values": "0.9x3 0.25x10"}, {"series": good, "values": "0.9x13"}],
        "alert_rule_test": [
            {"eval_time": "6m", "alertname": "EndpointQualityLow", "exp_alerts": []},  # pending
            {"eval_time": "10m", "alertname": "EndpointQualityLow", "exp_alerts": [{
                "exp_labels": {"severity": "ticket", "endpoint": "qa", "version": "2"},
                "exp_annotations": {
                    "summary": "Endpoint qa version 2: its answers are judged poor",
                    "description": "The evaluator model's mean score of the recent sampled answers "
                                   "of qa 2 is 0.25 (below 0.6 for 5m; 1 is best).",
                    "runbook_url": "docs/runbooks/models.md#endpoint-quality-low"}}]}]}]}))
    result = run_promtool(promtool, "test", "rules", spec)
    assert result.returncode == 0, result.stdout + result.stderr
