"""Per-agent retry policy for handler failures, on top of tenacity.

A retry runs inside the subject's lane, so it delays only that subject; other subjects keep
flowing. After the last attempt the record is dead-lettered with the attempt count.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from streams.core.backpressure import Blocked

RETRIABLE_BUILTINS: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError)


def is_retriable(exc: BaseException) -> bool:
    """An error that says whether it is retriable (``VigilError``, ``LLMError``) is believed;
    otherwise only timeouts and connection errors are. A bug in a handler is not retried."""
    flag = getattr(exc, "retriable", None)
    if isinstance(flag, bool):
        return flag
    return isinstance(exc, RETRIABLE_BUILTINS)


@dataclass(frozen=True)
class Retry:
    max_attempts: int = 3
    #: first backoff in seconds; doubles per attempt up to ``max_backoff``
    backoff: float = 0.5
    max_backoff: float = 30.0
    #: up to this many seconds of random jitter added to each backoff
    jitter: float = 0.5
    #: exception types to retry, or a predicate; default: ``is_retriable``
    on: tuple[type[BaseException], ...] | Callable[[BaseException], bool] = field(default=is_retriable)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("Retry.max_attempts must be >= 1")
        if self.backoff < 0 or self.max_backoff < 0 or self.jitter < 0:
            raise ValueError("Retry backoff, max_backoff and jitter must be >= 0")

    def should_retry(self, exc: BaseException) -> bool:
        if isinstance(exc, Blocked):
            return False  # not a failure: the dispatcher waits for the gate, no attempt is used
        if isinstance(self.on, tuple):
            return isinstance(exc, self.on)
        return self.on(exc)

    def wait_after(self, attempt: int) -> float:
        """Seconds to wait after attempt number ``attempt`` failed (what the retrier waits)."""
        wait: float = self.backoff * 2.0 ** (attempt - 1) + random.uniform(0, self.jitter)
        return max(0.0, min(wait, self.max_backoff))

    def retrying(
        self, before_sleep: Callable[[RetryCallState], None] | None = None, *, done: int = 0
    ) -> AsyncRetrying:
        """The attempts left after ``done`` attempts were made elsewhere (the first one runs
        without any retry machinery, ``streams.core.dispatcher``)."""
        return AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts - done),
            wait=wait_exponential_jitter(
                multiplier=self.backoff * 2**done, max=self.max_backoff, jitter=self.jitter
            ),
            retry=retry_if_exception(self.should_retry),
            before_sleep=before_sleep,
            reraise=True,
        )
