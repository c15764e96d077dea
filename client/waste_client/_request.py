"""What the sync and asyncio clients share: reading inputs, building tensors, reading answers."""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._contract import ENSEMBLE_INPUT, ENSEMBLE_OUTPUT
from ._errors import ClassifierError
from ._prediction import ModelInfo, Prediction, parse_classification

# Names fixed by the contract (_contract.py); the ensembles all share them.
INPUT_NAME = ENSEMBLE_INPUT
OUTPUT_NAME = ENSEMBLE_OUTPUT
PROTOCOLS = ("grpc", "http")

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]


def normalize_urls(url: Union[str, Sequence[str]]) -> List[str]:
    """Accept one ``host:port`` or several and return them as a list.

    Parameters
    ----------
    url : str or sequence of str
        A comma-separated string is split too, so a CLI option can carry several.

    Returns
    -------
    list of str

    Raises
    ------
    ClassifierError
        With status ``"INVALID_ARGUMENT"`` when no URL is given or one has a scheme.
    """
    items = url.split(",") if isinstance(url, str) else list(url)
    urls = [u.strip() for u in items if u and u.strip()]
    if not urls:
        raise ClassifierError("no server URL given", "INVALID_ARGUMENT")
    for u in urls:
        if "://" in u:
            raise ClassifierError(f"URL {u!r} must be host:port without a scheme", "INVALID_ARGUMENT")
    return urls


def check_protocol(protocol: str) -> str:
    """Validate the protocol name.

    Parameters
    ----------
    protocol : str

    Returns
    -------
    str
        ``"grpc"`` or ``"http"``.

    Raises
    ------
    ClassifierError
        With status ``"INVALID_ARGUMENT"`` for any other value.
    """
    p = protocol.lower()
    if p not in PROTOCOLS:
        raise ClassifierError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}", "INVALID_ARGUMENT")
    return p


def check_top_k(top_k: int) -> int:
    """Validate ``top_k`` (a positive int).

    Parameters
    ----------
    top_k : int

    Returns
    -------
    int

    Raises
    ------
    ClassifierError
        With status ``"INVALID_ARGUMENT"``.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ClassifierError(f"top_k must be a positive int, not {top_k!r}", "INVALID_ARGUMENT")
    return top_k


class UrlCycle:
    """Round-robin over server URLs, safe to share between threads.

    Parameters
    ----------
    urls : list of str
    """

    def __init__(self, urls: List[str]):
        self.urls = list(urls)
        self._cycle = itertools.cycle(range(len(self.urls)))
        self._lock = threading.Lock()

    def next_index(self) -> int:
        """Return the index of the URL the next request should use.

        Returns
        -------
        int
        """
        with self._lock:
            return next(self._cycle)


def read_input(item: ImageInput) -> Tuple[bytes, Optional[str]]:
    """Return the encoded image bytes of ``item`` and the path they came from.

    The bytes are sent as they are: decoding is the server's job, so a file
    that is not an image fails there with ``INVALID_ARGUMENT``.

    Parameters
    ----------
    item : str, os.PathLike or bytes-like
        A file path or the encoded file content.

    Returns
    -------
    (bytes, str or None)

    Raises
    ------
    ClassifierError
        ``NOT_FOUND`` when the file does not exist, ``INVALID_ARGUMENT`` when
        it cannot be read or ``item`` has an unsupported type.
    """
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item), None
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        try:
            with open(path, "rb") as f:
                return f.read(), path
        except FileNotFoundError:
            raise ClassifierError(f"no such file: {path}", "NOT_FOUND") from None
        except OSError as exc:
            raise ClassifierError(f"cannot read {path}: {exc.strerror or exc}", "INVALID_ARGUMENT") from None
    raise ClassifierError(
        f"expected a path or bytes, got {type(item).__name__}", "INVALID_ARGUMENT"
    )


def build_request(module: Any, data: bytes, top_k: int) -> Tuple[list, list]:
    """Build the input and requested-output objects for one image.

    Parameters
    ----------
    module : module
        ``tritonclient.grpc`` or ``tritonclient.http`` (their ``aio`` variants
        use the same classes).
    data : bytes
        The encoded image.
    top_k : int
        How many classes the classification extension returns.

    Returns
    -------
    (list, list)
        ``inputs`` and ``outputs`` for ``infer``.
    """
    inp = module.InferInput(INPUT_NAME, [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    out = module.InferRequestedOutput(OUTPUT_NAME, class_count=top_k)
    return [inp], [out]


def read_response(result: Any, model: str, source: Optional[str]) -> Prediction:
    """Turn an ``InferResult`` into a :class:`Prediction`.

    Parameters
    ----------
    result : InferResult
        From the gRPC or HTTP client.
    model : str
        The model asked for (used if the response does not name one).
    source : str or None

    Returns
    -------
    Prediction

    Raises
    ------
    ClassifierError
        ``INTERNAL`` when the response lacks the classification output.
    """
    entries = result.as_numpy(OUTPUT_NAME)
    if entries is None:
        raise ClassifierError(f"response has no {OUTPUT_NAME!r} output", "INTERNAL")
    response = result.get_response()
    if isinstance(response, dict):
        name, version = response.get("model_name", model), response.get("model_version", "")
    else:
        name, version = response.model_name or model, response.model_version
    return parse_classification(entries.reshape(-1), name, version, source)


def ready_models(index: Any) -> List[ModelInfo]:
    """Keep the ready entries of a repository index.

    Parameters
    ----------
    index : list of dict or dict
        ``get_model_repository_index`` output (HTTP gives a list, gRPC with
        ``as_json=True`` a dict with ``"models"``).

    Returns
    -------
    list of ModelInfo
        Sorted by name then version.
    """
    entries = index.get("models", []) if isinstance(index, dict) else list(index or [])
    models = [
        ModelInfo(e["name"], str(e.get("version", "")), e.get("state", ""))
        for e in entries
        if e.get("state") == "READY"
    ]
    return sorted(models, key=lambda m: (m.name, m.version))
