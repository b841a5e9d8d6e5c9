"""The root of Vigil's error tree. Every error says whether retrying can help (``retriable``),
so retry-versus-DLQ is a typed decision, never string matching."""

from __future__ import annotations


class VigilError(Exception):
    """Root of every error Vigil raises on purpose."""

    retriable: bool = False
    #: short, stable, low-cardinality name used in DLQ headers and metric labels
    reason: str = "error"


class SchemaError(VigilError):
    """An event does not fit the contracts in ``schemas``; retrying cannot fix it."""

    reason = "schema"


class InvalidEnvelopeError(SchemaError):
    """The record is JSON but not a valid CloudEvents envelope."""

    reason = "invalid_envelope"


class UnknownTypeError(SchemaError):
    """No payload model is registered for the event type at any version."""

    reason = "unknown_type"


class UnknownVersionError(SchemaError):
    """The event type is known, but not at this version (or cannot be upcast to the wanted one)."""

    reason = "unknown_version"


class InvalidPayloadError(SchemaError):
    """The ``data`` of an event does not validate against its versioned payload model."""

    reason = "invalid_payload"
