"""The price book: versioned unit prices every service charges with (``policies/pricebook.yaml``).

A charge uses the newest version in effect at the time of the usage, so a late event is priced
as of when it happened, and a past bill can always be reproduced.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class PriceVersion(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    effective_from: date
    models: dict[str, TokenPrice] = {}
    fallback_model: TokenPrice


class TokenCharge(BaseModel):
    model_config = ConfigDict(frozen=True)

    usd: Decimal
    flagged: bool = Field(description="No price for this model: charged the fallback rate.")


class PriceBook(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    versions: tuple[PriceVersion, ...] = Field(min_length=1)

    def version_at(self, when: datetime) -> PriceVersion:
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
