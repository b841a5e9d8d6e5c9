"""The LLM client agents use: litellm's Router configured from ``Settings``, plus what the Router
does not know about agents — a circuit breaker and token budgets per agent, and metrics.

The Router does the resilience: retries with exponential backoff on 429, 5xx and timeouts (its
defaults already skip 400/401/404 and its own rpm/tpm refusals), fallbacks to ``VIGIL_LLM_FALLBACKS`` in
order once the main model's retries are spent, and rpm/tpm limits per deployment (its
``enforce_model_rate_limits`` pre-call check). A real provider works by configuration alone.

Handlers see ``ctx.llm``, a ``BoundLLM`` (``LLMClient.bind(agent, subject)``), so a call knows
whose circuit and budgets it uses. A call that must wait (open circuit, spent budget, local rpm
or tpm limit) raises ``streams.core.backpressure.Blocked`` without reaching the provider.

Budgets (``agents.budget``): the agent-wide token budget is an in-memory gate; each entity's
token and cost budget lives in its journal meta (``journal.meta["budget"]``), reserved before
the request and settled inside the journaled step, so the settled counts are written with the
step's record and a replayed step charges nothing. Calls without a journal (contexts built by
hand) keep entity budgets in memory; calls without a subject have none.

Per agent (``agents.config``, ``VIGIL_AGENT__<NAME>__MODEL`` ...): an agent with its own model
or fallbacks gets its own Router model group (``agent-<name>``, with its fallbacks), the others
share ``default``; ``agent_prompt(ctx, default)`` reads the agent's configured system prompt.
``vigil_llm_cost_per_event_usd{agent}`` is observed when an event that called the LLM is over
(``Journal.on_done``): the cost of each of its calls once, replayed calls included.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Histogram

from schemas import VigilError
from streams.core.backpressure import Blocked, Gate
from streams.core.context import Context
from streams.core.journal import Journal
from streams.core.settings import Settings
from streams.observability.metrics import LLM_COST, LLM_REQUESTS, LLM_SECONDS, LLM_TOKENS, REGISTRY

from .budget import BudgetExceeded, EntityBudget, EntityLimits, TokenBudget
from .circuit import CircuitBreaker
from .config import AgentLLMConfig, AgentSettings

# litellm fetches a remote model-cost map at import and retries for seconds without network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# litellm logs every call at INFO (and one of its format strings is broken); keep its warnings.
for _name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
    logging.getLogger(_name).setLevel(logging.WARNING)

log = logging.getLogger(__name__)

#: agent label of calls made on the client itself rather than through ``bind``
UNBOUND = "unbound"

LLM_COST_PER_EVENT = Histogram(
    "vigil_llm_cost_per_event_usd",
    "LLM cost in US dollars of one event, observed when it is over (handled or dead-lettered): "
    "each of its calls once, calls replayed from the journal included",
    ["agent"],
    registry=REGISTRY,
    buckets=(0.0, 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)


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
    #: unique per request made: a reply replayed from the journal keeps it (per-event cost)
    call_id: str = ""


def _provider(model: str) -> str:
    return model.split("/", 1)[0] if "/" in model else ""


def _split(models: str) -> list[str]:
    return [m.strip() for m in models.split(",") if m.strip()]


def fallback_models(settings: Settings) -> list[str]:
    return _split(settings.llm_fallbacks)


def agent_alias(agent: str) -> str:
    """The Router model group of an agent with its own model or fallbacks."""
    return f"agent-{agent}"


def _own_group(config: AgentLLMConfig) -> bool:
    return config.model is not None or config.fallbacks is not None


def router_config(settings: Settings, alias: str, agents: AgentSettings | None = None) -> dict[str, Any]:
    """``litellm.Router`` arguments: the main model under ``alias``, each fallback as its own
    model group; an agent with its own model or fallbacks (``agents``) gets the same under
    ``agent_alias(name)``. A fallback of its group's main provider shares the api_base and key;
    another provider's uses litellm's own variables (``ANTHROPIC_API_KEY``, ...)."""
    groups = [(alias, settings.llm_model, fallback_models(settings))]
    for name, cfg in sorted((agents.agent if agents is not None else {}).items()):
        if _own_group(cfg):
            own = _split(cfg.fallbacks) if cfg.fallbacks is not None else fallback_models(settings)
            groups.append((agent_alias(name), cfg.model or settings.llm_model, own))
    model_list: list[dict[str, Any]] = []
    fallbacks: list[dict[str, list[str]]] = []
    for group, main, others in groups:
        models = [main, *others]
        names = [group, *(f"{group}-fallback-{i}" for i in range(1, len(models)))]
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
        if len(names) > 1:
            fallbacks.append({group: names[1:]})

    config: dict[str, Any] = {
        "model_list": model_list,
        "num_retries": settings.llm_num_retries,
        "timeout": settings.llm_timeout,
        "retry_after": 0,
    }
    if fallbacks:
        config["fallbacks"] = fallbacks
    if settings.llm_rpm or settings.llm_tpm:
        config["optional_pre_call_checks"] = ["enforce_model_rate_limits"]
    return config


def estimate_prompt_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    """About four characters a token, counted on the JSON sent (keys included: it errs high)."""
    size = len(json.dumps(messages, default=str)) + (len(json.dumps(tools, default=str)) if tools else 0)
    return size // 4 + 1


def _cost_of(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """What litellm's cost map charges for that many tokens of ``model``; 0 if unpriced."""
    try:
        import litellm

        prompt_cost, completion_cost = litellm.cost_per_token(
            model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )
    except Exception:  # noqa: BLE001 - litellm raises several types for models it cannot price
        return 0.0
    return float(prompt_cost) + float(completion_cost)


