"""Debezium change events (Kafka Connect's JSON converter, with or without the
``{"schema": ..., "payload": ...}`` wrapper) -> ``Change``.

The record key is Debezium's key struct (the table's primary key, fields in key order); the value
is the change envelope (``before``, ``after``, ``source``, ``op``, ``ts_ms``). A tombstone (the
null value Debezium writes after a delete so compaction can drop the key) is no change at all:
``decode`` returns ``None`` and the caller skips it. Anything else that is not a change event
raises ``DebeziumError`` (the translator dead-letters it).

Values pass through as the converter wrote them (Debezium's own encoding of decimals, times and
so on is kept); the event id is a hash of the change's position in the source database (the
``source`` block without the connector ``version``, the op and the key), so a change that
Debezium itself re-emits after a connector restart gets the same id.
"""

from __future__ import annotations

import json
from typing import Any

from schemas import RawEnvelope, VigilError

from .change import Change, envelope, event_id


class DebeziumError(VigilError):
    """The record is not a Debezium change event."""

    reason = "invalid_change_event"


def _json(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DebeziumError(f"{what} is not UTF-8 JSON: {exc}") from None


def _unwrap(doc: Any) -> Any:
    """The ``payload`` of a schema-wrapped document; the document itself otherwise."""
    if isinstance(doc, dict) and set(doc) == {"schema", "payload"}:
        return doc["payload"]
    return doc


def _key_values(key: bytes | None) -> tuple[Any, ...]:
    if key is None:
        return ()
    try:
        doc = _unwrap(json.loads(key.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return (key.decode("utf-8", errors="replace"),)  # a string key converter
    if doc is None:
        return ()
    if isinstance(doc, dict):
        return tuple(doc.values())
    return (doc,)


def _row(payload: dict[str, Any], field: str) -> dict[str, Any] | None:
    row = payload.get(field)
    if row is not None and not isinstance(row, dict):
        raise DebeziumError(f"'{field}' is JSON {type(row).__name__}, not an object or null")
    return row


def _int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise DebeziumError(f"expected an integer position, got {value!r}")


def decode(key: bytes | None, value: bytes | None) -> tuple[Change, str] | None:
    """The change and its deterministic id, or ``None`` for a tombstone."""
    if value is None:
        return None
    payload = _unwrap(_json(value, "record value"))
    if payload is None:
        return None  # a schema-wrapped tombstone ({"schema": null, "payload": null})
    if not isinstance(payload, dict):
        raise DebeziumError(f"record value is JSON {type(payload).__name__}, not a change event")
    op = payload.get("op")
    if op not in ("c", "u", "d", "r", "t"):
        raise DebeziumError(f"not a row change: op is {op!r} (expected c, u, d, r or t)")
    source = payload.get("source")
    if not isinstance(source, dict):
        raise DebeziumError("change event has no 'source' block")
    table = source.get("table")
    schema = source.get("schema") or source.get("db")  # MySQL names its schemas databases
    if not isinstance(table, str) or not table or not isinstance(schema, str) or not schema:
        raise DebeziumError("change event source names no schema and table")
    ts_ms = payload.get("ts_ms", source.get("ts_ms"))
    if not isinstance(ts_ms, int) or isinstance(ts_ms, bool):
        raise DebeziumError(f"change event has no integer ts_ms (got {ts_ms!r})")
    before, after = _row(payload, "before"), _row(payload, "after")
    key_values = () if op == "t" else _key_values(key)
    change = Change(
        op=op,
        schema=schema,
        table=table,
        before=before,
        after=after,
        key=key_values,
        lsn=_int(source.get("lsn")),
        tx_id=_int(source.get("txId")),
        db=source.get("db") if isinstance(source.get("db"), str) else None,
        ts_ms=ts_ms,
    )
    position = {k: v for k, v in source.items() if k != "version"}
    return change, event_id("debezium", position, op, change.subject)


def translate(key: bytes | None, value: bytes | None, *, name: str) -> RawEnvelope | None:
    """The ``db.<schema>.<table>.<op>.v1`` envelope of a Debezium record (``None``: tombstone)."""
    decoded = decode(key, value)
    if decoded is None:
        return None
    change, id_ = decoded
    return envelope(change, id=id_, source=f"vigil/debezium/{name}")
