"""Envelope <-> Kafka record: structured CloudEvents JSON in the value, ``subject`` as the key,
``ce_id``/``ce_type`` headers so routing and poison detection need not parse the body."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from schemas import Envelope, InvalidEnvelopeError, RawEnvelope

from .errors import UndecodableError

Headers = list[tuple[str, bytes]]

MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class EncodedRecord:
    key: bytes | None
    value: bytes | None
    headers: Headers


def encode(event: Envelope[Any]) -> EncodedRecord:
    data = event.data
    if isinstance(data, BaseModel):
        # the attributes and the payload each serialised once, by pydantic, then joined
        head = event.model_dump_json(exclude_none=True, exclude={"data"})
        value = f'{head[:-1]},"data":{data.model_dump_json()}}}'.encode()
    else:
        body = event.model_dump(mode="json", exclude_none=True)
        value = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return EncodedRecord(
        key=event.subject.encode(),
        value=value,
        headers=[("ce_id", event.id.encode()), ("ce_type", event.type.encode())],
    )


def decode(value: bytes | None) -> RawEnvelope:
    """Parse a record value into an untyped envelope; the type registry runs afterwards."""
    if value is None:
        raise UndecodableError("record has no value (tombstone)")
    try:
        body = json.loads(value.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UndecodableError(f"record value is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise UndecodableError(
            f"record value is not JSON: {exc.msg} at line {exc.lineno} col {exc.colno}"
        ) from None
    if not isinstance(body, dict):
        raise UndecodableError(f"record value is JSON {type(body).__name__}, not an object")
    try:
        return RawEnvelope.model_validate(body)
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise InvalidEnvelopeError(f"not a CloudEvents envelope: {fields}") from None


def header(headers: Any, name: str) -> bytes | None:
    """First value of a header in any of the shapes clients use (list of pairs or mapping)."""
    if not headers:
        return None
    items = headers.items() if hasattr(headers, "items") else headers
    for key, value in items:
        if key == name:
            return bytes(value) if value is not None else None
    return None


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
