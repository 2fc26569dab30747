"""SLOs as files (``policies/slos.yaml``) turned into Prometheus rules.

For each SLO: recording rules ``slo:sli_error:ratio_rate<window>{slo, service}`` for the error
ratio over 5m, 30m, 1h, 6h and 3d, and the multi-window, multi-burn-rate alerts of the Google SRE
workbook (ch. 5, "Alerting on SLOs"): an alert needs the burn rate over a long window, so a short
spike does not page, and over a short one, so the alert ends soon after the errors do.

A burn rate of 1 spends the error budget (``1 - objective``) exactly over the SLO's window; the
factors 14.4, 6 and 1 are the workbook's (2 % of a 30-day budget in 1 h, 5 % in 6 h, 10 % in 3 d),
kept as they are for 28-day windows too.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.utils import floatToGoString
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

WINDOWS = ("5m", "30m", "1h", "6h", "3d")
RECORD = "slo:sli_error:ratio_rate{window}"
RUNBOOK_BASE = "docs/runbooks/slos.md"  # the chart sets an absolute URL (AICLOUD_SLO_RUNBOOK_BASE)
NAME = r"^[a-z][a-z0-9-]{0,62}$"  # also a label value and a Markdown anchor
SELECTOR = re.compile(r"^(?P<metric>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<matchers>[^{}]*)\})?$")
HOURS = {"m": 1 / 60, "h": 1.0, "d": 24.0}


@dataclass(frozen=True)
class BurnAlert:
    alert: str
    severity: str
    factor: float
    long: str
    short: str


ALERTS = (
    BurnAlert("SLOErrorBudgetBurnFast", "page", 14.4, "1h", "5m"),
    BurnAlert("SLOErrorBudgetBurnSlow", "page", 6, "6h", "30m"),
    BurnAlert("SLOErrorBudgetBurnTicket", "ticket", 1, "3d", "6h"),
)


class SloFileError(ValueError):
    """The SLO file cannot be used; the message names the file, the SLO and the field."""


def _selector(value: str) -> str:
    if not SELECTOR.match(value.strip()):
        raise ValueError(f"{value!r} must be a series selector, metric{{label=\"value\"}}: the rules "
                         "add rate() and sum() themselves")
    return value.strip()


class RatioMetric(BaseModel):
    """Two counters: good (or bad) events and all of them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    good: str | None = None
    bad: str | None = None
    total: str

    @field_validator("good", "bad", "total")
    @classmethod
    def _selectors(cls, value: str | None) -> str | None:
        return value if value is None else _selector(value)

    @model_validator(mode="after")
    def _one_of_good_or_bad(self) -> RatioMetric:
        if (self.good is None) == (self.bad is None):
            raise ValueError("give exactly one of good, bad")
        return self


class Latency(BaseModel):
    """Requests of a histogram at or under ``threshold_s``, one of its bucket bounds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    histogram: str
    threshold_s: float = Field(gt=0)

    @field_validator("histogram")
    @classmethod
    def _histogram(cls, value: str) -> str:
        value = _selector(value)
        if re.match(r"^\w+_(bucket|count|sum)\b", value):
            raise ValueError("name the histogram itself, not its _bucket, _count or _sum series")
        return value


class Indicator(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ratio_metric: RatioMetric | None = None
    latency: Latency | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Indicator:
        if (self.ratio_metric is None) == (self.latency is None):
            raise ValueError("give exactly one of ratio_metric, latency")
        return self


class Slo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME)
    service: str = Field(pattern=NAME, description="The `service` label of its series and alerts.")
    description: str = Field(min_length=1)
    indicator: Indicator
    objective: float = Field(description="Share of good events, e.g. 0.999.")
    time_window: str = Field(pattern=r"^[1-9][0-9]*d$", description="Rolling, e.g. 28d.")

    @field_validator("objective")
    @classmethod
    def _objective(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError("must be > 0 and < 1" if value <= 0 else "must be < 1")
        return value

    @property
    def budget(self) -> Decimal:
        return 1 - Decimal(str(self.objective))


def load_slos(path: Path) -> list[Slo]:
    """The SLOs of ``path``; every problem in it raised at once as a SloFileError."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SloFileError(f"{path}: cannot read: {exc}") from None
    specs = raw.get("slos") if isinstance(raw, dict) else None
    if not isinstance(specs, dict) or not specs:
        raise SloFileError(f"{path}: expected a mapping `slos:` of SLOs by name")
    slos, problems = [], []
    for name, spec in specs.items():
        try:
            slos.append(Slo.model_validate({**(spec if isinstance(spec, dict) else {}), "name": name}))
        except ValidationError as exc:
            problems += [f"{path}: slo {name}: {_field(error)}" for error in exc.errors()]
    if problems:
        raise SloFileError("\n".join(problems))
    return slos


