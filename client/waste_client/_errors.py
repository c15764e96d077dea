"""The one exception type of the client, and how foreign errors map onto it."""

from __future__ import annotations

import asyncio
import socket

from tritonclient.utils import InferenceServerException

# Statuses worth retrying: the server (or the path to it) is momentarily away.
# Everything else (a bad image, an unknown model) fails the same way on every try.
TRANSIENT_STATUSES = frozenset({"UNAVAILABLE"})

# Triton's HTTP front end maps its error codes to these HTTP statuses; name them
# like gRPC does so callers see one vocabulary whatever the protocol.
_HTTP_STATUS = {
    "400": "INVALID_ARGUMENT",
    "404": "NOT_FOUND",
    "408": "DEADLINE_EXCEEDED",
    "429": "RESOURCE_EXHAUSTED",
    "499": "CANCELLED",
    "500": "INTERNAL",
    "501": "UNIMPLEMENTED",
    "502": "UNAVAILABLE",
    "503": "UNAVAILABLE",
    "504": "DEADLINE_EXCEEDED",
}

# Messages that tritonclient reports without a usable status although the
# connection, not the request, failed.
_TRANSIENT_MESSAGES = (
    "connection refused",
    "connection reset",
    "failed to connect",
    "broken pipe",
    "server disconnected",
    "socket closed",
    "connection aborted",
)

# A model that exists but is (un)loading, as during a server restart, is
# reported NOT_FOUND ("... has no available versions"); unlike an unknown model
# name it comes back, so it counts as UNAVAILABLE.
_UNLOADED_MESSAGES = ("has no available versions", "server is stopping", "is not ready")
# A crashed Python backend stub answers INTERNAL until the launcher's supervisor restarts the
# server (seconds); the same request then succeeds, so it is worth a retry, not an error row.
_CRASHED_STUB_MESSAGES = ("stub process", "is not healthy")


class ClassifierError(Exception):
    """Any failure of a classifier call.

    Parameters
    ----------
    message : str
        What went wrong, for a person to read.
    status : str
        A gRPC-style status name such as ``"INVALID_ARGUMENT"``,
        ``"UNAVAILABLE"``, ``"NOT_FOUND"`` or ``"INTERNAL"``, whichever protocol
        was used.

    Attributes
    ----------
    message : str
    status : str
    """

    def __init__(self, message: str, status: str = "UNKNOWN"):
        super().__init__(message, status)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return f"[{self.status}] {self.message}"

    @property
    def transient(self) -> bool:
        """bool: True if trying again later may succeed (server restarting, connection lost)."""
        return self.status in TRANSIENT_STATUSES


def normalize_status(status: object) -> str:
    """Map a tritonclient status (``"StatusCode.UNAVAILABLE"``, ``"503"``, None) to a gRPC-style name.

    Parameters
    ----------
    status : object
        The ``status()`` of an ``InferenceServerException``.

    Returns
    -------
    str
        The status name, ``"UNKNOWN"`` when there is none.
    """
    if status is None:
        return "UNKNOWN"
    text = str(status)
    if text.startswith("StatusCode."):
        return text[len("StatusCode."):]
    return _HTTP_STATUS.get(text, text.upper() or "UNKNOWN")


def to_classifier_error(exc: BaseException) -> ClassifierError:
    """Translate an exception raised by tritonclient or the network stack.

    Parameters
    ----------
    exc : BaseException
        The exception caught around a server call.

    Returns
    -------
    ClassifierError
        The same failure with a normalized status.
    """
    if isinstance(exc, ClassifierError):
        return exc
    if isinstance(exc, InferenceServerException):
        message = exc.message() or str(exc)
        status = normalize_status(exc.status())
        lowered = message.lower()
        if status == "UNKNOWN" and any(m in lowered for m in _TRANSIENT_MESSAGES):
            status = "UNAVAILABLE"
        elif status in ("NOT_FOUND", "INVALID_ARGUMENT") and any(m in lowered for m in _UNLOADED_MESSAGES):
            status = "UNAVAILABLE"
        elif status == "INTERNAL" and all(m in lowered for m in _CRASHED_STUB_MESSAGES):
            status = "UNAVAILABLE"
        return ClassifierError(message, status)
    if isinstance(exc, (asyncio.TimeoutError, socket.timeout, TimeoutError)):
        return ClassifierError(f"request timed out: {exc!r}", "DEADLINE_EXCEEDED")
    # ConnectionError covers refused/reset/aborted; aiohttp's and geventhttpclient's
    # connection failures are OSError subclasses too.
    if isinstance(exc, OSError):
        return ClassifierError(f"cannot reach server: {exc}", "UNAVAILABLE")
    name = type(exc).__name__.lower()
    text = str(exc).lower()
    if "disconnect" in name or any(m in text for m in _TRANSIENT_MESSAGES):
        return ClassifierError(f"connection lost: {exc!r}", "UNAVAILABLE")
    return ClassifierError(f"{type(exc).__name__}: {exc}", "INTERNAL")
