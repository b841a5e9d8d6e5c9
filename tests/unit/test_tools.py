"""Tools (agents/tools.py): schemas from signatures and docstrings, argument validation, and
the tool loop against the fake LLM over litellm's real HTTP path, inside contexts the
dispatcher builds over an in-memory table (so every LLM request and tool call is journaled)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from agents.fake_llm import FakeLLM, completion, synthesise, tool_plan
from agents.llm import LLMClient
from agents.tools import (
    ModelRetry,
    Tool,
    ToolRun,
    ToolStepLimitError,
    ToolTokenLimitError,
    parse_docstring,
    run_tools,
    tool,
)
from schemas import ChatMessageReceivedV2, ChatReplyRequestedV1, Envelope, RawEnvelope
from streams import Context, Runtime, Settings
from streams.core import codec
from streams.core.context import derived_id
from streams.core.dispatcher import Dispatcher
from streams.core.journal import JOURNAL_PREFIX
from streams.core.records import ConsumedRecord
from streams.core.retry import Retry
from streams.core.state import StateStore
from streams.core.tables import MemoryTable
from streams.observability.metrics import REGISTRY

PARTITION = 0


class Notes(BaseModel):
    runs: int = 0


class Address(BaseModel):
    city: str
    zip: str | None = None


# -- declaring ------------------------------------------------------------------------------
@tool
async def find_orders(
    query: str,
    ctx: Context[Notes],
    limit: Annotated[int, Field(ge=1, le=10)] = 3,
    ship_to: Address | None = None,
    json: bool = False,  # a name pydantic models reserve: fields are aliased
) -> list[str]:
    """Search the customer's orders.

    Matches words anywhere in
    the order's title.

    Args:
        query: words to look for,
            in any order.
        limit (int): at most this many.

    Returns:
        The titles found.
    """
    return [query] * limit


def test_schema_comes_from_the_signature_and_the_docstring() -> None:
    schema = find_orders.schema
    assert schema["type"] == "function"
    fn = schema["function"]
    assert fn["name"] == "find_orders"
    assert (
        fn["description"] == "Search the customer's orders.\n\nMatches words anywhere in the order's title."
    )
    params = fn["parameters"]
    assert params["type"] == "object" and params["additionalProperties"] is False
    assert list(params["properties"]) == ["query", "limit", "ship_to", "json"]  # no ctx
    assert params["required"] == ["query"]
    assert params["properties"]["query"] == {
        "type": "string",
        "description": "words to look for, in any order.",
    }
    limit = params["properties"]["limit"]
    assert (limit["type"], limit["minimum"], limit["maximum"], limit["default"]) == ("integer", 1, 10, 3)
    assert limit["description"] == "at most this many."
    assert params["$defs"]["Address"]["required"] == ["city"]
    assert '"title"' not in json.dumps(params)  # generated titles stripped

    def titled(book: dict[str, str] = {"title": "Dune"}, title: str = "x") -> None:  # noqa: B006
        """A default and a parameter named title are data, not schema titles."""

    props = Tool(titled).parameters["properties"]
    assert props["book"]["default"] == {"title": "Dune"} and props["title"] == {
        "default": "x",
        "type": "string",
    }
    assert find_orders.context_param == "ctx"


def test_docstring_styles_google_sphinx_numpy() -> None:
    google = parse_docstring(
        "Do it.\n\nArgs:\n    a: first\n        and more.\n    b (int): second\n\nRaises:\n    X: no"
    )
    assert google == ("Do it.", {"a": "first and more.", "b": "second"})
    sphinx = parse_docstring("Do it.\n\n:param a: first\n    and more.\n:param int b: second\n:returns: c")
    assert sphinx == ("Do it.", {"a": "first and more.", "b": "second"})
    numpy = parse_docstring(
        "Do it.\n\nParameters\n----------\na : int\n    first\n    and more.\nb\n    second\n"
    )
    assert numpy == ("Do it.", {"a": "first and more.", "b": "second"})
    assert parse_docstring(None) == ("", {})


def test_arguments_are_validated_by_the_signature() -> None:
    assert find_orders.validate('{"query": "lamp", "limit": "2", "json": true}') == {
        "query": "lamp",
        "limit": 2,
        "ship_to": None,
        "json": True,
    }
    assert find_orders.validate({"query": "x", "ship_to": {"city": "Oslo"}})["ship_to"] == Address(
        city="Oslo"
    )
    for bad in ('{"limit": 2}', '{"query": "x", "limit": 11}', '{"query": "x", "extra": 1}', "not json"):
        with pytest.raises(ValidationError):
            find_orders.validate(bad)


def test_tool_declaration_errors_and_options() -> None:
    def plain(x: int) -> int:
        return x

    renamed = tool(name="renamed", description="Given.")(plain)
    assert (
        renamed.schema["function"]["name"] == "renamed"
        and renamed.schema["function"]["description"] == "Given."
    )
    assert "description" not in Tool.from_function(plain).schema["function"]  # no docstring, none sent
    assert renamed(4) == 4  # still callable as the function

    def star(*args: int) -> None: ...

    with pytest.raises(Exception, match="passable by keyword"):
        Tool(star)
    with pytest.raises(Exception, match="must match"):
        Tool(plain, name="has space")


# -- the fake LLM's tool plans ---------------------------------------------------------------
def test_fake_llm_plans_and_synthesises_arguments_from_the_schema() -> None:
    offered = [find_orders.schema, {"type": "function", "function": {"name": "other"}}]
    assert tool_plan("hello", offered) == [["find_orders"], ["other"]]
    assert tool_plan("x [tools: a, b+c, a] y", offered) == [["a"], ["b", "c"], ["a"]]
    assert tool_plan("[tools: none]", offered) == []
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string"},
            "n": {"type": "integer"},
            "e": {"enum": ["red", "blue"]},
            "o": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]},
            "skipped": {"type": "string"},
        },
        "required": ["s", "n", "e", "o"],
        "$defs": {
            "A": {"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "boolean"}}}}
        },
    }
    assert synthesise(schema, "hi", schema["$defs"]) == {"s": "hi", "n": 1, "e": "red", "o": {"xs": [True]}}
    body = {"messages": [{"role": "user", "content": "lamp"}], "tools": offered}
    first = completion(body)["choices"][0]["message"]
    assert first == completion(body)["choices"][0]["message"]  # a pure function of the request
    (call,) = first["tool_calls"]
    assert call["function"]["name"] == "find_orders" and json.loads(call["function"]["arguments"]) == {
        "query": "lamp"
    }
    assert call["id"].startswith("call_") and call["id"].endswith("_0")


# -- running ---------------------------------------------------------------------------------
class Publisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, codec.EncodedRecord]] = []

    async def publish(self, topic: str, records: Sequence[codec.EncodedRecord]) -> None:
        self.sent.extend((topic, r) for r in records)

    def emitted(self) -> list[dict[str, Any]]:
        return [json.loads(r.value) for t, r in self.sent if not t.startswith("p.dlq.")]  # type: ignore[arg-type]


def record(text: str, *, id: str = "e1", offset: int = 0, conv: str = "c1") -> ConsumedRecord:
    env = RawEnvelope(
        id=id,
        source="t",
        type="chat.message.received.v1",
        subject=conv,
        data={"conversation_id": conv, "user": "u", "text": text},
    )
    return ConsumedRecord(
        "p.chat.messages.v1",
        PARTITION,
        offset,
        conv.encode(),
        codec.encode(env).value,
        [("ce_id", id.encode())],
    )


def dispatcher(
    handler: Any, base: str, table: MemoryTable | None = None
) -> tuple[Dispatcher, MemoryTable, Publisher]:
    rt = Runtime()
    rt.agent(
        ChatMessageReceivedV2,
        name="helper",
        state=Notes,
        emits=[ChatReplyRequestedV1],
        retry=Retry(max_attempts=3, backoff=0, jitter=0),
    )(handler)
    table = table if table is not None else MemoryTable()
    pub = Publisher()
    settings = Settings(topic_prefix="p.", llm_model="openai/fake", llm_api_base=base, _env_file=None)  # type: ignore[call-arg]
    llm = LLMClient(settings)
    return Dispatcher(rt.agents["helper"], settings, StateStore(table, Notes), pub, {"llm": llm}), table, pub


class Calls:
    """Counts what the tools really ran."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self.threads: list[int] = []

    def tools(self) -> list[Tool]:
        log, threads = self.log, self.threads

        @tool
        async def lookup_order(order: str) -> dict[str, str]:
            """Look an order up.

            Args:
                order: the order the customer named.
            """
            log.append(("lookup_order", order))
            return {"order": order, "status": "shipped"}

        @tool
        def count_items(n: int) -> int:
            """Count items (sync: runs in a thread)."""
            log.append(("count_items", n))
            threads.append(threading.get_ident())
            return n + 41

        @tool
        async def notify(message: str, ctx: Context[Notes]) -> str:
            """Tell the customer something (emits a reply)."""
            log.append(("notify", message))
            await ctx.emit(
                ChatReplyRequestedV1(
                    conversation_id=ctx.event.subject, in_reply_to=ctx.event.id, sequence=1, text="notified"
                )
            )
            return "sent"

        @tool
        async def flaky(code: Annotated[str, Field(pattern=r"^\d+$")]) -> str:
            """Needs digits; the fake sends the user's text, so validation fails."""
            log.append(("flaky", code))
            return code

        @tool
        async def broken(what: str) -> str:
            """Always raises."""
            log.append(("broken", what))
            raise RuntimeError("database is on fire")

        @tool
        async def picky(what: str, ctx: Context[Notes]) -> str:
            """Asks the model to try again (and its emit is dropped)."""
            log.append(("picky", what))
            await ctx.emit(
                ChatReplyRequestedV1(
                    conversation_id=ctx.event.subject, in_reply_to=ctx.event.id, sequence=9, text="no"
                )
            )
            raise ModelRetry("give me an order number, not a sentence")

        return [lookup_order, count_items, notify, flaky, broken, picky]


