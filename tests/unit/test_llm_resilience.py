"""LLM resilience, accounting and budgets through litellm's real HTTP path against the fake LLM
server: the Router's retries and fallbacks, the per-agent circuit (requests counted by the
server itself), tokens and cost equal to the server's usage, budgets and rpm limits that refuse
calls before they reach the server. No Kafka needed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agents.circuit import CircuitState
from agents.fake_llm import FakeLLM, completion
from agents.llm import UNBOUND, LLMClient, LLMError, estimate_prompt_tokens, router_config
from streams import Settings
from streams.core.backpressure import Blocked
from streams.observability.metrics import REGISTRY
from tests.support import start_fake_llm, wait_for

MSG = [{"role": "user", "content": "where is my order?"}]


def settings(base: str, **kw: Any) -> Settings:
    kw.setdefault("llm_model", "openai/main-model")
    return Settings(llm_api_base=base, _env_file=None, **kw)  # type: ignore[call-arg]


def agent_name() -> str:
    return f"agent-{uuid.uuid4().hex[:8]}"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- the Router's resilience ----------------------------------------------------------------
@pytest.mark.parametrize("status", [429, 500])
async def test_router_retries_429_and_500_until_success(server: tuple[FakeLLM, str], status: int) -> None:
    fake, base = server
    fake.faults.error_status = status
    fake.faults.fail_next = 2
    llm = LLMClient(settings(base, llm_num_retries=2)).bind(agent_name(), "s1")
    reply = await llm.complete(MSG)
    assert "You said: where is my order?" in reply.text
    assert (fake.stats["error"], fake.stats["ok"], fake.stats["received"]) == (2, 1, 3)
    assert metric("vigil_llm_requests_total", agent=llm.agent, model="openai/main-model", outcome="ok") == 1
    assert (
        metric("vigil_llm_requests_total", agent=llm.agent, model="openai/main-model", outcome="error") == 0
    )


async def test_router_retries_a_timeout(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    fake.faults.hang_next = 1
    fake.faults.hang_seconds = 5
    reply = await LLMClient(settings(base, llm_timeout=0.5, llm_num_retries=1)).complete(MSG)
    assert reply.text and (fake.stats["timeout"], fake.stats["ok"]) == (1, 1)


async def test_no_retry_budget_left_gives_a_typed_retriable_error(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    fake.faults.fail_next = 3
    with pytest.raises(LLMError) as info:
        await LLMClient(settings(base, llm_num_retries=1)).complete(MSG)
    assert info.value.retriable is True
    assert fake.stats["received"] == 2  # first try + 1 retry, then the Router gives up


async def test_falls_back_to_the_next_model_when_the_first_always_fails(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    fake.faults.fail_models = "main-model"
    llm = LLMClient(
        settings(base, llm_num_retries=1, llm_fallbacks="openai/backup-model, openai/last-model")
    ).bind(agent_name(), "s1")
    reply = await llm.complete(MSG)
    assert "You said" in reply.text and reply.model == "backup-model"
    assert fake.by_model == {"main-model": 2, "backup-model": 1}  # retries spent, then the fallback
    assert metric("vigil_llm_requests_total", agent=llm.agent, model="openai/backup-model", outcome="ok") == 1
    assert llm.client.circuit(llm.agent).state is CircuitState.CLOSED


def test_router_config_fallbacks_limits_and_provider_credentials() -> None:
    s = Settings(
        _env_file=None,
        llm_model="openai/a",
        llm_api_base="http://x/v1",
        llm_fallbacks="openai/b,anthropic/c",
        llm_rpm=10,
        llm_tpm=1000,
    )
    cfg = router_config(s, "default")
    names = [m["model_name"] for m in cfg["model_list"]]
    assert names == ["default", "default-fallback-1", "default-fallback-2"]
    assert cfg["fallbacks"] == [{"default": ["default-fallback-1", "default-fallback-2"]}]
    same, other = cfg["model_list"][1]["litellm_params"], cfg["model_list"][2]["litellm_params"]
    assert same["api_base"] == "http://x/v1" and "api_key" in same
    assert "api_base" not in other and "api_key" not in other  # litellm reads ANTHROPIC_API_KEY
    assert all(
        m["litellm_params"]["rpm"] == 10 and m["litellm_params"]["tpm"] == 1000 for m in cfg["model_list"]
    )
    assert cfg["optional_pre_call_checks"] == ["enforce_model_rate_limits"]
    plain = router_config(Settings(_env_file=None), "default")
    assert "fallbacks" not in plain and "optional_pre_call_checks" not in plain
    assert "rpm" not in plain["model_list"][0]["litellm_params"]


async def test_rpm_limit_refuses_locally_without_opening_the_circuit(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    # The Router counts per wall-clock minute: keep the three calls inside one.
    wait_for(lambda: time.time() % 60 < 50, 15, "a fresh minute")
    llm = LLMClient(settings(base, llm_rpm=2, llm_num_retries=2, llm_circuit_failures=1)).bind(
        agent_name(), "s"
    )
    await llm.complete(MSG)
    await llm.complete(MSG)
    with pytest.raises(Blocked) as info:
        await llm.complete(MSG)
    assert info.value.gate is None and info.value.retry_at is not None
    assert 0 < info.value.retry_at - time.monotonic() <= 60
    assert fake.stats["received"] == 2
    assert llm.client.circuit(llm.agent).state is CircuitState.CLOSED
    assert (
        metric("vigil_llm_requests_total", agent=llm.agent, model="openai/main-model", outcome="rejected")
        == 1
    )


# -- the circuit, counted by the server -----------------------------------------------------
async def test_circuit_opens_probes_and_closes_against_the_fake_server(tmp_path: Path) -> None:
    proc = start_fake_llm(tmp_path, {})
    try:
        await _circuit_scenario(proc.api_base, proc.control, proc.stats)
    finally:
        proc.proc.stop()


async def _circuit_scenario(
    base: str, control: Callable[..., None], stats: Callable[[], dict[str, Any]]
) -> None:
    control(error_rate=1.0, error_status=500)
    client = LLMClient(settings(base, llm_num_retries=0, llm_circuit_failures=3, llm_circuit_reset=0.5))
    agent = agent_name()
    circuit, budget = client.gates_for(agent)
    llm = client.bind(agent, "s1")

    def state() -> float:
        return metric("vigil_llm_circuit_state", agent=agent)

    for _ in range(3):
        with pytest.raises(LLMError):
            await llm.complete(MSG)
    assert stats()["received"] == 3 and circuit.blocked() and state() == CircuitState.OPEN
    assert not budget.blocked()
    for _ in range(5):  # refused here: nothing reaches the server
        with pytest.raises(Blocked) as info:
            await client.bind(agent, "s2").complete(MSG)
        assert info.value.gate is circuit
    assert stats()["received"] == 3
    assert metric("vigil_llm_requests_total", agent=agent, model="openai/main-model", outcome="rejected") == 5
    assert metric("vigil_llm_requests_total", agent=agent, model="openai/main-model", outcome="error") == 3

    # half-open after the reset timeout; a failing probe opens it again
    await asyncio.wait_for(circuit.wait_unblocked(), timeout=5)
    assert state() == CircuitState.HALF_OPEN
    with pytest.raises(LLMError):
        await llm.complete(MSG)
    assert stats()["received"] == 4 and state() == CircuitState.OPEN

    # the provider heals: exactly one probe goes out, the others wait for its verdict
    control(error_rate=0.0, latency_ms=300)
    await asyncio.wait_for(circuit.wait_unblocked(), timeout=5)
    probe = asyncio.create_task(client.bind(agent, "s1").complete(MSG))
    await asyncio.sleep(0)  # one yield (not a timed sleep): the task runs up to its HTTP request
    assert circuit.blocked()  # the probe is admitted
    with pytest.raises(Blocked):
        await client.bind(agent, "s2").complete(MSG)
    waiter = asyncio.create_task(circuit.wait_unblocked())
    reply = await asyncio.wait_for(probe, timeout=10)
    await asyncio.wait_for(waiter, timeout=5)
    assert "You said" in reply.text and state() == CircuitState.CLOSED and not circuit.blocked()
    assert stats()["received"] == 5 and stats()["ok"] == 1
    control(latency_ms=0)
    await client.bind(agent, "s2").complete(MSG)
    assert stats()["ok"] == 2


async def test_circuits_are_per_agent(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    fake.faults.error_rate = 1.0
    client = LLMClient(settings(base, llm_num_retries=0, llm_circuit_failures=1))
    broken, healthy = agent_name(), agent_name()
    with pytest.raises(LLMError):
        await client.bind(broken, "s").complete(MSG)
    assert client.circuit(broken).blocked() and not client.circuit(healthy).blocked()
    fake.faults.error_rate = 0.0
    await client.bind(healthy, "s").complete(MSG)
    with pytest.raises(Blocked):
        await client.bind(broken, "s").complete(MSG)


# -- tokens, cost, budgets ------------------------------------------------------------------
async def test_tokens_and_cost_are_the_servers_usage_priced_by_litellm(server: tuple[FakeLLM, str]) -> None:
    import litellm

    fake, base = server
    model = f"vigil-priced-{uuid.uuid4().hex[:6]}"
    price_in, price_out = 0.001, 0.003
    litellm.register_model(
        {
            f"openai/{model}": {
                "input_cost_per_token": price_in,
                "output_cost_per_token": price_out,
                "litellm_provider": "openai",
                "mode": "chat",
            }
        }
    )
    llm = LLMClient(settings(base, llm_model=f"openai/{model}")).bind(agent_name(), "s1")
    labels = {"agent": llm.agent, "model": f"openai/{model}"}
    prompts = [MSG, [{"role": "user", "content": "a somewhat longer question about my refund"}]]
    expected_prompt = expected_completion = 0
    for messages in prompts:
        usage = completion({"model": model, "messages": messages})["usage"]  # what the server answers
        reply = await llm.complete(messages)
        assert (reply.prompt_tokens, reply.completion_tokens) == (
            usage["prompt_tokens"],
            usage["completion_tokens"],
        )
        expected_prompt += usage["prompt_tokens"]
        expected_completion += usage["completion_tokens"]
        assert reply.cost_usd == pytest.approx(
            usage["prompt_tokens"] * price_in + usage["completion_tokens"] * price_out
        )
    assert expected_prompt > 0 and expected_completion > 0
    assert metric("vigil_llm_tokens_total", **labels, kind="prompt") == expected_prompt
    assert metric("vigil_llm_tokens_total", **labels, kind="completion") == expected_completion
    assert metric("vigil_llm_cost_usd_total", **labels) == pytest.approx(
        expected_prompt * price_in + expected_completion * price_out
    )
    assert metric("vigil_llm_requests_total", **labels, outcome="ok") == 2
    assert metric("vigil_llm_request_duration_seconds_count", **labels) == 2
    assert fake.stats["ok"] == 2


async def test_entity_budget_delays_one_subject_agent_budget_pauses_the_agent(
    server: tuple[FakeLLM, str],
) -> None:
    """Without a journal (a context built by hand) the entity budget is kept in memory; the
    journaled, durable case is in test_llm_budgets.py."""
    fake, base = server
    usage = completion({"messages": MSG})["usage"]
    per_call = usage["total_tokens"]
    reserve = estimate_prompt_tokens(MSG, None) + 10  # max_tokens=10
    client = LLMClient(
        settings(base, llm_entity_tokens_per_window=reserve, llm_agent_tokens_per_window=3 * per_call)
    )
    agent = agent_name()
    budget = client.budget(agent)
    await client.bind(agent, "hot").complete(MSG, max_tokens=10)
    with pytest.raises(Blocked) as info:  # spent + the next reservation > the budget
        await client.bind(agent, "hot").complete(MSG, max_tokens=10)
    assert info.value.gate is None and info.value.retry_at is not None
    assert fake.stats["received"] == 1  # refused before the server
    assert not budget.blocked()
    await client.bind(agent, "b").complete(MSG, max_tokens=10)
    await client.bind(agent, "c").complete(MSG, max_tokens=10)
    assert budget.used() == 3 * per_call and budget.blocked() and budget in client.gates_for(agent)
    with pytest.raises(Blocked) as info:
        await client.bind(agent, "d").complete(MSG, max_tokens=10)
    assert info.value.gate is budget
    assert fake.stats["received"] == 3
    assert metric("vigil_llm_budget_rejections_total", agent=agent, scope="entity") == 1
    assert metric("vigil_llm_budget_rejections_total", agent=agent, scope="agent") == 1
    assert metric("vigil_llm_requests_total", agent=agent, model="openai/main-model", outcome="rejected") == 2
    # another agent of the same client has its own budget
    await client.bind(agent_name(), "d").complete(MSG, max_tokens=10)


async def test_unbound_calls_are_counted_under_their_own_label(server: tuple[FakeLLM, str]) -> None:
    _, base = server
    client = LLMClient(settings(base, llm_model=f"openai/unbound-{uuid.uuid4().hex[:6]}"))
    before = metric("vigil_llm_requests_total", agent=UNBOUND, model=client.settings.llm_model, outcome="ok")
    await client.complete(MSG)
    after = metric("vigil_llm_requests_total", agent=UNBOUND, model=client.settings.llm_model, outcome="ok")
    assert after - before == 1


async def test_cancelled_probe_frees_the_half_open_slot(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    fake.faults.error_rate = 1.0
    client = LLMClient(settings(base, llm_num_retries=0, llm_circuit_failures=1, llm_circuit_reset=0.2))
    llm = client.bind(agent_name(), "s")
    circuit = client.circuit(llm.agent)
    with pytest.raises(LLMError):
        await llm.complete(MSG)
    await asyncio.wait_for(circuit.wait_unblocked(), timeout=5)
    fake.faults.error_rate, fake.faults.latency_ms = 0.0, 5000
    fake.arrived.clear()
    probe = asyncio.create_task(llm.complete(MSG))
    await asyncio.wait_for(fake.arrived.wait(), timeout=5)  # the probe is at the server
    assert circuit.blocked() and fake.stats["received"] == 2
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert circuit.state is CircuitState.HALF_OPEN and not circuit.blocked()
    fake.faults.latency_ms = 0
    await llm.complete(MSG)
    assert circuit.state is CircuitState.CLOSED
