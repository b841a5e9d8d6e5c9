"""A scripted LLM for agent tests: the real ``LLMClient`` (litellm Router, circuit breaker,
budgets, journal, error mapping, accounting) with litellm's transport replaced by a script.

    llm = ScriptedLLM(["Hi!", tool_call("lookup_order", order_id="42"), Failure(500)])
    async with AgentHarness(support, llm=llm) as h: ...
    assert llm.requests[0].messages[-1]["content"] == "..."

The script is served by a litellm custom provider (``litellm.custom_provider_map``, provider
``vigil-scripted``): the client's model is ``vigil-scripted/<n>`` and every request goes through
``litellm.Router.acompletion`` like a real one, so what litellm does with a reply or an error
(and what ``agents.llm`` makes of it) is what production does. The Router's retries are off
(``num_retries=0``) so one scripted failure is one failed call; pass ``num_retries`` to see
the Router retry.

Tools (``agents.tools``) run for real in the harness; ``scripted_tool(tool, result)`` replaces
one tool's function by a result for the duration of a ``with`` block and records its calls.

Script items, served in order: a string (a text reply), ``Reply`` (text, tool calls, token
counts), ``Failure(status)`` (litellm's exception for that HTTP status: 429 rate limit, 500,
503, 408 timeout, 400 bad request, ...), any exception instance (raised as is), or a function
of the ``LLMRequest`` returning one of those. A request with nothing left to serve fails with
a non-retriable error naming it (or gets ``default(request)`` when given).
"""

from __future__ import annotations

import itertools
import json
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from streams.core.settings import Settings

from .config import AgentSettings
from .llm import LLMClient
from .tools import Tool

PROVIDER = "vigil-scripted"
#: parameters litellm adds to every request by itself (left out of ``LLMRequest.params``)
_LITELLM_PARAMS = ("stream", "max_retries")


@dataclass(frozen=True)
class ToolRequest:
    """A tool call in a scripted reply (``agents.tools.ToolCall`` is what ``run_tools`` made of one)."""

    name: str
    #: the arguments as the model sends them: a JSON string, or a dict (serialised)
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class Reply:
    text: str = ""
    tool_calls: Sequence[ToolRequest] = ()
    #: token counts the provider reports (default: words in the request / in ``text``)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def tool_call(name: str, /, **arguments: Any) -> Reply:
    """A reply asking for one tool call: ``tool_call("lookup_order", order_id="42")``; its call
    id is ``call_<request n>_0`` (journal step ``tool:call_<n>_0`` under ``run_tools``)."""
    return Reply(tool_calls=(ToolRequest(name, arguments),))


@dataclass(frozen=True)
class Failure:
    """The provider answering with HTTP ``status`` (408: a timeout)."""

    status: int = 500
    message: str = "scripted failure"