def _field(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def build_rules(slos: list[Slo], *, runbook_base: str = RUNBOOK_BASE) -> dict[str, Any]:
    """A Prometheus rules document: one group per SLO, its recording rules before its alerts
    (a group evaluates in order, so the alerts read this round's ratios)."""
    return {"groups": [{"name": f"slo:{slo.name}",
                        "rules": [*_records(slo), *(_alert(slo, a, runbook_base) for a in ALERTS)]}
                       for slo in slos]}


def _records(slo: Slo) -> list[dict[str, Any]]:
    return [{"record": RECORD.format(window=w), "expr": error_ratio(slo, w),
             "labels": {"slo": slo.name, "service": slo.service}} for w in WINDOWS]


def error_ratio(slo: Slo, window: str) -> str:
    """PromQL for the share of bad events over ``window``."""
    def rate(selector: str) -> str:
        return f"sum(rate({selector}[{window}]))"

    ratio, latency = slo.indicator.ratio_metric, slo.indicator.latency
    if ratio is not None and ratio.bad is not None:
        return f"{rate(ratio.bad)} / {rate(ratio.total)}"
    if ratio is not None and ratio.good is not None:
        return f"1 - ({rate(ratio.good)} / {rate(ratio.total)})"
    assert latency is not None  # Indicator's validator: exactly one is set
    good = _series(latency.histogram, "_bucket", _le(latency.threshold_s))
    return f"1 - ({rate(good)} / {rate(_series(latency.histogram, '_count'))})"


def _series(selector: str, suffix: str, extra: str = "") -> str:
    match = SELECTOR.match(selector)
    assert match is not None  # checked on load
    matchers = ",".join(m for m in (match["matchers"] or "", extra) if m.strip())
    return f"{match['metric']}{suffix}{{{matchers}}}" if matchers else f"{match['metric']}{suffix}"


def _le(threshold: float) -> str:
    """The bucket's ``le`` matcher. Python clients write whole bounds as 300.0, Prometheus 3
    normalises them to 300 on scrape: match both."""
    python, plain = floatToGoString(threshold), f"{threshold:g}"
    return f'le="{python}"' if python == plain else f'le=~"{plain}|{python}"'



def _alert(slo: Slo, burn: BurnAlert, runbook_base: str) -> dict[str, Any]:
    threshold = f"({burn.factor:g} * {slo.budget})"
    expr = " and ".join(f'{RECORD.format(window=w)}{{slo="{slo.name}"}} > {threshold}'
                        for w in (burn.long, burn.short))
    spent = burn.factor * _hours(burn.long) / _hours(slo.time_window)
    return {
        "alert": burn.alert,
        "expr": expr,
        "labels": {"severity": burn.severity, "slo": slo.name, "service": slo.service},
        "annotations": {
            "summary": f"{slo.service} {slo.name}: error budget burning {burn.factor:g}x too fast",
            "description": (
                f"The error ratio of {slo.name} is above {burn.factor:g} x {_pct(slo.budget)} over both "
                f"the last {burn.long} and the last {burn.short}. At this rate {spent:.1%} of the "
                f"{slo.time_window} error budget goes in {burn.long}. Objective: {_pct(slo.objective)} "
                f"over {slo.time_window}."),
            "runbook_url": f"{runbook_base}#{slo.name}",
        },
    }


def _hours(duration: str) -> float:
    return int(duration[:-1]) * HOURS[duration[-1]]


def _pct(share: float | Decimal) -> str:
    return f"{float(share) * 100:g}%"


def render(rules: dict[str, Any]) -> str:
    header = "# Generated by `aicloud slo rules` from the SLO file; edit that file, not this one.\n"
    return header + yaml.safe_dump(rules, sort_keys=False, width=1000)


def write_rules(rules: dict[str, Any], path: Path) -> Path:
    """Write atomically: Prometheus may reload the file at any moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as out:
        out.write(render(rules))
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Reload:
    rules: dict[str, Any] | None  # what to serve: the new rules, or the last good ones
    error: SloFileError | None  # why the new file was refused; None when it was taken


def load_or_keep(path: Path, last_good: dict[str, Any] | None, *,
                 runbook_base: str = RUNBOOK_BASE) -> Reload:
    """Rules from ``path``; when the file is broken, ``last_good`` keeps serving and the error
    comes back for the caller to log."""
    try:
        return Reload(build_rules(load_slos(path), runbook_base=runbook_base), None)
    except SloFileError as exc:
        return Reload(last_good, exc)
