"""The LLM client agents use: litellm's Router (retries with backoff on 429/5xx/timeouts)
configured from ``Settings``. A real provider works by configuration alone."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from schemas import VigilError
from streams.settings import Settings

# litellm fetches a remote model-cost map at import and retries for seconds without network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# litellm logs every call at INFO (and one of its format strings is broken); keep its warnings.
for _name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class LLMError(VigilError):
    """The LLM call failed after the Router's own retries."""

    reason = "llm_error"

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


@dataclass(frozen=True)
class LLMReply:
    text: str
    model: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0


class LLMClient:
    ALIAS = "default"

    def __init__(self, settings: Settings) -> None:
        from litellm import Router  # imported lazily: litellm takes seconds to import

        params: dict[str, Any] = {
            "model": settings.llm_model,
            "api_key": settings.llm_api_key.get_secret_value(),
            "timeout": settings.llm_timeout,
        }
        if settings.llm_api_base:
            params["api_base"] = settings.llm_api_base
        self._router = Router(
            model_list=[{"model_name": self.ALIAS, "litellm_params": params}],
            num_retries=settings.llm_num_retries,
            timeout=settings.llm_timeout,
            retry_after=0,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> LLMClient:
        return cls(settings)

    async def complete(
        self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> LLMReply:
        import litellm

        try:
            response = await self._router.acompletion(
                model=self.ALIAS, messages=messages, **({"tools": tools} if tools else {}), **kwargs
            )
        except (
            litellm.RateLimitError,
            litellm.Timeout,
            litellm.APIConnectionError,
            litellm.InternalServerError,
            litellm.ServiceUnavailableError,
        ) as exc:
            raise LLMError(f"{type(exc).__name__}: {exc}", retriable=True) from exc
        except litellm.APIError as exc:
            raise LLMError(f"{type(exc).__name__}: {exc}", retriable=False) from exc
        choice = response.choices[0]
        calls = [
            {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
            for c in (choice.message.tool_calls or [])
        ]
        usage = getattr(response, "usage", None)
        return LLMReply(
            text=choice.message.content or "",
            model=response.model or "",
            tool_calls=calls,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        )
