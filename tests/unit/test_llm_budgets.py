"""Durable entity budgets, per-agent models and prompts, and the cost per event, through the
real litellm path against the fake LLM and a real ``Journal`` over an in-memory table: what a
restart, a redelivery or a concurrent gather sees is what the table holds."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest

from agents.budget import BudgetExceeded
from agents.config import AgentLLMConfig, AgentSettings
from agents.fake_llm import FakeLLM, completion
from agents.llm import LLMClient, LLMReply, agent_alias, agent_prompt, estimate_prompt_tokens, router_config
from schemas import ChatMessageReceivedV2, Envelope
from streams import Runtime, Settings
from streams.core.backpressure import Blocked
from streams.core.context import Context
from streams.core.dispatcher import Dispatcher
from streams.core.journal import Journal, meta_key
from streams.core.state import StateStore
from streams.core.tables import MemoryTable
from streams.observability.metrics import REGISTRY
from tests.unit.test_dispatcher import Counter, Entities, MemoryPublisher
from tests.unit.test_dispatcher import record as dispatcher_record

MSG = [{"role": "user", "content": "where is my order?"}]
MAX = 10  # max_tokens of every call below
RESERVE = estimate_prompt_tokens(MSG, None) + MAX  # what one call holds
USED = completion({"messages": MSG})["usage"]["total_tokens"]  # what it really uses


def settings(base: str, **kw: Any) -> Settings:
    kw.setdefault("llm_model", "openai/main-model")
    kw.setdefault("llm_max_tokens", MAX)
    return Settings(llm_api_base=base, _env_file=None, **kw)  # type: ignore[call-arg]


def client(base: str, agents: dict[str, AgentLLMConfig] | None = None, **kw: Any) -> LLMClient:
    return LLMClient(settings(base, **kw), AgentSettings(agent=agents or {}, _env_file=None))  # type: ignore[call-arg]


def journal(table: MemoryTable, agent: str, subject: str, event_id: str | None = None) -> Journal:
    return Journal(agent, table, 0, subject, event_id or uuid.uuid4().hex)


def stored_budget(table: MemoryTable, subject: str) -> dict[str, Any]:
    raw = table.get(0, meta_key(subject))
    assert raw is not None, "the entity's meta was never written"
    budget: dict[str, Any] = json.loads(raw)["budget"]
    return budget


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def agent_name() -> str:
    return f"agent_{uuid.uuid4().hex[:8]}"


async def test_entity_budget_survives_a_restart_and_only_that_entity_waits(
    server: tuple[FakeLLM, str],
) -> None:
    fake, base = server
    agent, table = agent_name(), MemoryTable()
    llm = client(base, llm_entity_tokens_per_window=RESERVE + USED)  # room for two calls' reservations
    await llm.bind(agent, "hot", journal=journal(table, agent, "hot")).complete(MSG)
    await llm.bind(agent, "hot", journal=journal(table, agent, "hot")).complete(MSG)
    assert fake.stats["received"] == 2
    assert stored_budget(table, "hot")["tokens"] == 2 * USED and stored_budget(table, "hot")["held"] == {}

    # a new process on the same table: nothing in memory, the meta says the budget is spent
    restarted = client(base, llm_entity_tokens_per_window=RESERVE + USED)
    with pytest.raises(Blocked) as info:
        await restarted.bind(agent, "hot", journal=journal(table, agent, "hot")).complete(MSG)
    assert info.value.gate is None and info.value.retry_at is not None
    assert fake.stats["received"] == 2  # refused before the server
    await restarted.bind(agent, "cold", journal=journal(table, agent, "cold")).complete(MSG)
    assert fake.stats["received"] == 3 and not restarted.budget(agent).blocked()
    assert metric("vigil_llm_budget_rejections_total", agent=agent, scope="entity") == 1


async def test_a_replayed_step_is_not_charged_again(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    agent, table = agent_name(), MemoryTable()
    llm = client(base, llm_entity_tokens_per_window=10 * RESERVE)
    first = journal(table, agent, "s", "ev-1")
    reply = await llm.bind(agent, "s", journal=first).complete(MSG)
    assert first.outcomes == {"llm": "ran"} and stored_budget(table, "s")["tokens"] == USED
    redelivered = journal(table, agent, "s", "ev-1")  # same event after a crash: same step name
    again = await llm.bind(agent, "s", journal=redelivered).complete(MSG)
    assert redelivered.outcomes == {"llm": "replayed"} and again == reply
    assert fake.stats["received"] == 1
    assert stored_budget(table, "s")["tokens"] == USED  # no second charge
    assert llm.entity_budget(agent, "s", redelivered) is not None
    assert redelivered.meta["budget"]["tokens"] == USED


async def test_concurrent_calls_of_one_entity_cannot_overshoot(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    fake.faults.latency_ms = 200  # all three are in flight together
    agent, table = agent_name(), MemoryTable()
    llm = client(base, llm_entity_tokens_per_window=2 * RESERVE)
    j = journal(table, agent, "s")
    bound = llm.bind(agent, "s", journal=j)
    results = await asyncio.gather(*(bound.complete(MSG) for _ in range(3)), return_exceptions=True)
    assert sum(isinstance(r, LLMReply) for r in results) == 2
    assert sum(isinstance(r, Blocked) for r in results) == 1
    assert fake.stats["received"] == 2
    assert stored_budget(table, "s")["tokens"] == 2 * USED and stored_budget(table, "s")["held"] == {}


async def test_the_hold_is_durable_before_the_request_goes_out(server: tuple[FakeLLM, str]) -> None:
    """A call lost mid-request (a crash, here a cancelled task) still counts for its window."""
    fake, base = server
    fake.faults.latency_ms = 5000
    agent, table = agent_name(), MemoryTable()
    llm = client(base, llm_entity_tokens_per_window=RESERVE + 1)
    call = asyncio.create_task(llm.bind(agent, "s", journal=journal(table, agent, "s")).complete(MSG))
    await asyncio.wait_for(fake.arrived.wait(), timeout=5)
    assert list(stored_budget(table, "s")["held"].values()) == [[RESERVE, 0.0]]
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    fake.faults.latency_ms = 0
    with pytest.raises(Blocked):  # the next process finds the hold
        await (
            client(base, llm_entity_tokens_per_window=RESERVE + 1)
            .bind(agent, "s", journal=journal(table, agent, "s"))
            .complete(MSG)
        )
    assert fake.stats["received"] == 1


async def test_a_failed_call_releases_its_hold(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    fake.faults.error_status, fake.faults.fail_next = 400, 1
    agent, table = agent_name(), MemoryTable()
    llm = client(base, llm_entity_tokens_per_window=RESERVE, llm_num_retries=0)
    j = journal(table, agent, "s")
    with pytest.raises(Exception, match="BadRequest"):
        await llm.bind(agent, "s", journal=j).complete(MSG)
    await j.save_meta()  # what the dispatcher does after a failed attempt
    assert stored_budget(table, "s") | {"w": 0} == {"w": 0, "tokens": 0, "cost": 0.0, "held": {}}
    await llm.bind(agent, "s", journal=j).complete(MSG)  # the whole budget is there again
    assert fake.stats["received"] == 2


async def test_park_action_and_per_agent_limits(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    strict, table = agent_name(), MemoryTable()
    llm = client(
        base,
        {strict: AgentLLMConfig(entity_tokens_per_window=RESERVE, budget_action="park", max_tokens=MAX)},
        llm_entity_tokens_per_window=0,
    )
    await llm.bind(strict, "s", journal=journal(table, strict, "s")).complete(MSG)
    with pytest.raises(BudgetExceeded) as info:
        await llm.bind(strict, "s", journal=journal(table, strict, "s")).complete(MSG)
    assert info.value.reason == "budget" and not info.value.retriable
    other = agent_name()  # no per-agent limit, and the global one is off
    for _ in range(3):
        await llm.bind(other, "s", journal=journal(table, other, "s")).complete(MSG)
    assert fake.stats["received"] == 4


def priced_model() -> str:
    """A model name of its own in litellm's cost map: $0.001 per prompt token, $0.002 per completion token."""
    import litellm

    model = f"vigil-priced-{uuid.uuid4().hex[:6]}"
    litellm.register_model(
        {
            f"openai/{model}": {
                "input_cost_per_token": 0.001,
                "output_cost_per_token": 0.002,
                "litellm_provider": "openai",
                "mode": "chat",
            }
        }
    )
    return model