def reply_with(runs: list[ToolRun], tools: list[Tool], **limits: Any) -> Any:
    async def handler(event: Envelope[ChatMessageReceivedV2], ctx: Context[Notes]) -> None:
        run = await run_tools(ctx, [{"role": "user", "content": event.data.text}], tools, **limits)
        runs.append(run)
        ctx.state.runs += 1
        await ctx.emit(
            ChatReplyRequestedV1(
                conversation_id=event.subject, in_reply_to=event.id, sequence=2, text=run.text
            )
        )

    return handler


async def test_a_multi_step_run_sends_each_result_back_to_the_model(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    calls = Calls()
    runs: list[ToolRun] = []
    d, table, pub = dispatcher(reply_with(runs, calls.tools()), base)
    text = "where is order 7 [tools: lookup_order, count_items+notify]"
    assert await d.handle(record(text)) == "ok"
    (run,) = runs
    assert calls.log == [("lookup_order", text), ("count_items", 1), ("notify", text)]
    assert calls.threads and calls.threads[0] != threading.get_ident()  # the sync tool ran in a thread
    assert [(c.name, c.outcome, c.content) for c in run.calls] == [
        ("lookup_order", "ok", json.dumps({"order": text, "status": "shipped"}, separators=(",", ":"))),
        ("count_items", "ok", "42"),
        ("notify", "ok", "sent"),
    ]
    assert run.steps == 3 == fake.stats["ok"]  # call, two calls in one reply, final text
    assert "tool results: lookup_order: " in run.text and "count_items: 42; notify: sent" in run.text
    assert run.total_tokens == run.prompt_tokens + run.completion_tokens > 0
    roles = [m["role"] for m in run.messages]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "tool", "assistant"]
    assert run.messages[3]["tool_calls"][1]["id"] == run.messages[5]["tool_call_id"] == run.calls[2].id
    # the tool's emit and the handler's, in order, both published
    assert [(e["data"]["text"], e["data"]["sequence"]) for e in pub.emitted()] == [
        ("notified", 1),
        (run.text, 2),
    ]
    assert not [k for k in table.keys(PARTITION) if k.startswith(JOURNAL_PREFIX)]  # pruned at the end


