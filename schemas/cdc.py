"""Database change events (Debezium's shape), one type per table and operation:
``db.<schema>.<table>.<created|updated|deleted|read|truncated>.v1``. Tables are not known in
advance, so ``change_models(schema, table)`` registers the five types of a table on first use
(a consumer of ``db.public.orders.created.v1`` calls it at import)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Literal

from typing_extensions import TypedDict

from .payload import Payload
from .registry import Registry, registry

OP_NAMES = {"c": "created", "u": "updated", "d": "deleted", "r": "read", "t": "truncated"}
Op = Literal["c", "u", "d", "r", "t"]

_UNSAFE = re.compile(r"[^a-z0-9_]")


@lru_cache(maxsize=4096)
def name_part(identifier: str) -> str:
    """A schema or table name as event types and topic names spell it: lower case, every
    character outside ``[a-z0-9_]`` replaced by ``_`` (``data.source`` keeps the real name)."""
    return _UNSAFE.sub("_", identifier.lower()) or "_"


def change_base(schema: str, table: str, op: str) -> str:
    return f"db.{name_part(schema)}.{name_part(table)}.{OP_NAMES[op]}"


class ChangeSource(TypedDict, total=False):
    lsn: int | None
    txId: int | None
    schema: str
    table: str
    db: str | None


class ChangeV1(Payload):
    """What every change event carries, whichever table and op."""

    op: Op
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    source: ChangeSource
    ts_ms: int


_models: dict[tuple[int, str, str], dict[str, type[ChangeV1]]] = {}


def change_models(schema: str, table: str, into: Registry = registry) -> dict[str, type[ChangeV1]]:
    """The payload models of one table's change events by op, registered in ``into``."""
    key = (id(into), name_part(schema), name_part(table))
    if key not in _models:
        models: dict[str, type[ChangeV1]] = {}
        for op in OP_NAMES:
            base = change_base(schema, table, op)
            cls = type(f"Change_{base.replace('.', '_')}", (ChangeV1,), {"__module__": __name__})
            models[op] = into.event(base, 1)(cls)
        _models[key] = models
    return dict(_models[key])
