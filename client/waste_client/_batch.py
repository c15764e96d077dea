"""Bookkeeping of batched calls and raw tensor calls, shared by the sync and asyncio classes."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np

from ._errors import ClassifierError
from ._prediction import Prediction
from ._request import ImageInput, read_input

#: Output names, or output name -> ``class_count`` (0: the raw tensor).
Outputs = Union[Sequence[str], Mapping[str, int]]


class BatchPlan:
    """The items of one ``classify_batch`` call and their results so far.

    Parameters
    ----------
    items : sequence of str, os.PathLike or bytes
    max_bytes : int
        Size limit of one image.
    max_batch : int
        Largest number of images in one request.
    """

    def __init__(self, items: Sequence[ImageInput], max_bytes: Optional[int], max_batch: int):
        self.items = list(items)
        self.results: List[Any] = [None] * len(self.items)
        self.max_bytes = max_bytes
        self.max_batch = max(1, int(max_batch))
        self._data: Dict[int, bytes] = {}
        self._source: Dict[int, Optional[str]] = {}

    def chunks(self) -> Iterator[List[int]]:
        """Indexes of readable items, up to ``max_batch`` at a time.

        Files are read chunk by chunk (never all at once), and an unreadable item gets its
        error here and joins no chunk.

        Yields
        ------
        list of int
        """
        chunk: List[int] = []
        for i, item in enumerate(self.items):
            try:
                self._data[i], self._source[i] = read_input(item, self.max_bytes)
            except ClassifierError as err:
                self.results[i] = err
                continue
            chunk.append(i)
            if len(chunk) == self.max_batch:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def images(self, chunk: Sequence[int]) -> List[bytes]:
        """The encoded images of ``chunk``."""
        return [self._data[i] for i in chunk]

    def sources(self, chunk: Sequence[int]) -> List[Optional[str]]:
        """The paths of ``chunk`` (None for bytes)."""
        return [self._source[i] for i in chunk]

    def answer(self, chunk: Sequence[int], predictions: Sequence[Prediction]) -> None:
        """Record the predictions of ``chunk``, in order; its bytes are no longer needed."""
        for i, prediction in zip(chunk, predictions):
            self.results[i] = prediction
            self._data.pop(i, None)

    def fail(self, chunk: Sequence[int], err: ClassifierError) -> None:
        """Record ``err`` for every item of ``chunk``."""
        for i in chunk:
            self.results[i] = err
            self._data.pop(i, None)

    def resend_singly(self, chunk: Sequence[int], err: ClassifierError) -> bool:
        """Decide after ``chunk`` failed as a whole: True to send its items one by one.

        A request is rejected whole when any one image in it cannot be decoded; one by one,
        only that image fails. Any other failure (server away, unknown model, refused key)
        would fail each item the same way, so it is recorded for all of them at once.

        Parameters
        ----------
        chunk : sequence of int
        err : ClassifierError

        Returns
        -------
        bool
        """
        if err.status == "INVALID_ARGUMENT" and len(chunk) > 1:
            return True
        self.fail(chunk, err)
        return False


def requested_outputs(transport: Any, outputs: Outputs) -> list:
    """The transport's requested-output objects for ``outputs``.

    Parameters
    ----------
    transport : Transport
    outputs : sequence of str, or mapping of str to int

    Returns
    -------
    list
    """
    counts = dict(outputs) if isinstance(outputs, Mapping) else {name: 0 for name in outputs}
    return [transport.requested_output(name, int(count or 0)) for name, count in counts.items()]


def raw_outputs(result: Any, outputs: Outputs) -> Dict[str, np.ndarray]:
    """The arrays of ``outputs`` in an ``InferResult``.

    Parameters
    ----------
    result : InferResult
    outputs : sequence of str, or mapping of str to int

    Returns
    -------
    dict of str to ndarray

    Raises
    ------
    ClassifierError
        ``INTERNAL`` when an output is missing from the response.
    """
    arrays = {}
    for name in outputs:
        array = result.as_numpy(name)
        if array is None:
            raise ClassifierError(f"response has no {name!r} output", "INTERNAL")
        arrays[name] = array
    return arrays
