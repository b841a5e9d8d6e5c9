"""Per-agent LLM configuration: model, fallbacks, system prompt, max tokens and entity budget
of one agent, overriding the worker-wide ``VIGIL_LLM_*`` settings.

From the environment (or ``.env``), by agent name (the handler's name, e.g. ``support``)::

    VIGIL_AGENT__SUPPORT__MODEL=openai/gpt-4o-mini
    VIGIL_AGENT__SUPPORT__PROMPT="You answer in French."
    VIGIL_AGENT__TRIAGE__ENTITY_TOKENS_PER_WINDOW=20000

or all at once as JSON: ``VIGIL_AGENT='{"support": {"model": "openai/gpt-4o-mini"}}'``.
An unset field falls back to the worker-wide setting (the prompt: to the agent's default in code).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AgentLLMConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = Field(None, description="litellm model of this agent's calls")
    fallbacks: str | None = Field(None, description="comma-separated fallback models of this agent")
    prompt: str | None = Field(None, description="system prompt (read by agents through agent_prompt)")
    max_tokens: int | None = Field(None, ge=1, description="max_tokens of a call that gives none")
    entity_tokens_per_window: int | None = Field(None, ge=0, description="tokens per entity per window")
    entity_cost_usd_per_window: float | None = Field(None, ge=0, description="USD per entity per window")
    budget_action: Literal["wait", "park"] | None = Field(None, description="over budget: wait or park")


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VIGIL_", env_nested_delimiter="__", env_file=".env", extra="ignore", frozen=True
    )

    agent: dict[str, AgentLLMConfig] = Field(default_factory=dict, description="per-agent LLM overrides")

    def get(self, agent: str) -> AgentLLMConfig:
        return self.agent.get(agent) or self.agent.get(agent.lower()) or _NONE


_NONE = AgentLLMConfig()
