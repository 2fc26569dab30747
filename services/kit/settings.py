"""Service settings: environment variables with a per-service prefix, validated at start.

``AICLOUD_CATALOG_DATABASE_URL`` configures the catalog's database, and so on. A missing or
invalid value stops the service at once with a message naming the variable and what to set.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

Port = Annotated[int, Field(ge=0, le=65535, description="TCP port (0 picks a free one).")]


class ConfigError(SystemExit):
    """Raised (and exits non-zero) when a service's configuration is unusable."""


class ServiceSettings(BaseSettings):
    """What every service needs. Subclasses set ``env_prefix`` and add their own fields."""

    model_config = SettingsConfigDict(env_prefix="AICLOUD_SERVICE_", extra="ignore", frozen=True)

    service_name: str = "service"
    nats_url: str = Field(description="NATS server URL, e.g. nats://127.0.0.1:4222; a cluster's "
                          "servers comma-separated (the client also learns the others from any one)")
    nats_user: str = Field(default="", description="The service's NATS user (its permissions are "
                           "generated from contracts/flows.py); empty: connect without auth.")
    nats_password: SecretStr = Field(default=SecretStr(""), description="That user's password.")
    stream_replicas: int = Field(default=1, ge=1, le=5, description="Copies of each stream: 3 on a "
                                 "NATS cluster of three (R3), so one server's loss loses nothing.")
    database_url: str = Field(
        description="PostgreSQL URL, e.g. postgresql://postgres@127.0.0.1:5432/aicloud"
    )
    db_schema: str = Field(default="", description="Schema for this service's tables.")
    http_host: str = "127.0.0.1"
    http_port: Port = 8000
    subject_prefix: str = Field(
        default="", pattern=r"^([a-z0-9_]+)?$", description="Isolates test runs on one server."
    )
    log_level: str = "info"
    log_file: str = ""
    trace_file: str = Field(default="", description="JSON-lines span file when no OTLP endpoint.")
    otlp_endpoint: str = Field(default="", description="OTLP/HTTP traces endpoint.")
    max_deliver: int = Field(default=5, ge=1, le=100)
    ack_wait_s: float = Field(default=30.0, ge=1, le=3600, description=(
        "How long a message handed to this service may stay unacknowledged before NATS delivers it "
        "again: how soon what a killed service was holding is redelivered. It must outlast the "
        "slowest handler. Set when a consumer is created (an existing one keeps its own)."))
    redelivery_backoff_s: tuple[float, ...] = (0.5, 2.0, 10.0, 30.0)
    outbox_poll_s: float = Field(default=0.5, gt=0)

    @field_validator("nats_url")
    @classmethod
    def _nats_scheme(cls, value: str) -> str:
        for url in value.split(","):
            if not url.strip().startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError(f"{url.strip()!r} must start with nats:// (e.g. nats://127.0.0.1:4222; "
                                 "a cluster: its servers comma-separated)")
        return value

    @field_validator("database_url")
    @classmethod
    def _pg_scheme(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgresql+asyncpg://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (e.g. postgresql://user@host:5432/db)")
        return value

    @property
    def schema_name(self) -> str:
        return self.db_schema or self.service_name.replace("-", "_")


S = TypeVar("S", bound=ServiceSettings)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings from the environment, or exit with every problem spelled out."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    try:
        return cls(**overrides)
    except SettingsError as exc:  # a value that is not even parseable, e.g. malformed JSON
        named = re.search(r'field "(\w+)"', str(exc))
        variable = f"{prefix}{named[1]}".upper() if named else prefix + "*"
        raise ConfigError(
            f"invalid configuration for {cls.__name__}:\n  {variable}: cannot be parsed; "
            'complex values are JSON, e.g. {"legal": 16}'
        ) from None
    except ValidationError as exc:
        lines = [f"invalid configuration for {cls.__name__}:"]
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            variable = f"{prefix}{field}".upper()
            problem = "is required but not set" if err["type"] == "missing" else err["msg"]
            lines.append(f"  {variable}: {problem}")
        raise ConfigError("\n".join(lines)) from None
