"""The HTTP transport: every HTTP detail of the sync and asyncio classifiers, in one place.

tritonclient's HTTP modules (gevent for the blocking client, aiohttp for asyncio) are imported
here only, on first use, so a gRPC-only install (``pip install waste-client[grpc]``) never
needs them.
"""

from __future__ import annotations

import ssl
import traceback
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ._errors import ClassifierError, to_classifier_error
from ._settings import ClientSettings

# Frames of geventhttpclient that only run while a connection is being opened: a timeout raised
# there means the server never answered the TCP/TLS handshake, not that a request was slow.
_CONNECT_FRAMES = frozenset({"_connect_socket", "_create_socket", "get_socket", "_internal_connect"})


class Transport:
    """Triton over HTTP/REST (KServe v2, binary tensor data), as both classifiers use it.

    Parameters
    ----------
    settings : ClientSettings
    """

    name = "http"
    # geventhttpclient's client is not thread-safe: the sync classifier keeps one per thread.
    shared_between_threads = False

    def __init__(self, settings: ClientSettings):
        import tritonclient.http as module

        self.settings = settings
        self.module = module
        self.headers = settings.headers() or None

    def client(self, url: str, concurrency: int = 1) -> Any:
        """A blocking client for ``url``, for one thread.

        Parameters
        ----------
        url : str
        concurrency : int
            Connections it may open.

        Returns
        -------
        tritonclient.http.InferenceServerClient
        """
        s = self.settings
        args: Dict[str, Any] = {}
        if s.tls:
            options: Dict[str, Any] = {}
            if s.ca_file:
                options["ca_certs"] = s.ca_file
            if s.client_cert:
                options.update(certfile=s.client_cert, keyfile=s.client_key)
            args.update(ssl=True, ssl_options=options)
        return self.module.InferenceServerClient(
            url, concurrency=concurrency, connection_timeout=s.connect_timeout,
            network_timeout=s.timeout, **args)

    def aio_client(self, url: str, concurrency: int = 8) -> Any:
        """An asyncio client for ``url``; create it inside the running loop.

        Parameters
        ----------
        url : str
        concurrency : int
            Connection limit.

        Returns
        -------
        tritonclient.http.aio.InferenceServerClient
        """
        import aiohttp
        import tritonclient.http.aio as aio

        s = self.settings
        context: Optional[ssl.SSLContext] = None
        if s.tls:
            context = ssl.create_default_context(cafile=s.ca_file)
            if s.client_cert:
                context.load_cert_chain(s.client_cert, s.client_key)
        client = aio.InferenceServerClient(url, conn_limit=concurrency, conn_timeout=s.timeout,
                                           ssl=s.tls, ssl_context=context)
        # tritonclient sets only a total timeout; a separate connect timeout lets a dead URL fail
        # fast as "unavailable" (retried elsewhere) instead of as a slow request.
        if hasattr(client, "_stub"):
            client._stub._timeout = aiohttp.ClientTimeout(total=s.timeout, connect=s.connect_timeout)
        return client

    def infer_input(self, name: str, array: np.ndarray) -> Any:
        """An input tensor holding ``array``, as binary data (JSON would inflate image bytes)."""
        from tritonclient.utils import np_to_triton_dtype

        tensor = self.module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=True)
        return tensor

    def requested_output(self, name: str, class_count: int = 0) -> Any:
        """A requested output; ``class_count`` > 0 asks for the classification extension."""
        return self.module.InferRequestedOutput(name, binary_data=True, class_count=class_count)

    def call_args(self) -> Dict[str, Any]:
        """Keyword arguments of every call: the auth headers (deadlines are set per client)."""
        return {"headers": self.headers}

    def json_args(self) -> Dict[str, Any]:
        """:meth:`call_args` for calls whose answer should be JSON-like dicts (HTTP's always are)."""
        return self.call_args()

    @staticmethod
    def response_model(result: Any) -> Tuple[str, str]:
        """(model name, version) that answered ``result``."""
        response = result.get_response()
        return response.get("model_name", ""), response.get("model_version", "")

    @staticmethod
    def translate(exc: BaseException) -> ClassifierError:
        """The :class:`ClassifierError` for a failure of an HTTP call."""
        if isinstance(exc, TimeoutError) and not isinstance(exc, ClassifierError):
            frames = {frame.name for frame in traceback.extract_tb(exc.__traceback__)}
            if frames & _CONNECT_FRAMES:
                return ClassifierError(f"connect timeout: {exc}", "UNAVAILABLE")
        return to_classifier_error(exc)
