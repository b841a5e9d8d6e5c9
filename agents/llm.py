"""The LLM client agents use: litellm's Router configured from ``Settings``, plus what the Router
does not know about agents — a circuit breaker and token budgets per agent, and metrics.

The Router does the resilience: retries with exponential backoff on 429, 5xx and timeouts (its
defaults already skip 400/401/404 and its own rpm/tpm refusals), fallbacks to ``VIGIL_LLM_FALLBACKS`` in
order once the main model's retries are spent, and rpm/tpm limits per deployment (its
``enforce_model_rate_limits`` pre-call check). A real provider works by configuration alone.

Handlers see ``ctx.llm``, a ``BoundLLM`` (``LLMClient.bind(agent, subject)``), so a call knows
whose circuit and budgets it uses. A call that must wait (open circuit, spent budget, local rpm
or tpm limit) raises ``streams.core.backpressure.Blocked`` without reaching the provider.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from schemas import VigilError
from streams.core.backpressure import Blocked, Gate
from streams.core.journal import Journal
from streams.core.settings import Settings
from streams.observability.metrics import LLM_COST, LLM_REQUESTS, LLM_SECONDS, LLM_TOKENS

from .budget import TokenBudget
from .circuit import CircuitBreaker

# litellm fetches a remote model-cost map at import and retries for seconds without network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# litellm logs every call at INFO (and one of its format strings is broken); keep its warnings.
for _name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
    logging.getLogger(_name).setLevel(logging.WARNING)

#: agent label of calls made on the client itself rather than through ``bind``
UNBOUND = "unbound"


class LLMError(VigilError):
    """The LLM call failed after the Router's own retries and fallbacks."""

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
    cost_usd: float = 0.0


def _provider(model: str) -> str:
    return model.split("/", 1)[0] if "/" in model else ""


def fallback_models(settings: Settings) -> list[str]:
    return [m.strip() for m in settings.llm_fallbacks.split(",") if m.strip()]


def router_config(settings: Settings, alias: str) -> dict[str, Any]:
    """``litellm.Router`` arguments: the main model under ``alias``, each fallback as its own
    model group. A fallback of the main model's provider shares its api_base and key; another
    provider's uses litellm's own variables (``ANTHROPIC_API_KEY``, ...)."""
    main = settings.llm_model
    models = [main, *fallback_models(settings)]
    names = [alias, *(f"{alias}-fallback-{i}" for i in range(1, len(models)))]
    model_list: list[dict[str, Any]] = []
    for name, model in zip(names, models, strict=True):
        params: dict[str, Any] = {"model": model, "timeout": settings.llm_timeout}
        if _provider(model) == _provider(main):
            params["api_key"] = settings.llm_api_key.get_secret_value()
            if settings.llm_api_base:
                params["api_base"] = settings.llm_api_base
        if settings.llm_rpm:
            params["rpm"] = settings.llm_rpm
        if settings.llm_tpm:
            params["tpm"] = settings.llm_tpm
        model_list.append({"model_name": name, "litellm_params": params})

    config: dict[str, Any] = {
        "model_list": model_list,
        "num_retries": settings.llm_num_retries,
        "timeout": settings.llm_timeout,
        "retry_after": 0,
    }
    if len(names) > 1:
        config["fallbacks"] = [{alias: names[1:]}]
    if settings.llm_rpm or settings.llm_tpm:
        config["optional_pre_call_checks"] = ["enforce_model_rate_limits"]
    return config


def _local_rate_limit(exc: Exception) -> bool:
    """A 429 the Router raised itself (``rpm``/``tpm`` of every deployment used up this minute)."""
    from litellm.types.router import RouterErrors

    response = getattr(exc, "response", None)
    text = getattr(response, "text", "")
    return isinstance(text, str) and text.startswith(RouterErrors.user_defined_ratelimit_error.value)


