"""The answer-quality policy (``policies/quality.yaml``): what the router samples and how the
collector's judge scores it. Read by both, and by the alert rules for the threshold."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from guardrails import POLICY_DIR

QUALITY_FILE = POLICY_DIR / "quality.yaml"


class QualityFileError(ValueError):
    """The quality policy cannot be used; the message names the file and the field."""


class QualityPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sample_rate: float = Field(ge=0, le=1, description="Share of answers judged; 0 turns it off.")
    judge_model: str = Field(min_length=1, max_length=128, description="A router model alias.")
    window: int = Field(ge=1, le=10_000, description="Scores averaged per endpoint and version.")
    threshold: float = Field(gt=0, lt=1, description="EndpointQualityLow below this mean (0..1).")
    max_chars: int = Field(ge=100, le=100_000, description="Question and answer are cut to this.")
    rubric: str = Field(min_length=20, max_length=20_000)


def load_quality(path: Path = QUALITY_FILE) -> QualityPolicy:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise QualityFileError(f"{path}: cannot read: {exc}") from None
    try:
        return QualityPolicy.model_validate(raw if isinstance(raw, dict) else {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'file'}: "
                             f"{str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors())
        raise QualityFileError(f"{path}: {problems}") from None


def score_of(reply: str) -> int:
    """The judge's 1-5 score from its reply: the JSON object it was asked for, else the first
    digit 1-5 in it. ValueError when there is none (the judgement is discarded, not guessed)."""
    import json
    import re

    match = re.search(r"\{.*\}", reply, re.DOTALL)
    if match:
        try:
            score = json.loads(match.group(0)).get("score")
            if isinstance(score, int | float) and 1 <= score <= 5:
                return round(score)
        except (ValueError, AttributeError):
            pass
    digit = re.search(r"\b([1-5])\b", reply)
    if digit is None:
        raise ValueError(f"no score 1-5 in the judge's reply: {reply[:200]!r}")
    return int(digit.group(1))
