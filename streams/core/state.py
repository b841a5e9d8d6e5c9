"""Per-entity durable state: the agent's state model and the ids of events already handled,
stored together as one table value (a JSON object) so that both change in one changelog record."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from streams.core.errors import ConfigError

FORMAT_VERSION = 1


@dataclass
class EntityRecord:
    state: BaseModel | None
    #: handled event ids, oldest first, bounded by ``Settings.dedup_ids_per_entity``
    handled: list[str] = field(default_factory=list)
    #: set when a record of this subject was dead-lettered under ``on_dead_letter="park"``
    parked: bool = False

    def has_handled(self, event_id: str) -> bool:
        return event_id in self.handled

    def mark_handled(self, event_id: str, limit: int) -> None:
        self.handled.append(event_id)
        if len(self.handled) > limit:
            del self.handled[: len(self.handled) - limit]


class StateStore:
    """Reads and writes ``EntityRecord`` values in a table keyed by subject (bytes -> bytes)."""

    def __init__(self, table: MutableMapping[str, Any], model: type[BaseModel] | None, max_ids: int) -> None:
        self._table = table
        self._model = model
        self._max_ids = max_ids

    def load(self, subject: str) -> EntityRecord:
        body = self._table.get(subject)
        if body is None:
            return EntityRecord(self._model() if self._model else None)
        handled = list(body.get("handled", []))
        parked = bool(body.get("parked", False))
        if self._model is None:
            return EntityRecord(None, handled, parked)
        try:
            state = self._model.model_validate(body["state"])
        except ValidationError as exc:
            raise ConfigError(
                f"stored state of {subject!r} no longer fits {self._model.__name__}: {exc}"
            ) from None
        return EntityRecord(state, handled, parked)

    def encode(self, record: EntityRecord, handled_id: str | None) -> dict[str, Any]:
        """The table value for ``record``, with ``handled_id`` added to its handled ids."""
        if handled_id is not None:
            record.mark_handled(handled_id, self._max_ids)
        body: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "state": record.state.model_dump(mode="json") if record.state is not None else None,
            "handled": record.handled,
        }
        if record.parked:
            body["parked"] = True
        return body

    def write(self, subject: str, body: dict[str, Any]) -> None:
        """At-least-once write: Faust sends the changelog record and flushes it before the
        offset commit (exactly-once writes go through ``streams.core.effects``)."""
        self._table[subject] = body
