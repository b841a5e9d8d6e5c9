"""All runtime configuration, from ``VIGIL_*`` environment variables (or a ``.env`` file).

One frozen object, built once per process and passed down; nothing reads the environment
elsewhere.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_", env_file=".env", extra="ignore", frozen=True)

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma separated")
    app_id: str = Field(
        "vigil", min_length=1, description="Faust app id, changelog prefix; agent A's group: <id>.A"
    )
    data_dir: Path = Field(Path("data"), description="RocksDB state and worker files")
    topic_prefix: str = Field("", description="Prepended verbatim to every topic and group name")
    partitions: int = Field(6, ge=1, le=1000, description="Partitions of topics Vigil creates")
    replication_factor: int = Field(1, ge=1, description="Replication of topics Vigil creates")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics port; 0 disables")
    metrics_host: str = Field(
        "127.0.0.1", description="Address of /metrics, /healthz, /readyz (0.0.0.0 in a container)"
    )
    lag_interval: float = Field(
        5.0, gt=0, description="Seconds between consumer-lag refreshes (own group and downstream groups)"
    )
    web_port: int = Field(
        0, ge=0, le=65535, description="Faust's own web server port; 0 (default) leaves it off"
    )
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    dedup_retention: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="Seconds a handled event id is remembered (a re-send or replay of an older id runs again)",
    )
    rocksdb_write_buffer_bytes: int = Field(
        8 * 1024 * 1024, ge=1024 * 1024, description="RocksDB memtable size per table partition store"
    )
    rocksdb_block_cache_bytes: int = Field(
        64 * 1024 * 1024, ge=1024 * 1024, description="RocksDB block cache per table partition store"
    )
    commit_interval: float = Field(1.0, gt=0, description="Seconds between offset commits")
    concurrency: int = Field(
        16, ge=1, le=10000, description="Default records of distinct subjects in flight per agent"
    )
    max_buffered: int = Field(
        1000, ge=1, description="Default fetched-but-unfinished records per agent before fetching pauses"
    )
    drain_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds in-flight records may finish on rebalance/stop before they are cancelled",
    )
    session_timeout: float = Field(
        10.0, ge=6, description="Seconds without heartbeats before the group drops a dead worker"
    )
    downstream_lag_high: int = Field(
        0,
        ge=0,
        description="Pause an agent while a group consuming a topic it emits to lags more than this "
        "many records (0 disables)",
    )
    downstream_lag_low: int = Field(
        0, ge=0, description="... and resume once that lag is below this (default: half of the high mark)"
    )
    stall_timeout: float = Field(
        30.0, gt=0, description="Seconds a partition with records past its committed offset may not move"
    )
    fail_commits: int = Field(0, ge=0, description="Testing failpoint: the first N offset commits fail")
    fail_changelog_fetches: int = Field(
        0, ge=0, description="Testing failpoint: the first N fetches of changelog records lose them"
    )
    fail_releases: int = Field(
        0, ge=0, description="Testing failpoint: the first N releases of a backpressure hold are lost"
    )
    fail_stall_publishes: int = Field(
        0, ge=0, description="Testing failpoint: the first N publishes of emitted events never complete"
    )
    fail_resumes: int = Field(
        0,
        ge=0,
        description="Testing failpoint: the first N post-rebalance resumes of stream partitions are lost",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    llm_model: str = Field("openai/fake", description="litellm model name, e.g. openai/gpt-4o-mini")
    llm_api_base: str | None = Field(
        None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8089/v1"
    )
    llm_api_key: SecretStr = Field(SecretStr("sk-local"), description="API key for the LLM provider")
    llm_timeout: float = Field(30.0, gt=0, description="Seconds per LLM request")
    llm_num_retries: int = Field(2, ge=0, description="litellm Router retries on 429/5xx/timeouts")
    llm_fallbacks: str = Field(
        "", description="Comma-separated litellm models tried in order when the main model fails"
    )
    llm_rpm: int = Field(0, ge=0, description="Requests per minute per model deployment; 0 = unlimited")
    llm_tpm: int = Field(0, ge=0, description="Tokens per minute per model deployment; 0 = unlimited")
    llm_circuit_failures: int = Field(
        5, ge=1, description="Consecutive failed LLM calls that open an agent's circuit"
    )
    llm_circuit_reset: float = Field(30.0, gt=0, description="Seconds an open circuit waits before its probe")
    llm_agent_tokens_per_window: int = Field(
        0, ge=0, description="Tokens per agent per budget window; 0 = unlimited"
    )
    llm_entity_tokens_per_window: int = Field(
        0, ge=0, description="Tokens per entity (subject) per agent per budget window; 0 = unlimited"
    )
    llm_budget_window: float = Field(3600.0, gt=0, description="Seconds of one token-budget window")
    llm_entity_cost_usd_per_window: float = Field(
        0.0, ge=0, description="US dollars per entity (subject) per agent per budget window; 0 = unlimited"
    )
    llm_max_tokens: int = Field(
        1024,
        ge=1,
        description="max_tokens sent with a call that gives none while an entity budget is on (what it reserves)",
    )
    llm_budget_action: Literal["wait", "park"] = Field(
        "wait", description="An entity over its budget waits for the next window, or is dead-lettered (park)"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Worker log lines as text, or as JSON objects with event id, subject and trace id"
    )

    def topic(self, name: str) -> str:
        """The real name of a catalogue topic: the prefix is prepended verbatim."""
        return f"{self.topic_prefix}{name}"

    @cached_property
    def group_id(self) -> str:
        """The prefixed app id: the changelog topic prefix, and the stem of each agent's consumer
        group (``streams.core.groups.agent_group``)."""
        return self.topic(self.app_id)