@dataclass(frozen=True)
class LLMRequest:
    """One request the agent made, as litellm passed it to the provider."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    #: the other request parameters (max_tokens, temperature, ...)
    params: dict[str, Any]

    @property
    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools or () if "function" in t]

    @property
    def last_user_message(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return str(message.get("content") or "")
        return ""


ScriptItem = str | Reply | Failure | BaseException | Callable[[LLMRequest], Any]

_clients: weakref.WeakValueDictionary[str, ScriptedLLM] = weakref.WeakValueDictionary()
_numbers = itertools.count(1)
_registering = threading.Lock()


class ScriptedLLM(LLMClient):
    """``LLMClient`` whose provider is a script; ``requests`` lists what the agent asked."""

    def __init__(
        self,
        script: Iterable[ScriptItem] = (),
        *,
        default: Callable[[LLMRequest], Any] | None = None,
        settings: Settings | None = None,
        agents: AgentSettings | None = None,
        num_retries: int = 0,
        cost_per_token: tuple[float, float] | None = None,
    ) -> None:
        """``settings``: circuit, budgets, max tokens (the model, api base and fallbacks are the
        script's); ``agents``: per-agent prompts, max tokens and budgets (``agents.config``; their
        models and fallbacks are dropped: every agent is served by the script);
        ``cost_per_token``: (prompt, completion) US dollars litellm's cost map charges per token
        (default: unpriced, cost 0)."""
        self.name = f"scripted-{next(_numbers)}"
        model = f"{PROVIDER}/{self.name}"
        base = settings or Settings(_env_file=None)
        per_agent = agents if agents is not None else AgentSettings()
        unrouted = {
            name: config.model_copy(update={"model": None, "fallbacks": None})
            for name, config in per_agent.agent.items()
        }
        super().__init__(
            base.model_copy(
                update={
                    "llm_model": model,
                    "llm_api_base": None,
                    "llm_fallbacks": "",
                    "llm_num_retries": num_retries,
                }
            ),
            per_agent.model_copy(update={"agent": unrouted}),
        )
        self.script: deque[ScriptItem] = deque(script)
        self.default = default
        self.requests: list[LLMRequest] = []
        _clients[self.name] = self
        _register_provider()  # imports litellm (seconds, once per process)
        if cost_per_token is not None:
            import litellm

            litellm.register_model(
                {
                    model: {
                        "input_cost_per_token": cost_per_token[0],
                        "output_cost_per_token": cost_per_token[1],
                        "cache_creation_input_token_cost": 0.0,
                        "cache_read_input_token_cost": 0.0,
                        "litellm_provider": PROVIDER,
                        "mode": "chat",
                    }
                }
            )

    def add(self, *items: ScriptItem) -> None:
        """Append replies to the script."""
        self.script.extend(items)

    # -- the provider's side -------------------------------------------------------------------
    def serve(self, request: LLMRequest) -> Any:
        """The litellm ``ModelResponse`` for ``request`` (or raise the scripted failure)."""
        self.requests.append(request)
        n = len(self.requests)
        if self.script:
            item: Any = self.script.popleft()
        elif self.default is not None:
            item = self.default
        else:
            item = Failure(
                400,
                f"ScriptedLLM: no reply scripted for request #{n} "
                f"(last user message: {request.last_user_message[:80]!r})",
            )
        if callable(item) and not isinstance(item, BaseException):
            item = item(request)
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, Failure):
            raise _exception(item, self.settings.llm_model)
        if isinstance(item, str):
            item = Reply(item)
        if not isinstance(item, Reply):
            raise TypeError(f"ScriptedLLM: cannot serve {item!r} (str, Reply, Failure or an exception)")
        return _response(item, request, n, self.name)


def _words(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content") or "").split()) for m in messages)


def _response(reply: Reply, request: LLMRequest, n: int, name: str) -> Any:
    from litellm import ModelResponse

    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id or f"call_{n}_{i}",
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": call.arguments
                    if isinstance(call.arguments, str)
                    else json.dumps(call.arguments),
                },
            }
            for i, call in enumerate(reply.tool_calls)
        ]
    prompt = reply.prompt_tokens if reply.prompt_tokens is not None else _words(request.messages)
    completion = reply.completion_tokens if reply.completion_tokens is not None else len(reply.text.split())
    return ModelResponse(
        id=f"chatcmpl-{name}-{n}",
        model=name,
        choices=[
            {
                "index": 0,
                "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                "message": message,
            }
        ],
        usage={"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    )


def _exception(failure: Failure, model: str) -> Exception:
    from litellm import exceptions as e

    kw: dict[str, Any] = {"llm_provider": PROVIDER, "model": model}
    status = failure.status
    if status == 408:
        return e.Timeout(failure.message, **kw)
    if status == 429:
        return e.RateLimitError(failure.message, **kw)
    if status == 400:
        return e.BadRequestError(failure.message, **kw)
    if status == 401:
        return e.AuthenticationError(failure.message, **kw)
    if status == 404:
        return e.NotFoundError(failure.message, **kw)
    if status == 503:
        return e.ServiceUnavailableError(failure.message, **kw)
    if status >= 500:
        return e.InternalServerError(failure.message, **kw)
    return e.APIError(status, failure.message, **kw)


def _register_provider() -> None:
    """Add the ``vigil-scripted`` provider to litellm once per process (its map is global; the
    handler finds each client by its model name)."""
    import litellm
    from litellm.llms.custom_llm import CustomLLM

    class _Scripted(CustomLLM):
        async def acompletion(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> Any:
            name = model.split("/", 1)[-1]
            client = _clients.get(name)
            if client is None:
                raise RuntimeError(f"ScriptedLLM {name!r} is gone")
            params = dict(kwargs.get("optional_params") or {})
            tools = params.pop("tools", None)
            for noise in _LITELLM_PARAMS:
                params.pop(noise, None)
            return client.serve(LLMRequest(list(messages), tools, params))

    with _registering:
        if not any(item["provider"] == PROVIDER for item in litellm.custom_provider_map):
            litellm.custom_provider_map = [
                *litellm.custom_provider_map,
                {"provider": PROVIDER, "custom_handler": _Scripted()},
            ]


@dataclass
class ToolScript:
    """What ``scripted_tool`` saw: the validated arguments of every call, in order."""

    calls: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def scripted_tool(tool: Tool, result: Any) -> Iterator[ToolScript]:
    """Inside the block, ``tool`` (an ``agents.tools.Tool``) does not run its function: each call
    returns ``result``, raises it (an exception instance: the model gets the error, as from the
    real tool) or returns ``result(**arguments)`` (a function). Arguments are still validated
    against the tool's signature and the call is still a journaled step."""
    script = ToolScript()
    real = tool.fn
    context = tool.context_param

    async def fake(**kwargs: Any) -> Any:
        arguments = {k: v for k, v in kwargs.items() if k != context}
        script.calls.append(arguments)
        if isinstance(result, BaseException):
            raise result
        return result(**arguments) if callable(result) else result

    tool.fn = fake
    try:
        yield script
    finally:
        tool.fn = real


__all__ = [
    "Failure",
    "LLMRequest",
    "Reply",
    "ScriptItem",
    "ScriptedLLM",
    "ToolRequest",
    "ToolScript",
    "scripted_tool",
    "tool_call",
]
