"""The synchronous client."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, TypeVar, Union

import numpy as np

from ._batch import BatchPlan, Outputs, raw_outputs, requested_outputs
from ._contract import MAX_BATCH_SIZE
from ._errors import ClassifierError
from ._prediction import ModelInfo, Prediction, Result
from ._request import (ImageInput, build_request, check_top_k, config_refused, config_threshold, read_input,
                       read_response, ready_models)
from ._retry import Attempts, RetryPolicy, UrlPool
from ._settings import DEFAULT_TOP_K, UNSURE_FROM_MODEL, UNSURE_OFF, ClientSettings, load_transport, resolve
from ._threads import DaemonPool

T = TypeVar("T")
logger = logging.getLogger(__name__)


class Classifier:
    """Classify waste photos with a Triton server (blocking calls).

    Every argument left as None comes from ``settings``, or from the ``WASTE_*`` environment
    variables when no ``settings`` is given (:class:`ClientSettings`), then from the defaults.

    Parameters
    ----------
    url : str or sequence of str, optional
        ``"host:port"`` of the server, or several (a list or a comma-separated
        string); requests are spread over the live ones round-robin, a URL that
        fails is skipped for a while, and a retry goes to the next one.
    protocol : {"grpc", "http"}, optional
        Which Triton endpoint ``url`` points at (default ``"grpc"``).
    model : str, optional
        Model (ensemble) name, ``"effnet_lite0"`` by default.
    version : str, optional
        Model version; ``""`` lets the server pick its policy's version.
    timeout : float, optional
        Seconds one attempt may take (default 30).
    retries : int, optional
        Extra attempts of a transient failure (refused or reset connection, timeout,
        HTTP 429/502/503/504), each on the next live URL after a backoff (default 3).
        Other errors are raised at once.
    concurrency : int, optional
        Worker threads (and HTTP connections) used by :meth:`classify_many`.
    backoff, max_backoff : float, optional
        Exponential backoff base and cap, in seconds (full jitter).
    settings : ClientSettings, optional
        Everything at once, TLS and auth included.
    **options
        Any other field of :class:`ClientSettings` (``connect_timeout``, ``max_bytes``,
        ``ca_file``, ``client_cert``, ``client_key``, ``api_key``, ``bearer_token``,
        ``basic_auth``, ``tls``, ``unsure_threshold``).

    Notes
    -----
    Every :class:`Prediction` says whether the model is sure of it: ``unsure`` is ``score <
    threshold``, ``threshold`` the one applied (:meth:`unsure_threshold`). By default it is the
    model's own, read once from its config on the server; ``unsure_threshold=0.9`` overrides it,
    ``unsure_threshold="none"`` turns it off. The label stays the most probable class either way.

    Raises
    ------
    ClassifierError
        ``INVALID_ARGUMENT`` for a bad protocol, URL or option.

    Examples
    --------
    >>> with Classifier("localhost:8001") as clf:           # doctest: +SKIP
    ...     clf.classify("bottle.jpg").label
    'plastic'
    """

    def __init__(
        self,
        url: Union[str, Sequence[str], None] = None,
        protocol: Optional[str] = None,
        model: Optional[str] = None,
        version: Optional[str] = None,
        timeout: Optional[float] = None,
        retries: Optional[int] = None,
        concurrency: Optional[int] = None,
        backoff: Optional[float] = None,
        max_backoff: Optional[float] = None,
        *,
        settings: Optional[ClientSettings] = None,
        **options: Any,
    ):
        self.settings = resolve(settings, url, dict(
            protocol=protocol, model=model, version=version, timeout=timeout, retries=retries,
            concurrency=concurrency, backoff=backoff, max_backoff=max_backoff, **options))
        s = self.settings
        self.urls = s.urls
        self.protocol = s.protocol
        self.model = s.model
        self.version = s.version
        self.timeout = float(s.timeout)
        self.concurrency = max(1, int(s.concurrency))
        self.retry_policy = RetryPolicy(int(s.retries), float(s.backoff), float(s.max_backoff))
        self._transport = load_transport(s)
        self._pool_urls = UrlPool(self.urls)
        #: Why the last :meth:`is_ready` said no (None when it said yes or was never asked).
        self.readiness_error: Optional[ClassifierError] = None
        self._lock = threading.Lock()
        # Set by close(): wakes every thread waiting through a backoff, so Ctrl-C is not held up.
        self._stop = threading.Event()
        # gRPC stubs are thread-safe and shared; the HTTP client is not, so each thread gets its
        # own (all kept in _clients to be closed).
        self._shared: Dict[int, Any] = {}
        self._local = threading.local()
        self._clients: List[Any] = []
        self._pool: Optional[DaemonPool] = None
        self._pool_size = 0
        # model name -> its threshold from the server, read once; a lock of its own, because the
        # read goes through _call, which takes _lock.
        self._thresholds: Dict[str, Optional[float]] = {}
        self._threshold_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Classifier(url={self.urls!r}, protocol={self.protocol!r}, model={self.model!r})"

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        # Leaving on an exception (Ctrl-C) must not wait for requests still running.
        self.close(wait=exc_type is None)

    # -- connections -------------------------------------------------------

    def _client(self, index: int) -> Any:
        if self._closed:
            raise ClassifierError("the classifier is closed", "CANCELLED")
        if self._transport.shared_between_threads:
            with self._lock:
                client = self._shared.get(index)
                if client is None:
                    client = self._shared[index] = self._transport.client(self.urls[index])
                    self._clients.append(client)
            return client
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        client = clients.get(index)
        if client is None:
            client = clients[index] = self._transport.client(self.urls[index])
            with self._lock:
                self._clients.append(client)
        return client

    @property
    def _closed(self) -> bool:
        return self._stop.is_set()

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)`` on the next live URL, retrying transient failures elsewhere."""
        attempts = Attempts(self.retry_policy, self._pool_urls, what)
        while True:
            index = attempts.next_index()
            try:
                result = fn(self._client(index))
            except Exception as exc:  # noqa: BLE001 - translated, then raised or retried
                delay = attempts.failed(self._transport.translate(exc), exc)
                if self._stop.wait(delay):
                    raise ClassifierError(f"{what}: the classifier was closed while retrying",
                                          "CANCELLED") from None
                continue
            attempts.succeeded()
            return result

    def _send(self, images: Sequence[bytes], sources: Sequence[Optional[str]], top_k: int) -> List[Prediction]:
        inputs, outputs = build_request(self._transport, images, top_k)
        args = self._transport.call_args()
        result = self._call(f"infer {self.model}", lambda c: c.infer(
            self.model, inputs, model_version=self.version, outputs=outputs, **args))
        # After the answer: a bad image or an unknown model fails as it always did.
        return read_response(self._transport, result, self.model, sources, self.unsure_threshold())

    def unsure_threshold(self, model: Optional[str] = None) -> Optional[float]:
        """The "not sure" threshold this classifier applies to ``model``'s predictions.

        With the ``unsure_threshold`` setting ``"model"`` (the default) it is the model's
        ``unsure_threshold`` config parameter, which the repository writer copies from the
        served classifier version's ``export.json``; it is read once per model name and kept.
        A model without the parameter has none; so has a model whose config the server or a
        proxy refuses to show (a restricted model-config API), which is logged once at WARNING.
        A number set as ``unsure_threshold`` is returned as is, ``"none"`` gives None.

        Parameters
        ----------
        model : str, optional
            Defaults to this classifier's model.

        Returns
        -------
        float or None

        Raises
        ------
        ClassifierError
            ``UNAVAILABLE`` (or another transient status) when no server answers after the
            retries; nothing is kept then, so the next call asks again.
        """
        setting = self.settings.unsure_threshold
        if setting != UNSURE_FROM_MODEL:
            return None if setting == UNSURE_OFF else float(setting)
        name = model or self.model
        if name in self._thresholds:  # every request asks: no lock once it is known
            return self._thresholds[name]
        with self._threshold_lock:
            if name not in self._thresholds:
                self._thresholds[name] = self._read_threshold(name)
            return self._thresholds[name]

    def _read_threshold(self, name: str) -> Optional[float]:
        version = self.version if name == self.model else ""
        args = self._transport.json_args()
        try:
            config = self._call(f"config {name}", lambda c: c.get_model_config(name, version, **args))
        except ClassifierError as err:
            if err.transient:
                raise
            config_refused(name, err)
            return None
        return config_threshold(config, name)

    # -- public API ----------------------------------------------------------

    def classify(self, path_or_bytes: ImageInput, top_k: int = DEFAULT_TOP_K) -> Prediction:
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
            ``INVALID_ARGUMENT`` when the server cannot decode the image or the file is over
            ``max_bytes`` (not retried), ``FILE_NOT_FOUND`` for a missing file, ``NOT_FOUND``
            for an unknown model, ``UNAVAILABLE`` when no server answers after the retries,
            ``UNAUTHENTICATED``/``PERMISSION_DENIED`` when a proxy refuses the credentials.
        """
        top_k = check_top_k(top_k)
        data, source = read_input(path_or_bytes, self.settings.max_bytes)
        return self._send([data], [source], top_k)[0]

    def classify_batch(self, items: Sequence[ImageInput],
                       top_k: int = DEFAULT_TOP_K) -> List[Union[Prediction, ClassifierError]]:
        """Classify several images in one inference request (the batch dimension).

        One result per item, in order. An item that cannot be read gets its own error and is
        not sent. If the server rejects the whole request because one image is bad
        (``INVALID_ARGUMENT``), the images are sent again one by one, so their neighbours still
        succeed. Batches over the models' largest batch size are split.

        Parameters
        ----------
        items : sequence of str, os.PathLike or bytes
        top_k : int

        Returns
        -------
        list of Prediction or ClassifierError

        Raises
        ------
        ClassifierError
            Only for a bad ``top_k``; every other failure is an item's result.
        """
        top_k = check_top_k(top_k)
        plan = BatchPlan(items, self.settings.max_bytes, MAX_BATCH_SIZE)
        for chunk in plan.chunks():
            try:
                plan.answer(chunk, self._send(plan.images(chunk), plan.sources(chunk), top_k))
            except ClassifierError as err:
                if not plan.resend_singly(chunk, err):
                    continue
                for i in chunk:
                    try:
                        plan.answer([i], self._send(plan.images([i]), plan.sources([i]), top_k))
                    except ClassifierError as single:
                        plan.fail([i], single)
        return plan.results

    def classify_many(
        self,
        items: Iterable[ImageInput],
        top_k: int = DEFAULT_TOP_K,
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
        except GeneratorExit:
            # The caller stopped iterating: drop the queued work, keep the classifier.
            for future in pending:
                future.cancel()
            raise
        except BaseException:
            # Ctrl-C (or a failure of the caller's iterator): wake the threads sleeping through
            # backoffs and stop, so the process exits at once instead of after the retries.
            for future in pending:
                future.cancel()
            self.close(wait=False)
            raise

    @staticmethod
    def _drain(pending: Dict[Future, Any]) -> Iterator[Result]:
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for future in done:
            item = pending.pop(future)
            try:
                yield Result(item, prediction=future.result())
            except ClassifierError as exc:
                yield Result(item, error=exc)
            except Exception as exc:  # noqa: BLE001 - every item gets its own outcome
                yield Result(item, error=ClassifierError(f"{type(exc).__name__}: {exc}", "INTERNAL"))

    def _executor(self, size: int) -> DaemonPool:
        with self._lock:
            if self._closed:
                raise ClassifierError("the classifier is closed", "CANCELLED")
            if self._pool is None or self._pool_size < size:
                if self._pool is not None:
                    self._pool.shutdown(wait=False, cancel=False)
                self._pool_size = max(size, self.concurrency)
                self._pool = DaemonPool(self._pool_size)
            return self._pool

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Outputs,
              version: str = "") -> Dict[str, np.ndarray]:
        """Run any model of the server on raw tensors (the app's ``preprocess`` and occlusion calls).

        Same URLs, credentials, retries and errors as :meth:`classify`.

        Parameters
        ----------
        model : str
        inputs : mapping of str to ndarray
            Tensor name -> array, batch dimension first; ``object`` arrays are sent as BYTES.
        outputs : sequence of str, or mapping of str to int
            Output names; a mapping gives each a ``class_count`` (0: the raw tensor), which
            asks for the classification extension's ``"score:index:label"`` strings.
        version : str
            ``""``: the server's choice.

        Returns
        -------
        dict of str to ndarray

        Raises
        ------
        ClassifierError
        """
        tensors = [self._transport.infer_input(name, np.asarray(array)) for name, array in inputs.items()]
        wanted = requested_outputs(self._transport, outputs)
        args = self._transport.call_args()
        result = self._call(f"infer {model}", lambda c: c.infer(
            model, tensors, model_version=str(version), outputs=wanted, **args))
        return raw_outputs(result, outputs)

    def model_metadata(self, model: Optional[str] = None, version: str = "") -> Dict[str, Any]:
        """The server's metadata of ``model`` (inputs and outputs with names, datatypes, shapes).

        Parameters
        ----------
        model : str, optional
            Defaults to this classifier's model.
        version : str

        Returns
        -------
        dict
            KServe v2 model metadata as JSON (``"inputs"``, ``"outputs"``, ...).

        Raises
        ------
        ClassifierError
        """
        name = model or self.model
        args = self._transport.json_args()
        return self._call(f"metadata {name}", lambda c: c.get_model_metadata(name, str(version), **args))

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
        args = self._transport.json_args()
        return ready_models(self._call("list models", lambda c: c.get_model_repository_index(**args)))

    def is_ready(self) -> bool:
        """Tell whether any server URL is ready and serves the model.

        Never raises and never retries: a readiness probe answers now. A URL found
        unreachable is skipped by the next requests for a while. When not ready,
        ``readiness_error`` says why (e.g. ``PERMISSION_DENIED`` from a proxy, which no
        waiting will change).

        Returns
        -------
        bool
        """
        args = self._transport.call_args()
        for index in range(len(self.urls)):
            try:
                client = self._client(index)
                if client.is_server_ready(**args) and client.is_model_ready(self.model, self.version, **args):
                    self._pool_urls.succeeded(index)
                    self.readiness_error = None
                    return True
                err = ClassifierError(f"model {self.model!r} is not ready on {self.urls[index]}", "UNAVAILABLE")
            except Exception as exc:  # noqa: BLE001 - unreachable simply means not ready
                err = self._transport.translate(exc)
                if err.transient:
                    self._pool_urls.failed(index, str(err))
            logger.debug("%s not ready: %s", self.urls[index], err)
            self.readiness_error = err
        return False

    def close(self, wait: bool = True) -> None:
        """Stop the worker threads and close every connection. Safe to call twice.

        Parameters
        ----------
        wait : bool
            Wait for the requests already running (never for backoffs: those end at once).

        Returns
        -------
        None
        """
        with self._lock:
            if self._closed and self._pool is None and not self._clients:
                return
            self._stop.set()
            pool, self._pool = self._pool, None
            clients, self._clients, self._shared = self._clients, [], {}
        if pool is not None:
            pool.shutdown(wait=wait)
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
