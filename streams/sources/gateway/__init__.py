"""The webhook gateway (``vigil gateway``): GitHub, Slack and Standard Webhooks over HTTP into
Kafka, verified on the raw bytes, 202 only once the broker acknowledged the event.

- ``signatures``: the three signature schemes (pure functions);
- ``events``: verified payload -> envelope fields (type, topic, id, subject);
- ``settings``: ``GatewaySettings`` (secrets, sources, limits);
- ``app``: the aiohttp application, its producer and probes; ``serve`` runs it;
- ``metrics``: ``vigil_webhook_*``.
"""

from .app import Gateway, bound_port, serve
from .settings import GatewaySettings, SourceConfig

__all__ = ["Gateway", "GatewaySettings", "SourceConfig", "bound_port", "serve"]
