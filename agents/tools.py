"""Tools an agent's LLM may call, and the loop that runs them (``run_tools``).

A tool is a typed Python function, sync or async, declared with ``@tool``::

    @tool
    async def lookup_order(order_id: int, ctx: Context[SupportState]) -> dict[str, str]:
        \"\"\"Look an order up.

        Args:
            order_id: the order number the customer gave.
        \"\"\"

The JSON schema the model sees (OpenAI's ``{"type": "function", "function": {...}}``) comes
from the signature (pydantic builds the parameters; ``Annotated[int, Field(ge=1)]`` constraints
included) and the docstring (the text before its sections is the description; the ``Args:``
section of Google style, ``:param x:`` of Sphinx style or numpydoc's ``Parameters`` describe the
arguments). A parameter annotated ``Context`` receives the handler's context (so the tool can
``await ctx.emit(...)``) and is not in the schema. Arguments are validated by the same pydantic
model before the tool runs. A sync tool runs in a worker thread, so blocking I/O does not stall
other subjects.

``run_tools(ctx, messages, tools)`` asks ``ctx.llm`` (each request a journaled step ``llm``,
``llm#2``, ...), runs the tools each reply asks for, in order, each as the journaled step
``tool:<call id>``, sends their results back and stops at the first reply without tool calls.
A retry or a redelivery of the event replays the recorded replies and tool results: no second
LLM request, no second tool side effect. A tool's emits are recorded with its result and
emitted again on a replay (same derived ids); its changes to ``ctx.state`` are not (return
what the handler needs and update the state there). Unknown tool names, invalid arguments,
``ModelRetry`` and any other exception a tool raises go back to the model as the tool's
result (a tool that raises emits nothing); ``streams.core.backpressure.Blocked`` is not an
error and propagates. ``max_steps`` (LLM requests) and ``max_total_tokens`` end the loop with
``ToolStepLimitError`` / ``ToolTokenLimitError``.

Why pydantic alone. pydantic-ai-slim (2.68) has all of this (tools from docstrings through
griffe, ``ModelRetry``, ``UsageLimits``) but costs 0.65 s of import here (pydantic: 0.1 s;
a worker's cold start is 1.7 s) and ~70 MB of dependencies (griffe, opentelemetry, httpx,
genai-prices, pydantic-graph), and owns the loop: its model requests and tool calls would have
to be threaded back through Vigil's journal with a model adapter over ``ctx.llm`` against an
API that changes between minor releases. litellm's ``function_to_dict`` reads numpydoc only,
needs numpydoc installed, and would make schema generation import litellm (4.5 s). What is left
to write is a docstring parser and a loop of some fifty lines; pydantic, already a dependency,
does the schemas and the validation.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import PydanticUndefined, to_json

from schemas import VigilError
from streams.core.backpressure import Blocked
from streams.core.context import Context
from streams.core.errors import ConfigError
from streams.observability.metrics import REGISTRY

TOOL_CALLS = Counter(
    "vigil_tool_calls_total",
    "Tool calls asked for by the model, by agent, tool and outcome: ok, error (the tool raised), "
    "retry (it raised ModelRetry), invalid (arguments), unknown (no such tool; tool label "
    "'unknown'), replayed (result taken from the event's journal)",
    ["agent", "tool", "outcome"],
    registry=REGISTRY,
)

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ModelRetry(Exception):
    """Raised by a tool to send its message back to the model as the tool's result (say what
    to change and call again); not an error of the handler. Named after pydantic-ai's."""


class ToolLoopError(VigilError):
    """``run_tools`` stopped before a final reply; ``run`` holds what it did until then.
    Not retriable: a retry replays the same journaled replies and reaches the same limit."""

    reason = "tool_loop"

    def __init__(self, message: str, run: ToolRun) -> None:
        super().__init__(message)
        self.run = run


class ToolStepLimitError(ToolLoopError):
    reason = "tool_step_limit"


class ToolTokenLimitError(ToolLoopError):
    reason = "tool_token_limit"


