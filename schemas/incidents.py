"""Alerts and the incidents the triage agent makes of them.

An alert arrives through the gateway's generic webhook source named ``alerts`` (type
``webhooks.alerts.received.v1`` on ``webhooks.alerts.v1``, keyed by the body's ``fingerprint``:
``VIGIL_WEBHOOK_SOURCES='{"alerts": {"secrets": [...], "subject": "/fingerprint"}}'``); its
``data`` is the sender's JSON body. Senders differ, so the model names the fields triage
reads and keeps every other one (``extra="allow"``: they go into the LLM's prompt).
``incident.triaged.v1`` and ``incident.escalated.v1`` travel on ``incidents.v1``, key = fingerprint.
"""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, ConfigDict, Field, field_validator

from .payload import Payload
from .registry import registry


@registry.event("webhooks.alerts.received", 1)
class AlertReceivedV1(Payload):
    """One alert notification; repeats of a problem share its ``fingerprint``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    fingerprint: str = Field(min_length=1)
    #: "firing" or "resolved" (Alertmanager, Grafana), or whatever the sender says
    status: str | None = None
    #: "critical", "warning", ...; else ``labels.severity``
    severity: str | None = None
    title: str | None = None
    summary: str | None = None
    description: str | None = None
    labels: dict[str, Any] = Field(default_factory=dict)
    annotations: dict[str, Any] = Field(default_factory=dict)

    @field_validator("fingerprint", mode="before")
    @classmethod
    def _number_as_text(cls, value: Any) -> Any:
        # the gateway keys by a string or a number at the pointer: accept both alike
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @property
    def level(self) -> str:
        """The severity, lower-cased: ``severity``, else ``labels.severity``, else "unknown"."""
        value = self.severity or self.labels.get("severity")
        return str(value).strip().lower() if value else "unknown"

    @property
    def resolved(self) -> bool:
        return (self.status or "").strip().lower() == "resolved"

    @property
    def headline(self) -> str:
        """A one-line name for the alert."""
        for value in (
            self.title,
            self.summary,
            self.annotations.get("summary"),
            self.labels.get("alertname"),
        ):
            if value:
                return str(value)
        return self.fingerprint


class _Incident(Payload):
    fingerprint: str = Field(min_length=1)
    #: id of the alert event that opened the incident
    alert_id: str = Field(min_length=1)
    severity: str
    title: str
    #: the LLM's triage summary
    summary: str


@registry.event("incident.triaged", 1)
class IncidentTriagedV1(_Incident):
    """The first alert of a fingerprint (or the first after ``VIGIL_TRIAGE_WINDOW``), triaged."""

    first_seen: AwareDatetime
    #: alerts of this fingerprint in its previous window (0: the first ever)
    previous_occurrences: int = Field(0, ge=0)


@registry.event("incident.escalated", 1)
class IncidentEscalatedV1(_Incident):
    """A triaged incident of severity ``critical``: page someone."""

    reason: str
