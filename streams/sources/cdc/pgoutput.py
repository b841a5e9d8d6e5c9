"""PostgreSQL's ``pgoutput`` logical-replication messages (protocol version 1), parsed from
bytes: Begin, Commit, Relation, Insert, Update, Delete, Truncate (Origin and Type are read and
ignored). Column values arrive in PostgreSQL's text output; ``value`` turns booleans, integers
and floats into JSON values and keeps everything else as that text (numeric stays a string so no
digit is lost; json/jsonb stay strings, as Debezium writes them)."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_BOOL, _INT8, _INT2, _INT4, _OID, _FLOAT4, _FLOAT8 = 16, 20, 21, 23, 26, 700, 701
_INTS = {_INT8, _INT2, _INT4, _OID}
_FLOATS = {_FLOAT4, _FLOAT8}


class PgOutputError(ValueError):
    """Bytes that are not a pgoutput v1 message."""


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    in_key: bool


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    table: str
    replica_identity: str  # d(efault), n(othing), f(ull), i(ndex)
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Begin:
    final_lsn: int
    commit_ms: int
    xid: int


@dataclass(frozen=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_ms: int


#: a decoded tuple: column name -> value
Row = dict[str, Any]


@dataclass(frozen=True)
class Insert:
    oid: int
    new: tuple[tuple[str, Any], ...]  # (kind, text) per column, decoded with the relation


@dataclass(frozen=True)
class Update:
    oid: int
    old_kind: str | None  # 'K' (key columns only), 'O' (the whole old row: REPLICA IDENTITY FULL)
    old: tuple[tuple[str, Any], ...] | None
    new: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Delete:
    oid: int
    old_kind: str
    old: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Truncate:
    oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True)
class Ignored:
    tag: str


Message = Begin | Commit | Relation | Insert | Update | Delete | Truncate | Ignored


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise PgOutputError(f"message truncated at byte {self.pos} (wanted {n} more)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def char(self) -> str:
        return chr(self.u8())

    def i16(self) -> int:
        return int(struct.unpack("!h", self.take(2))[0])

    def i32(self) -> int:
        return int(struct.unpack("!i", self.take(4))[0])

    def u32(self) -> int:
        return int(struct.unpack("!I", self.take(4))[0])

    def i64(self) -> int:
        return int(struct.unpack("!q", self.take(8))[0])

    def u64(self) -> int:
        return int(struct.unpack("!Q", self.take(8))[0])

    def string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise PgOutputError(f"unterminated string at byte {self.pos}")
        text = self.data[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return text

    def tuple_data(self) -> tuple[tuple[str, Any], ...]:
        cols: list[tuple[str, bytes | None]] = []
        for _ in range(self.i16()):
            kind = self.char()
            if kind in ("t", "b"):
                cols.append((kind, self.take(self.i32())))
            elif kind in ("n", "u"):
                cols.append((kind, None))
            else:
                raise PgOutputError(f"unknown tuple column kind {kind!r}")
        return tuple(cols)


def _ms(pg_micros: int) -> int:
    """Milliseconds since the Unix epoch of a PostgreSQL timestamp (microseconds since 2000)."""
    return int((PG_EPOCH + timedelta(microseconds=pg_micros)).timestamp() * 1000)


def parse(payload: bytes) -> Message:
    r = _Reader(payload)
    tag = r.char()
    if tag == "B":
        return Begin(final_lsn=r.u64(), commit_ms=_ms(r.i64()), xid=r.u32())
    if tag == "C":
        r.u8()  # flags, unused
        return Commit(commit_lsn=r.u64(), end_lsn=r.u64(), commit_ms=_ms(r.i64()))
    if tag == "R":
        oid, schema, table, ident = r.u32(), r.string(), r.string(), r.char()
        columns = []
        for _ in range(r.i16()):
            flags, name, type_oid = r.u8(), r.string(), r.u32()
            r.i32()  # atttypmod
            columns.append(Column(name, type_oid, bool(flags & 1)))
        return Relation(oid, schema or "pg_catalog", table, ident, tuple(columns))
    if tag == "I":
        oid = r.u32()
        if r.char() != "N":
            raise PgOutputError("insert without a new tuple")
        return Insert(oid, r.tuple_data())
    if tag == "U":
        oid = r.u32()
        kind = r.char()
        old_kind, old = None, None
        if kind in ("K", "O"):
            old_kind, old = kind, r.tuple_data()
            kind = r.char()
        if kind != "N":
            raise PgOutputError("update without a new tuple")
        return Update(oid, old_kind, old, r.tuple_data())
    if tag == "D":
        oid = r.u32()
        kind = r.char()
        if kind not in ("K", "O"):
            raise PgOutputError(f"delete with old tuple kind {kind!r}")
        return Delete(oid, kind, r.tuple_data())
    if tag == "T":
        count, options = r.i32(), r.u8()
        return Truncate(tuple(r.u32() for _ in range(count)), bool(options & 1), bool(options & 2))
    if tag in ("O", "Y", "M"):  # origin, type, logical message
        return Ignored(tag)
    raise PgOutputError(f"unknown pgoutput message {tag!r}")


def value(type_oid: int, text: str) -> Any:
    """A column's JSON value from its text output."""
    if type_oid == _BOOL:
        return text == "t"
    if type_oid in _INTS:
        return int(text)
    if type_oid in _FLOATS:
        number = float(text)
        return number if math.isfinite(number) else text  # JSON has no NaN or Infinity
    return text


def row(relation: Relation, data: tuple[tuple[str, Any], ...], *, key_only: bool = False) -> Row:
    """Column name -> value. ``key_only``: an old tuple of kind 'K' (only key columns are sent;
    the others arrive as nulls and are left out). Unchanged TOASTed values are left out too: the
    row is what the change knows, never a made-up null."""
    if len(data) != len(relation.columns):
        raise PgOutputError(
            f"tuple of {len(data)} columns for {relation.schema}.{relation.table} "
            f"({len(relation.columns)} columns)"
        )
    out: Row = {}
    for column, (kind, raw) in zip(relation.columns, data, strict=True):
        if key_only and not column.in_key:
            continue
        if kind == "u":
            continue
        out[column.name] = None if kind == "n" else value(column.type_oid, raw.decode("utf-8"))
    return out
