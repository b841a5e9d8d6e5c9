"""Fixtures shared by the unit tests: an in-process fake LLM server (no broker)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer

from agents.fake_llm import FakeLLM, Faults


@pytest.fixture
async def server() -> AsyncIterator[tuple[FakeLLM, str]]:
    fake = FakeLLM(Faults())
    srv = TestServer(fake.app(), host="127.0.0.1")
    await srv.start_server()
    try:
        yield fake, f"http://127.0.0.1:{srv.port}/v1"
    finally:
        await srv.close()
