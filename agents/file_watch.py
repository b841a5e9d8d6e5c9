"""A file landing in a watched directory waking an agent: ``note_file`` handles each
``file.created.v1`` of ``vigil source files --name inbox`` (topic ``files.inbox.v1``, key = the
path relative to the directory), counts per path how often it was created, and logs one line::

    note_file: inbox/report.csv created (#1) size=1234 sha256=9f86d081884c...

No LLM call: it shows the wake-up path. Deleted and modified files travel on the same topic and
are not for this agent (skipped, not dead-lettered). The source name is read at import from
``VIGIL_FILE_WATCH_SOURCE`` (default ``inbox``).

Declared by ``import agents`` but opt-in (``default=False``: a worker does not subscribe to a
directory it was not asked to): run it with ``vigil worker --agents note_file`` (``make demo``
does)."""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import Envelope, FileCreatedV1
from streams import Context, runtime

log = logging.getLogger(__name__)


class FileWatchSettings(BaseSettings):
    """``VIGIL_FILE_WATCH_*``."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_FILE_WATCH_", extra="ignore", frozen=True)

    source: str = Field("inbox", description="Name of the `vigil source files` whose topic is consumed")


class FileState(BaseModel):
    """Per path (the event's subject)."""

    created: int = 0  #: file.created.v1 events handled for this path (a delete and re-create adds one)
    size: int = 0
    sha256: str = ""


def summary(source: str, data: FileCreatedV1, count: int) -> str:
    return f"note_file: {source}/{data.path} created (#{count}) size={data.size} sha256={data.sha256[:12]}"


SETTINGS = FileWatchSettings()


@runtime.agent(FileCreatedV1, topic=f"files.{SETTINGS.source}.v1", state=FileState, default=False)
async def note_file(event: Envelope[FileCreatedV1], ctx: Context[FileState]) -> None:
    ctx.state.created += 1
    ctx.state.size = event.data.size
    ctx.state.sha256 = event.data.sha256
    log.info("%s", summary(SETTINGS.source, event.data, ctx.state.created))
