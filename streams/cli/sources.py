"""``vigil source ...``: run one source until SIGTERM (``streams.sources``).

Each subcommand builds its ``Source`` from its options and ``Settings`` and hands it to
``streams.sources.base.run_source``. Other modules add subcommands with
``@source_group.command("name")`` (imported at the bottom of ``streams.cli.commands``).
Bad configuration raises ``ConfigError``: one line via ``VigilGroup``, exit 1.
"""

from __future__ import annotations

import logging

from streams.cli.commands import VigilGroup, cli


@cli.group("source", cls=VigilGroup)
def source_group() -> None:
    """Run a source: turn files, schedules or database changes into events (until SIGTERM)."""
    logging.getLogger("streams.sources").setLevel(logging.INFO)


from streams.cli import source_cdc as _source_cdc  # noqa: E402,F401 - postgres, debezium
