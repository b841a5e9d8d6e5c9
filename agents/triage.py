"""The gallery's incident-triage agent (contract fixed: external checks use it).

``triage`` consumes ``webhooks.alerts.received.v1`` on ``webhooks.alerts.v1``: the gateway's
generic webhook source named ``alerts``, keyed by the alert's ``fingerprint``
(``VIGIL_WEBHOOK_SOURCES='{"alerts": {"secrets": ["whsec_..."], "subject": "/fingerprint"}}'``).
Per fingerprint, in the entity state:

- the first alert, or the first after ``VIGIL_TRIAGE_WINDOW`` seconds (default 300) from the one
  that opened the current incident, opens an incident: one LLM call for a summary, then
  ``incident.triaged.v1`` and, for severity ``critical``, ``incident.escalated.v1`` (both on
  ``incidents.v1``, key = fingerprint);
- a repeat inside the window only counts (``occurrences``): no LLM call, nothing emitted, except
  that a repeat turning the open incident ``critical`` escalates it with the summary it has;
- a ``resolved`` notification is recorded (``resolved_at``) and opens nothing.

Windows are measured on the events' own times (the gateway's receive time), so a replay
decides the same way. Opt-in: ``vigil worker --agents triage``.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.llm import agent_prompt
from schemas import (
    AlertReceivedV1,
    Envelope,
    IncidentEscalatedV1,
    IncidentTriagedV1,
    InvalidPayloadError,
)
from streams import Context, runtime

log = logging.getLogger(__name__)

AGENT = "triage"
CRITICAL = "critical"
SYSTEM_PROMPT = (
    "You are the on-call engineer triaging an alert. In at most three sentences: what is "
    "probably wrong, what it affects, and the first thing to check."
)
#: characters of the alert's JSON put in the prompt, and of the summary kept
MAX_ALERT_CHARS = 8_000
MAX_SUMMARY_CHARS = 4_000


class TriageSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_", env_file=".env", extra="ignore", frozen=True)

    triage_window: float = Field(
        300.0,
        gt=0,
        description="Seconds after an incident opens in which alerts of its fingerprint only count",
    )


class TriageState(BaseModel):
    #: time of the alert that opened the current incident (None: no incident yet)
    opened_at: datetime | None = None
    #: id of that alert's event
    incident_id: str | None = None
    #: alerts of the current incident's window, the first included (resolved ones not)
    occurrences: int = 0
    #: every alert of this fingerprint ever handled, resolved ones included
    total: int = 0
    severity: str | None = None
    title: str | None = None
    summary: str | None = None
    escalated: bool = False
    last_seen: datetime | None = None
    resolved_at: datetime | None = None


_settings: TriageSettings | None = None


def settings() -> TriageSettings:
    """Read once per process (not per event)."""
    global _settings
    if _settings is None:
        _settings = TriageSettings()
    return _settings


def in_window(state: TriageState, at: datetime, window: float) -> bool:
    """Whether an alert at ``at`` belongs to the incident ``state`` holds open."""
    return state.opened_at is not None and at - state.opened_at < timedelta(seconds=window)


def prompt(alert: AlertReceivedV1, system: str = SYSTEM_PROMPT) -> list[dict[str, Any]]:
    body = json.dumps(alert.model_dump(mode="json", exclude_none=True), sort_keys=True)[:MAX_ALERT_CHARS]
    return [
        {"role": "system", "content": system},
        {
            "role": "user",
            "content": f"Alert {alert.headline!r} (severity {alert.level}, fingerprint "
            f"{alert.fingerprint}):\n{body}",
        },
    ]


def escalation(state: TriageState, alert: AlertReceivedV1, reason: str) -> IncidentEscalatedV1:
    assert state.incident_id is not None and state.summary is not None
    return IncidentEscalatedV1(
        fingerprint=alert.fingerprint,
        alert_id=state.incident_id,
        severity=alert.level,
        title=state.title or alert.headline,
        summary=state.summary,
        reason=reason,
    )


@runtime.agent(
    AlertReceivedV1,
    name=AGENT,
    state=TriageState,
    emits=[IncidentTriagedV1, IncidentEscalatedV1],
    default=False,
)
async def triage(event: Envelope[AlertReceivedV1], ctx: Context[TriageState]) -> None:
    alert = event.data
    if event.subject != alert.fingerprint:
        raise InvalidPayloadError(
            f"subject {event.subject!r} must equal data.fingerprint {alert.fingerprint!r} "
            '(configure the alerts source with "subject": "/fingerprint")'
        )
    state = ctx.state
    at = event.time
    state.total += 1
    state.last_seen = at
    if alert.resolved:
        state.resolved_at = at
        log.info("triage: %s resolved", alert.fingerprint)
        return
    window = settings().triage_window
    if in_window(state, at, window):
        state.occurrences += 1
        if alert.level == CRITICAL and not state.escalated:  # the open incident became critical
            state.escalated = True
            state.severity = CRITICAL
            await ctx.emit(escalation(state, alert, f"a repeat of {alert.fingerprint} is critical"))
        return
    previous = state.occurrences
    system = agent_prompt(ctx, SYSTEM_PROMPT)  # VIGIL_AGENT__TRIAGE__PROMPT overrides it
    reply = await ctx.llm.complete(prompt(alert, system))
    state.opened_at = at
    state.incident_id = event.id
    state.occurrences = 1
    state.severity = alert.level
    state.title = alert.headline
    state.summary = reply.text[:MAX_SUMMARY_CHARS]
    state.escalated = alert.level == CRITICAL
    state.resolved_at = None
    await ctx.emit(
        IncidentTriagedV1(
            fingerprint=alert.fingerprint,
            alert_id=event.id,
            severity=alert.level,
            title=state.title,
            summary=state.summary,
            first_seen=at,
            previous_occurrences=previous,
        )
    )
    if state.escalated:
        await ctx.emit(escalation(state, alert, f"severity {CRITICAL}"))
