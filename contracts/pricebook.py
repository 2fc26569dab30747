"""The price book: versioned unit prices every service charges with (``policies/pricebook.yaml``).

A charge uses the newest version in effect at the time of the usage, so a late event is priced
as of when it happened, and a past bill can always be reproduced.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PER_MILLION = Decimal(1_000_000)


class PriceBookError(ValueError):
    """The price book file is unusable; the message names the file and the field."""


class TokenPrice(BaseModel):
    """USD per 1M tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: Decimal = Field(ge=0)
    cached: Decimal | None = Field(default=None, ge=0, description="Cached input; defaults to input.")
    output: Decimal = Field(ge=0)
    provider: str | None = None


PriceClass = Literal["on-demand", "spot"]


class Compute(BaseModel):
    """USD per GPU-hour (by type and price class), vCPU-hour, GB-RAM-hour, storage GB-month."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpu_hour: dict[str, dict[PriceClass, Decimal]]
    vcpu_hour: Decimal = Field(ge=0)
    gb_ram_hour: Decimal = Field(ge=0)
    storage_gb_month: Decimal = Field(ge=0)
    fallback_gpu_hour: dict[PriceClass, Decimal]

    @field_validator("gpu_hour", "fallback_gpu_hour")
    @classmethod
    def _non_negative(cls, rates: dict[str, object]) -> dict[str, object]:
        for name, value in rates.items():
            values = value.values() if isinstance(value, dict) else [value]
            if any(Decimal(v) < 0 for v in values):  # type: ignore[arg-type]
                raise ValueError(f"{name}: a rate cannot be negative")
        return rates


class PriceVersion(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    effective_from: date
    compute: Compute
    models: dict[str, TokenPrice] = {}
    fallback_model: TokenPrice


class TokenCharge(NamedTuple):
    usd: Decimal
    flagged: bool  # no price for this model (or GPU type): charged the fallback rate


ComputeCharge = TokenCharge
SECONDS_PER_HOUR = Decimal(3600)


class PriceBook(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    versions: tuple[PriceVersion, ...] = Field(min_length=1)

    def version_at(self, when: datetime) -> PriceVersion:
        if len(self.versions) == 1:
            return self.versions[0]
        day = when.date()
        in_effect = [v for v in self.versions if v.effective_from <= day]
        if not in_effect:
            return min(self.versions, key=lambda v: v.effective_from)
        return max(in_effect, key=lambda v: v.effective_from)

    def token_charge(self, model: str, *, tokens_in: int, tokens_out: int, tokens_cached: int = 0,
                     when: datetime) -> TokenCharge:
        """What ``tokens_in`` (of which ``tokens_cached`` were cached) and ``tokens_out`` cost."""
        version = self.version_at(when)
        price = version.models.get(model)
        flagged = price is None
        price = price or version.fallback_model
        cached = min(tokens_cached, tokens_in)
        cached_rate = price.cached if price.cached is not None else price.input
        usd = ((tokens_in - cached) * price.input + cached * cached_rate
               + tokens_out * price.output) / PER_MILLION
        return TokenCharge(usd=usd.quantize(Decimal("0.00000001")), flagged=flagged)

    def compute_charge(self, *, gpu_type: str | None, price_class: PriceClass, gpus: Decimal,
                       vcpus: Decimal, memory_gb: Decimal, seconds: Decimal,
                       when: datetime) -> ComputeCharge:
        """``gpus`` (fractions allowed), ``vcpus`` and ``memory_gb`` for ``seconds``."""
        compute = self.version_at(when).compute
        flagged = False
        gpu_rate = Decimal(0)
        if gpus > 0:
            rates = compute.gpu_hour.get(gpu_type or "")
            flagged = rates is None
            gpu_rate = (rates or compute.fallback_gpu_hour)[price_class]
        hourly = gpus * gpu_rate + vcpus * compute.vcpu_hour + memory_gb * compute.gb_ram_hour
        usd = hourly * seconds / SECONDS_PER_HOUR
        return ComputeCharge(usd=usd.quantize(Decimal("0.0000000001")), flagged=flagged)

    def gpu_hour(self, gpu_type: str, price_class: PriceClass, when: datetime) -> Decimal:
        compute = self.version_at(when).compute
        return (compute.gpu_hour.get(gpu_type) or compute.fallback_gpu_hour)[price_class]


def load_price_book(path: Path) -> PriceBook:
    try:
        raw = yaml.safe_load(path.read_text())
        return PriceBook.model_validate(raw)
    except OSError as exc:
        raise PriceBookError(f"cannot read the price book {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise PriceBookError(f"{path} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PriceBookError(f"{path} is invalid: {fields}") from exc
