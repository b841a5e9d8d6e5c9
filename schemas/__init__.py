"""Pure data: the event envelope, typed versioned payloads, their registry and upcasters.
Imports nothing of Vigil's and knows nothing of Kafka."""

from .chat import ChatMessageReceivedV1, ChatMessageReceivedV2, ChatReplyRequestedV1
from .customers import (
    CustomerEnrichedV1,
    CustomerNotificationRequestedV1,
    CustomerOnboardingPlannedV1,
    CustomerSignedUpV1,
)
from .envelope import Envelope, RawEnvelope, new_event_id, utcnow
from .errors import (
    InvalidEnvelopeError,
    InvalidPayloadError,
    SchemaError,
    UnknownTypeError,
    UnknownVersionError,
    VigilError,
)
from .github import GitHubCommentRequestedV1
from .incidents import AlertReceivedV1, IncidentEscalatedV1, IncidentTriagedV1
from .payload import Payload
from .pull_request import GitHubPullRequestOpenedV1, GitHubPullRequestSynchronizeV1
from .registry import Registry, registry
from .slack import SlackAppMentionV1, SlackEventCallback, SlackMessageV1, SlackReplyRequestedV1
from .sources import FileCreatedV1, FileDeletedV1, FileModifiedV1, ScheduleTickV1
from .versioning import join_type, split_type

__all__ = [
    "AlertReceivedV1",
    "ChatMessageReceivedV1",
    "ChatMessageReceivedV2",
    "ChatReplyRequestedV1",
    "CustomerEnrichedV1",
    "CustomerNotificationRequestedV1",
    "CustomerOnboardingPlannedV1",
    "CustomerSignedUpV1",
    "Envelope",
    "FileCreatedV1",
    "FileDeletedV1",
    "FileModifiedV1",
    "GitHubCommentRequestedV1",
    "GitHubPullRequestOpenedV1",
    "GitHubPullRequestSynchronizeV1",
    "IncidentEscalatedV1",
    "IncidentTriagedV1",
    "InvalidEnvelopeError",
    "InvalidPayloadError",
    "Payload",
    "RawEnvelope",
    "Registry",
    "ScheduleTickV1",
    "SchemaError",
    "SlackAppMentionV1",
    "SlackEventCallback",
    "SlackMessageV1",
    "SlackReplyRequestedV1",
    "UnknownTypeError",
    "UnknownVersionError",
    "VigilError",
    "join_type",
    "new_event_id",
    "registry",
    "split_type",
    "utcnow",
]
