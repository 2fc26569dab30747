"""Routes as config: providers, model aliases and their targets, from a YAML file.

The file is validated as a whole; a bad edit is refused with every problem named, and the
router keeps serving the last good version. ``${VAR}`` and ``${VAR:-default}`` in strings are
taken from the environment, so base URLs differ between the local stack and production
without a second file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

ProviderKind = Literal["openai", "anthropic", "openai-compatible"]
PiiAction = Literal["redact", "block", "allow"]
_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")

ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"


class RouteConfigError(ValueError):
    """The routes file is unusable; the message names the file and each bad field."""


class Provider(BaseModel):
    """An upstream the router may call. Credentials come from the router's side only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ProviderKind
    base_url: str = Field(pattern=r"^https?://", description="Up to and including /v1.")
    api_key_env: str | None = Field(default=None, description="Environment variable holding the key.")
    api_key_file: str | None = Field(default=None, description="File holding the key.")
    timeout_s: float = Field(default=60.0, gt=0, le=600)
    external: bool = Field(default=True, description="Outside the platform: the PII guard applies.")

    def api_key(self) -> str | None:
        if self.api_key_file:
            return Path(self.api_key_file).read_text().strip()
        if self.api_key_env:
            return os.environ.get(self.api_key_env)
        return None


class Target(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str
    model: str = Field(min_length=1, description="The model name the provider knows.")
    weight: int = Field(default=100, ge=0, le=10_000)
    version: str | None = Field(default=None, description="Label reported in usage, e.g. canary.")
    timeout_s: float | None = Field(default=None, gt=0, le=600)

    @property
    def name(self) -> str:
        return f"{self.provider}/{self.model}"


class Route(BaseModel):
    """A model alias callers use, and where its requests go."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["chat", "embeddings", "predict"] = "chat"
    targets: tuple[Target, ...] = Field(min_length=1)
    sticky: Literal["none", "user", "conversation"] = Field(
        default="user", description="What keeps a caller on the same target of a weighted split.")
    fallbacks: tuple[str, ...] = Field(default=(), description="Aliases tried in order on failure.")
    retries: int = Field(default=1, ge=0, le=5, description="Retries per target before falling back.")
    backoff_s: float = Field(default=0.05, ge=0, le=10)
    pii: PiiAction = "redact"
    teams: tuple[str, ...] = Field(default=(), description="Teams that may use it; empty: every team.")
    description: str = ""

    def open_to(self, team: str) -> bool:
        return not self.teams or team in self.teams


class Breaker(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    failures: int = Field(default=5, ge=1, description="Consecutive failures that open the circuit.")
    open_s: float = Field(default=10.0, gt=0, description="How long before a half-open probe.")


class RouterConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    providers: dict[str, Provider] = {}
    # an alias is a label on metrics and a line on the bill: letters, digits and . _ : / -
    # (never the parentheses of UNKNOWN_MODEL, which counts requests for models that do not exist)
    models: dict[Annotated[str, StringConstraints(pattern=ALIAS_PATTERN)], Route] = {}
    circuit_breaker: Breaker = Breaker()

    @model_validator(mode="after")
    def _references(self) -> RouterConfig:
        problems = []
        for alias, route in self.models.items():
            problems += [f"models.{alias}.targets: unknown provider {t.provider!r}"
                         for t in route.targets if t.provider not in self.providers]
            problems += [f"models.{alias}.fallbacks: unknown model {f!r}"
                         for f in route.fallbacks if f not in self.models]
            if all(t.weight == 0 for t in route.targets):
                problems.append(f"models.{alias}.targets: every weight is 0")
            problems += [f"models.{alias}.fallbacks: {f!r} serves {self.models[f].kind}, "
                         f"not {route.kind}" for f in route.fallbacks
                         if f in self.models and self.models[f].kind != route.kind]
        if problems:
            raise ValueError("; ".join(problems))
        return self


def parse_config(text: str, *, origin: str = "routes") -> RouterConfig:
    try:
        raw = yaml.safe_load(_expand(text)) or {}
        return RouterConfig.model_validate(raw)
    except yaml.YAMLError as exc:
        raise RouteConfigError(f"{origin} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}"
                           for e in exc.errors())
        raise RouteConfigError(f"{origin} is invalid: {fields}") from exc


def load_config(path: Path) -> RouterConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise RouteConfigError(f"cannot read the routes file {path}: {exc.strerror}") from exc
    return parse_config(text, origin=str(path))


def _expand(text: str) -> str:
    return _VAR.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), text)
