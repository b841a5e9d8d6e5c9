"""Webhook signature schemes, as pure functions over the raw body bytes: GitHub
(``X-Hub-Signature-256``), Slack v0 and Standard Webhooks v1. Each ``verify_*`` takes every
secret in rotation, compares in constant time and raises ``SignatureError`` (the HTTP edge
answers its ``status``) or returns ``None``; the clock is injectable so tests can freeze it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence

from schemas.errors import VigilError

#: Slack's and Standard Webhooks' replay window, both ways (seconds)
TOLERANCE = 300
_MAX_TIMESTAMP_DIGITS = 12  # a Unix time in seconds; longer strings are refused unparsed

Clock = Callable[[], float]


class SignatureError(VigilError):
    """The request cannot be authenticated; ``reason`` names why (a metric label). ``status``
    is the HTTP answer: 400 when a signed header other than the signature itself is missing
    (the request is malformed), 401 otherwise."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = 400 if reason == "missing_header" else 401


def _hmac256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _check_timestamp(raw: str | None, now: Clock, tolerance: float) -> str:
    """``raw`` once it is a Unix time within ``tolerance`` of ``now()``."""
    if not raw:
        raise SignatureError("missing_header", "timestamp header missing")
    if not raw.isascii() or not raw.isdigit() or len(raw) > _MAX_TIMESTAMP_DIGITS:
        raise SignatureError("bad_signature", "timestamp is not a Unix time in seconds")
    stamp = int(raw)
    skew = stamp - now()
    if skew < -tolerance:
        raise SignatureError("stale", f"timestamp older than {tolerance:.0f} s (replay window)")
    if skew > tolerance:
        raise SignatureError("future", f"timestamp more than {tolerance:.0f} s in the future")
    return raw


def _any_match(expected: Sequence[bytes], given: Sequence[bytes]) -> bool:
    """Constant time per comparison; every pair is compared (no early exit on the secret)."""
    found = False
    for e in expected:
        for g in given:
            found |= hmac.compare_digest(e, g)
    return found


# -- GitHub -----------------------------------------------------------------------------------
def github_signature(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + _hmac256(secret, body).hex()


def verify_github(secrets: Sequence[bytes], body: bytes, header: str | None) -> None:
    if not secrets:
        raise SignatureError("not_configured", "no GitHub webhook secret configured (fail closed)")
    if not header:
        raise SignatureError("missing_signature", "X-Hub-Signature-256 header missing")
    expected = [github_signature(s, body).encode() for s in secrets]
    if not _any_match(expected, [header.strip().encode()]):
        raise SignatureError("bad_signature", "X-Hub-Signature-256 does not match the body")


# -- Slack ------------------------------------------------------------------------------------
def slack_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Slack-Signature`` value Slack sends: ``v0=`` HMAC of ``v0:{ts}:{body}``."""
    return "v0=" + _hmac256(secret, b"v0:" + timestamp.encode() + b":" + body).hex()


def verify_slack(
    secrets: Sequence[bytes],
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    now: Clock = time.time,
    tolerance: float = TOLERANCE,
) -> None:
    if not secrets:
        raise SignatureError("not_configured", "no Slack signing secret configured (fail closed)")
    if not signature:
        raise SignatureError("missing_signature", "X-Slack-Signature header missing")
    stamp = _check_timestamp(timestamp, now, tolerance)
    expected = [slack_signature(s, stamp, body).encode() for s in secrets]
    if not _any_match(expected, [signature.strip().encode()]):
        raise SignatureError("bad_signature", "X-Slack-Signature does not match the body")


# -- Standard Webhooks ------------------------------------------------------------------------
WHSEC_PREFIX = "whsec_"


def decode_whsec(secret: str) -> bytes:
    """The key bytes of a ``whsec_<base64>`` secret (the prefix is optional, as in the spec's
    libraries). Raises ``ValueError`` on anything else."""
    raw = secret.strip()
    raw = raw.removeprefix(WHSEC_PREFIX)
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a Standard Webhooks secret is whsec_ followed by base64") from None
    if not key:
        raise ValueError("empty Standard Webhooks secret")
    return key


def standard_signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """One ``webhook-signature`` entry: ``v1,`` base64 HMAC of ``{id}.{timestamp}.{body}``."""
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(_hmac256(key, signed)).decode()


def verify_standard(
    keys: Sequence[bytes],
    body: bytes,
    msg_id: str | None,
    timestamp: str | None,
    header: str | None,
    *,
    now: Clock = time.time,
    tolerance: float = TOLERANCE,
) -> None:
    """``keys`` are decoded secrets (``decode_whsec``); the header holds space-separated
    ``v1,<base64>`` entries (several while the sender rotates); other versions are ignored."""
    if not keys:
        raise SignatureError("not_configured", "no secret configured for this source (fail closed)")
    if not header:
        raise SignatureError("missing_signature", "webhook-signature header missing")
    if not msg_id:
        raise SignatureError("missing_header", "webhook-id header missing")
    stamp = _check_timestamp(timestamp, now, tolerance)
    given = [e.encode() for e in header.split() if e.startswith("v1,")]
    expected = [standard_signature(k, msg_id, stamp, body).encode() for k in keys]
    if not given or not _any_match(expected, given):
        raise SignatureError("bad_signature", "webhook-signature does not match the body")
