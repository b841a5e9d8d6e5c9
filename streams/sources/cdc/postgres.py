"""``vigil source postgres``: PostgreSQL logical replication (built-in ``pgoutput``, protocol 1)
straight into ``db.<schema>.<table>.v1`` topics, without Kafka Connect.

- **Setup** (``check``): connects, requires ``wal_level=logical`` and the REPLICATION privilege,
  creates the publication (``FOR ALL TABLES``) if it is missing and the role may; the slot is
  created on first start. Every refusal is one line (``ConfigError``).
- **Reading**: psycopg2's replication API is synchronous, so one thread owns both PostgreSQL
  connections (replication and catalog) and hands decoded changes to the asyncio side in
  batches through a bounded queue (it blocks when the producer falls behind).
- **Checkpoint**: the slot's confirmed flush LSN. A transaction's end LSN is staged as the
  checkpoint's ``lsn`` behind its events; once the broker acknowledged them and everything before
  them (``Source.flush``), ``acknowledged`` hands it to the thread, which confirms it with
  ``send_feedback(flush_lsn=...)``. PostgreSQL resends every transaction past the confirmed LSN
  after a crash, with the same event ids (``decoder``), so downstream dedup absorbs the repeats.
  While idle with everything confirmed, the flush LSN follows the server's WAL end, so WAL of
  other tables is not retained. The checkpoint also names the server, database and slot it
  belongs to (``identity``); a new slot or another server's checkpoint starts from the slot.
- **Snapshot** (``--snapshot``): the slot is created with an exported snapshot, existing rows are
  read in that snapshot (``op = r``), then streaming starts at the slot's consistent point: no
  change is missed or doubled between the two. The checkpoint key ``snapshot`` = ``done`` is
  staged after the last read row; a crash before that drops the slot and takes the snapshot again
  (read ids hash the row, so re-read unchanged rows are absorbed downstream).
- **Lag**: ``vigil_source_lag{kind="replication_bytes"}`` = server WAL end minus the slot's
  confirmed flush LSN.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import select
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from streams.core.errors import ConfigError
from streams.core.settings import Settings
from streams.sources.base import Source, SourceSettings, event_id
from streams.sources.checkpoint import JSON

from . import pgoutput
from .change import Change, envelope
from .decoder import Committed, Decoder, Emitted, Item

log = logging.getLogger(__name__)

BATCH = 1000  # changes per hand-off to the asyncio side
QUEUE_BATCHES = 8
FEEDBACK_SECONDS = 5.0  # keepalive feedback (wal_sender_timeout is 60 s by default)
LAG_SECONDS = 2.0


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "pgerror", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class PostgresConfig:
    dsn: str
    slot: str
    publication: str
    snapshot: bool = False


@dataclass(frozen=True)
class _Snapshot:
    """Changes read in the exported snapshot end here; streaming starts at ``lsn``."""

    lsn: int


@dataclass(frozen=True)
class _Lag:
    bytes: int


class _Reader:
    """The replication thread: owns both connections; talks to the loop only through the queue
    (``put``), ``confirm`` (read each turn) and ``stop``."""

    def __init__(self, source: PostgresSource, loop: asyncio.AbstractEventLoop) -> None:
        self.source = source
        self.config = source.config
        self.loop = loop
        self.queue: asyncio.Queue[list[Item | _Snapshot | _Lag]] = asyncio.Queue(QUEUE_BATCHES)
        self.stopping = threading.Event()
        self.confirmed = 0  # set by the loop: every event up to this LSN is acknowledged
        self.handed = 0  # end LSN of the last transaction handed to the loop
        self.catalog: Any = None
        self.identity = ""  # "<system id>/<database>/<slot>", known once connected

    # -- hand-off ----------------------------------------------------------------------------
    def put(self, items: list[Item | _Snapshot | _Lag]) -> None:
        """Block until the loop took ``items`` (or we are stopping)."""
        future = asyncio.run_coroutine_threadsafe(self.queue.put(items), self.loop)
        while not self.stopping.is_set():
            try:
                future.result(timeout=0.5)
                return
            except TimeoutError:
                continue
        future.cancel()

    # -- catalog -----------------------------------------------------------------------------
    def key_columns(self, rel: pgoutput.Relation) -> tuple[str, ...]:
        """The primary key's columns in key order; else the replica identity index's."""
        with self.catalog.cursor() as cur:
            for flag in ("indisprimary", "indisreplident"):
                cur.execute(
                    sql.SQL(
                        "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
                        " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                        " WHERE i.indrelid = %s AND i.{}"
                        " ORDER BY array_position(i.indkey::int2[], a.attnum)"
                    ).format(sql.Identifier(flag)),
                    (rel.oid,),
                )
                names = tuple(r[0] for r in cur.fetchall())
                if names:
                    return names
        return ()

    def lag(self) -> int | None:
        with self.catalog.cursor() as cur:
            cur.execute(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint"
                " FROM pg_replication_slots WHERE slot_name = %s",
                (self.config.slot,),
            )
            row = cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    # -- the thread --------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.config
        self.catalog = _connect(cfg.dsn)
        self.catalog.autocommit = True
        try:
            repl = _connect(cfg.dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
        except ConfigError:
            self.catalog.close()
            raise
        try:
            self._replicate(repl)
        finally:
            repl.close()
            self.catalog.close()

    def _replicate(self, repl: Any) -> None:
        cfg = self.config
        cur = repl.cursor()
        cur.execute("IDENTIFY_SYSTEM")
        system_id, _, _, dbname = cur.fetchone()
        identity = f"{system_id}/{dbname}/{cfg.slot}"
        self.identity = identity
        decoder = Decoder(identity, dbname, self.key_columns)
        checkpoint = self.source.checkpoint
        # the checkpoint's LSN counts only for this server, database and slot (a checkpoint
        # topic outliving its database must not make a new server skip its first transactions)
        ours = checkpoint.get("identity") == identity
        start_lsn = int(checkpoint.get("lsn", 0) or 0) if ours else 0
        exists = self._slot_exists()
        if cfg.snapshot and not (ours and checkpoint.get("snapshot") == "done"):
            if exists:
                log.warning(
                    "source %s: slot %s exists but its snapshot never finished: dropping it "
                    "and taking the snapshot again",
                    self.source.label,
                    cfg.slot,
                )
                cur.drop_replication_slot(cfg.slot)
            cur.execute(
                sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT").format(
                    sql.Identifier(cfg.slot)
                )
            )
            _, consistent, snapshot_name, _ = cur.fetchone()
            start_lsn = _parse_lsn(consistent)
            self._read_snapshot(snapshot_name, identity, dbname, start_lsn)
            self.put([_Snapshot(start_lsn)])
        elif not exists:
            start_lsn = 0  # a new slot starts at its own consistent point
            try:
                cur.create_replication_slot(cfg.slot, output_plugin="pgoutput")
            except psycopg2.Error as exc:
                raise ConfigError(f"cannot create replication slot {cfg.slot!r}: {_one_line(exc)}") from None
            log.info("source %s: created replication slot %s", self.source.label, cfg.slot)
        try:
            cur.start_replication(
                slot_name=cfg.slot,
                decode=False,
                start_lsn=start_lsn,
                options={"proto_version": "1", "publication_names": cfg.publication},
            )
        except psycopg2.Error as exc:
            raise ConfigError(f"cannot start replication from slot {cfg.slot!r}: {_one_line(exc)}") from None
        log.info("source %s: streaming from %s", self.source.label, _lsn_text(start_lsn))
        self.handed = self.confirmed = max(self.confirmed, start_lsn)
        self._stream(cur, decoder)

    def _slot_exists(self) -> bool:
        with self.catalog.cursor() as c:
            c.execute(
                "SELECT plugin, database, current_database() FROM pg_replication_slots WHERE slot_name = %s",
                (self.config.slot,),
            )
            row = c.fetchone()
        if row is None:
            return False
        plugin, database, current = row
        if database != current:
            raise ConfigError(
                f"replication slot {self.config.slot!r} belongs to database {database!r}, not {current!r}"
            )
        if plugin != "pgoutput":
            raise ConfigError(f"replication slot {self.config.slot!r} uses plugin {plugin!r}, not pgoutput")
        return True

    def _read_snapshot(self, name: str, identity: str, db: str, lsn: int) -> None:
        conn = _connect(self.config.dsn)
        try:
            conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
            with conn.cursor() as cur:
                cur.execute("SET TRANSACTION SNAPSHOT %s", (name,))
                cur.execute(
                    "SELECT c.oid, n.nspname, c.relname FROM pg_publication_tables p"
                    " JOIN pg_namespace n ON n.nspname = p.schemaname"
                    " JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename"
                    " WHERE p.pubname = %s ORDER BY 2, 3",
                    (self.config.publication,),
                )
                tables = cur.fetchall()
            now_ms = int(time.time() * 1000)
            for oid, schema, table in tables:
                rel = pgoutput.Relation(oid, schema, table, "d", ())
                keys = self.key_columns(rel)
                batch: list[Item | _Snapshot | _Lag] = []
                with conn.cursor(name=f"vigil_snapshot_{oid}") as cur:  # server-side: streamed
                    cur.itersize = BATCH
                    cur.execute(
                        sql.SQL("SELECT row_to_json(t)::text FROM {}.{} t").format(
                            sql.Identifier(schema), sql.Identifier(table)
                        )
                    )
                    for (text,) in cur:
                        row = json.loads(text)
                        key = tuple(row.get(k) for k in keys)
                        change = Change("r", schema, table, None, row, key, lsn, None, db, now_ms)
                        digest = hashlib.sha256(text.encode()).hexdigest()
                        id_ = event_id("postgres", identity, "r", schema, table, change.subject, digest)
                        batch.append(Emitted(change, id_))
                        if len(batch) >= BATCH:
                            self.put(batch)
                            batch = []
                        if self.stopping.is_set():
                            return
                if batch:
                    self.put(batch)
            conn.rollback()
        finally:
            conn.close()

    def _stream(self, cur: Any, decoder: Decoder) -> None:
        batch: list[Item | _Snapshot | _Lag] = []
        sent_feedback = 0.0
        last_lag = 0.0
        flushed = self.confirmed
        while not self.stopping.is_set():
            msg = cur.read_message()
            if msg is not None:
                for item in decoder.feed(msg.data_start, msg.payload):
                    batch.append(item)
                    if isinstance(item, Committed):
                        self.handed = item.end_lsn
                if len(batch) < BATCH:
                    continue
            if batch:
                self.put(batch)
                batch = []
                continue
            now = time.monotonic()
            confirmed = self.confirmed
            # idle, nothing open and everything handed over acknowledged: follow the WAL end
            if msg is None and not decoder.in_transaction and confirmed >= self.handed:
                confirmed = max(confirmed, int(cur.wal_end or 0))
            if confirmed > flushed or now - sent_feedback > FEEDBACK_SECONDS:
                flushed = max(flushed, confirmed)
                cur.send_feedback(flush_lsn=flushed, write_lsn=flushed, apply_lsn=flushed, force=True)
                sent_feedback = now
            if now - last_lag > LAG_SECONDS:
                last_lag = now
                lag = self.lag()
                if lag is not None:
                    self.put([_Lag(lag)])
            if msg is None:
                select.select([cur], [], [], 0.2)
        if self.confirmed > flushed:  # the final flush of a clean stop
            cur.send_feedback(
                flush_lsn=self.confirmed, write_lsn=self.confirmed, apply_lsn=self.confirmed, force=True
            )


def _parse_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def _connect(dsn: str, **kwargs: Any) -> Any:
    try:
        return psycopg2.connect(dsn, connect_timeout=10, **kwargs)
    except psycopg2.Error as exc:
        raise ConfigError(f"cannot connect to PostgreSQL: {_one_line(exc)}") from None


class PostgresSource(Source):
    kind = "postgres"

    def __init__(
        self, config: PostgresConfig, settings: Settings, options: SourceSettings | None = None
    ) -> None:
        super().__init__(config.slot, settings, options)
        self.config = config
        self.tables: list[tuple[str, str]] = []
        self._reader: _Reader | None = None
        self._topics: set[str] = set()

    # -- setup -------------------------------------------------------------------------------
    def check(self) -> None:
        cfg = self.config
        if not cfg.slot.replace("_", "").isalnum() or cfg.slot != cfg.slot.lower() or len(cfg.slot) > 63:
            raise ConfigError(f"invalid slot name {cfg.slot!r}: lower-case letters, digits and _ (max 63)")
        conn = _connect(cfg.dsn)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SHOW wal_level")
                (wal_level,) = cur.fetchone()
                if wal_level != "logical":
                    raise ConfigError(
                        f"PostgreSQL has wal_level={wal_level}; logical replication needs wal_level=logical"
                    )
                cur.execute(
                    "SELECT current_user, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
                )
                user, may_replicate = cur.fetchone()
                if not may_replicate:
                    raise ConfigError(
                        f"role {user!r} lacks the REPLICATION privilege (ALTER ROLE {user} REPLICATION)"
                    )
                cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (cfg.publication,))
                if cur.fetchone() is None:
                    try:
                        cur.execute(
                            sql.SQL("CREATE PUBLICATION {} FOR ALL TABLES").format(
                                sql.Identifier(cfg.publication)
                            )
                        )
                    except psycopg2.Error as exc:
                        raise ConfigError(
                            f"publication {cfg.publication!r} does not exist and role {user!r} cannot create "
                            f"it: {_one_line(exc)}"
                        ) from None
                    log.info("source %s: created publication %s FOR ALL TABLES", self.label, cfg.publication)
                cur.execute(
                    "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s ORDER BY 1, 2",
                    (cfg.publication,),
                )
                self.tables = [(s, t) for s, t in cur.fetchall()]
        finally:
            conn.close()

    def topics(self) -> list[str]:
        self._topics = {Change("c", s, t, None, None, (), None, None, None, 0).topic for s, t in self.tables}
        return sorted(self._topics)

    # -- running -----------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = self._reader = _Reader(self, loop)
        thread = loop.run_in_executor(None, reader.run)
        source = f"vigil/postgres/{self.config.slot}"
        try:
            while not self.stopping.is_set():
                getter = asyncio.ensure_future(reader.queue.get())
                stop = asyncio.ensure_future(self.stopping.wait())
                waiting: set[asyncio.Future[Any]] = {getter, stop, thread}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if getter not in done:
                    getter.cancel()
                    if thread in done:
                        thread.result()  # the thread's error, or:
                        raise RuntimeError("the replication thread ended")
                    break
                for item in getter.result():
                    if isinstance(item, Emitted):
                        change = item.change
                        topic = change.topic
                        if topic not in self._topics:  # a table added to the publication
                            await self._create_topic(topic)
                        await self.emit(topic, envelope(change, id=item.id, source=source))
                    elif isinstance(item, Committed):
                        self.stage({"lsn": item.end_lsn, "identity": reader.identity})
                    elif isinstance(item, _Snapshot):
                        self.stage({"snapshot": "done", "lsn": item.lsn, "identity": reader.identity})
                        log.info(
                            "source %s: snapshot read; streaming from %s", self.label, _lsn_text(item.lsn)
                        )
                    else:
                        self.set_lag("replication_bytes", item.bytes)
            # a clean stop: make everything durable, then let the thread confirm it to the slot
            await self.flush()
        finally:
            reader.stopping.set()
            with contextlib.suppress(Exception):
                await thread

    async def _create_topic(self, topic: str) -> None:
        from streams import kafka

        await kafka.create_topics(self.settings, [self.settings.topic(topic)])
        self._topics.add(topic)

    async def acknowledged(self, updates: Mapping[str, JSON]) -> None:
        lsn = updates.get("lsn")
        if self._reader is not None and isinstance(lsn, int):
            self._reader.confirmed = max(self._reader.confirmed, lsn)
