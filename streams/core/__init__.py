"""Vigil's own runtime, with no faust or mode import (ruff's banned-api rule keeps it so):
what an agent is, how one record is decoded, deduplicated, handled, retried and dead-lettered,
key-ordered scheduling, offset tracking, state encoding, backpressure gates, the stall rules."""
