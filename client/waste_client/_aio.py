"""The asyncio twin of :class:`waste_client.Classifier`."""

from __future__ import annotations

import asyncio
import os
from typing import Any, AsyncIterable, AsyncIterator, Dict, Iterable, List, Optional, Sequence, Union

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
from ._retry import RetryPolicy, call_with_retry_async


def _load_module(protocol: str) -> Any:
    if protocol == "grpc":
        import tritonclient.grpc.aio as module
    else:
        import tritonclient.http.aio as module
    return module


async def _iterate(items: Union[Iterable[Any], AsyncIterable[Any]]) -> AsyncIterator[Any]:
    if hasattr(items, "__aiter__"):
        async for item in items:  # type: ignore[union-attr]
            yield item
    else:
        for item in items:  # type: ignore[union-attr]
            yield item


class AsyncClassifier:
    """Classify waste photos with a Triton server (asyncio).

    Same parameters, methods and errors as :class:`Classifier`; every method
    is a coroutine (``classify_many`` an async generator). Connections are
    opened on first use inside the running event loop.

    Parameters
    ----------
    url : str or sequence of str
        One or several ``"host:port"``, used round-robin.
    protocol : {"grpc", "http"}
    model : str
    version : str
    timeout : float
        Seconds one attempt may take.
    retries : int
        Extra attempts for transient (``UNAVAILABLE``) failures.
    concurrency : int
        Default ``max_in_flight`` of :meth:`classify_many` and HTTP connection limit.
    backoff, max_backoff : float
        Exponential backoff base and cap, in seconds.

    Raises
    ------
    ClassifierError
        ``INVALID_ARGUMENT`` for a bad protocol or URL.

    Examples
    --------
    >>> async with AsyncClassifier("localhost:8001") as clf:    # doctest: +SKIP
    ...     (await clf.classify("bottle.jpg")).label
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
        self._clients: Dict[int, Any] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"AsyncClassifier(url={self.urls!r}, protocol={self.protocol!r}, model={self.model!r})"

    async def __aenter__(self) -> "AsyncClassifier":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _client(self, index: int) -> Any:
        if self._closed:
            raise ClassifierError("the classifier is closed", "FAILED_PRECONDITION")
        client = self._clients.get(index)
        if client is None:
            if self.protocol == "grpc":
                client = self._module.InferenceServerClient(self.urls[index])
            else:
                client = self._module.InferenceServerClient(
                    self.urls[index], conn_limit=self.concurrency, conn_timeout=self.timeout
                )
            self._clients[index] = client
        return client

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.protocol == "grpc":
            kwargs.setdefault("client_timeout", self.timeout)

        async def attempt() -> Any:
            client = self._client(self._cycle.next_index())
            return await asyncio.wait_for(getattr(client, method)(*args, **kwargs), self.timeout)

        return await call_with_retry_async(attempt, self.retry_policy)

    async def classify(self, path_or_bytes: ImageInput, top_k: int = 5) -> Prediction:
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
            data, source = await asyncio.to_thread(read_input, path_or_bytes)
        else:
            data, source = read_input(path_or_bytes)
        inputs, outputs = build_request(self._module, data, top_k)
        result = await self._call("infer", self.model, inputs, model_version=self.version, outputs=outputs)
        return read_response(result, self.model, source)

    async def classify_many(
        self,
        items: Union[Iterable[ImageInput], AsyncIterable[ImageInput]],
        top_k: int = 5,
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
            except Exception as exc:  # noqa: BLE001
                results.append(Result(item, error=to_classifier_error(exc)))
        return results

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
        if self.protocol == "grpc":
            index = await self._call("get_model_repository_index", as_json=True)
        else:
            index = await self._call("get_model_repository_index")
        return ready_models(index)

    async def is_ready(self) -> bool:
        """Tell whether every server URL is ready and serves the model; never raises.

        Returns
        -------
        bool
        """
        try:
            for index in range(len(self.urls)):
                client = self._client(index)
                ready = await asyncio.wait_for(client.is_server_ready(), self.timeout)
                ready = ready and await asyncio.wait_for(
                    client.is_model_ready(self.model, self.version), self.timeout
                )
                if not ready:
                    return False
            return True
        except Exception:  # noqa: BLE001
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