def _local_rate_limit(exc: Exception) -> bool:
    """A 429 the Router raised itself (``rpm``/``tpm`` of every deployment used up this minute)."""
    from litellm.types.router import RouterErrors

    response = getattr(exc, "response", None)
    text = getattr(response, "text", "")
    return isinstance(text, str) and text.startswith(RouterErrors.user_defined_ratelimit_error.value)


class LLMClient:
    ALIAS = "default"

    def __init__(self, settings: Settings, agents: AgentSettings | None = None) -> None:
        self.settings = settings
        #: per-agent overrides (``agents.config``): from the environment unless given
        self.agents = agents if agents is not None else AgentSettings()
        self._config = router_config(settings, self.ALIAS, self.agents)
        #: built at the first call: importing litellm costs seconds of CPU, which a worker whose
        #: agents never call the LLM should not pay before its first event
        self._router: Any = None
        self._building: asyncio.Lock | None = None
        self._circuits: dict[str, CircuitBreaker] = {}
        self._budgets: dict[str, TokenBudget] = {}
        #: entity budgets of calls without a journal: agent -> subject -> budget state
        self._unjournaled: dict[str, dict[str, dict[str, Any]]] = {}
        #: per-event cost tallies: journal -> call id -> USD
        self._tallies: weakref.WeakKeyDictionary[Journal, dict[str, float]] = weakref.WeakKeyDictionary()

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
                window=self.settings.llm_budget_window,
            )
        return budget

    def config(self, agent: str) -> AgentLLMConfig:
        """The agent's overrides (every field None when it has none)."""
        return self.agents.get(agent)

    def model_of(self, agent: str) -> str:
        return self.config(agent).model or self.settings.llm_model

    def alias_of(self, agent: str) -> str:
        return agent_alias(agent) if _own_group(self.config(agent)) else self.ALIAS

    def prompt(self, agent: str, default: str) -> str:
        """The agent's configured system prompt, else ``default``."""
        return self.config(agent).prompt or default

    def entity_limits(self, agent: str) -> EntityLimits:
        cfg, s = self.config(agent), self.settings
        return EntityLimits(
            tokens=s.llm_entity_tokens_per_window
            if cfg.entity_tokens_per_window is None
            else cfg.entity_tokens_per_window,
            cost_usd=s.llm_entity_cost_usd_per_window
            if cfg.entity_cost_usd_per_window is None
            else cfg.entity_cost_usd_per_window,
            window=s.llm_budget_window,
            action=cfg.budget_action or s.llm_budget_action,
        )

    def entity_budget(
        self, agent: str, subject: str | None, journal: Journal | None = None
    ) -> EntityBudget | None:
        """The budget of ``subject`` in ``agent``: over ``journal.meta["budget"]`` (durable) or,
        without a journal, over this client's memory; None without a subject or a limit."""
        limits = self.entity_limits(agent)
        if subject is None or not limits.enabled:
            return None
        if journal is not None:
            state = journal.meta.setdefault("budget", {})
        else:
            entities = self._unjournaled.setdefault(agent, {})
            if len(entities) > 10_000:  # drop the entities of past windows
                now = int(time.time() // limits.window)
                for key in [k for k, v in entities.items() if v.get("w") != now]:
                    del entities[key]
            state = entities.setdefault(subject, {})
        return EntityBudget(agent, subject, limits, state)

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
        journal: Journal | None = None,
    ) -> LLMReply:
        """One request for ``agent`` and ``subject``, checked against the agent's circuit and
        budgets. With ``journal`` (inside ``Journal.step``) the entity's hold is made durable
        before the request and its settled counts go out with the step's record."""
        main = self.model_of(agent)
        router = await self.router()  # the first call imports litellm: not part of its latency
        budget = self.budget(agent)
        circuit = self.circuit(agent)
        entity = self.entity_budget(agent, subject, journal)
        hold: str | None = None
        try:
            budget.check()
            if entity is not None:
                try:
                    kwargs, hold = self._reserve(agent, entity, main, messages, tools, kwargs)
                except (Blocked, BudgetExceeded) as exc:
                    log.info("agent %s: LLM call refused: %s", agent, exc)  # carries the event (logs.py)
                    raise
            probe = circuit.admit()
        except (Blocked, BudgetExceeded):
            if entity is not None and hold is not None:
                entity.release(hold)
            LLM_REQUESTS.labels(agent, main, "rejected").inc()
            raise
        try:
            if hold is not None and journal is not None:
                journal.touch_meta()
                await journal.save_meta()  # a request lost to a crash still counts
            response, started = await self._send(agent, main, router, circuit, probe, messages, tools, kwargs)
        except BaseException:
            if entity is not None and hold is not None:
                entity.release(hold)
                if journal is not None:
                    journal.touch_meta()
            raise
        reply = self._account(agent, main, started, response)
        tokens = reply.prompt_tokens + reply.completion_tokens
        budget.charge(tokens)
        if entity is not None and hold is not None:
            entity.settle(hold, tokens, reply.cost_usd)
            if journal is not None:
                journal.touch_meta()  # written with the step's record
        return reply

    def _reserve(
        self,
        agent: str,
        entity: EntityBudget,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        kwargs: dict[str, Any],
    ) -> tuple[dict[str, Any], str]:
        """Hold the call's worst case: its prompt estimate plus its max tokens (the agent's or
        ``VIGIL_LLM_MAX_TOKENS``, sent with the request when it gives none, so the provider
        keeps to it)."""
        max_tokens = kwargs.get("max_tokens") or kwargs.get("max_completion_tokens")
        if not max_tokens:
            max_tokens = self.config(agent).max_tokens or self.settings.llm_max_tokens
            kwargs = {**kwargs, "max_tokens": max_tokens}
        prompt = estimate_prompt_tokens(messages, tools)
        cost = _cost_of(model, prompt, int(max_tokens)) if entity.limits.cost_usd else 0.0
        return kwargs, entity.reserve(prompt + int(max_tokens), cost)

    async def _send(
        self,
        agent: str,
        main: str,
        router: Any,
        circuit: CircuitBreaker,
        probe: bool,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        kwargs: dict[str, Any],
    ) -> tuple[Any, float]:
        """The request through the Router; its failures mapped to ``LLMError`` or ``Blocked``."""
        import openai
        from litellm import exceptions
        from litellm.types.router import RouterRateLimitError

        cfg = self.config(agent)
        if cfg.max_tokens and not (kwargs.get("max_tokens") or kwargs.get("max_completion_tokens")):
            kwargs = {**kwargs, "max_tokens": cfg.max_tokens}
        started = time.perf_counter()
        try:
            response = await router.acompletion(
                model=self.alias_of(agent), messages=messages, **({"tools": tools} if tools else {}), **kwargs
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
        return response, started

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

    def _account(self, agent: str, main: str, started: float, response: Any) -> LLMReply:
        hidden = getattr(response, "_hidden_params", None) or {}
        model = str(hidden.get("litellm_model_name") or main)
        usage = getattr(response, "usage", None)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = float(hidden.get("response_cost") or 0.0)  # litellm's cost map; 0 for unpriced models
        LLM_SECONDS.labels(agent, model).observe(time.perf_counter() - started)
        LLM_REQUESTS.labels(agent, model, "ok").inc()
        LLM_TOKENS.labels(agent, model, "prompt").inc(prompt)
        LLM_TOKENS.labels(agent, model, "completion").inc(completion)
        LLM_COST.labels(agent, model).inc(cost)
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
            call_id=uuid.uuid4().hex,
        )

    def tally(self, agent: str, journal: Journal, reply: LLMReply) -> None:
        """Add ``reply``'s cost to its event's (once per call: a replay brings its call id);
        observed in ``vigil_llm_cost_per_event_usd`` when the event is over."""
        calls = self._tallies.get(journal)
        if calls is None:
            calls = self._tallies[journal] = {}
            costs = calls  # the callback holds the tally, not the journal
            journal.on_done(lambda: LLM_COST_PER_EVENT.labels(agent).observe(sum(costs.values())))
        calls[reply.call_id or f"call-{len(calls)}"] = reply.cost_usd


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
            "llm",
            self.client.call,
            self.agent,
            self.subject,
            messages,
            tools,
            kwargs,
            journal=self.journal,
            result_type=LLMReply,
        )
        self.client.tally(self.agent, self.journal, reply)
        return reply


def agent_prompt(ctx: Context[Any], default: str) -> str:
    """The system prompt of ``ctx``'s agent: ``VIGIL_AGENT__<NAME>__PROMPT`` if set (through the
    ``llm`` resource's configuration), else ``default``."""
    client = ctx.resources.get("llm")
    if isinstance(client, LLMClient):
        return client.prompt(ctx.agent, default)
    return default
