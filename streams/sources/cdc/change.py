"""One row change, shaped like Debezium's change event, and the envelope it travels in.

Both CDC paths (a Debezium topic, the built-in PostgreSQL source) build a ``Change`` and call
``envelope``, so one consumer path serves both:

- topic ``db.<schema>.<table>.v1``; type ``db.<schema>.<table>.<created|updated|deleted|read|truncated>.v1``
  (schema and table lower-cased, characters outside ``[a-z0-9_]`` replaced by ``_``, as event
  types and topic names allow; ``data.source`` keeps the real names);
- subject (the Kafka key) = the primary key's values joined with ``/``; a table-level event
  (truncate) or a table without a key uses ``<schema>.<table>``;
- data = ``op``, ``before``, ``after``, ``source`` (``lsn``, ``txId``, ``schema``, ``table``,
  ``db``) and ``ts_ms``; the envelope's ``time`` is ``ts_ms``, so a re-emitted change is the
  same record byte for byte.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas import RawEnvelope
from schemas.cdc import OP_NAMES, change_base, name_part

#: the namespace of every CDC event id (uuid5): ids depend only on the change's position
ID_NAMESPACE = uuid.UUID("6f1d3c1e-6a0e-4b59-9c1e-3d0c5a1b7e21")
KEY_SEPARATOR = "/"


def topic_for(schema: str, table: str) -> str:
    return f"db.{name_part(schema)}.{name_part(table)}.v1"


def type_for(schema: str, table: str, op: str) -> str:
    return f"{change_base(schema, table, op)}.v1"


def _key_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return "" if value is None else str(value)


def subject_for(key: Sequence[Any] | None, schema: str, table: str) -> str:
    if key:
        text = KEY_SEPARATOR.join(_key_text(v) for v in key)
        if text:
            return text
    return f"{schema}.{table}"


def event_id(*parts: Any) -> str:
    """A deterministic event id: the same parts give the same id in any process."""
    return str(
        uuid.uuid5(ID_NAMESPACE, json.dumps(parts, separators=(",", ":"), sort_keys=True, default=str))
    )


@dataclass(frozen=True)
class Change:
    op: str  # c, u, d, r, t
    schema: str
    table: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    #: primary-key values in key-column order (empty: no key, or a table-level event)
    key: tuple[Any, ...]
    lsn: int | None
    tx_id: int | None
    db: str | None
    ts_ms: int

    def __post_init__(self) -> None:
        if self.op not in OP_NAMES:
            raise ValueError(f"unknown change op {self.op!r} (expected one of {', '.join(OP_NAMES)})")

    @property
    def topic(self) -> str:
        return topic_for(self.schema, self.table)

    @property
    def type(self) -> str:
        return type_for(self.schema, self.table, self.op)

    @property
    def subject(self) -> str:
        return subject_for(self.key, self.schema, self.table)

    def data(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "before": self.before,
            "after": self.after,
            "source": {
                "lsn": self.lsn,
                "txId": self.tx_id,
                "schema": self.schema,
                "table": self.table,
                "db": self.db,
            },
            "ts_ms": self.ts_ms,
        }


def envelope(change: Change, *, id: str, source: str) -> RawEnvelope:
    return RawEnvelope(
        id=id,
        source=source,
        type=change.type,
        subject=change.subject,
        time=datetime.fromtimestamp(change.ts_ms / 1000, UTC),
        data=change.data(),
    )
