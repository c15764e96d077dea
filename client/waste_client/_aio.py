"""The asyncio twin of :class:`waste_client.Classifier`."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import (Any, AsyncIterable, AsyncIterator, Awaitable, Callable, Dict, Iterable, List, Mapping,
                    Optional, Sequence, TypeVar, Union)

import numpy as np

from ._batch import BatchPlan, Outputs, raw_outputs, requested_outputs
from ._contract import MAX_BATCH_SIZE
from ._errors import ClassifierError
from ._prediction import ModelInfo, Prediction, Result
from ._request import (ImageInput, build_request, check_top_k, config_refused, config_threshold, read_input,
                       read_response, ready_models)
from ._retry import Attempts, RetryPolicy, UrlPool
from ._settings import DEFAULT_TOP_K, UNSURE_FROM_MODEL, UNSURE_OFF, ClientSettings, load_transport, resolve

T = TypeVar("T")
logger = logging.getLogger(__name__)


async def _iterate(items: Union[Iterable[Any], AsyncIterable[Any]]) -> AsyncIterator[Any]:
    if hasattr(items, "__aiter__"):
        async for item in items:  # type: ignore[union-attr]
            yield item
    else:
        for item in items:  # type: ignore[union-attr]
            yield item


class AsyncClassifier:
    """Classify waste photos with a Triton server (asyncio).

    Same parameters, settings, methods and errors as :class:`Classifier`; every method
    is a coroutine (``classify_many`` an async generator). Connections are
    opened on first use inside the running event loop.

    Parameters
    ----------
    url : str or sequence of str, optional
        One or several ``"host:port"``, used round-robin over the live ones.
    protocol : {"grpc", "http"}, optional
    model : str, optional
    version : str, optional
    timeout : float, optional
        Seconds one attempt may take.
    retries : int, optional
        Extra attempts of a transient failure, each on the next live URL.
    concurrency : int, optional
        Default ``max_in_flight`` of :meth:`classify_many` and HTTP connection limit.
    backoff, max_backoff : float, optional
        Exponential backoff base and cap, in seconds.
    settings : ClientSettings, optional
    **options
        Any other field of :class:`ClientSettings` (TLS, auth, ``max_bytes``,
        ``unsure_threshold``, ...).

    Notes
    -----
    Predictions carry ``unsure`` and ``threshold`` as with :class:`Classifier`
    (:meth:`unsure_threshold`).

    Raises
    ------
    ClassifierError
        ``INVALID_ARGUMENT`` for a bad protocol, URL or option.

    Examples
    --------
    >>> async with AsyncClassifier("localhost:8001") as clf:    # doctest: +SKIP
    ...     (await clf.classify("bottle.jpg")).label
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
        self._clients: Dict[int, Any] = {}
        self._closed = False
        # model name -> its threshold from the server, read once; the lock is made inside the loop.
        self._thresholds: Dict[str, Optional[float]] = {}
        self._threshold_lock: Optional[asyncio.Lock] = None

    def __repr__(self) -> str:
        return f"AsyncClassifier(url={self.urls!r}, protocol={self.protocol!r}, model={self.model!r})"

    async def __aenter__(self) -> "AsyncClassifier":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _client(self, index: int) -> Any:
        if self._closed:
            raise ClassifierError("the classifier is closed", "CANCELLED")
        client = self._clients.get(index)
        if client is None:
            client = self._clients[index] = self._transport.aio_client(self.urls[index], self.concurrency)
        return client

    async def _call(self, what: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Await ``fn(client)`` on the next live URL, retrying transient failures elsewhere."""
        attempts = Attempts(self.retry_policy, self._pool_urls, what)
        while True:
            index = attempts.next_index()
            try:
                result = await asyncio.wait_for(fn(self._client(index)), self.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - translated, then raised or retried
                await asyncio.sleep(attempts.failed(self._transport.translate(exc), exc))
                continue
            attempts.succeeded()
            return result

    async def _send(self, images: Sequence[bytes], sources: Sequence[Optional[str]],
                    top_k: int) -> List[Prediction]:
        inputs, outputs = build_request(self._transport, images, top_k)
        args = self._transport.call_args()
        result = await self._call(f"infer {self.model}", lambda c: c.infer(
            self.model, inputs, model_version=self.version, outputs=outputs, **args))
        return read_response(self._transport, result, self.model, sources, await self.unsure_threshold())

    async def unsure_threshold(self, model: Optional[str] = None) -> Optional[float]:
        """The "not sure" threshold applied to ``model``'s predictions; as :meth:`Classifier.unsure_threshold`.

        Parameters
        ----------
        model : str, optional

        Returns
        -------
        float or None

        Raises
        ------
        ClassifierError
            When no server answers after the retries (nothing is kept).
        """
        setting = self.settings.unsure_threshold
        if setting != UNSURE_FROM_MODEL:
            return None if setting == UNSURE_OFF else float(setting)
        name = model or self.model
        if name in self._thresholds:  # every request asks: no lock once it is known
            return self._thresholds[name]
        if self._threshold_lock is None:
            self._threshold_lock = asyncio.Lock()
        # One read per model, however many requests finish at once at the start of classify_many.
        async with self._threshold_lock:
            if name not in self._thresholds:
                self._thresholds[name] = await self._read_threshold(name)
            return self._thresholds[name]

    async def _read_threshold(self, name: str) -> Optional[float]:
        version = self.version if name == self.model else ""
        args = self._transport.json_args()
        try:
            config = await self._call(f"config {name}", lambda c: c.get_model_config(name, version, **args))
        except ClassifierError as err:
            if err.transient:
                raise
            config_refused(name, err)
            return None
        return config_threshold(config, name)

    async def classify(self, path_or_bytes: ImageInput, top_k: int = DEFAULT_TOP_K) -> Prediction:
        """Classify one image.

        Parameters
        ----------
        path_or_bytes : str, os.PathLike or bytes
        top_k : int

        Returns
        -------
        Prediction

        Raises
        ------
        ClassifierError
            As :meth:`Classifier.classify`.
        """
        top_k = check_top_k(top_k)
        if isinstance(path_or_bytes, (str, os.PathLike)):
            # A slow disk must not stall the other requests of the loop.
            data, source = await asyncio.to_thread(read_input, path_or_bytes, self.settings.max_bytes)
        else:
            data, source = read_input(path_or_bytes, self.settings.max_bytes)
        return (await self._send([data], [source], top_k))[0]

    async def classify_batch(self, items: Sequence[ImageInput],
                             top_k: int = DEFAULT_TOP_K) -> List[Union[Prediction, ClassifierError]]:
        """Classify several images in one inference request; as :meth:`Classifier.classify_batch`.

        Parameters
        ----------
        items : sequence of str, os.PathLike or bytes
        top_k : int

        Returns
        -------
        list of Prediction or ClassifierError
            One per item, in order.

        Raises
        ------
        ClassifierError
            Only for a bad ``top_k``.
        """
        top_k = check_top_k(top_k)
        plan = BatchPlan(items, self.settings.max_bytes, MAX_BATCH_SIZE)
        chunks = plan.chunks()
        while True:
            # Files are read in a thread: a slow disk must not stall the loop.
            chunk = await asyncio.to_thread(next, chunks, None)
            if chunk is None:
                break
            try:
                plan.answer(chunk, await self._send(plan.images(chunk), plan.sources(chunk), top_k))
            except ClassifierError as err:
                if not plan.resend_singly(chunk, err):
                    continue
                for i in chunk:
                    try:
                        plan.answer([i], await self._send(plan.images([i]), plan.sources([i]), top_k))
                    except ClassifierError as single:
                        plan.fail([i], single)
        return plan.results

    async def classify_many(
        self,
        items: Union[Iterable[ImageInput], AsyncIterable[ImageInput]],
        top_k: int = DEFAULT_TOP_K,
        max_in_flight: Optional[int] = None,
    ) -> AsyncIterator[Result]:
        """Classify many images with up to ``max_in_flight`` requests outstanding.

        Parameters
        ----------
        items : iterable or async iterable of str, os.PathLike or bytes
            Consumed lazily.
        top_k : int
        max_in_flight : int, optional
            Defaults to ``concurrency``.

        Yields
        ------
        Result
            One per item, in completion order.
        """
        top_k = check_top_k(top_k)
        limit = max(1, int(max_in_flight or self.concurrency))
        pending: Dict[asyncio.Task, Any] = {}
        try:
            async for item in _iterate(items):
                while len(pending) >= limit:
                    for result in await self._drain(pending):
                        yield result
                pending[asyncio.ensure_future(self.classify(item, top_k))] = item
            while pending:
                for result in await self._drain(pending):
                    yield result
        finally:
            for task in pending:
                task.cancel()

    @staticmethod
    async def _drain(pending: Dict[asyncio.Task, Any]) -> List[Result]:
        done, _ = await asyncio.wait(list(pending), return_when=asyncio.FIRST_COMPLETED)
        results = []
        for task in done:
            item = pending.pop(task)
            try:
                results.append(Result(item, prediction=task.result()))
            except ClassifierError as exc:
                results.append(Result(item, error=exc))
            except Exception as exc:  # noqa: BLE001
                results.append(Result(item, error=ClassifierError(f"{type(exc).__name__}: {exc}", "INTERNAL")))
        return results

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Outputs,
                    version: str = "") -> Dict[str, np.ndarray]:
        """Run any model on raw tensors; as :meth:`Classifier.infer`.

        Parameters
        ----------
        model : str
        inputs : mapping of str to ndarray
        outputs : sequence of str, or mapping of str to int
        version : str

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
        result = await self._call(f"infer {model}", lambda c: c.infer(
            model, tensors, model_version=str(version), outputs=wanted, **args))
        return raw_outputs(result, outputs)

    async def model_metadata(self, model: Optional[str] = None, version: str = "") -> Dict[str, Any]:
        """The server's metadata of ``model``; as :meth:`Classifier.model_metadata`.

        Parameters
        ----------
        model : str, optional
        version : str

        Returns
        -------
        dict

        Raises
        ------
        ClassifierError
        """
        name = model or self.model
        args = self._transport.json_args()
        return await self._call(f"metadata {name}", lambda c: c.get_model_metadata(name, str(version), **args))

    async def models(self) -> List[ModelInfo]:
        """List the server's ready models and their versions.

        Returns
        -------
        list of ModelInfo

        Raises
        ------
        ClassifierError
            ``UNAVAILABLE`` when the server cannot be reached.
        """
        args = self._transport.json_args()
        return ready_models(await self._call("list models", lambda c: c.get_model_repository_index(**args)))

    async def is_ready(self) -> bool:
        """Tell whether any server URL is ready and serves the model; never raises.

        When not ready, ``readiness_error`` says why.

        Returns
        -------
        bool
        """
        args = self._transport.call_args()
        for index in range(len(self.urls)):
            try:
                client = self._client(index)
                ready = await asyncio.wait_for(client.is_server_ready(**args), self.timeout)
                if ready and await asyncio.wait_for(
                        client.is_model_ready(self.model, self.version, **args), self.timeout):
                    self._pool_urls.succeeded(index)
                    self.readiness_error = None
                    return True
                err = ClassifierError(f"model {self.model!r} is not ready on {self.urls[index]}", "UNAVAILABLE")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - unreachable simply means not ready
                err = self._transport.translate(exc)
                if err.transient:
                    self._pool_urls.failed(index, str(err))
            logger.debug("%s not ready: %s", self.urls[index], err)
            self.readiness_error = err
        return False

    async def close(self) -> None:
        """Close every connection. Safe to call twice.

        Returns
        -------
        None
        """
        if self._closed:
            return
        self._closed = True
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                await client.close()
            except Exception:  # noqa: BLE001
                pass