async def test_cost_budget_reserves_the_priced_worst_case(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    model = priced_model()
    agent, table = agent_name(), MemoryTable()
    worst = estimate_prompt_tokens(MSG, None) * 0.001 + MAX * 0.002
    llm = client(base, llm_model=f"openai/{model}", llm_entity_cost_usd_per_window=worst * 1.5)
    reply = await llm.bind(agent, "s", journal=journal(table, agent, "s")).complete(MSG)
    assert reply.cost_usd > 0 and stored_budget(table, "s")["cost"] == pytest.approx(reply.cost_usd)
    assert reply.cost_usd + worst > worst * 1.5  # so the next worst case does not fit
    with pytest.raises(Blocked):
        await llm.bind(agent, "s", journal=journal(table, agent, "s")).complete(MSG)
    assert fake.stats["received"] == 1


async def test_cost_per_event_is_observed_once_when_the_event_is_over(server: tuple[FakeLLM, str]) -> None:
    _, base = server
    model = priced_model()
    agent, table = agent_name(), MemoryTable()
    llm = client(base, llm_model=f"openai/{model}")
    first = journal(table, agent, "s", "ev-1")
    one = await llm.bind(agent, "s", journal=first).complete(MSG)
    first.new_attempt()  # the attempt failed after its first call; the retry replays it
    replayed = await llm.bind(agent, "s", journal=first).complete(MSG)
    two = await llm.bind(agent, "s", journal=first).complete([{"role": "user", "content": "and a refund?"}])
    assert replayed.call_id == one.call_id and first.outcomes == {"llm": "replayed", "llm#2": "ran"}
    assert metric("vigil_llm_cost_per_event_usd_count", agent=agent) == 0  # not over yet
    first.done_writes()
    assert metric("vigil_llm_cost_per_event_usd_count", agent=agent) == 1
    assert metric("vigil_llm_cost_per_event_usd_sum", agent=agent) == pytest.approx(
        one.cost_usd + two.cost_usd
    )
    first.done_writes()  # observed once
    assert metric("vigil_llm_cost_per_event_usd_count", agent=agent) == 1


async def test_an_agent_with_its_own_model_is_routed_to_it(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    special = agent_name()
    llm = client(base, {special: AgentLLMConfig(model="openai/special-model", prompt="Be brief.")})
    await llm.bind(special, "s").complete(MSG)
    await llm.bind(agent_name(), "s").complete(MSG)
    assert fake.by_model == {"special-model": 1, "main-model": 1}
    assert metric("vigil_llm_requests_total", agent=special, model="openai/special-model", outcome="ok") == 1
    ctx: Context[None] = Context(
        agent=special,
        event=None,
        state=None,
        emits=(),
        resources={"llm": llm},  # type: ignore[arg-type]
    )
    assert agent_prompt(ctx, "default prompt") == "Be brief."
    ctx.agent = agent_name()
    assert agent_prompt(ctx, "default prompt") == "default prompt"


async def test_an_agents_fallbacks_are_its_own(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    fake.faults.fail_models = "special-model"
    special = agent_name()
    llm = client(
        base,
        {special: AgentLLMConfig(model="openai/special-model", fallbacks="openai/backup-model")},
        llm_num_retries=0,
    )
    reply = await llm.bind(special, "s").complete(MSG)
    assert reply.text and fake.by_model == {"special-model": 1, "backup-model": 1}


def test_router_config_has_one_group_per_configured_agent() -> None:
    s = Settings(_env_file=None, llm_model="openai/a", llm_fallbacks="openai/b")  # type: ignore[call-arg]
    agents = AgentSettings(
        agent={
            "support": AgentLLMConfig(model="openai/s"),
            "triage": AgentLLMConfig(fallbacks=""),
            "quiet": AgentLLMConfig(prompt="only a prompt"),
        },
        _env_file=None,  # type: ignore[call-arg]
    )
    cfg = router_config(s, "default", agents)
    groups = {m["model_name"]: m["litellm_params"]["model"] for m in cfg["model_list"]}
    assert groups == {
        "default": "openai/a",
        "default-fallback-1": "openai/b",
        agent_alias("support"): "openai/s",
        f"{agent_alias('support')}-fallback-1": "openai/b",  # the worker's fallbacks by default
        agent_alias("triage"): "openai/a",  # no fallbacks of its own
    }
    assert cfg["fallbacks"] == [
        {"default": ["default-fallback-1"]},
        {agent_alias("support"): [f"{agent_alias('support')}-fallback-1"]},
    ]


def test_per_agent_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_AGENT__SUPPORT__MODEL", "openai/gpt-4o-mini")
    monkeypatch.setenv("VIGIL_AGENT__SUPPORT__PROMPT", "Answer in French.")
    monkeypatch.setenv("VIGIL_AGENT__TRIAGE__ENTITY_TOKENS_PER_WINDOW", "500")
    agents = AgentSettings(_env_file=None)  # type: ignore[call-arg]
    assert agents.get("support") == AgentLLMConfig(model="openai/gpt-4o-mini", prompt="Answer in French.")
    assert agents.get("triage").entity_tokens_per_window == 500
    assert agents.get("review") == AgentLLMConfig()
    llm = LLMClient(Settings(_env_file=None, llm_entity_tokens_per_window=100), agents)  # type: ignore[call-arg]
    assert llm.entity_limits("triage").tokens == 500 and llm.entity_limits("review").tokens == 100
    assert llm.model_of("support") == "openai/gpt-4o-mini" and llm.model_of("review") == "openai/fake"


# -- through the dispatcher: what an over-budget entity's event becomes ------------------------
def budget_dispatcher(llm: LLMClient, *, park: bool) -> tuple[Dispatcher, Entities, MemoryPublisher]:
    rt = Runtime()
    name = agent_name()

    async def answer(event: Envelope[ChatMessageReceivedV2], ctx: Context[Counter]) -> None:
        await ctx.llm.complete(MSG)
        ctx.state.n += 1

    rt.agent(ChatMessageReceivedV2, name=name, state=Counter, on_dead_letter="park" if park else "continue")(
        answer
    )
    table, pub = Entities(), MemoryPublisher()
    d = Dispatcher(rt.agents[name], llm.settings, StateStore(table, Counter), pub, {"llm": llm})
    return d, table, pub


async def test_park_action_dead_letters_with_reason_budget_and_parks_the_subject(
    server: tuple[FakeLLM, str],
) -> None:
    fake, base = server
    llm = client(base, llm_entity_tokens_per_window=RESERVE + USED - 1, llm_budget_action="park")
    d, table, pub = budget_dispatcher(llm, park=True)
    assert await d.handle(dispatcher_record("c1", id="e1", offset=0)) == "ok"
    assert await d.handle(dispatcher_record("c1", id="e2", offset=1)) == "dlq"
    dead = next(r for t, r in pub.sent if "dlq" in t)
    assert dict(dead.headers)["vigil_reason"] == b"budget" and dict(dead.headers)["vigil_attempts"] == b"1"
    assert await d.handle(dispatcher_record("c1", id="e3", offset=2)) == "parked"
    assert await d.handle(dispatcher_record("c2", id="f1", offset=3)) == "ok"  # another entity flows
    assert fake.stats["received"] == 2
    assert table["c1"]["state"] == {"n": 1}
    assert metric("vigil_llm_cost_per_event_usd_count", agent=d.spec.name) == 2  # e1, f1: they called


async def test_wait_action_holds_only_that_subject_until_its_window_ends(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    window = 2.0
    llm = client(base, llm_entity_tokens_per_window=RESERVE + USED - 1, llm_budget_window=window)
    d, table, _ = budget_dispatcher(llm, park=False)
    # start early in a window, so e1 and e2 share it and e2 waits about a second for the next
    await asyncio.sleep(window - time.time() % window + 0.05)
    assert await d.handle(dispatcher_record("c1", id="e1", offset=0)) == "ok"
    boundary = (time.time() // window + 1) * window
    waiting = asyncio.create_task(d.handle(dispatcher_record("c1", id="e2", offset=1)))
    assert await d.handle(dispatcher_record("c2", id="f1", offset=2)) == "ok"
    assert not waiting.done() and fake.stats["received"] == 2
    assert await asyncio.wait_for(waiting, timeout=10) == "ok"  # the next window's budget
    assert time.time() >= boundary and fake.stats["received"] == 3
    assert table["c1"]["state"] == {"n": 2}


def test_per_agent_settings_as_one_json_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_AGENT", '{"support": {"model": "openai/x", "budget_action": "park"}}')
    agents = AgentSettings(_env_file=None)  # type: ignore[call-arg]
    assert agents.get("support") == AgentLLMConfig(model="openai/x", budget_action="park")
    llm = LLMClient(Settings(_env_file=None), agents)  # type: ignore[call-arg]
    assert llm.entity_limits("support").action == "park" and llm.entity_limits("other").action == "wait"
    monkeypatch.setenv("VIGIL_AGENT", '{"support": {"modle": "typo"}}')
    with pytest.raises(ValueError, match="modle"):  # a misspelt field is an error, not ignored
        AgentSettings(_env_file=None)  # type: ignore[call-arg]