class LLMClient:
    ALIAS = "default"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._config = router_config(settings, self.ALIAS)
        #: built at the first call: importing litellm costs seconds of CPU, which a worker whose
        #: agents never call the LLM should not pay before its first event
        self._router: Any = None
        self._building: asyncio.Lock | None = None
        self._circuits: dict[str, CircuitBreaker] = {}
        self._budgets: dict[str, TokenBudget] = {}

    async def router(self) -> Any:
        """litellm's Router, imported and built off the event loop the first time."""
        if self._router is None:
            if self._building is None:
                self._building = asyncio.Lock()
            async with self._building:
                if self._router is None:
                    self._router = await asyncio.to_thread(self._build_router)
        return self._router

    def _build_router(self) -> Any:
        from litellm.router import Router

        return Router(**self._config)

    @classmethod
    def from_settings(cls, settings: Settings) -> LLMClient:
        return cls(settings)

    # -- per agent --------------------------------------------------------------------------
    def circuit(self, agent: str) -> CircuitBreaker:
        circuit = self._circuits.get(agent)
        if circuit is None:
            circuit = self._circuits[agent] = CircuitBreaker(
                agent,
                failures=self.settings.llm_circuit_failures,
                reset_timeout=self.settings.llm_circuit_reset,
            )
        return circuit

    def budget(self, agent: str) -> TokenBudget:
        budget = self._budgets.get(agent)
        if budget is None:
            budget = self._budgets[agent] = TokenBudget(
                agent,
                agent_tokens=self.settings.llm_agent_tokens_per_window,
                entity_tokens=self.settings.llm_entity_tokens_per_window,
                window=self.settings.llm_budget_window,
            )
        return budget

    def gates_for(self, agent: str) -> list[Gate]:
        """``streams.core.backpressure.GateProvider``: the agent's circuit and agent-wide budget."""
        return [self.circuit(agent), self.budget(agent)]

    def bind(self, agent: str, subject: str | None = None, *, journal: Journal | None = None) -> BoundLLM:
        return BoundLLM(self, agent, subject, journal)

    # -- calls ------------------------------------------------------------------------------
    async def complete(
        self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> LLMReply:
        """A call outside any handler: agent label ``unbound``, no entity budget."""
        return await self.call(UNBOUND, None, messages, tools, kwargs)

    async def call(
        self,
        agent: str,
        subject: str | None,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        kwargs: dict[str, Any],
    ) -> LLMReply:
        import openai
        from litellm import exceptions
        from litellm.types.router import RouterRateLimitError

        main = self.settings.llm_model
        router = await self.router()  # the first call imports litellm: not part of its latency
        budget = self.budget(agent)
        circuit = self.circuit(agent)
        try:
            budget.check(subject)
            probe = circuit.admit()
        except Blocked:
            LLM_REQUESTS.labels(agent, main, "rejected").inc()
            raise
        started = time.perf_counter()
        try:
            response = await router.acompletion(
                model=self.ALIAS, messages=messages, **({"tools": tools} if tools else {}), **kwargs
            )
        except exceptions.RateLimitError as exc:
            if _local_rate_limit(exc):  # nothing was sent: wait for the next minute, not a failure
                circuit.abandoned(probe)
                LLM_REQUESTS.labels(agent, main, "rejected").inc()
                raise Blocked(
                    f"LLM rpm/tpm limit reached: {exc}", retry_at=time.monotonic() + 60 - time.time() % 60
                ) from exc
            raise self._failed(agent, main, started, circuit, probe, exc, retriable=True) from exc
        except (
            exceptions.Timeout,
            exceptions.APIConnectionError,
            exceptions.InternalServerError,
            exceptions.ServiceUnavailableError,
            exceptions.BadGatewayError,
            RouterRateLimitError,  # every deployment cooling down
        ) as exc:
            raise self._failed(agent, main, started, circuit, probe, exc, retriable=True) from exc
        except openai.APIError as exc:  # litellm's mapped errors all derive from it
            raise self._failed(agent, main, started, circuit, probe, exc, retriable=False) from exc
        except BaseException:
            circuit.abandoned(probe)
            raise
        circuit.succeeded(probe)
        return self._account(agent, subject, budget, started, response)

    def _failed(
        self,
        agent: str,
        model: str,
        started: float,
        circuit: CircuitBreaker,
        probe: bool,
        exc: Exception,
        *,
        retriable: bool,
    ) -> LLMError:
        from litellm import exceptions

        LLM_SECONDS.labels(agent, model).observe(time.perf_counter() - started)
        LLM_REQUESTS.labels(agent, model, "error").inc()
        # A rejected request (400: too long, bad params, content policy) says nothing about the
        # provider's health; everything else (429, 5xx, timeouts, auth, unknown model) does.
        if isinstance(exc, exceptions.BadRequestError):
            circuit.abandoned(probe)
        else:
            circuit.failed(probe)
        return LLMError(f"{type(exc).__name__}: {exc}", retriable=retriable)

    def _account(
        self, agent: str, subject: str | None, budget: TokenBudget, started: float, response: Any
    ) -> LLMReply:
        hidden = getattr(response, "_hidden_params", None) or {}
        model = str(hidden.get("litellm_model_name") or self.settings.llm_model)
        usage = getattr(response, "usage", None)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = float(hidden.get("response_cost") or 0.0)  # litellm's cost map; 0 for unpriced models
        LLM_SECONDS.labels(agent, model).observe(time.perf_counter() - started)
        LLM_REQUESTS.labels(agent, model, "ok").inc()
        LLM_TOKENS.labels(agent, model, "prompt").inc(prompt)
        LLM_TOKENS.labels(agent, model, "completion").inc(completion)
        LLM_COST.labels(agent, model).inc(cost)
        budget.charge(subject, prompt + completion)
        choice = response.choices[0]
        calls = [
            {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
            for c in (choice.message.tool_calls or [])
        ]
        return LLMReply(
            text=choice.message.content or "",
            model=response.model or "",
            tool_calls=calls,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=cost,
        )


class BoundLLM:
    """What ``ctx.llm`` is inside a handler: the client, for one agent and one subject."""

    __slots__ = ("agent", "client", "journal", "subject")

    def __init__(
        self, client: LLMClient, agent: str, subject: str | None, journal: Journal | None = None
    ) -> None:
        self.client = client
        self.agent = agent
        self.subject = subject
        self.journal = journal

    async def complete(
        self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> LLMReply:
        """Inside a handler, a journaled step (``llm``, ``llm#2``, ...): a retry or redelivery
        of the event gets the recorded reply, with no second request and no second charge."""
        if self.journal is None:
            return await self.client.call(self.agent, self.subject, messages, tools, kwargs)
        reply: LLMReply = await self.journal.step(
            "llm", self.client.call, self.agent, self.subject, messages, tools, kwargs, result_type=LLMReply
        )
        return reply