# -- declaring tools --------------------------------------------------------------------------
_SECTIONS = (
    "args|arguments|parameters|params|keyword args|keyword arguments|other parameters|returns?|"
    "yields?|raises|examples?|notes?|see also|attributes|warns|warnings?|references|todo"
)
_GOOGLE_SECTION = re.compile(rf"^\s*({_SECTIONS})\s*:\s*$", re.IGNORECASE)
_NUMPY_SECTION = re.compile(rf"^\s*({_SECTIONS})\s*$", re.IGNORECASE)
_UNDERLINE = re.compile(r"^\s*-{3,}\s*$")
_ARG_SECTIONS = {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments"}
_GOOGLE_ARG = re.compile(r"^\**(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_NUMPY_ARG = re.compile(r"^\**(\w+)\s*(?::.*)?$")
_SPHINX_PARAM = re.compile(r"^:param\s+(?:[^:]*\s)?\**(\w+)\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {argument: description}) of a Google, Sphinx or numpydoc docstring. The
    description is the text before the first section, paragraphs kept, lines joined."""
    lines = inspect.cleandoc(doc or "").splitlines()
    head: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    numpy = False
    current: str | None = None
    indent: int | None = None  # indentation of an argument's first line in the section
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        i += 1
        nxt = lines[i] if i < len(lines) else ""
        if _GOOGLE_SECTION.match(line) or (_NUMPY_SECTION.match(line) and _UNDERLINE.match(nxt)):
            section = stripped.rstrip(":").strip().lower()
            numpy = not stripped.endswith(":")
            i += 1 if numpy else 0
            current, indent = None, None
            continue
        sphinx = _SPHINX_PARAM.match(stripped)
        if sphinx:
            section, current = "sphinx", sphinx.group(1)
            params[current] = sphinx.group(2).strip()
            continue
        if stripped.startswith(":") and section in (None, "sphinx"):
            section, current = "sphinx", None  # :returns:, :raises ...: and the like
            continue
        if section is None:
            head.append(stripped)
            continue
        if not stripped:
            continue
        if section == "sphinx":
            if current is not None:
                params[current] += " " + stripped
            continue
        if section not in _ARG_SECTIONS:
            continue
        level = len(line) - len(line.lstrip())
        if indent is None:
            indent = level
        entry = (_NUMPY_ARG if numpy else _GOOGLE_ARG).match(stripped) if level <= indent else None
        if entry is not None:
            current = entry.group(1)
            params[current] = "" if numpy else entry.group(2).strip()
        elif current is not None:
            params[current] = f"{params[current]} {stripped}".strip()
    paragraphs = " ".join(line or "\n" for line in head).split("\n")
    description = "\n\n".join(p.strip() for p in paragraphs if p.strip())
    return description, params


def _is_context(hint: Any) -> bool:
    origin = typing.get_origin(hint) or hint
    return isinstance(origin, type) and issubclass(origin, Context)


_VALUES = frozenset({"default", "const", "enum", "examples", "example"})


def _strip_titles(node: Any) -> Any:
    """pydantic's schema without its generated ``title``s (tokens the model need not read)."""
    if isinstance(node, list):
        return [_strip_titles(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(value, dict):
            out[key] = {k: _strip_titles(v) for k, v in value.items()}
        elif key in _VALUES:
            out[key] = value  # data, not schema: a default may well hold a "title"
        else:
            out[key] = _strip_titles(value)
    return out


class Tool:
    """A function the model may call: its name, description, JSON schema and argument model.
    Calling the object calls the function itself."""

    __slots__ = ("_fields", "args_model", "context_param", "description", "fn", "name", "parameters")

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None):
        self.fn = fn
        self.name = name or fn.__name__
        if not _NAME.match(self.name):
            raise ConfigError(f"tool name {self.name!r} must match {_NAME.pattern} (OpenAI's rule)")
        summary, arg_docs = parse_docstring(inspect.getdoc(fn))
        self.description = summary if description is None else description
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except NameError as exc:
            raise ConfigError(
                f"tool {self.name!r}: cannot resolve its annotations ({exc}); "
                "define the types it names at module level"
            ) from None
        self.context_param: str | None = None
        #: (internal field name, parameter name): fields are aliased so a parameter may be
        #: called anything, ``model_config`` or ``json`` included
        self._fields: list[tuple[str, str]] = []
        definitions: dict[str, Any] = {}
        for i, param in enumerate(inspect.signature(fn).parameters.values()):
            hint = hints.get(param.name, Any)
            if _is_context(hint):
                self.context_param = param.name
                continue
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
                raise ConfigError(
                    f"tool {self.name!r}: parameter {param.name!r} must be passable by keyword "
                    "(no *args, **kwargs or positional-only parameters)"
                )
            default = PydanticUndefined if param.default is param.empty else param.default
            internal = f"p{i}"
            definitions[internal] = (
                hint,
                Field(default, alias=param.name, description=arg_docs.get(param.name)),
            )
            self._fields.append((internal, param.name))
        self.args_model: type[BaseModel] = create_model(
            f"{self.name}_arguments",
            __config__=ConfigDict(extra="forbid", populate_by_name=False, arbitrary_types_allowed=False),
            **definitions,
        )
        self.parameters: dict[str, Any] = _strip_titles(self.args_model.model_json_schema(by_alias=True))

    @classmethod
    def from_function(
        cls, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None
    ) -> Tool:
        return cls(fn, name=name, description=description)

    @property
    def schema(self) -> dict[str, Any]:
        """The OpenAI tool definition (what ``tools=[...]`` of a chat completion takes)."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}

    def validate(self, arguments: str | Mapping[str, Any] | None) -> dict[str, Any]:
        """The keyword arguments the model's ``arguments`` (JSON text or a mapping) stand for;
        raises ``pydantic.ValidationError``."""
        if isinstance(arguments, Mapping):
            model = self.args_model.model_validate(dict(arguments))
        else:
            model = self.args_model.model_validate_json(arguments or "{}")
        return {name: getattr(model, internal) for internal, name in self._fields}

    async def invoke(self, ctx: Context[Any] | None, kwargs: dict[str, Any]) -> Any:
        """Run the function with validated ``kwargs`` (and the context, if it takes one)."""
        if self.context_param is not None:
            kwargs = {**kwargs, self.context_param: ctx}
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(**kwargs)
        value = await asyncio.to_thread(self.fn, **kwargs)
        if inspect.isawaitable(value):
            value = await value
        return value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *, name: str | None = None, description: str | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None, description: str | None = None
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Declare a tool: ``@tool`` or ``@tool(name=..., description=...)``."""
    if fn is not None:
        return Tool(fn)

    def declare(f: Callable[..., Any]) -> Tool:
        return Tool(f, name=name, description=description)

    return declare


# -- running them -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolCall:
    """One tool call the model asked for and what went back to it."""

    id: str
    name: str
    arguments: str  # as the model sent them
    #: ok, error (the tool raised), retry (ModelRetry), invalid (arguments), unknown (no such tool)
    outcome: str
    content: str  # the tool message's content
    replayed: bool = False  # taken from the journal, not run in this attempt

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass
class ToolRun:
    """What ``run_tools`` did: the final text, every tool call, and what the replies cost."""

    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    steps: int = 0  # LLM requests made (each a journaled step)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    #: the conversation: the caller's messages, each assistant reply and tool result
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class _Recorded:
    """A tool call's journal entry: what went back to the model and what the tool emitted."""

    outcome: str
    content: str
    emitted: list[dict[str, Any]] = field(default_factory=list)


def _content(value: Any) -> str:
    return value if isinstance(value, str) else to_json(value, fallback=str).decode()


def _arguments(call: Mapping[str, Any]) -> str:
    args = call.get("arguments")
    if args is None or args == "":
        return "{}"
    return args if isinstance(args, str) else to_json(args).decode()


def _explain(name: str, exc: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )
    return f"Invalid arguments for tool {name!r}: {problems}. Fix them and call the tool again."


async def _execute(ctx: Context[Any], tool: Tool, kwargs: dict[str, Any]) -> _Recorded:
    """Run one validated call; whatever it emitted is recorded with its result."""
    before = len(ctx.pending)
    try:
        value = await tool.invoke(ctx, kwargs)
    except Blocked:
        del ctx.pending[before:]
        raise
    except ModelRetry as exc:
        del ctx.pending[before:]
        return _Recorded("retry", str(exc))
    except Exception as exc:  # noqa: BLE001 - a tool's failure is the model's to read, not the handler's
        del ctx.pending[before:]
        return _Recorded("error", f"{type(exc).__name__}: {exc}")
    return _Recorded("ok", _content(value), ctx.emitted_since(before))


async def _call(
    ctx: Context[Any], tools: Mapping[str, Tool], call_id: str, name: str, arguments: str
) -> ToolCall:
    tool = tools.get(name)
    if tool is None:
        TOOL_CALLS.labels(ctx.agent, "unknown", "unknown").inc()
        offered = ", ".join(sorted(tools)) or "none"
        return ToolCall(
            call_id, name, arguments, "unknown", f"Unknown tool {name!r}; the tools are: {offered}."
        )
    try:
        kwargs = tool.validate(arguments)
    except ValidationError as exc:
        TOOL_CALLS.labels(ctx.agent, name, "invalid").inc()
        return ToolCall(call_id, name, arguments, "invalid", _explain(name, exc))
    ran = False

    async def run() -> _Recorded:
        nonlocal ran
        ran = True
        return await _execute(ctx, tool, kwargs)

    if ctx.journal is None:  # a context built by hand: nothing to record into
        recorded = await run()
    else:
        # the journal itself, not ctx.step: the record carries its emits in its own shape
        recorded = await ctx.journal.step(f"tool:{call_id}", run, result_type=_Recorded)
    if not ran:  # replayed: what the tool emitted the first time is emitted again, in order
        await ctx.emit_again(recorded.emitted)
    TOOL_CALLS.labels(ctx.agent, name, recorded.outcome if ran else "replayed").inc()
    return ToolCall(call_id, name, arguments, recorded.outcome, recorded.content, replayed=not ran)


async def run_tools(
    ctx: Context[Any],
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Tool | Callable[..., Any]],
    *,
    max_steps: int = 8,
    max_total_tokens: int | None = None,
    **llm_kwargs: Any,
) -> ToolRun:
    """Let the model call ``tools`` until it answers in text; return that answer and the run.

    ``max_steps``: the most LLM requests; a reply that still asks for tools at the last one
    raises ``ToolStepLimitError`` (its tools are not run). ``max_total_tokens``: once the
    replies so far used this many tokens (prompt + completion), a reply that asks for tools
    raises ``ToolTokenLimitError`` instead of another request (the request that crosses the
    limit has been paid for: bound each one with ``max_tokens=...``). Other keyword arguments
    go to every ``ctx.llm.complete`` (``temperature``, ``tool_choice``, ``max_tokens``...)."""
    if max_steps < 1:
        raise ConfigError("run_tools: max_steps must be >= 1")
    declared = [t if isinstance(t, Tool) else Tool(t) for t in tools]
    by_name: dict[str, Tool] = {}
    for t in declared:
        if t.name in by_name:
            raise ConfigError(f"run_tools: two tools are named {t.name!r}")
        by_name[t.name] = t
    schemas = [t.schema for t in declared]
    run = ToolRun(messages=[dict(m) for m in messages])
    llm = ctx.llm
    while True:
        reply = await llm.complete(run.messages, tools=schemas or None, **llm_kwargs)
        run.steps += 1
        run.prompt_tokens += reply.prompt_tokens
        run.completion_tokens += reply.completion_tokens
        run.cost_usd += reply.cost_usd
        if not reply.tool_calls:
            run.text = reply.text
            run.messages.append({"role": "assistant", "content": reply.text})
            return run
        if run.steps >= max_steps:
            raise ToolStepLimitError(
                f"the model still asks for tools after {run.steps} LLM requests (max_steps={max_steps})", run
            )
        if max_total_tokens is not None and run.total_tokens >= max_total_tokens:
            raise ToolTokenLimitError(
                f"the model still asks for tools after {run.total_tokens} tokens "
                f"(max_total_tokens={max_total_tokens})",
                run,
            )
        calls = [
            (
                str(c.get("id") or f"vigil_{run.steps}_{i}"),
                str(c.get("name") or ""),
                _arguments(c),
            )
            for i, c in enumerate(reply.tool_calls)
        ]
        run.messages.append(
            {
                "role": "assistant",
                "content": reply.text or None,
                "tool_calls": [
                    {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                    for cid, name, args in calls
                ],
            }
        )
        for cid, name, args in calls:
            done = await _call(ctx, by_name, cid, name, args)
            run.calls.append(done)
            run.messages.append({"role": "tool", "tool_call_id": cid, "content": done.content})
