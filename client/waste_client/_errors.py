"""The one exception type of the client, and how foreign errors map onto it."""

from __future__ import annotations

import asyncio
import socket
import ssl

from tritonclient.utils import InferenceServerException

# Statuses worth retrying, on another URL when there is one: the server (or the path to it) is
# momentarily away, too slow or too busy. Everything else (a bad image, an unknown model, a
# refused key) fails the same way on every try.
TRANSIENT_STATUSES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})

# Triton's HTTP front end maps its error codes to these HTTP statuses; name them
# like gRPC does so callers see one vocabulary whatever the protocol.
_HTTP_STATUS = {
    "400": "INVALID_ARGUMENT",
    # A reverse proxy checking an API key (SECURITY.md) answers these, never Triton itself.
    "401": "UNAUTHENTICATED",
    "403": "PERMISSION_DENIED",
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
    "connect timeout",
    "failed to connect",
)
# A server certificate that the CA file does not vouch for: retrying cannot help, and the
# person must be told it is TLS, not the server, that failed.
_CERTIFICATE_MESSAGES = ("certificate_verify_failed", "certificate verify failed",
                         "ssl_error_ssl", "handshake failed", "wrong_version_number", "wrong version number")

# A model that exists but is (un)loading, as during a server restart, is
# reported NOT_FOUND ("... has no available versions"); unlike an unknown model
# name it comes back, so it counts as UNAVAILABLE.
_UNLOADED_MESSAGES = ("has no available versions", "server is stopping", "is not ready")
# An API the server restricts to an admin header (docker/serve.sh restricts model config, among
# others) is refused over gRPC as UNAVAILABLE, "This protocol is restricted, expecting header ...";
# over HTTP as 403. Refused it stays, however often it is asked.
_RESTRICTED_MESSAGES = ("is restricted, expecting header",)
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
        was used; ``"FILE_NOT_FOUND"`` for a missing local file (``NOT_FOUND`` is
        an unknown model), ``"UNAUTHENTICATED"``/``"PERMISSION_DENIED"`` for a
        refused key or an untrusted server certificate, ``"CANCELLED"`` when the
        classifier was closed during the call.
    crashed_backend : bool
        True when the server said a backend process died while answering: retried at most
        once, since the same request may well be what crashed it.

    Attributes
    ----------
    message, status, crashed_backend
        As given.
    """

    def __init__(self, message: str, status: str = "UNKNOWN", crashed_backend: bool = False):
        super().__init__(message, status)
        self.message = message
        self.status = status
        self.crashed_backend = crashed_backend

    def __str__(self) -> str:
        return f"[{self.status}] {self.message}"

    @property
    def transient(self) -> bool:
        """bool: True if trying again (later, or on another URL) may succeed.

        Connection refused or reset, timeouts, a full queue, a server restarting, HTTP
        429/502/503/504 from a proxy.
        """
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
        if any(m in lowered for m in _CERTIFICATE_MESSAGES):
            return certificate_error(message)
        if any(m in lowered for m in _RESTRICTED_MESSAGES):
            status = "PERMISSION_DENIED"
        elif status == "UNKNOWN" and any(m in lowered for m in _TRANSIENT_MESSAGES):
            status = "UNAVAILABLE"
        elif status in ("NOT_FOUND", "INVALID_ARGUMENT") and any(m in lowered for m in _UNLOADED_MESSAGES):
            status = "UNAVAILABLE"
        elif status == "INTERNAL" and all(m in lowered for m in _CRASHED_STUB_MESSAGES):
            return ClassifierError(message, "UNAVAILABLE", crashed_backend=True)
        return ClassifierError(message, status)
    if isinstance(exc, ssl.SSLError) or "certificate" in type(exc).__name__.lower():
        return certificate_error(str(exc))
    if isinstance(exc, (asyncio.TimeoutError, socket.timeout, TimeoutError)):
        if "connect" in type(exc).__name__.lower():
            # aiohttp's ConnectionTimeoutError: nothing was sent, the server is simply away.
            return ClassifierError(f"connect timeout: {exc}", "UNAVAILABLE")
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


def certificate_error(detail: str) -> ClassifierError:
    """The error for a TLS handshake that failed (untrusted server certificate, not TLS at all).

    Parameters
    ----------
    detail : str
        What the TLS layer said.

    Returns
    -------
    ClassifierError
        Status ``"UNAUTHENTICATED"``, not transient: the same handshake fails on every try.
    """
    return ClassifierError(
        f"TLS handshake failed (is the server certificate signed by the CA file, and does the URL "
        f"name it?): {detail}",
        "UNAUTHENTICATED",
    )
