"""The Debezium decoder on Debezium's own example change events (tests/unit/data/debezium):
JSON converter with and without the schema wrapper, ops c/u/d/r/t, tombstones skipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas import Registry
from schemas.cdc import change_models
from streams.core import codec
from streams.sources.cdc import debezium
from streams.sources.cdc.change import Change, subject_for, topic_for, type_for

DATA = Path(__file__).parent / "data" / "debezium"
WRAPPERS = ("plain", "schema")


def record(name: str, wrapper: str) -> tuple[bytes | None, bytes | None]:
    doc = json.loads((DATA / f"customers-{name}.{wrapper}.json").read_text())

    def raw(part: Any) -> bytes | None:
        return None if part is None else json.dumps(part).encode()

    return raw(doc["key"]), raw(doc["value"])


def translate(name: str, wrapper: str) -> Any:
    key, value = record(name, wrapper)
    return debezium.translate(key, value, name="inventory")


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_create_event(wrapper: str) -> None:
    event = translate("create", wrapper)
    assert event.type == "db.public.customers.created.v1"
    assert event.subject == "1"
    assert event.source == "vigil/debezium/inventory"
    assert event.data == {
        "op": "c",
        "before": None,
        "after": {"id": 1, "first_name": "Anne", "last_name": "Kretchmar", "email": "annek@noanswer.org"},
        "source": {"lsn": 24023128, "txId": 555, "schema": "public", "table": "customers", "db": "postgres"},
        "ts_ms": 1559033904863,
    }
    assert int(event.time.timestamp() * 1000) == 1559033904863


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_update_carries_before_and_after(wrapper: str) -> None:
    event = translate("update", wrapper)
    assert event.type == "db.public.customers.updated.v1"
    assert event.data["before"]["first_name"] == "Anne"
    assert event.data["after"]["first_name"] == "Anne Marie"
    assert (event.data["source"]["lsn"], event.data["source"]["txId"]) == (46523128, 556)


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_delete_read_and_truncate(wrapper: str) -> None:
    deleted, read, truncated = (translate(n, wrapper) for n in ("delete", "read", "truncate"))
    assert (deleted.type, deleted.subject, deleted.data["after"]) == (
        "db.public.customers.deleted.v1",
        "1",
        None,
    )
    assert deleted.data["before"]["first_name"] == "Anne Marie"
    assert (read.type, read.data["op"], read.data["after"]["id"]) == ("db.public.customers.read.v1", "r", 1)
    # a truncate has no key and no rows: it is an event of the table
    assert (truncated.type, truncated.subject) == ("db.public.customers.truncated.v1", "public.customers")
    assert (truncated.data["before"], truncated.data["after"], truncated.data["op"]) == (None, None, "t")


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_tombstone_after_a_delete_is_skipped(wrapper: str) -> None:
    key, value = record("tombstone", wrapper)
    assert key is not None and value is None
    assert debezium.translate(key, value, name="inventory") is None
    # a schema-wrapped null payload is a tombstone too
    assert debezium.translate(key, b'{"schema": null, "payload": null}', name="inventory") is None


def test_both_converters_give_the_same_event_and_id() -> None:
    for name in ("create", "update", "delete", "read", "truncate"):
        plain, wrapped = translate(name, "plain"), translate(name, "schema")
        assert plain == wrapped, name


def test_ids_are_deterministic_and_distinct_per_change() -> None:
    ids = [translate(n, "plain").id for n in ("create", "update", "delete", "read", "truncate")]
    assert len(set(ids)) == 5
    assert ids == [translate(n, "plain").id for n in ("create", "update", "delete", "read", "truncate")]
    # the connector's version is not part of the position: an upgraded connector re-emitting
    # the same change produces the same id
    key, value = record("create", "plain")
    assert value is not None
    doc = json.loads(value)
    doc["source"]["version"] = "3.0.0.Final"
    doc["ts_ms"] = doc["ts_ms"]
    again = debezium.translate(key, json.dumps(doc).encode(), name="inventory")
    assert again is not None and again.id == translate("create", "plain").id


def test_composite_key_is_joined_with_slashes_in_key_order() -> None:
    key = json.dumps({"schema": {"type": "struct"}, "payload": {"order_id": 7, "line": 2}}).encode()
    _, value = record("create", "plain")
    event = debezium.translate(key, value, name="inventory")
    assert event is not None and event.subject == "7/2"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"not json", "not UTF-8 JSON"),
        (b"[1, 2]", "not a change event"),
        (b'{"op": "x", "source": {}}', "op is 'x'"),
        (b'{"op": "c", "after": {}, "ts_ms": 1}', "no 'source' block"),
        (
            b'{"op": "c", "after": 5, "ts_ms": 1, "source": {"schema": "s", "table": "t"}}',
            "'after' is JSON int",
        ),
        (b'{"op": "c", "source": {"schema": "s"}, "ts_ms": 1}', "no schema and table"),
    ],
)
def test_anything_else_is_a_one_line_error(value: bytes, message: str) -> None:
    with pytest.raises(debezium.DebeziumError, match=message) as info:
        debezium.translate(b'{"id": 1}', value, name="inventory")
    assert info.value.reason == "invalid_change_event"
    assert "\n" not in str(info.value)


def test_names_are_made_safe_for_types_and_topics() -> None:
    assert topic_for("Sales", "Order-Lines") == "db.sales.order_lines.v1"
    assert type_for("Sales", "Order-Lines", "u") == "db.sales.order_lines.updated.v1"
    assert subject_for((1, "a", True), "s", "t") == "1/a/true"
    assert subject_for((), "s", "t") == "s.t"
    with pytest.raises(ValueError, match="unknown change op"):
        Change("m", "s", "t", None, None, (), None, None, None, 0)


def test_decoded_events_validate_against_the_typed_payload_and_survive_the_codec() -> None:
    own = Registry()
    models = change_models("public", "customers", into=own)
    assert sorted(models) == ["c", "d", "r", "t", "u"]
    for name in ("create", "update", "delete", "read", "truncate"):
        event = translate(name, "schema")
        encoded = codec.encode(event)
        assert encoded.key == event.subject.encode()
        assert codec.header(encoded.headers, "ce_type") == event.type.encode()
        typed = own.parse(codec.decode(encoded.value))
        assert typed.data.op == event.data["op"]  # type: ignore[attr-defined]
        assert typed.data.source["lsn"] == event.data["source"]["lsn"]  # type: ignore[attr-defined]
