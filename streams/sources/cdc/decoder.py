"""pgoutput messages of one replication session -> ``Change`` events with deterministic ids.

Keeps the session's relation cache (a Relation message precedes a table's first change in every
session) and the open transaction. Each change's id is a uuid5 of (the source's identity, the
transaction's commit LSN, the change's position in the transaction): the same change decoded
again after a restart (PostgreSQL resends every transaction past the confirmed flush LSN) gets
the same id, and downstream dedup absorbs it. ``source.lsn`` is the change's own WAL position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from streams.sources.base import event_id

from . import pgoutput
from .change import Change


@dataclass(frozen=True)
class Emitted:
    change: Change
    id: str


@dataclass(frozen=True)
class Committed:
    """The end of a transaction: its ``end_lsn`` may be confirmed once all before it is acked."""

    end_lsn: int
    events: int


Item = Emitted | Committed
#: primary-key column names of a relation (looked up in the catalog by the caller)
KeyLookup = Callable[[pgoutput.Relation], tuple[str, ...]]


class DecodeError(ValueError):
    pass


class Decoder:
    def __init__(self, identity: str, db: str, key_columns: KeyLookup) -> None:
        self.identity = identity
        self.db = db
        self.key_columns = key_columns
        self.relations: dict[int, pgoutput.Relation] = {}
        self.keys: dict[int, tuple[str, ...]] = {}
        self._begin: pgoutput.Begin | None = None
        self._position = 0

    @property
    def in_transaction(self) -> bool:
        return self._begin is not None

    def feed(self, lsn: int, payload: bytes) -> list[Item]:
        """The items of one message; ``lsn`` is the message's WAL position (``data_start``)."""
        msg = pgoutput.parse(payload)
        if isinstance(msg, pgoutput.Relation):
            self.relations[msg.oid] = msg
            self.keys[msg.oid] = self.key_columns(msg)
            return []
        if isinstance(msg, pgoutput.Begin):
            self._begin, self._position = msg, 0
            return []
        if isinstance(msg, pgoutput.Commit):
            events, self._begin = self._position, None
            return [Committed(msg.end_lsn, events)]
        if isinstance(msg, pgoutput.Ignored):
            return []
        begin = self._begin
        if begin is None:
            raise DecodeError(f"change outside a transaction at LSN {lsn}")
        if isinstance(msg, pgoutput.Truncate):
            return [self._emit(begin, lsn, "t", self._relation(oid), None, None, ()) for oid in msg.oids]
        rel = self._relation(msg.oid)
        if isinstance(msg, pgoutput.Insert):
            after = pgoutput.row(rel, msg.new)
            return [self._emit(begin, lsn, "c", rel, None, after, self._key(rel, after))]
        if isinstance(msg, pgoutput.Update):
            after = pgoutput.row(rel, msg.new)
            before = None
            if msg.old is not None:
                before = pgoutput.row(rel, msg.old, key_only=msg.old_kind == "K")
            # unchanged TOASTed columns are not sent: the before image (FULL) still has them
            if before is not None and msg.old_kind == "O":
                after = {**{k: v for k, v in before.items() if k not in after}, **after}
                after = {c.name: after[c.name] for c in rel.columns if c.name in after}
            return [self._emit(begin, lsn, "u", rel, before, after, self._key(rel, after))]
        if isinstance(msg, pgoutput.Delete):
            before = pgoutput.row(rel, msg.old, key_only=msg.old_kind == "K")
            return [self._emit(begin, lsn, "d", rel, before, None, self._key(rel, before))]
        raise DecodeError(f"unexpected message {msg!r}")

    def _relation(self, oid: int) -> pgoutput.Relation:
        try:
            return self.relations[oid]
        except KeyError:
            raise DecodeError(f"change of relation {oid} before its Relation message") from None

    def _key(self, rel: pgoutput.Relation, row: pgoutput.Row) -> tuple[object, ...]:
        columns = self.keys.get(rel.oid, ())
        if not columns or any(c not in row for c in columns):
            return ()
        return tuple(row[c] for c in columns)

    def _emit(
        self,
        begin: pgoutput.Begin,
        lsn: int,
        op: str,
        rel: pgoutput.Relation,
        before: pgoutput.Row | None,
        after: pgoutput.Row | None,
        key: tuple[object, ...],
    ) -> Emitted:
        position = self._position
        self._position += 1
        change = Change(
            op=op,
            schema=rel.schema,
            table=rel.table,
            before=before,
            after=after,
            key=key,
            lsn=lsn,
            tx_id=begin.xid,
            db=self.db,
            ts_ms=begin.commit_ms,
        )
        return Emitted(change, event_id("postgres", self.identity, str(begin.final_lsn), str(position)))
