"""The synchronous client."""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Union

from ._contract import DEFAULT_MODEL
from ._errors import ClassifierError, to_classifier_error
from ._prediction import ModelInfo, Prediction, Result
from ._request import (
    ImageInput,
    UrlCycle,
    build_request,
    check_protocol,
    check_top_k,
    normalize_urls,
    read_input,
    read_response,
    ready_models,
)
from ._retry import RetryPolicy, call_with_retry


def _load_module(protocol: str) -> Any:
    # Imported lazily so that a gRPC user never pays for gevent and vice versa.
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module


class Classifier:
    """Classify waste photos with a Triton server (blocking calls).

    Parameters
    ----------
    url : str or sequence of str
        ``"host:port"`` of the server, or several (a list or a comma-separated
        string); requests are spread over them round-robin and a retry goes to
        the next one.
    protocol : {"grpc", "http"}
        Which Triton endpoint ``url`` points at.
    model : str
        Model (ensemble) name, ``"effnet_lite0"`` in production.
    version : str
        Model version; ``""`` lets the server pick its policy's version.
    timeout : float
        Seconds one attempt may take (connect + inference).
    retries : int
        Extra attempts for transient failures (``UNAVAILABLE``: refused or
        reset connections, HTTP 502/503). Other errors are raised at once.
    concurrency : int
        Worker threads (and HTTP connections) used by :meth:`classify_many`.
    backoff, max_backoff : float
        Exponential backoff base and cap, in seconds (full jitter).

    Raises
    ------
    ClassifierError
        ``INVALID_ARGUMENT`` for a bad protocol or URL.

    Examples
    --------
    >>> with Classifier("localhost:8001") as clf:           # doctest: +SKIP
    ...     clf.classify("bottle.jpg", top_k=3).label
    'plastic'
    """

    def __init__(
        self,
        url: Union[str, Sequence[str]],
        protocol: str = "grpc",
        model: str = DEFAULT_MODEL,
        version: str = "",
        timeout: float = 30.0,
        retries: int = 3,
        concurrency: int = 8,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
    ):
        self.urls = normalize_urls(url)
        self.protocol = check_protocol(protocol)
        self.model = model
        self.version = str(version)
        self.timeout = float(timeout)
        self.concurrency = max(1, int(concurrency))
        self.retry_policy = RetryPolicy(int(retries), float(backoff), float(max_backoff))
        self._module = _load_module(self.protocol)
        self._cycle = UrlCycle(self.urls)
        self._lock = threading.Lock()
        self._closed = False
        # gRPC stubs are thread-safe and shared; the HTTP client is not, so each
        # thread gets its own (kept in _http_clients to be closed).
        self._grpc_clients: Dict[int, Any] = {}
        self._local = threading.local()
        self._http_clients: List[Any] = []
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pool_size = 0

    def __repr__(self) -> str:
        return f"Classifier(url={self.urls!r}, protocol={self.protocol!r}, model={self.model!r})"

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- connections -------------------------------------------------------

    def _client(self, index: int) -> Any:
        if self._closed:
            raise ClassifierError("the classifier is closed", "FAILED_PRECONDITION")
        url = self.urls[index]
        if self.protocol == "grpc":
            with self._lock:
                client = self._grpc_clients.get(index)
                if client is None:
                    client = self._module.InferenceServerClient(url)
                    self._grpc_clients[index] = client
            return client
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        client = clients.get(index)
        if client is None:
            client = self._module.InferenceServerClient(
                url, connection_timeout=self.timeout, network_timeout=self.timeout
            )
            clients[index] = client
            with self._lock:
                self._http_clients.append(client)
        return client

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a tritonclient method on the next URL, with retries."""
        if self.protocol == "grpc":
            kwargs.setdefault("client_timeout", self.timeout)

        def attempt() -> Any:
            return getattr(self._client(self._cycle.next_index()), method)(*args, **kwargs)

        return call_with_retry(attempt, self.retry_policy)

    # -- public API ----------------------------------------------------------

    def classify(self, path_or_bytes: ImageInput, top_k: int = 5) -> Prediction:
        """Classify one image.

        Parameters
        ----------
        path_or_bytes : str, os.PathLike or bytes
            A file path, or the encoded file content (JPEG, PNG, ...).
        top_k : int
            How many (label, score) pairs to return, best first.

        Returns
        -------
        Prediction

        Raises
        ------
        ClassifierError
            ``INVALID_ARGUMENT`` when the server cannot decode the image (not
            retried), ``NOT_FOUND`` for a missing file or unknown model,
            ``UNAVAILABLE`` when the server stays unreachable after the retries.
        """
        top_k = check_top_k(top_k)
        data, source = read_input(path_or_bytes)
        inputs, outputs = build_request(self._module, data, top_k)
        result = self._call("infer", self.model, inputs, model_version=self.version, outputs=outputs)
        return read_response(result, self.model, source)

    def classify_many(
        self,
        items: Iterable[ImageInput],
        top_k: int = 5,
        max_in_flight: Optional[int] = None,
    ) -> Iterator[Result]:
        """Classify many images, keeping several requests in flight.

        ``items`` is consumed lazily, so it may be a generator over millions of
        paths. Each item yields exactly one :class:`Result`, in completion
        order, carrying either its prediction or its error; a failing item
        never stops the others.

        Parameters
        ----------
        items : iterable of str, os.PathLike or bytes
        top_k : int
        max_in_flight : int, optional
            Requests outstanding at once; defaults to ``concurrency``.

        Yields
        ------
        Result
        """
        top_k = check_top_k(top_k)
        limit = max(1, int(max_in_flight or self.concurrency))
        pool = self._executor(limit)
        pending: Dict[Future, Any] = {}
        try:
            for item in items:
                while len(pending) >= limit:
                    yield from self._drain(pending)
                pending[pool.submit(self.classify, item, top_k)] = item
            while pending:
                yield from self._drain(pending)
        finally:
            # Reached early when the caller stops iterating: do not leave work queued.
            for future in pending:
                future.cancel()

    @staticmethod
    def _drain(pending: Dict[Future, Any]) -> Iterator[Result]:
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for future in done:
            item = pending.pop(future)
            try:
                yield Result(item, prediction=future.result())
            except Exception as exc:  # noqa: BLE001 - every item gets its own outcome
                yield Result(item, error=to_classifier_error(exc))

    def _executor(self, size: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise ClassifierError("the classifier is closed", "FAILED_PRECONDITION")
            if self._pool is None or self._pool_size < size:
                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                self._pool_size = max(size, self.concurrency)
                self._pool = ThreadPoolExecutor(self._pool_size, thread_name_prefix="waste-client")
            return self._pool

    def models(self) -> List[ModelInfo]:
        """List the server's ready models and their versions (repository index).

        Returns
        -------
        list of ModelInfo
            Sorted by name, then version.

        Raises
        ------
        ClassifierError
            ``UNAVAILABLE`` when the server cannot be reached.
        """
        if self.protocol == "grpc":
            index = self._call("get_model_repository_index", as_json=True)
        else:
            index = self._call("get_model_repository_index")
        return ready_models(index)

    def is_ready(self) -> bool:
        """Tell whether every server URL is ready and serves the model.

        Never raises and never retries: a readiness probe answers now.

        Returns
        -------
        bool
        """
        try:
            for index in range(len(self.urls)):
                client = self._client(index)
                if not (client.is_server_ready() and client.is_model_ready(self.model, self.version)):
                    return False
            return True
        except Exception:  # noqa: BLE001 - unreachable simply means not ready
            return False

    def close(self) -> None:
        """Stop the worker threads and close every connection. Safe to call twice.

        Returns
        -------
        None
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
            clients = list(self._grpc_clients.values()) + self._http_clients
            self._grpc_clients, self._http_clients = {}, []
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
