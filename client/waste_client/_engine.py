"""Engines: what turns identities into results for the scorer's driver.

The driver (:mod:`waste_client.score`) owns listing, the output file, the lock, resume and
de-duplication: every exactly-once guarantee lives there. An engine only answers::

    engine.results(identities) -> iterator of (identity, Prediction | ClassifierError)

one pair per identity, in any order; the driver tolerates a repeat and writes it once. It
consumes ``identities`` lazily, so a listing that is still going on feeds requests already.

:class:`LocalEngine` runs in this process (threads); the Ray engine (``waste_client._ray``)
spreads the same work over a Ray cluster.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from itertools import islice
from typing import Any, Dict, Iterable, Iterator, List, Optional, Protocol, Tuple, Union

from ._errors import ClassifierError, to_classifier_error
from ._prediction import Prediction
from ._sources import MAX_BYTES, read_source

logger = logging.getLogger(__name__)

Outcome = Union[Prediction, ClassifierError]
Pair = Tuple[str, Outcome]

#: Photos per inference request. Measured (`python -m benchmarks.scorer_defaults`, BENCHMARKS.md
#: "The scorer's engines and speed options"): the rate plateaus from 8 photos per request (8 x 4
#: within 2% of the best point, 16 x 4; 1 photo per request 13-32% lower), and 8 keeps a request's
#: photos few enough that one slow or failing request holds little back.
DEFAULT_BATCH_SIZE = 8
#: Requests outstanding at once (each of up to ``batch_size`` photos): 2, 4 and 8 are level at 8
#: photos per request in the same run; 4 keeps both server instances fed with one queued behind.
DEFAULT_IN_FLIGHT = 4


class Engine(Protocol):
    """What the driver needs from an engine."""

    def results(self, identities: Iterable[str]) -> Iterator[Pair]:
        """One ``(identity, Prediction | ClassifierError)`` per identity, in any order."""

    def close(self) -> None:
        """Release workers and connections."""


def _batches(items: Iterable[str], size: int) -> Iterator[List[str]]:
    it = iter(items)
    while True:
        chunk = list(islice(it, size))
        if not chunk:
            return
        yield chunk


def classify_chunk(classifier: Any, identities: List[str], top_k: int, max_bytes: int) -> List[Pair]:
    """Read a chunk of photos and classify the readable ones in one request.

    A photo that cannot be read becomes its own error; the others still go. With a client
    that has no batched call yet, the photos are sent one by one.

    Parameters
    ----------
    classifier : Classifier
    identities : list of str
    top_k : int
    max_bytes : int

    Returns
    -------
    list of (str, Prediction or ClassifierError)
        One pair per identity.
    """
    pairs: List[Pair] = []
    readable: List[str] = []
    data: List[bytes] = []
    for identity in identities:
        try:
            data.append(read_source(identity, max_bytes))
            readable.append(identity)
        except ClassifierError as exc:
            pairs.append((identity, exc))
    if not data:
        return pairs
    batch = getattr(classifier, "classify_batch", None)
    if batch is not None:
        try:
            outcomes = list(batch(data, top_k=top_k))
        except Exception as exc:  # noqa: BLE001 - the whole request failed: each photo says so
            err = to_classifier_error(exc)
            outcomes = [err] * len(data)
    else:
        outcomes = []
        for item in data:
            try:
                outcomes.append(classifier.classify(item, top_k=top_k))
            except Exception as exc:  # noqa: BLE001 - every photo gets its own outcome
                outcomes.append(to_classifier_error(exc))
    pairs.extend(zip(readable, outcomes))
    return pairs


class LocalEngine:
    """Score in this process: worker threads read photos and send batched requests.

    Each worker reads its chunk, then sends it, so reading overlaps the other workers'
    requests and the server stays busy.

    Parameters
    ----------
    classifier : Classifier
        Used as is and not closed.
    top_k : int
    in_flight : int
        Requests outstanding at once.
    batch_size : int
        Photos per request.
    max_bytes : int
        Size limit per photo (bigger ones become ``INVALID_ARGUMENT`` without being read).
    """

    def __init__(
        self,
        classifier: Any,
        top_k: int = 3,
        in_flight: int = DEFAULT_IN_FLIGHT,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_bytes: int = MAX_BYTES,
    ):
        self.classifier = classifier
        self.top_k = top_k
        self.in_flight = max(1, int(in_flight))
        self.batch_size = max(1, int(batch_size))
        self.max_bytes = max_bytes
        self._pool: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()

    def results(self, identities: Iterable[str]) -> Iterator[Pair]:
        """Classify ``identities``, pulling them lazily; one pair per identity.

        Parameters
        ----------
        identities : iterable of str

        Yields
        ------
        (str, Prediction or ClassifierError)
        """
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.in_flight, thread_name_prefix="waste-score")
            pool = self._pool
        pending: Dict[Future, List[str]] = {}

        def drain(block: bool = True) -> Iterator[Pair]:
            done = wait(list(pending), return_when=FIRST_COMPLETED)[0] if block else \
                [f for f in pending if f.done()]
            for future in done:
                chunk = pending.pop(future)
                try:
                    yield from future.result()
                except Exception as exc:  # noqa: BLE001 - never lose a chunk's photos
                    err = to_classifier_error(exc)
                    yield from ((identity, err) for identity in chunk)

        try:
            for chunk in _batches(identities, self.batch_size):
                while len(pending) >= self.in_flight:
                    yield from drain()
                future = pool.submit(classify_chunk, self.classifier, chunk, self.top_k, self.max_bytes)
                pending[future] = chunk
                # Hand over what is already answered before listing on: with a slow listing,
                # answered rows would otherwise wait (unwritten) for the next chunk to fill.
                yield from drain(block=False)
            while pending:
                yield from drain()
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        """Stop the worker threads.

        Returns
        -------
        None
        """
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
