"""Dead-letter records: the original key, value and headers, plus why and where it failed.

Header names are part of the contract (``vigil dlq`` and replay read them)."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas import VigilError
from streams.core.codec import EncodedRecord, clip
from streams.core.records import ConsumedRecord

H_REASON = "vigil_reason"
H_ERROR_CLASS = "vigil_error_class"
H_ERROR_MESSAGE = "vigil_error_message"
H_ORIGIN_TOPIC = "vigil_origin_topic"
H_ORIGIN_PARTITION = "vigil_origin_partition"
H_ORIGIN_OFFSET = "vigil_origin_offset"
H_AGENT = "vigil_agent"
H_ATTEMPTS = "vigil_attempts"
H_FAILED_AT = "vigil_failed_at"
#: set on a record re-produced from a DLQ: "<dlq topic>:<partition>:<offset>"
H_REPLAY = "vigil_replay"
#: a control record for the agent named in ``H_AGENT``; its key is the subject it acts on
H_CONTROL = "vigil_control"
CONTROL_RELEASE = "release"

#: reason of records a parked subject sends to the DLQ (agent policy ``on_dead_letter="park"``)
REASON_PARKED = "parked"

VIGIL_HEADERS = (
    H_REASON,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_ORIGIN_TOPIC,
    H_ORIGIN_PARTITION,
    H_ORIGIN_OFFSET,
    H_AGENT,
    H_ATTEMPTS,
    H_FAILED_AT,
)


def reason_of(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, VigilError) else "handler_error"


def dead_letter(record: ConsumedRecord, exc: BaseException, *, agent: str, attempts: int) -> EncodedRecord:
    # Earlier vigil_* headers (a record dead-lettered, replayed and failing again) are replaced.
    kept = [(k, v) for k, v in record.headers if k not in VIGIL_HEADERS]
    error_class = f"{type(exc).__module__}.{type(exc).__qualname__}"
    headers = [
        *kept,
        (H_REASON, reason_of(exc).encode()),
        (H_ERROR_CLASS, error_class.encode()),
        (H_ERROR_MESSAGE, clip(str(exc) or repr(exc)).encode()),
        (H_ORIGIN_TOPIC, record.topic.encode()),
        (H_ORIGIN_PARTITION, str(record.partition).encode()),
        (H_ORIGIN_OFFSET, str(record.offset).encode()),
        (H_AGENT, agent.encode()),
        (H_ATTEMPTS, str(attempts).encode()),
        (H_FAILED_AT, datetime.now(UTC).isoformat().encode()),
    ]
    return EncodedRecord(key=record.key, value=record.value, headers=headers)


def control_record(agent: str, subject: str, action: str) -> EncodedRecord:
    """Produced to the agent's source topic with the subject as key, so it lands on the
    subject's partition and is ordered with its events; the worker never dead-letters it."""
    return EncodedRecord(
        key=subject.encode(),
        value=b"{}",
        headers=[(H_CONTROL, action.encode()), (H_AGENT, agent.encode())],
    )
