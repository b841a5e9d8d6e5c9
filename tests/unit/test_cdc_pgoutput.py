"""pgoutput v1 messages built byte by byte as the protocol documents them, parsed and decoded
into changes: values by type, key-only and full old tuples, truncate, deterministic ids."""

from __future__ import annotations

import struct

import pytest

from streams.sources.cdc import pgoutput
from streams.sources.cdc.decoder import Committed, DecodeError, Decoder, Emitted

BOOL, INT4, INT8, TEXT, NUMERIC, FLOAT8, JSONB = 16, 23, 20, 25, 1700, 701, 3802
COMMIT_MICROS = 789_000_000_000_000  # since 2000-01-01


def s(text: str) -> bytes:
    return text.encode() + b"\0"


def relation(oid: int, schema: str, table: str, ident: str, cols: list[tuple[str, int, bool]]) -> bytes:
    out = b"R" + struct.pack("!I", oid) + s(schema) + s(table) + ident.encode() + struct.pack("!h", len(cols))
    for name, type_oid, key in cols:
        out += struct.pack("!B", 1 if key else 0) + s(name) + struct.pack("!Ii", type_oid, -1)
    return out


def tup(*values: str | None) -> bytes:
    out = struct.pack("!h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v == "<unchanged>":
            out += b"u"
        else:
            raw = v.encode()
            out += b"t" + struct.pack("!i", len(raw)) + raw
    return out


def begin(final_lsn: int, xid: int) -> bytes:
    return b"B" + struct.pack("!QqI", final_lsn, COMMIT_MICROS, xid)


def commit(lsn: int, end: int) -> bytes:
    return b"C" + struct.pack("!BQQq", 0, lsn, end, COMMIT_MICROS)


ORDERS = relation(
    16400,
    "public",
    "orders",
    "f",
    [("id", INT4, True), ("note", TEXT, True), ("total", NUMERIC, True), ("paid", BOOL, True)],
)
LINES = relation(
    16410, "sales", "Lines", "d", [("order_id", INT8, True), ("line", INT4, True), ("w", FLOAT8, False)]
)


def decoder() -> Decoder:
    keys = {16400: ("id",), 16410: ("order_id", "line")}
    return Decoder("sys/db/slot", "db", lambda rel: keys.get(rel.oid, ()))


def feed_all(d: Decoder, messages: list[bytes], lsn: int = 1000) -> list[Emitted | Committed]:
    out: list[Emitted | Committed] = []
    for i, m in enumerate(messages):
        out.extend(d.feed(lsn + i, m))
    return out


def test_parse_relation_begin_commit() -> None:
    rel = pgoutput.parse(LINES)
    assert isinstance(rel, pgoutput.Relation)
    assert (rel.oid, rel.schema, rel.table, rel.replica_identity) == (16410, "sales", "Lines", "d")
    assert [(c.name, c.type_oid, c.in_key) for c in rel.columns][2] == ("w", FLOAT8, False)
    b = pgoutput.parse(begin(5000, 42))
    assert b == pgoutput.Begin(5000, 946684800000 + COMMIT_MICROS // 1000, 42)
    assert pgoutput.parse(commit(4990, 5000)) == pgoutput.Commit(4990, 5000, b.commit_ms)


def test_values_by_type_and_nulls() -> None:
    rel = pgoutput.parse(ORDERS)
    assert isinstance(rel, pgoutput.Relation)
    row = pgoutput.row(
        rel, pgoutput.parse(b"I" + struct.pack("!I", 16400) + b"N" + tup("7", None, "12.50", "t")).new
    )  # type: ignore[union-attr]
    assert row == {"id": 7, "note": None, "total": "12.50", "paid": True}
    assert pgoutput.value(FLOAT8, "NaN") == "NaN" and pgoutput.value(FLOAT8, "1.5") == 1.5
    assert pgoutput.value(JSONB, '{"a": 1}') == '{"a": 1}'


def test_a_transaction_decodes_to_changes_and_a_commit() -> None:
    d = decoder()
    items = feed_all(
        d,
        [
            ORDERS,
            LINES,
            begin(2000, 77),
            b"I" + struct.pack("!I", 16400) + b"N" + tup("1", "a", "1.00", "f"),
            b"U"
            + struct.pack("!I", 16400)
            + b"O"
            + tup("1", "a", "1.00", "f")
            + b"N"
            + tup("1", "b", "2.00", "t"),
            b"D" + struct.pack("!I", 16410) + b"K" + tup("7", "2", None),
            b"U" + struct.pack("!I", 16410) + b"N" + tup("7", "3", "0.5"),
            b"T" + struct.pack("!iB", 2, 0) + struct.pack("!II", 16400, 16410),
            commit(1990, 2000),
        ],
    )
    assert [type(i).__name__ for i in items] == ["Emitted"] * 6 + ["Committed"]
    assert items[-1] == Committed(2000, 6)
    changes = [i.change for i in items if isinstance(i, Emitted)]
    c, u, dl, u2, t1, t2 = changes
    assert (c.op, c.subject, c.after, c.before, c.tx_id, c.lsn) == (
        "c",
        "1",
        {"id": 1, "note": "a", "total": "1.00", "paid": False},
        None,
        77,
        1003,
    )
    assert u.before == {"id": 1, "note": "a", "total": "1.00", "paid": False}  # REPLICA IDENTITY FULL
    assert u.after == {"id": 1, "note": "b", "total": "2.00", "paid": True}
    assert (dl.op, dl.before, dl.subject, dl.topic) == (
        "d",
        {"order_id": 7, "line": 2},
        "7/2",
        "db.sales.lines.v1",
    )
    assert (u2.before, u2.subject, u2.type) == (None, "7/3", "db.sales.lines.updated.v1")
    assert (t1.op, t1.subject, t2.subject) == ("t", "public.orders", "sales.Lines")
    assert c.data()["source"] == {"lsn": 1003, "txId": 77, "schema": "public", "table": "orders", "db": "db"}


def test_ids_depend_on_position_not_on_the_session() -> None:
    msgs = (
        [ORDERS, begin(3000, 5)]
        + [b"I" + struct.pack("!I", 16400) + b"N" + tup(str(i), "x", "1", "t") for i in range(3)]
        + [commit(2990, 3000)]
    )
    first = [i.id for i in feed_all(decoder(), msgs) if isinstance(i, Emitted)]
    again = [i.id for i in feed_all(decoder(), msgs, lsn=9) if isinstance(i, Emitted)]
    assert first == again and len(set(first)) == 3
    other_tx = [ORDERS, begin(4000, 6), msgs[2], commit(3990, 4000)]
    assert feed_all(decoder(), other_tx)[0].id not in first  # type: ignore[union-attr]


def test_unchanged_toast_values_are_left_out_or_taken_from_the_full_before_image() -> None:
    d = decoder()
    items = feed_all(
        d,
        [
            ORDERS,
            begin(2000, 1),
            b"U"
            + struct.pack("!I", 16400)
            + b"O"
            + tup("1", "big", "1", "t")
            + b"N"
            + tup("1", "<unchanged>", "2", "t"),
            commit(1990, 2000),
        ],
    )
    change = items[0].change  # type: ignore[union-attr]
    assert change.after == {"id": 1, "note": "big", "total": "2", "paid": True}


def test_protocol_errors() -> None:
    d = decoder()
    with pytest.raises(DecodeError, match="outside a transaction"):
        d.feed(1, b"I" + struct.pack("!I", 16400) + b"N" + tup("1", "a", "1", "t"))
    d.feed(2, begin(10, 1))
    with pytest.raises(DecodeError, match="before its Relation"):
        d.feed(3, b"I" + struct.pack("!I", 999) + b"N" + tup("1"))
    with pytest.raises(pgoutput.PgOutputError, match="unknown pgoutput message"):
        pgoutput.parse(b"Z")
    with pytest.raises(pgoutput.PgOutputError, match="truncated"):
        pgoutput.parse(b"B\x00\x00")
