"""Retrying transient failures on the next live URL, with exponential backoff and full jitter.

The decisions (which URL, whether to retry, how long to wait, what to log) live in
:class:`Attempts`, shared by the blocking and the asyncio classifier; each only supplies its
own way of sleeping.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, TypeVar

from ._errors import ClassifierError, to_classifier_error

T = TypeVar("T")
logger = logging.getLogger(__name__)

#: A URL that failed is skipped for this long, doubled per failure in a row up to DEAD_MAX_S;
#: after that the next request to it is the probe that finds it back.
DEAD_MIN_S = 1.0
DEAD_MAX_S = 30.0
#: Wait before the one retry of a request that met a crashed backend: the launcher's supervisor
#: notices a dead stub within 0.5 s and restarts the server (RELIABILITY.md), so the retry meets
#: the restart (refused: ordinary retries) or the fresh server, not the same dead stub.
CRASH_RETRY_DELAY_S = 2.0


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
        cap = min(self.max_backoff, self.backoff * (2 ** min(attempt, 60)))
        return (rng or random).uniform(0.0, cap)


class UrlPool:
    """Round-robin over server URLs that skips the ones that just failed; thread-safe.

    Parameters
    ----------
    urls : list of str
    clock : callable, optional
        Monotonic seconds; replaced in tests.
    """

    def __init__(self, urls: List[str], clock: Callable[[], float] = time.monotonic):
        self.urls = list(urls)
        self._clock = clock
        self._next = 0
        self._dead_until = [0.0] * len(self.urls)
        self._failures = [0] * len(self.urls)
        self._lock = threading.Lock()

    def pick(self, avoid: Optional[int] = None) -> int:
        """The index of the URL the next attempt should use.

        Live URLs in turn (``avoid``, the one that just failed, only when it is the only one);
        when all are resting, the one whose rest ends first.

        Parameters
        ----------
        avoid : int, optional

        Returns
        -------
        int
        """
        with self._lock:
            now = self._clock()
            n = len(self.urls)
            order = [(self._next + i) % n for i in range(n)]
            live = [i for i in order if self._dead_until[i] <= now]
            choices = [i for i in live if i != avoid] or live
            if not choices:
                others = [i for i in order if i != avoid] or order
                choices = [min(others, key=lambda i: self._dead_until[i])]
            index = choices[0]
            self._next = (index + 1) % n
            return index

    def failed(self, index: int, reason: str) -> None:
        """Rest URL ``index`` after a transient failure.

        Parameters
        ----------
        index : int
        reason : str
            Logged.
        """
        with self._lock:
            self._failures[index] += 1
            rest = min(DEAD_MAX_S, DEAD_MIN_S * 2 ** (self._failures[index] - 1))
            self._dead_until[index] = self._clock() + rest
        if len(self.urls) > 1:
            logger.info("skipping %s for %.0f s: %s", self.urls[index], rest, reason)

    def succeeded(self, index: int) -> None:
        """Mark URL ``index`` live again.

        Parameters
        ----------
        index : int
        """
        with self._lock:
            back = self._failures[index] > 0
            self._failures[index] = 0
            self._dead_until[index] = 0.0
        if back and len(self.urls) > 1:
            logger.info("%s answers again", self.urls[index])

    def live(self) -> List[int]:
        """Indexes of the URLs not resting now, in round-robin order.

        Returns
        -------
        list of int
        """
        with self._lock:
            now = self._clock()
            return [i for i in range(len(self.urls)) if self._dead_until[i] <= now]


class Attempts:
    """The retry decisions of one call.

    Parameters
    ----------
    policy : RetryPolicy
    pool : UrlPool
    what : str
        What is being done, for the log (``"infer effnet_lite0"``).
    """

    def __init__(self, policy: RetryPolicy, pool: UrlPool, what: str):
        self.policy = policy
        self.pool = pool
        self.what = what
        self.attempt = 0
        self.crash_retried = False
        self.timed_out = False
        self.index: Optional[int] = None

    def next_index(self) -> int:
        """The URL index of the next attempt (not the one that just failed, if there is another)."""
        self.index = self.pool.pick(avoid=self.index)
        return self.index

    def succeeded(self) -> None:
        """Record that the attempt on the current URL worked."""
        if self.index is not None:
            self.pool.succeeded(self.index)

    def failed(self, err: ClassifierError, cause: Optional[BaseException] = None) -> float:
        """Decide about a failed attempt: raise ``err``, or return the seconds to wait first.

        Parameters
        ----------
        err : ClassifierError
            The translated failure.
        cause : BaseException, optional
            The original exception, chained when ``err`` is raised.

        Returns
        -------
        float
            Delay before the next attempt.

        Raises
        ------
        ClassifierError
            ``err`` when it is not transient or the retries are spent, or when the request
            timed out a second time; ``INTERNAL`` when a request crashed a backend a second time.
        """
        url = self.pool.urls[self.index] if self.index is not None else "?"
        if err.transient and self.index is not None:
            self.pool.failed(self.index, f"{err.status}: {err.message}")
        if err.crashed_backend and self.policy.retries > 0:
            if self.crash_retried:
                # Twice in a row: this request is likely what kills the backend; a third try
                # would restart the server again for nothing.
                raise ClassifierError(f"the server's backend crashed twice on this request: {err.message}",
                                      "INTERNAL") from cause
            self.crash_retried = True
        elif not err.transient or self.attempt >= self.policy.retries or (
                err.status == "DEADLINE_EXCEEDED" and self.timed_out):
            # A request that ran out of time twice is most likely slow itself (a costly image),
            # not a slow server: retrying it 40 times would cost 40 timeouts. One retry, on the
            # next URL, covers a server that froze; a dead one fails to connect (UNAVAILABLE).
            raise err from (None if err is cause else cause)
        if err.status == "DEADLINE_EXCEEDED":
            self.timed_out = True
        delay = self.policy.delay(self.attempt)
        if err.crashed_backend:
            delay = max(delay, CRASH_RETRY_DELAY_S)
        self.attempt += 1
        logger.warning("%s failed on %s (%s: %s); retry %d of %d in %.2f s",
                       self.what, url, err.status, err.message, self.attempt, self.policy.retries, delay)
        return delay


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    pool: Optional[UrlPool] = None,
    what: str = "call",
) -> T:
    """Call ``fn`` and retry it while it fails with a transient error.

    Parameters
    ----------
    fn : callable
        The call, without arguments (it picks its URL itself when there is no ``pool``).
    policy : RetryPolicy
    sleep : callable, optional
        Replaced in tests.
    pool : UrlPool, optional
    what : str

    Returns
    -------
    Whatever ``fn`` returns.

    Raises
    ------
    ClassifierError
        The last error, translated; at once when it is not transient.
    """
    attempts = Attempts(policy, pool or UrlPool(["-"]), what)
    while True:
        attempts.next_index()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - translated below, never swallowed
            sleep(attempts.failed(to_classifier_error(exc), exc))
            continue
        attempts.succeeded()
        return result

