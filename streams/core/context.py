"""What a handler sees besides its event: the entity's state, emit, and shared resources."""

from __future__ import annotations

import contextvars
import hashlib
import inspect
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

from pydantic_core import to_jsonable_python

from schemas import Envelope, Payload, registry, utcnow
from streams.core.errors import ConfigError
from streams.core.journal import Journal
from streams.core.journal import adapter as journal_adapter

S = TypeVar("S")
T = TypeVar("T")

#: marks a recorded step result that carries the events its step emitted
_EMITTING_STEP = "$vigil_step"

#: namespace of derived event ids: uuid5(NS, agent / input id / n) is stable across replays
DERIVED_ID_NAMESPACE = uuid.UUID("6c1d3f0e-8a4e-4d8b-9f57-5b0a2f7d9c11")


#: the event whose handler is running (log records carry its id, subject and trace)
current_event: contextvars.ContextVar[Envelope[Any] | None] = contextvars.ContextVar(
    "vigil_current_event", default=None
)

_NAMESPACE_BYTES = DERIVED_ID_NAMESPACE.bytes
#: held here: pydantic caches parametrised models only weakly, and rebuilt ``Envelope[Payload]``
#: after every garbage collection (7 % of a no-op agent's time, measured by py-spy)
_ENVELOPE = Envelope[Payload]


def derived_id(agent: str, input_id: str, n: int) -> str:
    """``str(uuid.uuid5(DERIVED_ID_NAMESPACE, ...))``, computed without building UUID objects
    (a fifth of a no-op handler's time went to them)."""
    digest = bytearray(
        hashlib.sha1(_NAMESPACE_BYTES + f"{agent}\x1f{input_id}\x1f{n}".encode()).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


class Context(Generic[S]):
    """Emits are buffered and published only if the handler returns, so a failed attempt
    leaves no partial output behind."""

    def __init__(
        self,
        *,
        agent: str,
        event: Envelope[Any],
        state: S,
        emits: tuple[type[Payload], ...],
        resources: Mapping[str, Any],
        attempt: int = 1,
        journal: Journal | None = None,
    ) -> None:
        self.agent = agent
        #: 1 on the first try of this event in this process, 2 on its first retry, ...
        self.attempt = attempt
        self.event = event
        self.state = state
        self.resources = resources
        self._allowed = emits
        self.pending: list[Envelope[Payload]] = []
        #: this event's journal (``streams.core.journal``); None only for contexts built by hand
        self.journal = journal

    @property
    def llm(self) -> Any:
        """The ``llm`` resource, bound to this agent and subject when it supports that (per-agent
        circuit breaker, per-entity budgets)."""
        try:
            client = self.resources["llm"]
        except KeyError:
            raise ConfigError("no 'llm' resource is provided to this runtime") from None
        bind = getattr(client, "bind", None)
        if not callable(bind):
            return client
        return bind(self.agent, self.event.subject, journal=self.journal)

    async def step(
        self,
        name: str,
        fn: Callable[..., Awaitable[T] | T],
        *args: Any,
        result_type: Any = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn(*args, **kwargs)`` at most once for this event, whatever happens after it:
        its result is recorded durably (with the entity's state, in its changelog) before this
        returns, and a retry, a redelivery after a crash or a rebalance gets the recorded result
        back without running ``fn`` again. The result comes back as its JSON decodes (or
        validated as ``result_type``), on the first run as on a replay. Events ``fn`` emits
        through this context are recorded with its result and emitted again on a replay (same
        ids). Give each step of a handler its own name; a name used again in one run becomes
        ``name#2``, ``name#3``."""
        if self.journal is None:
            raise ConfigError("this context has no journal (it was not built by the dispatcher)")
        before = len(self.pending)
        ran = False

        async def run() -> Any:
            nonlocal ran
            ran = True
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
            if len(self.pending) == before:
                return value
            emitted = self.emitted_since(before)
            return {_EMITTING_STEP: 1, "result": to_jsonable_python(value), "emits": emitted}

        recorded: Any = await self.journal.step(name, run)
        if isinstance(recorded, dict) and recorded.get(_EMITTING_STEP) == 1:
            if not ran:  # replayed: what the step emitted the first time is emitted again, in order
                await self.emit_again(recorded["emits"])
            recorded = recorded["result"]
        if result_type is None:
            return recorded  # type: ignore[no-any-return]  # the JSON value, as documented
        result: T = journal_adapter(result_type).validate_python(recorded)
        return result

    def emitted_since(self, before: int) -> list[dict[str, Any]]:
        """The events emitted after the first ``before``, as a journal records them."""
        return [
            {"type": e.type, "subject": e.subject, "data": e.data.model_dump(mode="json")}
            for e in self.pending[before:]
        ]

    async def emit_again(self, recorded: list[dict[str, Any]]) -> None:
        """Emit what ``emitted_since`` recorded, in order: a replayed step's events, with the
        ids they had (derived from their position in the handler's emits)."""
        for e in recorded:
            await self.emit(registry.validate(e["type"], e["data"]), subject=e["subject"])

    async def emit(self, payload: Payload, *, subject: str | None = None) -> Envelope[Payload]:
        if not any(isinstance(payload, allowed) for allowed in self._allowed):
            declared = ", ".join(m.event_type for m in self._allowed) or "nothing"
            raise ConfigError(
                f"agent {self.agent!r} emitted {type(payload).event_type} but declares emits=[{declared}]"
            )
        event = _ENVELOPE.model_construct(
            id=derived_id(self.agent, self.event.id, len(self.pending)),
            source=f"vigil/agent/{self.agent}",
            type=payload.event_type,
            subject=subject or self.event.subject,
            time=utcnow(),
            specversion="1.0",
            datacontenttype="application/json",
            data=payload,
            traceparent=self.event.traceparent,
            causationid=self.event.id,
        )
        self.pending.append(event)
        return event
