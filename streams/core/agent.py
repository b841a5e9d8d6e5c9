"""The agent decorator: what an agent consumes, the state it keeps, what it emits.

    @runtime.agent(ChatMessageReceivedV2, state=SupportState, emits=[ChatReplyRequestedV1])
    async def support(event: Envelope[ChatMessageReceivedV2], ctx: Context[SupportState]) -> None: ...

An agent may consume several payload types (of one topic or of several) into one entity state:
``runtime.agent(OpenedV1, SynchronizeV1, ...)`` runs the decorated handler for each (it matches
on ``event.data``), and ``handlers={SynchronizeV1: other}`` gives a type its own handler.

Declaring an agent only records an ``AgentSpec``; ``streams.adapter.worker`` binds specs to Kafka.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from schemas import Envelope, Payload
from streams.core import topics
from streams.core.context import Context
from streams.core.errors import ConfigError
from streams.core.retry import Retry
from streams.core.settings import Settings

Handler = Callable[[Envelope[Any], Context[Any]], Awaitable[None]]
H = TypeVar("H", bound=Handler)
ResourceFactory = Callable[[Settings], Any]
OnDeadLetter = Literal["continue", "park"]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class AgentSpec:
    name: str
    #: logical topic name from the catalogue (prefix applied at bind time): the first of ``topics``
    topic: str
    #: the first of ``payloads``
    payload: type[Payload]
    state: type[BaseModel] | None
    emits: tuple[type[Payload], ...]
    handler: Handler
    #: records of distinct subjects in flight at once (None: ``Settings.concurrency``)
    concurrency: int | None = None
    #: records fetched but unfinished before fetching pauses (None: ``Settings.max_buffered``)
    max_buffered: int | None = None
    retry: Retry = field(default_factory=Retry)
    #: what later records of a subject do after one of its records was dead-lettered:
    #: "continue" handles them; "park" dead-letters them (reason "parked") until
    #: ``vigil dlq release SUBJECT``
    on_dead_letter: OnDeadLetter = "continue"
    #: run by ``vigil worker`` without ``--agents``; False for integrations a deployment opts
    #: into by name (each agent costs its topics and tables at start)
    default: bool = True
    #: every payload type consumed (several types share one entity state)
    payloads: tuple[type[Payload], ...] = ()
    #: every topic consumed, ``topic`` first
    topics: tuple[str, ...] = ()
    #: handler per event base (``Payload.event_base``); types without one use ``handler``
    handlers: Mapping[str, Handler] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.payloads:
            object.__setattr__(self, "payloads", (self.payload,))
        if not self.topics:
            object.__setattr__(self, "topics", (self.topic,))

    def handler_for(self, base: str) -> Handler:
        return self.handlers.get(base, self.handler)

    @property
    def dlq_topic(self) -> str:
        return topics.dlq_topic(self.name).name

    @property
    def table_name(self) -> str:
        """Never rename: the changelog topic carries this name."""
        return f"{self.name}-state"


class Runtime:
    """The registry of agents and of the resources (LLM client, ...) their contexts expose."""

    def __init__(self) -> None:
        self._agents: dict[str, AgentSpec] = {}
        self._resources: dict[str, ResourceFactory] = {}

    def agent(
        self,
        payload: type[Payload],
        *more: type[Payload],
        name: str | None = None,
        topic: str | None = None,
        state: type[BaseModel] | None = None,
        emits: Iterable[type[Payload]] = (),
        concurrency: int | None = None,
        max_buffered: int | None = None,
        retry: Retry | None = None,
        on_dead_letter: OnDeadLetter = "continue",
        default: bool = True,
        handlers: Mapping[type[Payload], Handler] | None = None,
    ) -> Callable[[H], H]:
        """``topic`` overrides the catalogue's topic of every payload type (one topic)."""
        payloads = (payload, *more)

        def register(fn: H) -> H:
            agent_name = name or fn.__name__
            if not _NAME_RE.match(agent_name):
                raise ConfigError(f"agent name {agent_name!r} must match {_NAME_RE.pattern}")
            if agent_name in self._agents:
                raise ConfigError(f"agent {agent_name!r} is declared twice")
            bases = [p.event_base for p in payloads]
            if len(set(bases)) != len(bases):
                raise ConfigError(
                    f"agent {agent_name!r}: a payload type is listed twice (one version per type)"
                )
            per_type = dict(handlers or {})
            for model in per_type:
                if model not in payloads:
                    raise ConfigError(
                        f"agent {agent_name!r}: handlers names {model.event_type}, which it does not consume"
                    )
            sources = tuple(dict.fromkeys(topic or topics.for_type(p.event_type).name for p in payloads))
            for source in sources:
                topics.by_name(source)
            emitted = tuple(emits)
            for model in emitted:
                topics.for_type(model.event_type)  # fail at import, not at the first emit
            if concurrency is not None and concurrency < 1:
                raise ConfigError(f"agent {agent_name!r}: concurrency must be >= 1")
            if max_buffered is not None and max_buffered < 1:
                raise ConfigError(f"agent {agent_name!r}: max_buffered must be >= 1")
            if on_dead_letter not in ("continue", "park"):
                raise ConfigError(f"agent {agent_name!r}: on_dead_letter must be 'continue' or 'park'")
            self._agents[agent_name] = AgentSpec(
                agent_name,
                sources[0],
                payload,
                state,
                emitted,
                fn,
                concurrency=concurrency,
                max_buffered=max_buffered,
                retry=retry or Retry(),
                on_dead_letter=on_dead_letter,
                default=default,
                payloads=payloads,
                topics=sources,
                handlers={m.event_base: h for m, h in per_type.items()},
            )
            return fn

        return register

    def provide(self, name: str, factory: ResourceFactory) -> None:
        """Make ``factory(settings)`` available to handlers as ``ctx.resources[name]``."""
        self._resources[name] = factory

    @property
    def agents(self) -> dict[str, AgentSpec]:
        return dict(self._agents)

    def select(self, names: Iterable[str] | None) -> list[AgentSpec]:
        if names is None:
            return [spec for spec in self._agents.values() if spec.default]
        chosen = []
        for n in names:
            if n not in self._agents:
                known = ", ".join(sorted(self._agents)) or "none"
                raise ConfigError(f"unknown agent {n!r} (known: {known})")
            chosen.append(self._agents[n])
        return chosen

    def build_resources(self, settings: Settings) -> dict[str, Any]:
        return {name: factory(settings) for name, factory in self._resources.items()}


#: the process-wide runtime that agent modules declare into
runtime = Runtime()
