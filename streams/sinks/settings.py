"""Configuration of the reply sinks, from ``VIGIL_*`` environment variables (or ``.env``)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class SinkSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_", env_file=".env", extra="ignore", frozen=True)

    github_api_base: str = Field("https://api.github.com", description="GitHub REST API base URL")
    github_token: SecretStr | None = Field(None, description="Token the GitHub sink posts comments with")
    slack_api_base: str = Field("https://slack.com/api", description="Slack Web API base URL")
    slack_bot_token: SecretStr | None = Field(
        None, description="Bot token (xoxb-...) the Slack sink posts with"
    )
    sink_timeout: float = Field(10.0, gt=0, description="Seconds per sink HTTP request")
    sink_lookup_age: float = Field(
        5.0,
        ge=0,
        description="Look for an earlier post before posting an event older than this many seconds, or "
        "one created before this process started (plus this margin); 0: before every post. Keep it "
        "below VIGIL_SESSION_TIMEOUT and VIGIL_DRAIN_TIMEOUT",
    )
    fail_exit_after_post: int = Field(
        0,
        ge=0,
        description="Testing failpoint: the process exits (code 137, as SIGKILL) right after its Nth "
        "successful post (all sinks counted), before the event's state and offset are written",
    )
