"""The cost ledger's rules: what a unit of usage costs, where it lands, when budgets alert."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from uuid import uuid4

import pytest
from pydantic import ValidationError

from contracts import InferenceCompleted, UsageRecorded
from contracts.pricebook import load_price_book
from services.cost_ledger.api import BudgetIn
from services.cost_ledger.domain import (
    Budget,
    Unbillable,
    crossed,
    forecast,
    inference_lines,
    usage_lines,
)

pytestmark = pytest.mark.unit
PRICES = load_price_book(Path(__file__).resolve().parents[2] / "policies" / "pricebook.yaml")
TEAMS = frozenset({"legal", "research"})


def usage(**fields: object) -> UsageRecorded:
    base: dict[str, object] = dict(
        tenant="legal", kind="training", resource_id="job-1", gpu_type="h100-80gb",
        gpus_requested=2, gpus_used=1, started_at=datetime(2026, 11, 3, 10, 0, tzinfo=UTC),
        ended_at=datetime(2026, 11, 3, 10, 30, tzinfo=UTC))
    return UsageRecorded(**{**base, **fields})  # type: ignore[arg-type]


def test_charges_max_of_requested_and_used_per_second() -> None:
    [line] = usage_lines(usage(), PRICES, teams=TEAMS)
    assert line.quantity == 2 * 1800 and line.unit == "gpu_seconds"
    assert line.usd == Decimal("6.88")  # 2 GPUs x 0.5 h x $6.88
    [used_more] = usage_lines(usage(gpus_requested=1, gpus_used=3), PRICES, teams=TEAMS)
    assert used_more.quantity == 3 * 1800


def test_fractional_gpus_spot_and_cpu_memory() -> None:
    [line] = usage_lines(usage(gpus_requested=0.25, gpus_used=0, price_class="spot", vcpus=4,
                               memory_gb=16), PRICES, teams=TEAMS)
    # 0.25 x $2.30 + 4 x $0.0336 + 16 x $0.0042, for half an hour
    assert line.usd == (Decimal("0.575") + Decimal("0.1344") + Decimal("0.0672")) / 2


def test_usage_is_cut_at_hour_boundaries_into_its_own_periods() -> None:
    lines = usage_lines(usage(started_at=datetime(2026, 10, 31, 23, 30, tzinfo=UTC),
                              ended_at=datetime(2026, 11, 1, 1, 15, tzinfo=UTC)), PRICES, teams=TEAMS)
    assert [(ln.hour.strftime("%m-%d %H"), ln.quantity) for ln in lines] == [
        ("10-31 23", 2 * 1800), ("11-01 00", 2 * 3600), ("11-01 01", 2 * 900)]
    assert [ln.line for ln in lines] == [0, 1, 2]
    assert sum(ln.usd for ln in lines) == Decimal("24.08")  # 1.75 h x 2 GPUs x $6.88


def test_unknown_gpu_types_and_teams_are_charged_and_flagged_never_free() -> None:
    [line] = usage_lines(usage(gpu_type="tpu-v9", tenant="ghosts"), PRICES, teams=TEAMS)
    assert line.usd == Decimal("6.88") and line.flag == "unknown_team,unknown_gpu_type"


@pytest.mark.parametrize(("fields", "says"), [
    ({"ended_at": datetime(2026, 11, 3, 9, tzinfo=UTC)}, "before it started"),
    ({"ended_at": datetime(2027, 1, 3, tzinfo=UTC)}, "more than one event may cover"),
    ({"gpus_requested": 5000}, "5000 GPUs for job-1 is not plausible"),
    ({"memory_gb": 10**7}, "GB of memory"),
])
def test_absurd_usage_is_refused_with_the_reason(fields: dict[str, object], says: str) -> None:
    with pytest.raises(Unbillable, match=says):
        usage_lines(usage(**fields), PRICES, teams=TEAMS)


def test_negative_quantities_never_reach_the_ledger() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        usage(gpus_requested=-1)


def test_inference_is_charged_by_the_router_price_or_the_price_book() -> None:
    event = InferenceCompleted(tenant="legal", request_id="r", key_id="k", model="gpt-4o-mini",
                               target="openai/gpt-4o-mini", tokens_in=1_000_000, tokens_out=0,
                               latency_ms=1, status="ok", event_id=uuid4())
    [line] = inference_lines(event, PRICES, teams=TEAMS)
    assert line.usd == Decimal("0.15") and line.kind == "inference" and line.flag is None
    priced = event.model_copy(update={"cost_usd": Decimal("0.5")})
    assert inference_lines(priced, PRICES, teams=TEAMS)[0].usd == Decimal("0.5")
    unknown = event.model_copy(update={"target": "openai/mystery"})
    assert inference_lines(unknown, PRICES, teams=TEAMS)[0].flag == "unknown_model"


def test_thresholds_cross_once_each() -> None:
    budget = Budget("legal", Decimal(100), (50, 80, 100), "block")
    assert crossed(budget, spent=Decimal("49.99"), already=set()) == []
    assert crossed(budget, spent=Decimal("85"), already=set()) == [50, 80]
    assert crossed(budget, spent=Decimal("120"), already={50, 80}) == [100]


def test_forecast_extends_the_burn_rate_to_month_end() -> None:
    # $100 in the first 3 days of a 30-day month -> $1,000
    assert forecast(Decimal(100), now=datetime(2026, 11, 4, tzinfo=UTC)) == Decimal("1000.00")


@pytest.mark.parametrize(("body", "field"), [
    ({"amount_usd": -5}, "amount_usd"),
    ({"amount_usd": 0}, "amount_usd"),
    ({"amount_usd": "lots"}, "amount_usd"),
    ({"amount_usd": 10, "thresholds": [50, 80]}, "include 100"),
    ({"amount_usd": 10, "thresholds": [0, 100]}, "between 1 and 1000"),
    ({"amount_usd": 10, "action": "explode"}, "action"),
])
def test_invalid_budgets_are_refused_naming_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        BudgetIn.model_validate(body)
