"""What the sync and asyncio clients share: reading inputs, building tensors, reading answers."""

from __future__ import annotations

import logging
import os
import stat
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._contract import ENSEMBLE_INPUT, ENSEMBLE_OUTPUT, UNSURE_THRESHOLD
from ._errors import ClassifierError
from ._prediction import ModelInfo, Prediction, parse_classification

logger = logging.getLogger(__name__)

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
            raise ClassifierError(f"URL {u!r} must be host:port without a scheme (TLS is the tls/ca_file "
                                  "setting)", "INVALID_ARGUMENT")
    return urls


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


def _too_big(size: int, max_bytes: int, what: str) -> ClassifierError:
    return ClassifierError(f"{what} is {size} bytes, over the limit of {max_bytes} bytes (max_bytes)",
                           "INVALID_ARGUMENT")


def read_input(item: ImageInput, max_bytes: Optional[int] = None) -> Tuple[bytes, Optional[str]]:
    """Return the encoded image bytes of ``item`` and the path they came from.

    The size is checked before reading (``stat``), and reading stops one byte past the limit,
    so a huge or growing file never lands in memory whole. The bytes are sent as they are:
    decoding is the server's job, so a file that is not an image fails there with
    ``INVALID_ARGUMENT``.

    Parameters
    ----------
    item : str, os.PathLike or bytes-like
        A file path or the encoded file content.
    max_bytes : int, optional
        Largest accepted size; None: no limit.

    Returns
    -------
    (bytes, str or None)

    Raises
    ------
    ClassifierError
        ``FILE_NOT_FOUND`` when the file does not exist; ``INVALID_ARGUMENT`` when it is over
        ``max_bytes`` (the message names the limit), is not a regular file, cannot be read, or
        ``item`` has an unsupported type.
    """
    if isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
        if max_bytes is not None and len(data) > max_bytes:
            raise _too_big(len(data), max_bytes, "the image")
        return data, None
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        try:
            # stat before open: opening a FIFO would block, reading a huge file would fill memory.
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode):
                raise ClassifierError(f"{path} is not a regular file", "INVALID_ARGUMENT")
            if max_bytes is not None and info.st_size > max_bytes:
                raise _too_big(info.st_size, max_bytes, path)
            with open(path, "rb") as f:
                data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        except FileNotFoundError:
            raise ClassifierError(f"no such file: {path}", "FILE_NOT_FOUND") from None
        except OSError as exc:
            raise ClassifierError(f"cannot read {path}: {exc.strerror or exc}", "INVALID_ARGUMENT") from None
        if max_bytes is not None and len(data) > max_bytes:
            # It grew between stat and read.
            raise _too_big(len(data), max_bytes, path)
        return data, path
    raise ClassifierError(
        f"expected a path or bytes, got {type(item).__name__}", "INVALID_ARGUMENT"
    )


def build_request(transport: Any, images: Sequence[bytes], top_k: int) -> Tuple[list, list]:
    """Build the input and requested-output objects for a batch of encoded images.

    Parameters
    ----------
    transport : Transport
        Of the protocol in use (``waste_client._grpc`` / ``_http``).
    images : sequence of bytes
        Encoded images, one batch row each.
    top_k : int
        How many classes the classification extension returns per image.

    Returns
    -------
    (list, list)
        ``inputs`` and ``outputs`` for ``infer``.
    """
    array = np.empty((len(images), 1), dtype=np.object_)
    for row, data in enumerate(images):
        array[row, 0] = data
    return [transport.infer_input(ENSEMBLE_INPUT, array)], [transport.requested_output(ENSEMBLE_OUTPUT, top_k)]


def read_response(transport: Any, result: Any, model: str, sources: Sequence[Optional[str]],
                  threshold: Optional[float] = None) -> List[Prediction]:
    """Turn an ``InferResult`` of a batch into one :class:`Prediction` per image.

    Parameters
    ----------
    transport : Transport
    result : InferResult
    model : str
        The model asked for (used if the response does not name one).
    sources : sequence of str or None
        Where each image came from, in batch order.
    threshold : float, optional
        The "not sure" threshold each prediction is marked against.

    Returns
    -------
    list of Prediction

    Raises
    ------
    ClassifierError
        ``INTERNAL`` when the response lacks the classification output or has the wrong size.
    """
    entries = result.as_numpy(ENSEMBLE_OUTPUT)
    if entries is None:
        raise ClassifierError(f"response has no {ENSEMBLE_OUTPUT!r} output", "INTERNAL")
    if entries.shape[0] != len(sources):
        raise ClassifierError(f"sent {len(sources)} images, got {entries.shape[0]} answers", "INTERNAL")
    name, version = transport.response_model(result)
    rows = entries.reshape(len(sources), -1)
    return [parse_classification(row, name or model, version, source, threshold)
            for row, source in zip(rows, sources)]


def config_threshold(config: Any, model: str) -> Optional[float]:
    """The ``unsure_threshold`` parameter of a model's configuration, if it has one.

    Parameters
    ----------
    config : dict
        ``get_model_config`` output as JSON: gRPC's ``{"config": {...}}`` or HTTP's config itself;
        parameters look like ``{"unsure_threshold": {"string_value": "0.77"}}``.
    model : str
        For the log message.

    Returns
    -------
    float or None
        None when the config has no such parameter, or one that is not a probability (logged at
        WARNING: a deployment's mistake must not stop classification).
    """
    if isinstance(config, dict) and isinstance(config.get("config"), dict):
        config = config["config"]
    parameters = config.get("parameters") if isinstance(config, dict) else None
    entry = (parameters or {}).get(UNSURE_THRESHOLD)
    if entry is None:
        return None
    text = entry.get("string_value") if isinstance(entry, dict) else entry
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        logger.warning("model %r: its %s parameter %r is not a probability; no \"not sure\" threshold applies",
                       model, UNSURE_THRESHOLD, text)
        return None
    return value


def config_refused(model: str, error: ClassifierError) -> None:
    """Log that the model's threshold could not be read (the classifier keeps the outcome: once per model).

    A server that restricts its model-config API (docker/serve.sh) or a proxy that forwards only
    inference refuses the read; classification itself still works, so it goes on without a
    threshold and says how to give one.

    Parameters
    ----------
    model : str
    error : ClassifierError
        The refusal (not transient).

    Returns
    -------
    None
    """
    logger.warning("cannot read the \"not sure\" threshold of model %r from its config (%s); predictions are "
                   "never marked unsure: set unsure_threshold (WASTE_UNSURE_THRESHOLD, the scorer's --min-score)",
                   model, error)


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
