"""Versioned type strings: ``<domain>.<event>.v<N>`` splits into a base name and a version."""

from __future__ import annotations

import re

from .errors import UnknownTypeError

_TYPE_RE = re.compile(r"^(?P<base>[a-z0-9_]+(?:\.[a-z0-9_]+)+)\.v(?P<version>[1-9][0-9]*)$")


def split_type(type_: str) -> tuple[str, int]:
    """``"chat.message.received.v2"`` -> ``("chat.message.received", 2)``."""
    match = _TYPE_RE.match(type_)
    if match is None:
        raise UnknownTypeError(
            f"event type {type_!r} is not of the form '<domain>.<event>.v<N>' (e.g. 'chat.message.received.v1')"
        )
    return match["base"], int(match["version"])


def join_type(base: str, version: int) -> str:
    return f"{base}.v{version}"
