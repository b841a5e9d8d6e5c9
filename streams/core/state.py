"""Per-entity durable state and the index of handled event ids, in one table.

An entity's value holds its state model and the ids of the records its last write covered;
every handled id also gets its own small index entry (key ``ID_PREFIX + id``, value the time it
was handled). So what a record reads and writes does not grow with the entity's history: one
value of the entity's size, one lookup in the index, one ~60-byte index entry per event.

Both live in the same table, so they share one changelog partition and one local
``WriteBatch``. A write puts the entity's value first and its index entries after it: a crash
that cuts the changelog between them leaves the ids in the entity's value, where the next
lookup finds them. Entity keys are JSON strings (they start with ``"``), index keys start
with a NUL byte: the two never collide.

Index entries older than ``VIGIL_DEDUP_RETENTION`` are deleted (with changelog tombstones) by
``streams.adapter.worker``'s sweep, so the index is bounded by age, not by history; so are
journal entries (``streams.core.journal``) that no completed event deleted.

Values written by format 1 (``handled``: the whole id window inside the value) are read as
before; their ids move into the index on the entity's next write.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin
from uuid import UUID

from pydantic import BaseModel, ValidationError

from streams.core.errors import ConfigError
from streams.core.journal import JOURNAL_PREFIX, META_PREFIX
from streams.core.tables import PartitionedTable, TableWrite, stamp, str_key

FORMAT_VERSION = 2
ID_PREFIX = b"\x00id\x00"


def id_key(event_id: str) -> bytes:
    return ID_PREFIX + event_id.encode()


@dataclass
class EntityRecord:
    state: BaseModel | None
    #: ids handled by the entity's last write (their index entries follow that write)
    recent: list[str] = field(default_factory=list)
    #: set when a record of this subject was dead-lettered under ``on_dead_letter="park"``
    parked: bool = False
    #: a format-1 value's id window, moved into the index by the next write
    legacy: list[str] = field(default_factory=list)


class StateStore:
    """Reads ``EntityRecord`` values and handled ids, and computes the writes of a batch of
    records of one entity. The writes themselves go through ``streams.core.effects``."""

    def __init__(self, table: PartitionedTable, model: type[BaseModel] | None) -> None:
        self.table = table
        self._model = model

    def load(self, partition: int, subject: str) -> EntityRecord:
        raw = self.table.get(partition, str_key(subject))
        if raw is None:
            return EntityRecord(self._model() if self._model else None)
        body: dict[str, Any] = json.loads(raw)
        parked = bool(body.get("parked", False))
        recent = list(body.get("ids", ()))
        legacy = list(body.get("handled", ()))  # format 1
        if self._model is None:
            return EntityRecord(None, recent, parked, legacy)
        try:
            state = self._model.model_validate(body["state"])
        except ValidationError as exc:
            raise ConfigError(
                f"stored state of {subject!r} no longer fits {self._model.__name__}: {exc}"
            ) from None
        return EntityRecord(state, recent, parked, legacy)

    def handled(self, partition: int, entity: EntityRecord, event_id: str) -> bool:
        if event_id in entity.recent or event_id in entity.legacy:
            return True
        return self.table.get(partition, id_key(event_id)) is not None

    def writes(self, subject: str, entity: EntityRecord, ids: Sequence[str], now_ms: int) -> list[TableWrite]:
        """The table writes that store ``entity`` with ``ids`` handled, in the order they
        must reach the changelog; ``entity`` then describes what was written."""
        state = entity.state.model_dump_json() if entity.state is not None else "null"
        parked = ',"parked":true' if entity.parked else ""
        value = f'{{"v":{FORMAT_VERSION},"state":{state},"ids":{json.dumps(list(ids))}{parked}}}'
        out: list[TableWrite] = [(str_key(subject), value.encode())]
        when = stamp(now_ms)
        out.extend((id_key(i), when) for i in _unique(entity.legacy, ids))
        entity.recent = list(ids)
        entity.legacy = []
        return out


_IMMUTABLE = (int, float, str, bool, bytes, type(None), datetime, date, time, timedelta, Decimal, UUID, Enum)


def _immutable(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is Literal:
        return True
    if origin in (Union, UnionType):
        return all(_immutable(a) for a in get_args(annotation))
    return isinstance(annotation, type) and issubclass(annotation, _IMMUTABLE)


def state_copier(model: type[BaseModel] | None) -> Callable[[BaseModel], BaseModel]:
    """How a handler attempt gets its own copy of the state (a failed attempt must leave the
    stored one untouched): a shallow copy when every field holds an immutable value, a deep one
    otherwise."""
    if model is not None and all(_immutable(f.annotation) for f in model.model_fields.values()):
        return lambda state: state.model_copy()
    return lambda state: state.model_copy(deep=True)


def expired_ids(entries: Iterable[tuple[bytes, bytes]], before_ms: int) -> Iterator[bytes]:
    """Keys of index entries handled before ``before_ms`` and of journal entries recorded before
    it (steps of an event whose code path changed: nothing deletes them), from entries in key
    order that start at ``ID_PREFIX``. Both values start with the 8-byte time. The order is
    ``ID_PREFIX`` < ``JOURNAL_PREFIX`` < ``META_PREFIX`` < entity keys: the walk stops at the
    first key past the journal, so an entity's meta (budgets) and state are never read here."""
    for key, value in entries:
        if key >= META_PREFIX or not key.startswith(b"\x00"):
            return
        if (
            key.startswith((ID_PREFIX, JOURNAL_PREFIX))
            and int.from_bytes(value[:8], "little", signed=True) < before_ms
        ):
            yield key


def _unique(*groups: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for g in groups for i in g))
