"""A throwaway PostgreSQL server from Debian's packages for the CDC tests and the demo: initdb in
a temporary directory (``wal_level=logical``), the postmaster on a free loopback port, started and
stopped by its PID. PostgreSQL refuses to run as root, so as root both run as the ``postgres`` OS
user (the Debian package creates it) with the directory owned by it."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import free_port, wait_for

OS_USER = "postgres"
SUPERUSER = "postgres"


def bindir() -> Path:
    """``VIGIL_TEST_PG_BINDIR``, else the newest /usr/lib/postgresql/<major>/bin, else PATH."""
    if env := os.environ.get("VIGIL_TEST_PG_BINDIR"):
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("postgres")
    if exe is None:
        raise RuntimeError("no PostgreSQL server found: run `make deps` (Debian package postgresql)")
    return Path(exe).resolve().parent


def _as_owner() -> dict[str, Any]:
    """Popen arguments that drop root to the ``postgres`` user; nothing when not root."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam(OS_USER)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


@dataclass
class PostgresServer:
    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- lifecycle ---------------------------------------------------------------------------
    def init(self) -> None:
        owner = _as_owner()
        if owner:
            os.chown(self.root, owner["user"], owner["group"])
        result = subprocess.run(
            [
                str(bindir() / "initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            cwd=self.root,
            capture_output=True,
            text=True,
            check=False,
            **owner,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip()[-2000:]}")

    def start(self) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "wal_level": "logical",
            "max_replication_slots": "20",
            "max_wal_senders": "20",
            "fsync": "off",  # a test server: the WAL's durability across power loss is not tested
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "64MB",
            "max_connections": "60",
            "log_min_messages": "warning",
        }
        args = [str(bindir() / "postgres"), "-D", str(self.data)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        handle = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                args,
                cwd=self.root,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                **_as_owner(),
            )
        finally:
            handle.close()
        wait_for(self.ready, 60, f"PostgreSQL on port {self.port}", interval=0.1)

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {self.proc.returncode}: {self.log()[-2000:]}")
        import psycopg2

        try:
            psycopg2.connect(self.dsn(), connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown (SIGINT) of our postmaster by its PID; SIGKILL if it does not go."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- SQL ---------------------------------------------------------------------------------
    def execute(self, *statements: str, dbname: str = "postgres", params: Any = None) -> None:
        """Run ``statements`` in one transaction (autocommit for a single statement)."""
        import psycopg2

        conn = psycopg2.connect(self.dsn(dbname))
        try:
            if len(statements) == 1:
                conn.autocommit = True
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement, params)
            if not conn.autocommit:
                conn.commit()
        finally:
            conn.close()

    def query(self, sql: str, params: Any = None, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        import psycopg2

        conn = psycopg2.connect(self.dsn(dbname))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def create_database(self, name: str) -> None:
        self.execute(f'CREATE DATABASE "{name}"')


def start_postgres() -> PostgresServer:
    """A fresh server in a new directory under the system temp dir (root's pytest tmp dirs are
    0700, so the ``postgres`` user could not reach a data directory inside them)."""
    root = Path(tempfile.mkdtemp(prefix="vigil-pg-"))
    server = PostgresServer(root, free_port())
    try:
        server.init()
        server.start()
    except BaseException:
        server.stop()
        server.remove()
        raise
    return server


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()
        server.remove()
