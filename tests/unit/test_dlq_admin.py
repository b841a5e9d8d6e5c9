"""``vigil dlq`` without a broker: filters, header handling on replay, formatting, and the
refusals that must happen before anything connects."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner, Result

from agents.cli import cli
from schemas import InvalidPayloadError
from streams.core.dlq import H_ORIGIN_TOPIC, H_REPLAY, VIGIL_HEADERS, dead_letter
from streams.core.errors import ConfigError, UndecodableError
from streams.core.records import ConsumedRecord
from streams.core.settings import Settings
from streams.kafka import dlq_admin
from streams.kafka.dlq_admin import DlqFilter

ORIGIN = "p.chat.messages.v1"
DLQ = "p.dlq.support"


def envelope(event_id: str, subject: str) -> bytes:
    return json.dumps({"id": event_id, "subject": subject, "type": "chat.message.received.v2"}).encode()


def dead(
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]],
    exc: BaseException,
    *,
    at: tuple[int, int] = (2, 7),
    dlq_at: tuple[int, int] = (1, 4),
) -> ConsumedRecord:
    """A DLQ record as the worker writes it, read back from ``DLQ`` at ``dlq_at``."""
    original = ConsumedRecord(ORIGIN, at[0], at[1], key, value, headers)
    rec = dead_letter(original, exc, agent="support", attempts=3)
    return ConsumedRecord(DLQ, dlq_at[0], dlq_at[1], rec.key, rec.value, rec.headers)


HANDLER_FAILED = dead(
    b"c-1", envelope("e-1", "c-1"), [("ce_id", b"e-1"), ("ce_type", b"t.v2")], RuntimeError("boom")
)
NO_CE_ID = dead(b"c-2", envelope("e-2", "c-2"), [("trace", b"x")], InvalidPayloadError("text: missing"))
POISON = dead(b"c-3", b"\xff not json", [("trace", b"keep")], UndecodableError("not UTF-8"))
NO_KEY = dead(None, b"{", [], UndecodableError("not JSON"), at=(4, 9))


def test_event_id_is_the_header_else_the_envelope_id() -> None:
    assert dlq_admin.event_id_of(HANDLER_FAILED) == "e-1"
    assert dlq_admin.event_id_of(NO_CE_ID) == "e-2"  # no ce_id header: parsed from the value
    assert dlq_admin.event_id_of(POISON) is None and dlq_admin.event_id_of(NO_KEY) is None
    # the header wins over the value
    assert (
        dlq_admin.event_id_of(dead(b"k", envelope("in-value", "k"), [("ce_id", b"h")], RuntimeError())) == "h"
    )


@pytest.mark.parametrize(
    ("flt", "matching"),
    [
        (DlqFilter(), [HANDLER_FAILED, NO_CE_ID, POISON, NO_KEY]),
        (DlqFilter(event_id="e-1"), [HANDLER_FAILED]),
        (DlqFilter(event_id="e-2"), [NO_CE_ID]),
        (DlqFilter(subject="c-3"), [POISON]),
        (DlqFilter(reason="undecodable"), [POISON, NO_KEY]),
        (DlqFilter(reason="undecodable", subject="c-3"), [POISON]),
        (DlqFilter(reason="handler_error", subject="c-3"), []),
        (DlqFilter(agent="support", partition=1, offset=4), [HANDLER_FAILED, NO_CE_ID, POISON, NO_KEY]),
        (DlqFilter(agent="support", offset=5), []),
        (DlqFilter(agent="support", partition=0), []),
    ],
)
def test_filter_matches_every_given_field(flt: DlqFilter, matching: list[ConsumedRecord]) -> None:
    assert [r for r in (HANDLER_FAILED, NO_CE_ID, POISON, NO_KEY) if flt.matches(r)] == matching


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"subject": ""}, "empty --subject"),
        ({"event_id": ""}, "empty --id"),
        ({"offset": 3}, "need --agent"),
        ({"partition": 0}, "need --agent"),
        ({"agent": "a", "offset": -1}, "--offset must be >= 0"),
    ],
)
def test_bad_filters_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DlqFilter(**kwargs)


def test_replay_restores_the_original_record_and_marks_it() -> None:
    replay = dlq_admin.replay_of(HANDLER_FAILED)
    assert replay.topic == ORIGIN
    assert replay.record.key == b"c-1" and replay.record.value == envelope("e-1", "c-1")
    assert replay.record.headers == [
        ("ce_id", b"e-1"),
        ("ce_type", b"t.v2"),
        (H_REPLAY, f"{DLQ}:1:4".encode()),
    ]
    assert replay.partition is None  # keyed: the partitioner puts it on the subject's partition


def test_replay_replaces_an_earlier_replay_mark() -> None:
    again = dead(b"k", b"v", [("a", b"1"), (H_REPLAY, b"old:0:0")], RuntimeError(), dlq_at=(0, 12))
    headers = dlq_admin.replay_of(again).record.headers
    assert headers == [("a", b"1"), (H_REPLAY, f"{DLQ}:0:12".encode())]
    assert not {k for k, _ in headers} & set(VIGIL_HEADERS)


def test_replay_of_a_record_without_key_goes_back_to_its_partition() -> None:
    replay = dlq_admin.replay_of(NO_KEY)
    assert (replay.record.key, replay.record.value, replay.partition) == (None, b"{", 4)


def test_replay_without_origin_is_refused() -> None:
    rec = ConsumedRecord(
        DLQ, 0, 3, b"k", b"v", [(k, v) for k, v in HANDLER_FAILED.headers if k != H_ORIGIN_TOPIC]
    )
    with pytest.raises(ConfigError, match=f"{DLQ}:0:3 has no vigil_origin_topic"):
        dlq_admin.replay_of(rec)


def test_summary_and_text_forms() -> None:
    s = dlq_admin.summary(NO_CE_ID)
    assert s["ref"] == f"{DLQ}:1:4" and s["agent"] == "support" and s["reason"] == "invalid_payload"
    assert (s["id"], s["subject"], s["attempts"]) == ("e-2", "c-2", 3)
    assert (s["origin_topic"], s["origin_partition"], s["origin_offset"]) == (ORIGIN, 2, 7)
    assert s["error_class"] == "schemas.errors.InvalidPayloadError" and s["error_message"] == "text: missing"

    line = dlq_admin.format_line(POISON)
    assert line.startswith(f"{DLQ}:1:4 reason=undecodable id=None subject=c-3 origin={ORIGIN}:2:7")

    full = dlq_admin.format_full(HANDLER_FAILED).splitlines()
    assert full[:4] == [f"{DLQ}:1:4", "key: 'c-1'", "headers:", "  ce_id: e-1"]
    assert "  vigil_reason: handler_error" in full and '    "id": "e-1",' in full
    assert "  b'\\xff not json'" in dlq_admin.format_full(POISON).splitlines()


# -- the CLI refuses before it connects (the bootstrap address below has no broker) -----------
def invoke(*args: str) -> Result:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", topic_prefix="p.")
    return CliRunner().invoke(cli, ["dlq", *args], obj={"settings": settings})


def one_line_error(result: Result, text: str) -> None:
    assert result.exit_code != 0, result.output
    assert text in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


def test_purge_refuses_without_yes() -> None:
    one_line_error(invoke("purge", "--agent", "support"), "refusing to purge p.dlq.support without --yes")


def test_purge_needs_an_agent() -> None:
    result = invoke("purge", "--yes")
    assert result.exit_code == 2 and "Missing option '--agent'" in result.stderr


def test_offset_without_agent_is_refused() -> None:
    one_line_error(invoke("show", "--offset", "3"), "--partition and --offset need --agent")


def test_release_of_an_unknown_agent_is_refused() -> None:
    one_line_error(invoke("release", "c-1", "--agent", "nope"), "unknown agent 'nope'")


def test_unreachable_broker_is_one_line() -> None:
    one_line_error(invoke("ls"), "cannot reach Kafka at 127.0.0.1:1")
