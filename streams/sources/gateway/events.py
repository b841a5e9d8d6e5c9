"""Verified webhook payloads -> envelope fields (type, logical topic, id, subject). Pure
functions of what the sender signed; ``PayloadError`` (the edge answers 400) when a field the
contract needs is missing or malformed."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from pydantic import ValidationError

from schemas import RawEnvelope
from schemas.errors import VigilError
from streams.core.codec import EncodedRecord

_NAME = re.compile(r"^[a-z0-9_]{1,100}$")  # GitHub event and action names go into topic names


class PayloadError(VigilError):
    """The body or a routing header is unusable; ``reason`` is a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Routed:
    """What the gateway enqueues: ``topic`` is logical (the prefix comes later)."""

    topic: str
    type: str
    id: str
    subject: str
    source: str
    data: dict[str, Any]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def record(routed: Routed, traceparent: str | None = None) -> EncodedRecord:
    """The Kafka record of a routed webhook: the bytes ``streams.core.codec.encode`` makes of
    the same ``RawEnvelope`` (a unit test pins them equal), serialised by pydantic in one pass;
    codec's path for dict data (``model_dump``, then ``json.dumps``) costs four times as much
    on a 3 KB webhook, a quarter of the gateway's own CPU per request."""
    try:
        envelope = RawEnvelope(
            id=routed.id,
            source=routed.source,
            type=routed.type,
            subject=routed.subject,
            data=routed.data,
            traceparent=traceparent,
        )
    except ValidationError as exc:
        where = ".".join(str(p) for p in exc.errors()[0]["loc"])
        raise PayloadError("malformed", f"cannot build the event: {where} is invalid") from None
    return EncodedRecord(
        key=envelope.subject.encode(),
        value=envelope.model_dump_json(exclude_none=True).encode(),
        headers=[("ce_id", envelope.id.encode()), ("ce_type", envelope.type.encode())],
    )


def parse_json(body: bytes) -> dict[str, Any]:
    """An object in strict JSON: Python's extensions (``NaN``, ``Infinity``) are refused."""
    try:
        value = json.loads(body, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError):
        raise PayloadError("malformed", "body is not JSON") from None
    if not isinstance(value, dict):
        raise PayloadError("malformed", f"body is JSON {type(value).__name__}, not an object")
    return value


def parse_form(body: bytes) -> dict[str, str]:
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body)))
    except (UnicodeDecodeError, ValueError):
        raise PayloadError("malformed", "body is not form-encoded") from None


