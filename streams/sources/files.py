"""The files source: a watched directory becomes ``file.created|modified|deleted.v1`` events.

``vigil source files --name NAME --dir DIR`` writes to ``files.NAME.v1``, key = subject = the
path relative to DIR ("/"-separated). Data: ``path``, ``size``, ``sha256``, ``mtime``.

- **Watch and scan.** ``watchfiles`` reports changes (recursively); a full scan runs on start
  (files created, changed or deleted while the source was down) and every ``rescan`` seconds
  (inotify can overflow; a scan also covers the moment between start and the first watch).
- **Complete files only.** A file is emitted once it has *settled*: its size and mtime have not
  changed for ``settle`` seconds (default 2), or at once when its last change was a metadata
  change such as an atomic rename into the directory (``mv``/``rename`` keeps the mtime and
  sets the ctime, so ctime > mtime). The file is hashed and stat'ed again; if it changed while
  being read it waits again.
- **Cursor.** The checkpoint maps each path to its last emitted ``size``, ``mtime_ns`` and
  ``sha256``; it moves only after the broker acknowledged the event. A file whose content hash
  is unchanged (touched, rewritten identically) emits nothing. A deleted path emits
  ``file.deleted.v1`` with its last emitted version and leaves the cursor.
- **Ids.** ``uuid5(files, NAME, path, sha256)`` (``... , deleted`` for deletes): the same
  content at the same path is one event however often it is seen, so a re-emission after a
  SIGKILL is absorbed by the consumers' dedup.
- **Filters.** ``include``/``exclude`` globs (``fnmatch``, ``*`` also crosses ``/``) on the
  relative path; a pattern without ``/`` also matches the file name alone. Symbolic links and
  anything but regular files are ignored.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
import os
import stat as stat_mod
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import watchfiles
from pydantic import BaseModel, ConfigDict, Field

from schemas import Envelope
from schemas.sources import FileCreatedV1, FileDeletedV1, FileModifiedV1
from streams.core.errors import ConfigError
from streams.core.settings import Settings
from streams.sources.base import Source, SourceSettings, event_id

log = logging.getLogger(__name__)

#: files up to this size are hashed on the loop; bigger ones in a thread
INLINE_HASH_BYTES = 256 * 1024
MAX_SUBJECT = 1024


class FilesConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    directory: Path
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    settle: float = Field(2.0, ge=0, description="Seconds size and mtime must stay unchanged")
    rescan: float = Field(60.0, gt=0, description="Seconds between full scans of the directory")
    tick: float = Field(0.2, gt=0, description="Seconds between checks of files not yet settled")


@dataclass(frozen=True)
class Stat:
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stat:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class Pending:
    """A file that changed and has not been emitted yet."""

    stat: Stat
    since: float  # monotonic time this stat was first seen


def matches(rel: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    def hit(pattern: str) -> bool:
        if fnmatch.fnmatchcase(rel, pattern):
            return True
        return "/" not in pattern and fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern)

    if include and not any(hit(p) for p in include):
        return False
    return not any(hit(p) for p in exclude)


def settled(stat: Stat, pending_since: float, settle: float, now_mono: float, now_ns: int) -> bool:
    """Complete enough to emit: unchanged for ``settle`` s (by its mtime or by our own watch),
    or its last change was a rename/metadata change (ctime later than mtime)."""
    if stat.ctime_ns > stat.mtime_ns:
        return True
    settle_ns = int(settle * 1e9)
    return now_ns - max(stat.mtime_ns, stat.ctime_ns) >= settle_ns or now_mono - pending_since >= settle


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _mtime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


class FilesSource(Source):
    kind: ClassVar[str] = "files"

    def __init__(
        self, name: str, config: FilesConfig, settings: Settings, options: SourceSettings | None = None
    ) -> None:
        super().__init__(name, settings, options)
        self.config = config
        self.root = config.directory
        self.topic = f"files.{name}.v1"
        self.cloud_source = f"vigil/files/{name}"
        self.pending: dict[str, Pending] = {}
        self._root_prefix = os.path.join(str(self.root), "")
        self._dirty: set[str] = set()  # paths the watcher reported since the last check

    # -- configuration -----------------------------------------------------------------------
    def check(self) -> None:
        root = self.root
        if not root.exists():
            raise ConfigError(f"cannot watch {root}: no such directory")
        if not root.is_dir():
            raise ConfigError(f"cannot watch {root}: not a directory")
        try:
            with os.scandir(root) as it:
                next(it, None)
        except OSError as exc:
            raise ConfigError(f"cannot watch {root}: {exc.strerror or exc}") from None
        self.root = root.resolve()
        self._root_prefix = os.path.join(str(self.root), "")

    def topics(self) -> list[str]:
        return [self.topic]

    # -- the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        watcher = asyncio.create_task(self._watch())
        next_scan = 0.0
        try:
            while not self.stopping.is_set():
                if watcher.done():
                    watcher.result()  # the watcher's error ends the source
                    raise ConfigError(f"stopped watching {self.root}")
                now = time.monotonic()
                await self.step(scan=now >= next_scan)
                if now >= next_scan:
                    next_scan = now + self.config.rescan
                await self.sleep(self.config.tick)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def step(self, scan: bool = False) -> None:
        """One pass: (a full scan,) the paths the watcher reported, then emit what settled."""
        if scan:
            self._scan()
        self._take_dirty()
        await self._emit_settled()
        self.set_lag("files_pending", len(self.pending))

    async def _watch(self) -> None:
        async for changes in watchfiles.awatch(
            self.root,
            watch_filter=None,
            stop_event=self.stopping,
            debounce=100,
            step=50,
            recursive=True,
        ):
            for _change, path in changes:
                self._dirty.add(path)

    def _rel(self, path: str) -> str | None:
        """``path`` relative to the root, "/"-separated; None outside it (or the root itself)."""
        root = self._root_prefix
        if not path.startswith(root):
            return None
        rel = path[len(root) :]
        return rel.replace(os.sep, "/") if os.sep != "/" else rel

    def _scan(self) -> None:
        """Every regular file under the root that differs from the cursor becomes pending;
        every cursor entry no longer on disk is checked as a deletion."""
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(self.root, onerror=None):
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                rel = self._rel(full)
                if rel is None:
                    continue
                seen.add(rel)
                self._consider(rel, full)
        for rel, _ in self.checkpoint.items():
            if rel not in seen:
                self._consider(rel, str(self.root / rel))

    def _take_dirty(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for path in dirty:
            rel = self._rel(path)
            if rel is None:
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                self._scan_subtree(path)  # a directory moved in brings files no event named
            else:
                self._consider(rel, path)

    def _scan_subtree(self, top: str) -> None:
        for dirpath, _dirnames, filenames in os.walk(top):
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                rel = self._rel(full)
                if rel is not None:
                    self._consider(rel, full)

    def _consider(self, rel: str, full: str) -> None:
        """Mark ``rel`` pending if it differs from its cursor (or vanished while in it)."""
        if not matches(rel, self.config.include, self.config.exclude):
            return
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            if rel in self.checkpoint:
                self.pending[rel] = Pending(Stat(-1, 0, 0), time.monotonic())
            else:
                self.pending.pop(rel, None)
            return
        except OSError as exc:
            log.warning("cannot stat %s: %s", full, exc)
            return
        if not _is_file(st):
            return
        stat = Stat.of(st)
        cursor = self.checkpoint.get(rel)
        if (
            cursor is not None
            and "pending" not in cursor
            and (cursor["size"], cursor["mtime_ns"]) == (stat.size, stat.mtime_ns)
        ):
            self.pending.pop(rel, None)
            return
        known = self.pending.get(rel)
        if known is None or known.stat != stat:
            self.pending[rel] = Pending(stat, time.monotonic())

    async def _emit_settled(self) -> None:
        """Hash what settled, make the intents durable, then send (see ``_send_batch``)."""
        now_mono, now_ns = time.monotonic(), time.time_ns()
        batch: list[tuple[str, Any, dict[str, Any] | None]] = []
        for rel in sorted(self.pending):
            if self.stopping.is_set():
                break
            item = self.pending[rel]
            full = self.root / rel
            if item.stat.size < 0:  # vanished
                batch.extend(self._deleted(rel))
                continue
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                batch.extend(self._deleted(rel))
                continue
            stat = Stat.of(st)
            if stat != item.stat:  # still changing: wait for it to settle again
                self.pending[rel] = Pending(stat, now_mono)
                continue
            if not settled(stat, item.since, self.config.settle, now_mono, now_ns):
                continue
            batch.extend(await self._hashed(rel, full, stat))
        await self._send_batch(batch)

    async def _hashed(self, rel: str, full: Path, stat: Stat) -> list[tuple[str, Any, dict[str, Any] | None]]:
        try:
            if stat.size <= INLINE_HASH_BYTES:
                digest = sha256_of(full)
            else:
                digest = await asyncio.to_thread(sha256_of, full)
            after = Stat.of(os.lstat(full))
        except FileNotFoundError:
            return self._deleted(rel)
        except OSError as exc:
            log.warning("cannot read %s: %s (retried at the next scan)", full, exc)
            self.pending.pop(rel, None)
            return []
        if after != stat:  # written while we read it
            self.pending[rel] = Pending(after, time.monotonic())
            return []
        del self.pending[rel]
        cursor = {"size": stat.size, "mtime_ns": stat.mtime_ns, "sha256": digest}
        previous = self.checkpoint.get(rel)
        if previous is not None and previous["sha256"] == digest and "pending" not in previous:
            self.stage({rel: cursor})  # same content: move the cursor, emit nothing
            return []
        if previous is not None and "pending" in previous and previous["sha256"] == digest:
            model = _MODELS[previous["pending"]]  # maybe sent before a crash: the same event again
        else:
            model = FileCreatedV1 if previous is None else FileModifiedV1
        data = model(path=rel, size=stat.size, sha256=digest, mtime=_mtime(stat.mtime_ns))
        return [(rel, data, cursor)]

    async def _send_batch(self, batch: list[tuple[str, Any, dict[str, Any] | None]]) -> None:
        """A new path is first written to the checkpoint as an *intent* (``pending``: the
        event type), acknowledged before its event goes out: a source killed after sending but
        before its checkpoint moved still knows the path on restart, so a file deleted
        meanwhile gets its ``file.deleted.v1`` and one still there is sent again with the same
        id and type. (A known path needs none: its old cursor entry does the same.) Intents are
        replaced by the cursor once the events are acked."""
        if not batch:
            return
        intents = {
            rel: {**cursor, "pending": data.event_type}
            for rel, data, cursor in batch
            if cursor is not None and rel not in self.checkpoint
        }
        if intents:
            await self.flush()  # nothing older for these keys is still queued behind them
            await self.checkpoint.write(self.producer, intents)
            self.checkpoint.stage(intents)
        for rel, data, cursor in batch:
            if data.event_type == FileDeletedV1.event_type:
                eid = event_id(self.kind, self.name, rel, data.sha256, "deleted")
            else:
                eid = event_id(self.kind, self.name, rel, data.sha256)
            await self._send(rel, data, eid, {rel: cursor})

    def _deleted(self, rel: str) -> list[tuple[str, Any, dict[str, Any] | None]]:
        self.pending.pop(rel, None)
        previous = self.checkpoint.get(rel)
        if previous is None:
            return []
        data = FileDeletedV1(
            path=rel, size=previous["size"], sha256=previous["sha256"], mtime=_mtime(previous["mtime_ns"])
        )
        return [(rel, data, None)]

    async def _send(self, rel: str, data: Any, eid: str, cursor: dict[str, Any | None]) -> None:
        if len(rel) > MAX_SUBJECT:
            log.warning("skipping %s: path longer than %d characters", rel[:80], MAX_SUBJECT)
            return
        event = Envelope[Any](id=eid, source=self.cloud_source, type=data.event_type, subject=rel, data=data)
        await self.emit(self.topic, event, checkpoint=cursor)


_MODELS: dict[str, type[FileCreatedV1 | FileModifiedV1]] = {
    FileCreatedV1.event_type: FileCreatedV1,
    FileModifiedV1.event_type: FileModifiedV1,
}


def _is_file(st: os.stat_result) -> bool:
    return stat_mod.S_ISREG(st.st_mode)
