"""Charging rules, as OpenCost does: max(requested, used) x duration x rate, metered per second.

Usage is cut at hour boundaries, so each line lands in the hour (and so the day and the
month) it was used in, however late its event arrives. Amounts are exact decimals; only
displays round to the cent.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from contracts import Envelope, InferenceCompleted, UsageRecorded
from contracts.pricebook import PriceBook

BOOKED: tuple[type[Envelope], ...] = (UsageRecorded, InferenceCompleted)  # each on its own consumer
HOUR = timedelta(hours=1)
MAX_DURATION = timedelta(days=31)
MAX_GPUS, MAX_VCPUS, MAX_MEMORY_GB = 1024, 20_000, 200_000
MAX_TOKENS = 100_000_000
IDLE = "__idle__"


class Unbillable(ValueError):
    """An event that cannot be charged as it stands (dead-lettered with this reason)."""


@dataclass(slots=True)
class Line:
    event_id: UUID
    line: int
    team: str
    kind: str
    hour: datetime
    usd: Decimal
    quantity: Decimal
    unit: str
    project: str = ""
    user: str = ""
    resource_id: str = ""
    model: str = ""
    gpu_type: str = ""
    flag: str | None = None


def hour_of(moment: datetime) -> datetime:
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def period_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


def month_bounds(period: str) -> tuple[datetime, datetime]:
    start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def usage_lines(event: UsageRecorded, prices: PriceBook, *, teams: frozenset[str]) -> list[Line]:
    start, end = event.started_at.astimezone(UTC), event.ended_at.astimezone(UTC)
    _check_usage(event, start, end)
    gpus = Decimal(str(max(event.gpus_requested, event.gpus_used)))
    vcpus, memory_gb = Decimal(str(event.vcpus)), Decimal(str(event.memory_gb))
    flag = None if event.tenant in teams else "unknown_team"
    unit = "gpu_seconds" if gpus else "seconds"
    project, user, gpu_type = event.project or "", event.user or "", event.gpu_type or ""
    lines = []
    for i, (a, b) in enumerate(_hours(start, end)):
        seconds = Decimal(str((b - a).total_seconds()))
        charge = prices.compute_charge(
            gpu_type=event.gpu_type, price_class=event.price_class, gpus=gpus, vcpus=vcpus,
            memory_gb=memory_gb, seconds=seconds, when=a)
        lines.append(Line(event.event_id, i, event.tenant, event.kind,
                          a.replace(minute=0, second=0, microsecond=0), charge.usd,
                          quantity=gpus * seconds if gpus else seconds, unit=unit,
                          project=project, user=user, resource_id=event.resource_id,
                          gpu_type=gpu_type,
                          flag=(f"{flag},unknown_gpu_type" if flag else "unknown_gpu_type")
                          if charge.flagged else flag))
    return lines


def inference_lines(event: InferenceCompleted, prices: PriceBook, *,
                    teams: frozenset[str]) -> list[Line]:
    tokens = event.tokens_in + event.tokens_out
    if tokens > MAX_TOKENS:
        raise Unbillable(f"{tokens:,} tokens in one request is not plausible (limit {MAX_TOKENS:,})")
    served = event.target.split("/", 1)[-1]
    if event.cost_usd is not None:
        usd, flagged = event.cost_usd, event.cost_flagged
    else:
        charge = prices.token_charge(served, tokens_in=event.tokens_in, tokens_out=event.tokens_out,
                                     tokens_cached=event.tokens_cached, when=event.occurred_at)
        usd, flagged = charge.usd, charge.flagged
    flags = [f for f, on in (("unknown_team", event.tenant not in teams),
                             ("unknown_model", flagged)) if on]
    return [Line(event.event_id, 0, event.tenant, "inference", hour_of(event.occurred_at),
                 Decimal(usd), Decimal(tokens), "tokens", user=event.user or "",
                 resource_id=event.key_id, model=event.model, flag=",".join(flags) or None)]


def _check_usage(event: UsageRecorded, start: datetime, end: datetime) -> None:
    if end < start:
        raise Unbillable(f"usage of {event.resource_id} ended ({end:%Y-%m-%d %H:%M:%S}) before it "
                         f"started ({start:%Y-%m-%d %H:%M:%S})")
    if end - start > MAX_DURATION:
        raise Unbillable(f"usage of {event.resource_id} spans {end - start}, more than one event "
                         f"may cover ({MAX_DURATION.days} days); send it in parts")
    for what, value, limit in (("GPUs", max(event.gpus_requested, event.gpus_used), MAX_GPUS),
                               ("vCPUs", event.vcpus, MAX_VCPUS),
                               ("GB of memory", event.memory_gb, MAX_MEMORY_GB)):
        if value > limit:
            raise Unbillable(f"{value:g} {what} for {event.resource_id} is not plausible "
                             f"(limit {limit:,})")


def _hours(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """``start``..``end`` (both UTC) cut at hour boundaries."""
    slices, cursor = [], start
    while cursor < end:
        nxt = min(cursor.replace(minute=0, second=0, microsecond=0) + HOUR, end)
        slices.append((cursor, nxt))
        cursor = nxt
    return slices or [(start, end)]


# -- budgets --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    team: str
    amount_usd: Decimal
    thresholds: tuple[int, ...] = (50, 80, 100)
    action: str = "notify"

    @property
    def budget_id(self) -> str:
        return f"{self.team}-monthly"


def crossed(budget: Budget, *, spent: Decimal, already: set[int]) -> list[int]:
    """Thresholds (percent) that ``spent`` has reached and that were not reported yet."""
    percent = spent / budget.amount_usd * 100 if budget.amount_usd else Decimal(0)
    return [t for t in sorted(budget.thresholds) if percent >= t and t not in already]


def forecast(spent: Decimal, *, now: datetime) -> Decimal:
    """Month-end spend if the month goes on at its burn rate so far."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = calendar.monthrange(start.year, start.month)[1]
    elapsed = Decimal(str(max((now - start).total_seconds(), 3600.0)))
    total = Decimal(days * 86400)
    return (spent / elapsed * total).quantize(Decimal("0.01"))
