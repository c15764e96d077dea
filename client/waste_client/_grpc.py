"""The gRPC transport: every gRPC detail of the sync and asyncio classifiers, in one place.

tritonclient's gRPC modules are imported here only, on first use, so an HTTP-only install
(``pip install waste-client[http]``) never needs grpcio.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

from ._errors import ClassifierError, to_classifier_error
from ._settings import ClientSettings

# Keepalive finds a half-open connection (a server host gone silent) in ~15 s instead of a
# request timeout per request. Pings only while calls are active, and at most 2 without data
# in between: Triton's defaults (300 s minimum interval without data, 2 strikes) then never
# answer with GOAWAY "too_many_pings", even when one request runs long.
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000
# tritonclient's own limit (2 GiB - 1); the real bound is the settings' max_bytes per image.
MAX_MESSAGE_BYTES = 2**31 - 1


class Transport:
    """Triton over gRPC, as both classifiers use it.

    Parameters
    ----------
    settings : ClientSettings
    """

    name = "grpc"

    def __init__(self, settings: ClientSettings):
        import tritonclient.grpc as module

        self.settings = settings
        self.module = module
        self.headers = settings.headers() or None

    def _client_args(self) -> Dict[str, Any]:
        s = self.settings
        connect_ms = max(1, int(s.connect_timeout * 1000))
        # tritonclient takes either its keepalive options or the full channel arguments; the full
        # list is given so the connect timeout applies too. gRPC bounds one connection attempt by
        # max(min_reconnect_backoff, backoff), 20 s by default: a URL that never answers would
        # hold every request until its deadline instead of failing over after connect_timeout.
        args: Dict[str, Any] = {"channel_args": [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 2),
            ("grpc.min_reconnect_backoff_ms", connect_ms),
            ("grpc.initial_reconnect_backoff_ms", connect_ms),
            # A name that resolves to several servers (a Kubernetes headless Service; gRPC resolves
            # names through DNS)
            # gets a connection to each and requests spread over them; one address: no change.
            ("grpc.lb_policy_name", "round_robin"),
        ]}
        if s.tls:
            args.update(ssl=True, root_certificates=s.ca_file, private_key=s.client_key,
                        certificate_chain=s.client_cert)
        return args

    def client(self, url: str, concurrency: int = 1) -> Any:
        """A blocking client for ``url`` (thread-safe: one per URL is shared by all threads).

        Parameters
        ----------
        url : str
        concurrency : int
            Unused: one HTTP/2 channel carries any number of calls.

        Returns
        -------
        tritonclient.grpc.InferenceServerClient
        """
        return self.module.InferenceServerClient(url, **self._client_args())

    def aio_client(self, url: str, concurrency: int = 1) -> Any:
        """An asyncio client for ``url``; create it inside the running loop.

        Parameters
        ----------
        url : str
        concurrency : int
            Unused, as for :meth:`client`.

        Returns
        -------
        tritonclient.grpc.aio.InferenceServerClient
        """
        import tritonclient.grpc.aio as aio

        return aio.InferenceServerClient(url, **self._client_args())

    shared_between_threads = True

    def infer_input(self, name: str, array: np.ndarray) -> Any:
        """An input tensor holding ``array`` (object arrays are sent as BYTES)."""
        from tritonclient.utils import np_to_triton_dtype

        tensor = self.module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        return tensor

    def requested_output(self, name: str, class_count: int = 0) -> Any:
        """A requested output; ``class_count`` > 0 asks for the classification extension."""
        return self.module.InferRequestedOutput(name, class_count=class_count)

    def call_args(self) -> Dict[str, Any]:
        """Keyword arguments of every call: auth headers and the per-attempt deadline."""
        return {"headers": self.headers, "client_timeout": self.settings.timeout}

    def json_args(self) -> Dict[str, Any]:
        """:meth:`call_args` for calls whose answer should be JSON-like dicts."""
        return {**self.call_args(), "as_json": True}

    @staticmethod
    def response_model(result: Any) -> Tuple[str, str]:
        """(model name, version) that answered ``result``."""
        response = result.get_response()
        return response.model_name, response.model_version

    @staticmethod
    def translate(exc: BaseException) -> ClassifierError:
        """The :class:`ClassifierError` for a failure of a gRPC call."""
        return to_classifier_error(exc)
