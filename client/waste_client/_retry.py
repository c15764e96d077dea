"""Retrying transient failures with exponential backoff and full jitter."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional, TypeVar

from ._errors import ClassifierError, to_classifier_error

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before trying a transient failure again.

    Attributes
    ----------
    retries : int
        Extra attempts after the first one (0 disables retrying).
    backoff : float
        Base delay in seconds; attempt ``n`` waits up to ``backoff * 2**n``.
    max_backoff : float
        Cap on a single delay, in seconds.
    """

    retries: int = 3
    backoff: float = 0.1
    max_backoff: float = 5.0

    def delay(self, attempt: int, rng: Optional[random.Random] = None) -> float:
        """Seconds to sleep before retry number ``attempt`` (0-based).

        Full jitter (uniform in [0, cap]) so that many clients that lost the
        same server do not come back in lock-step.

        Parameters
        ----------
        attempt : int
        rng : random.Random, optional

        Returns
        -------
        float
        """
        cap = min(self.max_backoff, self.backoff * (2 ** attempt))
        return (rng or random).uniform(0.0, cap)


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` and retry it while it fails with a transient error.

    Parameters
    ----------
    fn : callable
        The call, without arguments.
    policy : RetryPolicy
    sleep : callable, optional
        Replaced in tests.

    Returns
    -------
    Whatever ``fn`` returns.

    Raises
    ------
    ClassifierError
        The last error, translated; at once when it is not transient.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - translated below, never swallowed
            err = to_classifier_error(exc)
            if not err.transient or attempt >= policy.retries:
                raise err from (None if err is exc else exc)
        sleep(policy.delay(attempt))
        attempt += 1


async def call_with_retry_async(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Asyncio twin of :func:`call_with_retry`; ``fn`` returns an awaitable.

    Parameters
    ----------
    fn : callable
    policy : RetryPolicy
    sleep : coroutine function, optional

    Returns
    -------
    Whatever ``fn()`` resolves to.

    Raises
    ------
    ClassifierError
    """
    attempt = 0
    while True:
        try:
            return await fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            err = to_classifier_error(exc)
            if not err.transient or attempt >= policy.retries:
                raise err from (None if err is exc else exc)
        await sleep(policy.delay(attempt))
        attempt += 1