OUTCOMES = [("flaky", "invalid"), ("unknown", "unknown"), ("broken", "error"), ("picky", "retry")]


def counted(tool_name: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "vigil_tool_calls_total", {"agent": "helper", "tool": tool_name, "outcome": outcome}
    )
    return value or 0.0


async def test_tool_errors_go_back_to_the_model_not_up(server: tuple[FakeLLM, str]) -> None:
    _, base = server
    calls = Calls()
    runs: list[ToolRun] = []
    d, _, pub = dispatcher(reply_with(runs, calls.tools()), base)
    before = {o: counted(t, o) for t, o in OUTCOMES}
    assert await d.handle(record("help [tools: flaky, no_such_tool, broken, picky]")) == "ok"
    assert {o: counted(t, o) - before[o] for t, o in OUTCOMES} == dict.fromkeys(before, 1.0)
    (run,) = runs
    assert [c.outcome for c in run.calls] == ["invalid", "unknown", "error", "retry"]
    assert [name for name, _ in calls.log] == ["broken", "picky"]  # flaky never ran: invalid arguments
    invalid, unknown, error, retry = (c.content for c in run.calls)
    assert invalid.startswith("Invalid arguments for tool 'flaky': code: String should match pattern")
    assert unknown.startswith("Unknown tool 'no_such_tool'; the tools are: broken, count_items")
    assert error == "RuntimeError: database is on fire"
    assert retry == "give me an order number, not a sentence"
    for content in (invalid, unknown, error, retry):
        assert content in run.text  # the model read each of them
    assert [e["data"]["sequence"] for e in pub.emitted()] == [2]  # picky raised: its emit is dropped


