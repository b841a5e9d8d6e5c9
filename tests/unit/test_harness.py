"""The in-memory agent harness (streams.testing, agents.testing): the production dispatcher,
a scripted LLM through the real LLMClient, crash-and-replay, and the README's tested example."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import streams
import streams.core.agent
from agents.testing import Failure, Reply, ScriptedLLM, ToolRequest, scripted_tool, tool_call
from agents.tools import tool
from schemas import ChatMessageReceivedV1, ChatMessageReceivedV2, ChatReplyRequestedV1, Envelope
from streams import Context, Runtime, Settings
from streams.core.retry import Retry
from streams.pytest_plugin import HarnessFactory
from streams.testing import AgentHarness, HarnessError

README = Path(__file__).resolve().parents[2] / "README.md"


class Count(BaseModel):
    n: int = 0
    last: str = ""


def message(text: str = "hi", conv: str = "c1") -> ChatMessageReceivedV2:
    return ChatMessageReceivedV2(conversation_id=conv, user="ann", text=text, channel="web")


def declare(
    handler: Any, *, retry: Retry | None = None, park: bool = False, **kw: Any
) -> tuple[Runtime, Any]:
    rt = Runtime()
    rt.agent(
        ChatMessageReceivedV2,
        name="answer",
        state=Count,
        emits=[ChatReplyRequestedV1],
        retry=retry,
        on_dead_letter="park" if park else "continue",
        **kw,
    )(handler)
    return rt, handler


async def answer(event: Envelope[ChatMessageReceivedV2], ctx: Context[Count]) -> None:
    reply = await ctx.llm.complete([{"role": "user", "content": event.data.text}])
    ctx.state.n += 1
    ctx.state.last = reply.text
    await ctx.emit(
        ChatReplyRequestedV1(
            conversation_id=event.subject, in_reply_to=event.id, sequence=ctx.state.n, text=reply.text
        )
    )


def harness(handler: Any = answer, llm: Any = None, **kw: Any) -> AgentHarness:
    rt, fn = declare(handler, retry=kw.pop("retry", None), park=kw.pop("park", False))
    return AgentHarness(fn, runtime=rt, llm=llm, **kw)


async def test_a_message_is_answered_with_state_and_a_decoded_emit() -> None:
    llm = ScriptedLLM(["Hi!"])
    async with harness(llm=llm) as h:
        out = await h.send(message("where is my order?"), subject="c1")
        assert out.outcome == "ok" and out.steps == {"llm": "ran"} and len(out.attempts) == 1
        [reply] = h.emitted(ChatReplyRequestedV1)
        assert reply.data.text == "Hi!" and reply.data.sequence == 1 and reply.causationid == out.event.id  # type: ignore[union-attr]
        assert out.emitted == [reply]
        assert h.state("c1").n == 1 and h.state("c1").last == "Hi!"
        assert h.state("c2").n == 0  # never written: a fresh state
        assert h.dead_letters == [] and h.journal_entries() == 0  # the final write pruned the journal
        [request] = llm.requests
        assert request.messages == [{"role": "user", "content": "where is my order?"}]
        assert request.tools is None and request.params == {}


async def test_redelivery_and_a_resent_id_are_duplicates_that_run_nothing() -> None:
    llm = ScriptedLLM(["one"])
    async with harness(llm=llm) as h:
        first = await h.send(message(), subject="c1", id="m-1")
        again = await h.redeliver()
        assert again.record == first.record and again.outcome == "duplicate"
        whole = Envelope[ChatMessageReceivedV2](
            id="m-1", source="elsewhere", type=message().event_type, subject="c1", data=message()
        )
        resent = await h.send(whole)
        assert resent.record.offset == first.record.offset + 1 and resent.outcome == "duplicate"
        assert again.attempts == resent.attempts == [] and len(llm.requests) == 1 and h.state("c1").n == 1


async def test_an_older_version_is_upcast_and_poison_bytes_are_dead_lettered() -> None:
    llm = ScriptedLLM(["v1 ok"])
    async with harness(llm=llm) as h:
        v1 = await h.send(ChatMessageReceivedV1(conversation_id="c1", user="ann", text="old"), subject="c1")
        assert v1.outcome == "ok" and h.state("c1").last == "v1 ok"
        poison = await h.send(b"\x00not json", key="c9")
        assert poison.outcome == "dlq" and poison.attempts == []
        [dead] = poison.dead_letters
        assert dead.reason == "undecodable" and dead.value == b"\x00not json" and dead.key == b"c9"
        assert (dead.origin_topic, dead.origin_offset) == (poison.record.topic, poison.record.offset)
        assert h.dead_letters == [dead] and h.emitted() == v1.emitted
        assert (await h.redeliver(poison)).outcome == "duplicate"  # dead-lettered once per record


async def test_a_retriable_llm_failure_is_retried_at_once_then_answered() -> None:
    llm = ScriptedLLM([Failure(500), Failure(429), "third time"])
    async with harness(llm=llm, retry=Retry(max_attempts=3, backoff=5.0)) as h:
        started = time.monotonic()
        out = await h.send(message(), subject="c1")
        assert time.monotonic() - started < 2  # waits of 5 s and 10 s made instant
        assert out.outcome == "ok" and [a.number for a in out.attempts] == [1, 2, 3]
        assert [type(a.error).__name__ for a in out.attempts] == ["LLMError", "LLMError", "NoneType"]
        assert out.attempts[0].error.retriable is True  # type: ignore[union-attr]
        assert len(llm.requests) == 3 and h.emitted(ChatReplyRequestedV1)[0].data.text == "third time"


async def test_exhausted_retries_and_a_bug_are_dead_lettered_with_their_reason() -> None:
    llm = ScriptedLLM([Failure(503)] * 2)
    async with harness(llm=llm, retry=Retry(max_attempts=2)) as h:
        out = await h.send(message(), subject="c1")
        assert out.outcome == "dlq" and len(out.attempts) == 2
        [dead] = h.dead_letters
        assert (dead.reason, dead.attempts) == ("llm_error", 2)
        assert "ServiceUnavailableError" in dead.error_message
        assert dead.error_class == "agents.llm.LLMError" and h.state("c1").n == 0 and h.emitted() == []

    async def buggy(event: Envelope[ChatMessageReceivedV2], ctx: Context[Count]) -> None:
        raise KeyError("no such field")

    async with harness(buggy, retry=Retry(max_attempts=5)) as h:
        out = await h.send(message(), subject="c1")
        assert out.outcome == "dlq" and len(out.attempts) == 1  # a bug is not retried
        [dead] = h.dead_letters
        assert dead.reason == "handler_error" and "no such field" in dead.error_message


async def test_an_unscripted_request_fails_the_event_naming_it() -> None:
    async with harness(llm=ScriptedLLM([])) as h:
        out = await h.send(message("anyone?"), subject="c1")
        assert out.outcome == "dlq" and len(out.attempts) == 1  # a 400: not retried
        assert "no reply scripted for request #1" in h.dead_letters[0].error_message
        assert "anyone?" in h.dead_letters[0].error_message


async def test_a_recorded_step_replays_on_retry_instead_of_running_again() -> None:
    side_effects: list[str] = []

    def charge(order: str) -> dict[str, str]:
        side_effects.append(order)
        return {"charged": order}

    async def pay(event: Envelope[ChatMessageReceivedV2], ctx: Context[Count]) -> None:
        receipt = await ctx.step("charge", charge, event.data.text)
        reply = await ctx.llm.complete([{"role": "user", "content": str(receipt)}])
        ctx.state.last = reply.text

    llm = ScriptedLLM([Failure(500), "paid"])
    async with harness(pay, llm=llm, retry=Retry(max_attempts=2)) as h:
        out = await h.send(message("order-7"), subject="c1")
        assert out.outcome == "ok" and side_effects == ["order-7"]
        assert [a.steps for a in out.attempts] == [{"charge": "ran"}, {"charge": "replayed", "llm": "ran"}]
        assert h.state("c1").last == "paid" and h.journal_entries() == 0


async def test_a_crash_after_the_llm_step_replays_its_reply_on_redelivery() -> None:
    llm = ScriptedLLM(["recorded before the crash"])
    async with harness(llm=llm) as h:
        crashed = await h.send(message(), subject="c1", fail_after_step="llm")
        assert crashed.outcome == "crashed" and crashed.emitted == [] and h.state("c1").n == 0
        assert h.journal(crashed)["llm"]["text"] == "recorded before the crash"  # the in-flight event
        redelivered = await h.redeliver()
        assert redelivered.outcome == "ok" and redelivered.steps == {"llm": "replayed"}
        assert len(llm.requests) == 1  # the LLM was asked once, across the crash
        assert h.emitted(ChatReplyRequestedV1)[0].data.text == "recorded before the crash"
        assert h.journal(crashed) == {} and h.state("c1").n == 1


async def test_fail_after_a_step_that_never_runs_is_an_error_of_the_test() -> None:
    async def quiet(event: Envelope[ChatMessageReceivedV2], ctx: Context[Count]) -> None:
        ctx.state.n += 1

    async with harness(quiet) as h:
        with pytest.raises(HarnessError, match=r"fail_after_step='llm' never ran \(outcome 'ok'"):
            await h.send(message(), subject="c1", fail_after_step="llm")


@tool
async def lookup_order(order_id: int) -> dict[str, str]:
    """Look an order up.

    Args:
        order_id: the order number.
    """
    raise AssertionError("scripted in these tests: the real one would call a shop API")


async def test_tool_calls_run_as_journaled_steps_with_scripted_results() -> None:
    from agents.tools import run_tools

    async def shop(event: Envelope[ChatMessageReceivedV2], ctx: Context[Count]) -> None:
        run = await run_tools(ctx, [{"role": "user", "content": event.data.text}], [lookup_order])
        ctx.state.last = run.text

    llm = ScriptedLLM([tool_call("lookup_order", order_id=42), "It shipped."])
    async with harness(shop, llm=llm) as h:
        with scripted_tool(lookup_order, {"status": "shipped"}) as orders:
            crashed = await h.send(message("where is 42?"), subject="c1", fail_after_step="tool:call_1_0")
            assert crashed.outcome == "crashed" and orders.calls == [{"order_id": 42}]
            out = await h.redeliver()
        assert out.outcome == "ok" and h.state("c1").last == "It shipped."
        assert out.steps == {"llm": "replayed", "tool:call_1_0": "replayed", "llm#2": "ran"}
        assert orders.calls == [{"order_id": 42}]  # the tool ran once across the crash
        first, second = llm.requests
        assert first.tool_names == ["lookup_order"]
        tool_result = {"role": "tool", "tool_call_id": "call_1_0", "content": '{"status":"shipped"}'}
        assert second.messages[-1] == tool_result


async def test_a_scripted_tool_can_fail_or_compute_its_result() -> None:
    from agents.tools import run_tools

    async def shop(event: Envelope[ChatMessageReceivedV2], ctx: Context[Count]) -> None:
        run = await run_tools(ctx, [{"role": "user", "content": event.data.text}], [lookup_order])
        ctx.state.last = run.text

    llm = ScriptedLLM(
        [tool_call("lookup_order", order_id=1), "Sorry.", tool_call("lookup_order", order_id=2), "Ok."]
    )
    async with harness(shop, llm=llm) as h:
        with scripted_tool(lookup_order, RuntimeError("shop down")):
            assert (await h.send(message(), subject="c1")).outcome == "ok"
        assert llm.requests[1].messages[-1]["content"] == "RuntimeError: shop down"  # the model reads it
        with scripted_tool(lookup_order, lambda order_id: {"order": order_id * 10}) as orders:
            assert (await h.send(message(), subject="c1")).outcome == "ok"
        assert orders.calls == [{"order_id": 2}] and llm.requests[3].messages[-1]["content"] == '{"order":20}'


async def test_scripted_replies_carry_tool_calls_and_token_counts() -> None:
    seen: list[Any] = []

    async def raw(event: Envelope[ChatMessageReceivedV2], ctx: Context[Count]) -> None:
        seen.append(await ctx.llm.complete([{"role": "user", "content": "x"}], max_tokens=50))

    reply = Reply("thinking", (ToolRequest("a", '{"k": 1}', id="t1"),), prompt_tokens=7, completion_tokens=3)
    llm = ScriptedLLM([reply])
    async with harness(raw, llm=llm) as h:
        assert (await h.send(message(), subject="c1")).outcome == "ok"
    [got] = seen
    assert (got.text, got.prompt_tokens, got.completion_tokens) == ("thinking", 7, 3)
    assert got.tool_calls == [{"id": "t1", "name": "a", "arguments": '{"k": 1}'}]
    assert llm.requests[0].params == {"max_tokens": 50}


async def test_a_handler_stuck_on_an_open_circuit_fails_the_send_after_the_timeout() -> None:
    settings = Settings(llm_circuit_failures=1, llm_circuit_reset=600, _env_file=None)  # type: ignore[call-arg]
    llm = ScriptedLLM([Failure(500)], settings=settings)
    async with harness(llm=llm, retry=Retry(max_attempts=3), timeout=0.5) as h:
        with pytest.raises(HarnessError, match="waiting on a gate"):
            await h.send(message(), subject="c1")
    assert len(llm.requests) == 1  # the open circuit kept the retry from reaching the provider


async def test_entity_budgets_are_the_real_ones_spent_in_durable_meta() -> None:
    settings = Settings(  # type: ignore[call-arg]
        llm_entity_cost_usd_per_window=0.01, llm_max_tokens=10, llm_budget_action="park", _env_file=None
    )
    replies = [Reply("pricey", prompt_tokens=80, completion_tokens=10), "cheap"]
    llm = ScriptedLLM(replies, settings=settings, cost_per_token=(1e-4, 1e-4))
    async with harness(llm=llm) as h:
        assert (await h.send(message(), subject="c1")).outcome == "ok"
        assert h.meta("c1")["budget"]  # the spend lives in the entity's journal meta
        over = await h.send(message("again"), subject="c1")
        assert over.outcome == "dlq" and h.dead_letters[0].reason == "budget"
        assert (await h.send(message(conv="c2"), subject="c2")).outcome == "ok"  # another entity flows
    assert len(llm.requests) == 2 and llm.requests[0].params == {"max_tokens": 10}


async def test_park_and_partitions() -> None:
    async def boom(event: Envelope[ChatMessageReceivedV2], ctx: Context[Count]) -> None:
        if event.data.text == "bad":
            raise ValueError("bad input")
        ctx.state.n += 1

    async with harness(boom, park=True, partitions=6) as h:
        assert (await h.send(message("bad", "c1"), subject="c1")).outcome == "dlq"
        assert h.parked("c1") and not h.parked("c2")
        later = await h.send(message("fine", "c1"), subject="c1")
        assert later.outcome == "parked" and h.dead_letters[-1].reason == "parked"
        assert (await h.send(message("fine", "c2"), subject="c2")).outcome == "ok"
        spread = {h.partition_of(f"c{i}") for i in range(40)}
        assert len(spread) > 1 and spread <= set(range(6))
        assert later.record.partition == h.partition_of("c1") and h.state("c2").n == 1


async def test_several_types_and_topic_choice() -> None:
    rt = Runtime()
    seen: list[str] = []

    @rt.agent(ChatMessageReceivedV2, name="two", state=Count)
    async def two(event: Envelope[Any], ctx: Context[Count]) -> None:
        seen.append(event.type)

    h = AgentHarness("two", runtime=rt)
    assert (await h.send(message(), subject="c1", topic="chat.messages.v1")).outcome == "ok"
    assert seen == ["chat.message.received.v2"]
    with pytest.raises(HarnessError, match="no agent named 'nope'"):
        AgentHarness("nope", runtime=rt)
    with pytest.raises(HarnessError, match="needs subject="):
        await h.send(message())
    with pytest.raises(HarnessError, match="needs an event"):
        await h.send(b"{}", key="c1", fail_after_step="llm")


def test_an_undeclared_function_is_refused() -> None:
    async def stray(event: Envelope[Any], ctx: Context[Any]) -> None: ...

    with pytest.raises(HarnessError, match="stray is not a declared agent"):
        AgentHarness(stray, runtime=Runtime())


async def test_the_shipped_support_agent_is_found_in_the_process_runtime(
    agent_harness: HarnessFactory,
) -> None:
    from agents.support import support

    llm = ScriptedLLM(["Your order shipped.", "You are welcome."])
    h = agent_harness(support, llm=llm)
    assert h.spec.name == "support"
    await h.send(message("where is my order?"), subject="c1")
    await h.send(message("thanks"), subject="c1")
    assert [e.data.sequence for e in h.emitted(ChatReplyRequestedV1)] == [1, 2]
    assert [t.reply for t in h.state("c1").turns] == ["Your order shipped.", "You are welcome."]
    second = llm.requests[1].messages  # the conversation so far went with the second request
    assert {"role": "assistant", "content": "Your order shipped."} in second
    assert second[-1]["content"] == "[web] ann: thanks"


async def test_the_fixture_comes_from_the_installed_plugin(agent_harness: HarnessFactory) -> None:
    rt, fn = declare(answer)
    h = agent_harness(fn, runtime=rt, llm=ScriptedLLM(["from the fixture"]))
    assert (await h.send(message(), subject="c1")).outcome == "ok"
    assert h.state("c1").last == "from the fixture"


# -- the README's example ---------------------------------------------------------------------
TESTED = "# vigil: tested"


def readme_snippets() -> list[str]:
    """The tested blocks, each padded with blank lines to its place in the README, so that a
    failure's traceback names the README's own line."""
    text = README.read_text()
    out = []
    for block in re.finditer(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        if block.group(1).startswith(TESTED):
            line = text.count("\n", 0, block.start(1))
            out.append("\n" * line + block.group(1))
    return out


def as_module(snippets: list[str]) -> str:
    """The blocks as one module, each at its README line (they never overlap)."""
    lines: list[str] = []
    for snippet in snippets:
        body = snippet.split("\n")
        start = next(i for i, x in enumerate(body) if x)
        lines.extend([""] * (start - len(lines)))
        lines.extend(body[start:])
    return "\n".join(lines)


async def run_readme(source: str, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """Run the tested blocks as one module on a fresh runtime; await every test_* they define."""
    fresh = Runtime()
    monkeypatch.setattr(streams, "runtime", fresh)  # `from streams import runtime` gets this one
    monkeypatch.setattr(streams.core.agent, "runtime", fresh)  # and AgentHarness looks there
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(source, str(README), "exec"), namespace)
    tests = [v for k, v in namespace.items() if k.startswith("test_") and callable(v)]
    assert tests, "the README's tested blocks define no test_* function"
    for test in tests:
        await test()
    return fresh


async def test_the_readme_agent_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's blocks starting with ``# vigil: tested`` run in order as one module, on a
    fresh runtime, and every ``test_*`` coroutine they define is awaited."""
    snippets = readme_snippets()
    assert len(snippets) >= 2, "the README's agent example and its test are marked '# vigil: tested'"
    fresh = await run_readme(as_module(snippets), monkeypatch)
    assert list(fresh.agents) == ["support"]


async def test_a_readme_example_that_no_longer_holds_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    source = as_module(readme_snippets())
    broken = source.replace('ScriptedLLM(["Hi!"', 'ScriptedLLM(["Bye!"', 1)
    assert broken != source
    with pytest.raises(AssertionError) as info:
        await run_readme(broken, monkeypatch)
    failed = info.traceback[-1]
    assert Path(failed.path) == README  # the traceback names the README's line
    assert 'data.text == "Hi!"' in README.read_text().splitlines()[failed.lineno]