def is_form(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded"


def _text(value: Any) -> str | None:
    return (
        str(value) if isinstance(value, str | int) and not isinstance(value, bool) and value != "" else None
    )


# -- GitHub -----------------------------------------------------------------------------------
_NUMBERED = {"pull_request": "pull_request", "issues": "issue", "issue_comment": "issue"}


def github_subject(event: str, payload: dict[str, Any]) -> str | None:
    repo = payload.get("repository")
    full_name = _text(repo.get("full_name")) if isinstance(repo, dict) else None
    if full_name is None:
        return None
    if event in _NUMBERED:
        item = payload.get(_NUMBERED[event])
        number = _text(item.get("number")) if isinstance(item, dict) else None
        if number is None:
            number = _text(payload.get("number"))
        return f"{full_name}#{number}" if number is not None else full_name
    if event == "push":
        ref = _text(payload.get("ref"))
        return f"{full_name}@{ref}" if ref is not None else full_name
    return full_name


def github_event(event: str | None, delivery: str | None, payload: dict[str, Any]) -> Routed:
    """``github.<event>.<action>.v1`` on ``github.<event>.v1``, keyed ``owner/repo#number``
    (pull_request, issues, issue_comment), ``owner/repo@ref`` (push) or ``owner/repo``; an
    event without a repository (an organization or app event) is keyed by the organization,
    the installation, or else the delivery id."""
    if not event:
        raise PayloadError("missing_header", "X-GitHub-Event header missing")
    if not delivery:
        raise PayloadError("missing_header", "X-GitHub-Delivery header missing")
    if not _NAME.match(event):
        raise PayloadError("malformed", "X-GitHub-Event is not an event name")
    action = payload.get("action")
    if action is not None and not (isinstance(action, str) and _NAME.match(action)):
        raise PayloadError("malformed", "payload action is not an action name")
    type_ = f"github.{event}.{action}.v1" if action else f"github.{event}.v1"
    subject = github_subject(event, payload)
    if subject is None:
        org = payload.get("organization")
        installation = payload.get("installation")
        subject = (
            (_text(org.get("login")) if isinstance(org, dict) else None)
            or (f"installation:{installation.get('id')}" if isinstance(installation, dict) else None)
            or delivery
        )
    return Routed(f"github.{event}.v1", type_, delivery, subject, "vigil/gateway/github", payload)


# -- Slack ------------------------------------------------------------------------------------
SLACK_TOPIC = "slack.events.v1"


def _slack_channel(event: dict[str, Any]) -> str | None:
    channel = event.get("channel")
    if isinstance(channel, dict):  # channel_created, channel_rename, ...
        return _text(channel.get("id"))
    if channel is not None:
        return _text(channel)
    item = event.get("item")  # reaction_added, pin_added, ...
    return _text(item.get("channel")) if isinstance(item, dict) else _text(event.get("channel_id"))


def slack_event(payload: dict[str, Any]) -> Routed:
    """An ``event_callback``: ``slack.<event.type>.v1``, id ``event_id``, keyed by the
    channel plus ``:thread_ts`` in a thread (the team when the event has no channel)."""
    event = payload.get("event")
    event_id = _text(payload.get("event_id"))
    if not isinstance(event, dict) or event_id is None:
        raise PayloadError("malformed", "event_callback without event or event_id")
    kind = _text(event.get("type"))
    if kind is None or not _NAME.match(kind):
        raise PayloadError("malformed", "event.type is not an event name")
    channel = _slack_channel(event)
    thread = _text(event.get("thread_ts"))
    if channel is None:
        subject = _text(payload.get("team_id")) or event_id
    else:
        subject = f"{channel}:{thread}" if thread else channel
    return Routed(SLACK_TOPIC, f"slack.{kind}.v1", event_id, subject, "vigil/gateway/slack", payload)


def slack_form(form: dict[str, str], body: bytes) -> Routed:
    """A slash command (``slack.slash_command.v1``) or an interactivity payload
    (``slack.interaction.<type>.v1``), on ``slack.events.v1``. They carry no event id: the
    ``trigger_id`` when present, else a digest of the signed body (same for Slack's retries)."""
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if "payload" in form:  # interactivity: one form field holding JSON
        payload = parse_json(form["payload"].encode())
        kind = _text(payload.get("type"))
        if kind is None or not _NAME.match(kind):
            raise PayloadError("malformed", "interaction payload type is not a name")
        channel = payload.get("channel")
        user = payload.get("user")
        subject = (
            (_text(channel.get("id")) if isinstance(channel, dict) else None)
            or (_text(user.get("id")) if isinstance(user, dict) else None)
            or digest
        )
        event_id = _text(payload.get("trigger_id")) or digest
        return Routed(
            SLACK_TOPIC, f"slack.interaction.{kind}.v1", event_id, subject, "vigil/gateway/slack", payload
        )
    if "command" in form:
        subject = form.get("channel_id") or form.get("user_id") or digest
        event_id = form.get("trigger_id") or digest
        return Routed(
            SLACK_TOPIC, "slack.slash_command.v1", event_id, subject, "vigil/gateway/slack", dict(form)
        )
    raise PayloadError("malformed", "form body is neither a slash command nor an interaction")


# -- Standard Webhooks ------------------------------------------------------------------------
def resolve_pointer(document: Any, pointer: str) -> Any:
    """RFC 6901: ``/a/0/b`` with ``~1`` for ``/`` and ``~0`` for ``~``; ``KeyError`` if absent."""
    if pointer == "":
        return document
    if not pointer.startswith("/"):
        raise KeyError(pointer)
    for token in pointer[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(document, dict):
            document = document[token]
        elif isinstance(document, list) and (token == "0" or (token.isdigit() and token[0] != "0")):
            index = int(token)
            if index >= len(document):
                raise KeyError(pointer)
            document = document[index]
        else:
            raise KeyError(pointer)
    return document


def generic_event(name: str, msg_id: str, payload: dict[str, Any], subject_pointer: str | None) -> Routed:
    """``webhooks.<name>.received.v1`` on ``webhooks.<name>.v1``, keyed by ``webhook-id`` or
    by the string or number the source's JSON Pointer names."""
    subject = msg_id
    if subject_pointer is not None:
        try:
            value = resolve_pointer(payload, subject_pointer)
        except KeyError:
            raise PayloadError("malformed", f"payload has nothing at {subject_pointer}") from None
        found = _text(value)
        if found is None:
            raise PayloadError("malformed", f"payload value at {subject_pointer} is not a string or number")
        subject = found
    return Routed(
        f"webhooks.{name}.v1",
        f"webhooks.{name}.received.v1",
        msg_id,
        subject,
        f"vigil/gateway/{name}",
        payload,
    )
