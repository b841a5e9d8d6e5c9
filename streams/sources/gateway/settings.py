"""The webhook gateway's configuration, from ``VIGIL_*`` environment variables (or ``.env``).
Kafka address and topic prefix stay in ``streams.core.settings.Settings``; this class holds
only what the gateway alone reads. Secrets are ``SecretStr`` (never in a repr or a log)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .signatures import decode_whsec

SOURCE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}$")  # becomes part of a topic name


class SourceConfig(BaseModel):
    """One generic Standard Webhooks source of ``VIGIL_WEBHOOK_SOURCES``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    secrets: list[SecretStr] = Field(default_factory=list, description="whsec_ secrets, newest first")
    subject: str | None = Field(
        None, description="JSON Pointer (RFC 6901) into the payload to key by; default webhook-id"
    )

    @field_validator("secrets")
    @classmethod
    def _decodable(cls, value: list[SecretStr]) -> list[SecretStr]:
        for secret in value:
            decode_whsec(secret.get_secret_value())  # ValueError -> a validation error
        return value

    @field_validator("subject")
    @classmethod
    def _pointer(cls, value: str | None) -> str | None:
        if value is not None and value != "" and not value.startswith("/"):
            raise ValueError("subject is a JSON Pointer: empty or starting with '/'")
        return value or None

    def keys(self) -> list[bytes]:
        return [decode_whsec(s.get_secret_value()) for s in self.secrets]


Port = Annotated[int, Field(ge=0, le=65535)]


class GatewaySettings(BaseSettings):
    # an empty variable counts as unset: docker-compose passes ${VAR:-} through as ""
    model_config = SettingsConfigDict(
        env_prefix="VIGIL_", env_file=".env", extra="ignore", frozen=True, env_ignore_empty=True
    )

    github_webhook_secret: SecretStr | None = Field(
        None, description="GitHub webhook secret(s), comma separated while rotating"
    )
    github_webhook_secret_file: Path | None = Field(None, description="... or a file holding them")
    slack_signing_secret: SecretStr | None = Field(
        None, description="Slack signing secret(s), comma separated while rotating"
    )
    slack_signing_secret_file: Path | None = Field(None, description="... or a file holding them")
    webhook_sources: dict[str, SourceConfig] = Field(
        default_factory=dict,
        description='Generic Standard Webhooks sources: {"alerts": {"secrets": ["whsec_..."], '
        '"subject": "/fingerprint"}}',
    )
    webhook_max_bytes: int = Field(1 << 20, ge=1, description="Largest accepted body; larger gets 413")
    gateway_host: str = Field(
        "127.0.0.1", description="Address `vigil gateway` binds (0.0.0.0 in a container)"
    )
    gateway_port: Port = Field(8080, description="Port `vigil gateway` listens on")
    gateway_max_in_flight: int = Field(
        512, ge=1, description="Webhook requests handled at once; beyond that 503 + Retry-After"
    )
    gateway_producers: int = Field(
        4,
        ge=1,
        le=32,
        description="Kafka producers (connections) to send through; a subject always uses the same one",
    )
    gateway_read_timeout: float = Field(
        10.0, gt=0, description="Seconds a client may take to send its body; then 408"
    )
    gateway_send_timeout: float = Field(
        2.0, gt=0, description="Seconds to wait for the broker's ack (Slack wants an answer in 3 s)"
    )

    @field_validator("webhook_sources")
    @classmethod
    def _names(cls, value: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        for name in value:
            if not SOURCE_NAME.match(name):
                raise ValueError(f"source name {name!r}: letters, digits, '_' and '-' only")
        return value

    @model_validator(mode="after")
    def _one_of_value_or_file(self) -> GatewaySettings:
        for name in ("github_webhook_secret", "slack_signing_secret"):
            if getattr(self, name) is not None and getattr(self, f"{name}_file") is not None:
                raise ValueError(f"set VIGIL_{name.upper()} or VIGIL_{name.upper()}_FILE, not both")
        return self

    def github_secrets(self) -> list[bytes]:
        return _secrets(self.github_webhook_secret, self.github_webhook_secret_file)

    def slack_secrets(self) -> list[bytes]:
        return _secrets(self.slack_signing_secret, self.slack_signing_secret_file)


def _secrets(value: SecretStr | None, file: Path | None) -> list[bytes]:
    """Comma-separated secrets from the variable or the file (surrounding whitespace and a
    trailing newline dropped); empty means not configured: the route fails closed."""
    text = value.get_secret_value() if value is not None else ""
    if file is not None:
        text = file.read_text()
    return [s.strip().encode() for s in text.split(",") if s.strip()]
