"""From versioned type strings to payload models, with the upcaster chain between versions.

Decoding order: the event is validated against the model of *its own* version first (so a bad
v1 payload is reported as a bad v1 payload), then upcast one version at a time to the version
the consumer wants, validating after every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from .envelope import Envelope, RawEnvelope
from .errors import InvalidPayloadError, UnknownTypeError, UnknownVersionError
from .payload import Payload
from .versioning import join_type, split_type

P = TypeVar("P", bound=type[Payload])
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def _summarize(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - 5
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


class Registry:
    def __init__(self) -> None:
        self._models: dict[str, dict[int, type[Payload]]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    # -- declaring ---------------------------------------------------------------------------
    def event(self, base: str, version: int) -> Callable[[P], P]:
        """Class decorator: register a payload model as ``<base>.v<version>``."""
        type_ = join_type(base, version)
        split_type(type_)  # validates the shape of the name

        def register(cls: P) -> P:
            versions = self._models.setdefault(base, {})
            if version in versions and versions[version] is not cls:
                raise ValueError(f"event type {type_!r} is already registered to {versions[version]!r}")
            cls.event_type = type_
            cls.event_base = base
            cls.event_version = version
            versions[version] = cls
            return cls

        return register

    def upcaster(self, base: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Function decorator: turn the ``data`` of ``base.v<from_version>`` into ``v<from_version+1>``."""

        def register(fn: Upcaster) -> Upcaster:
            self._upcasters[(base, from_version)] = fn
            return fn

        return register

    # -- looking up --------------------------------------------------------------------------
    def types(self) -> list[str]:
        return sorted(join_type(b, v) for b, vs in self._models.items() for v in vs)

    def model(self, type_: str) -> type[Payload]:
        base, version = split_type(type_)
        versions = self._models.get(base)
        if not versions:
            raise UnknownTypeError(f"unknown event type {type_!r}: no model is registered for {base!r}")
        if version not in versions:
            known = ", ".join(f"v{v}" for v in sorted(versions))
            raise UnknownVersionError(f"unknown version of {base!r}: got v{version}, known {known}")
        return versions[version]

    def knows(self, base: str) -> bool:
        """Whether any version of ``base`` is registered."""
        return base in self._models

    def latest(self, base: str) -> type[Payload]:
        versions = self._models.get(base)
        if not versions:
            raise UnknownTypeError(f"unknown event type {base!r}")
        return versions[max(versions)]

    # -- decoding ----------------------------------------------------------------------------
    def validate(self, type_: str, data: Any) -> Payload:
        model = self.model(type_)
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise InvalidPayloadError(f"invalid payload for {type_}: {_summarize(exc)}") from None

    def upcast(self, type_: str, data: dict[str, Any], target: type[Payload]) -> Payload:
        """Validate ``data`` as ``type_`` and upcast it to ``target``'s version."""
        base, version = split_type(type_)
        current = self.validate(type_, data)
        if base != target.event_base:
            raise UnknownTypeError(f"event type {type_!r} is not a version of {target.event_base!r}")
        if version > target.event_version:
            raise UnknownVersionError(
                f"{type_} is newer than {target.event_type}, which this consumer handles; no downcaster exists"
            )
        for step in range(version, target.event_version):
            fn = self._upcasters.get((base, step))
            if fn is None:
                raise UnknownVersionError(f"no upcaster from {base}.v{step} to v{step + 1}")
            current = self.validate(join_type(base, step + 1), fn(current.model_dump(mode="json")))
        return current

    def parse(self, raw: RawEnvelope, target: type[Payload] | None = None) -> Envelope[Payload]:
        """Typed envelope of ``raw``, upcast to ``target`` (default: latest version of its type)."""
        base, _ = split_type(raw.type)
        wanted = target or self.latest(base)
        payload = self.upcast(raw.type, raw.data, wanted)
        attrs = raw.model_dump(exclude={"data", "type"})
        return _ENVELOPE.model_construct(**attrs, type=wanted.event_type, data=payload)

    # -- exporting ---------------------------------------------------------------------------
    def json_schemas(self) -> dict[str, dict[str, Any]]:
        """JSON Schema of every registered payload, by versioned type string."""
        return {
            join_type(b, v): {
                **model.model_json_schema(),
                "$id": f"urn:vigil:event:{join_type(b, v)}",
            }
            for b, vs in sorted(self._models.items())
            for v, model in sorted(vs.items())
        }

    def envelope_schema(self) -> dict[str, Any]:
        return RawEnvelope.model_json_schema()


#: held here: pydantic caches parametrised models only weakly (rebuilt after each collection)
_ENVELOPE = Envelope[Payload]

#: the process-wide registry that event modules declare into
registry = Registry()
