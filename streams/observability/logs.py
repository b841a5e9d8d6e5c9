"""JSON log lines (``VIGIL_LOG_FORMAT=json``): one object per record with ``time`` (UTC, ISO
8601), ``level``, ``logger``, ``message`` and, while a handler runs, the event it handles
(``event_id``, ``subject``, ``event_type``, and ``trace_id``/``span_id`` from its W3C
``traceparent``), read from
``streams.core.context.current_event``; ``exc_info`` as ``exception``. Text stays the default.

The worker installs it through ``logging_config(...)`` (a ``logging.config.dictConfig`` that
mode merges into its own, replacing the console handler's formatter).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from streams.core.context import current_event

#: attributes every LogRecord has: anything else was passed with ``extra=`` and is kept
_STANDARD = frozenset(vars(logging.LogRecord("x", logging.INFO, "", 0, "", (), None))) | {
    "message",
    "asctime",
}


def trace_ids(traceparent: str | None) -> tuple[str, str] | None:
    """(trace id, parent span id) of a W3C ``traceparent`` (``00-<32 hex>-<16 hex>-<2 hex>``)."""
    if not traceparent:
        return None
    parts = traceparent.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    return parts[1], parts[2]


def event_fields() -> dict[str, Any]:
    """What the log line of a running handler says about its event (empty outside one)."""
    event = current_event.get()
    if event is None:
        return {}
    fields: dict[str, Any] = {"event_id": event.id, "subject": event.subject, "event_type": event.type}
    ids = trace_ids(event.traceparent)
    if ids is not None:
        fields["trace_id"], fields["span_id"] = ids
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(event_fields())
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str)


def logging_config(log_format: str, level: str) -> dict[str, Any] | None:
    """The ``logging_config`` of the worker for ``VIGIL_LOG_FORMAT``: None (mode's own text
    lines) unless ``json``."""
    if log_format != "json":
        return None
    return {
        "version": 1,
        "merge": True,  # mode keeps its loggers; our handler replaces its console handler
        "disable_existing_loggers": False,  # loggers created at import must keep logging
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "json", "level": level.upper()}
        },
    }
