"""The CDC tests' PostgreSQL: one server per session, started only when a test asks for it, and
stopped by its PID at the end (tests/postgres.py). Each test gets its own database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.postgres import PostgresServer, running_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def pg_db(postgres: PostgresServer) -> str:
    """A fresh database of this test's own (its slots and publications cannot collide)."""
    name = f"t{uuid.uuid4().hex[:10]}"
    postgres.create_database(name)
    return name
