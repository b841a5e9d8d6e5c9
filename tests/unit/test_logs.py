"""JSON log lines: the fields of a record, the running event's id, subject and trace from
``current_event``, extras and exceptions, and the dictConfig the worker hands to mode."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from typing import Any

from schemas import ChatMessageReceivedV2, Envelope
from streams.core.context import current_event
from streams.observability.logs import JsonFormatter, logging_config, trace_ids

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def event(traceparent: str | None = TRACE) -> Envelope[ChatMessageReceivedV2]:
    return Envelope[ChatMessageReceivedV2](
        id="ev-1",
        source="test",
        type=ChatMessageReceivedV2.event_type,
        subject="conv-7",
        data=ChatMessageReceivedV2(conversation_id="conv-7", user="u", text="hi", channel="web"),
        traceparent=traceparent,
    )


def line(logger: logging.Logger, stream: io.StringIO, emit: Any) -> dict[str, Any]:
    stream.seek(0)
    stream.truncate()
    emit(logger)
    out: dict[str, Any] = json.loads(stream.getvalue().strip())
    return out


def make_logger() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"vigil.test.logs.{id(stream)}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_outside_a_handler_a_line_has_the_record_fields_only() -> None:
    logger, stream = make_logger()
    out = line(logger, stream, lambda log: log.warning("lag is %d", 1200))
    assert out.pop("time").endswith("+00:00")
    assert out == {"level": "warning", "logger": logger.name, "message": "lag is 1200"}


def test_inside_a_handler_a_line_carries_the_event_and_its_trace() -> None:
    logger, stream = make_logger()
    token = current_event.set(event())
    try:
        out = line(logger, stream, lambda log: log.info("replying", extra={"tokens": 12}))
    finally:
        current_event.reset(token)
    assert out["event_id"] == "ev-1" and out["subject"] == "conv-7"
    assert out["event_type"] == ChatMessageReceivedV2.event_type
    assert out["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" and out["span_id"] == "00f067aa0ba902b7"
    assert out["tokens"] == 12 and out["message"] == "replying"
    after = line(logger, stream, lambda log: log.info("idle"))
    assert "event_id" not in after  # the variable is reset with the handler


def test_an_event_without_a_valid_traceparent_has_no_trace_fields() -> None:
    assert trace_ids(None) is None and trace_ids("garbage") is None and trace_ids("00-ab-cd-01") is None
    logger, stream = make_logger()
    token = current_event.set(event(traceparent="not-a-trace"))
    try:
        out = line(logger, stream, lambda log: log.info("x"))
    finally:
        current_event.reset(token)
    assert out["event_id"] == "ev-1" and "trace_id" not in out


def test_exceptions_are_one_field_of_one_line() -> None:
    logger, stream = make_logger()

    def emit(log: logging.Logger) -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("handler failed")

    out = line(logger, stream, emit)
    assert out["level"] == "error" and "ValueError: boom" in out["exception"]


def test_worker_logging_config_replaces_the_console_formatter() -> None:
    assert logging_config("text", "info") is None
    config = logging_config("json", "info")
    assert config is not None and config["merge"] is True
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(
            {k: v for k, v in config.items() if k != "merge"} | {"root": {"handlers": ["default"]}}
        )
        assert any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