async def test_step_limit(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    calls = Calls()
    runs: list[ToolRun] = []
    d, _, pub = dispatcher(reply_with(runs, calls.tools(), max_steps=2), base)
    assert await d.handle(record("go [tools: count_items, count_items, count_items]")) == "dlq"
    assert calls.log == [("count_items", 1)]  # the second reply's call was not run
    assert fake.stats["ok"] == 2  # not retried: a retry replays to the same limit
    ((topic, dead),) = pub.sent
    headers = dict(dead.headers)
    assert topic == "p.dlq.helper" and headers["vigil_error_class"] == b"agents.tools.ToolStepLimitError"
    assert b"after 2 LLM requests (max_steps=2)" in headers["vigil_error_message"]
    assert ToolStepLimitError.reason == "tool_step_limit" and not ToolStepLimitError.retriable


async def test_token_limit(server: tuple[FakeLLM, str]) -> None:
    _, base = server
    calls = Calls()
    seen: list[ToolTokenLimitError] = []

    async def handler(event: Envelope[ChatMessageReceivedV2], ctx: Context[Notes]) -> None:
        try:
            await run_tools(
                ctx, [{"role": "user", "content": event.data.text}], calls.tools(), max_total_tokens=30
            )
        except ToolTokenLimitError as exc:
            seen.append(exc)

    d, _, _ = dispatcher(handler, base)
    assert (
        await d.handle(record("a b c d e f g h i j [tools: count_items, count_items, count_items]")) == "ok"
    )
    (exc,) = seen
    assert exc.reason == "tool_token_limit"
    assert exc.run.total_tokens >= 30 and exc.run.steps == 2  # the first reply was under the limit
    assert calls.log == [("count_items", 1)]
    # the same run without the limit takes all its steps
    assert (
        await run_tools_once(base, "a b c d e f g h i j [tools: count_items, count_items, count_items]")
    ).steps == 4


async def run_tools_once(base: str, text: str) -> ToolRun:
    runs: list[ToolRun] = []
    d, _, _ = dispatcher(reply_with(runs, Calls().tools()), base)
    assert await d.handle(record(text, id="other")) == "ok"
    return runs[0]


async def test_a_retried_event_runs_no_tool_and_no_llm_request_twice(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    calls = Calls()
    runs: list[ToolRun] = []
    attempts: list[dict[str, str]] = []
    inner = reply_with(runs, calls.tools())

    async def handler(event: Envelope[ChatMessageReceivedV2], ctx: Context[Notes]) -> None:
        await inner(event, ctx)
        assert ctx.journal is not None
        attempts.append(dict(ctx.journal.outcomes))
        if len(attempts) == 1:
            raise ConnectionError("the database went away after the tools ran")

    d, table, pub = dispatcher(handler, base)
    replayed = counted("lookup_order", "replayed"), counted("notify", "replayed")
    assert await d.handle(record("order 7 [tools: lookup_order, notify, lookup_order]")) == "ok"
    assert (
        counted("lookup_order", "replayed") - replayed[0],
        counted("notify", "replayed") - replayed[1],
    ) == (2, 1)
    assert [name for name, _ in calls.log] == ["lookup_order", "notify", "lookup_order"]  # each once
    assert fake.stats["ok"] == 4  # three tool-call replies and the final text, none asked again
    first, second = attempts
    assert set(first.values()) == {"ran"} and set(second.values()) == {"replayed"}
    assert (
        list(first)
        == list(second)
        == [
            "llm",
            f"tool:{runs[0].calls[0].id}",
            "llm#2",
            f"tool:{runs[0].calls[1].id}",
            "llm#3",
            f"tool:{runs[0].calls[2].id}",
            "llm#4",
        ]
    )
    assert runs[0].text == runs[1].text and runs[0].messages == runs[1].messages
    assert [c.replayed for c in runs[1].calls] == [True] * 3
    # notify's emit, replayed from the journal, is published once, with the id the first run gave it
    emitted = pub.emitted()
    assert [e["data"]["text"] for e in emitted] == ["notified", runs[1].text]
    assert [e["id"] for e in emitted] == [derived_id("helper", "e1", 0), derived_id("helper", "e1", 1)]
    assert not [k for k in table.keys(PARTITION) if k.startswith(JOURNAL_PREFIX)]


async def test_a_redelivery_after_a_crash_replays_the_journal(server: tuple[FakeLLM, str]) -> None:
    """The first worker dies mid-handler (after the tools, before its state write); the next one
    reads the same table and handles the redelivered record from the journal."""
    fake, base = server
    calls = Calls()
    runs: list[ToolRun] = []
    inner = reply_with(runs, calls.tools())

    async def dies(event: Envelope[ChatMessageReceivedV2], ctx: Context[Notes]) -> None:
        await inner(event, ctx)
        raise asyncio.CancelledError  # the process is gone: nothing after this runs

    d1, table, _ = dispatcher(dies, base)
    with pytest.raises(asyncio.CancelledError):
        await d1.handle(record("order 8 [tools: lookup_order, notify]"))
    assert [k for k in table.keys(PARTITION) if k.startswith(JOURNAL_PREFIX)]  # the journal survived
    d2, _, pub = dispatcher(inner, base, table)
    assert await d2.handle(record("order 8 [tools: lookup_order, notify]")) == "ok"
    assert [name for name, _ in calls.log] == ["lookup_order", "notify"]
    assert fake.stats["ok"] == 3
    assert [e["data"]["text"] for e in pub.emitted()] == ["notified", runs[0].text]
    assert runs[0].text == runs[1].text
