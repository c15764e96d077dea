"""A small pool of daemon worker threads for the blocking classifier.

``concurrent.futures.ThreadPoolExecutor`` joins its workers when the interpreter exits, so after
Ctrl-C a worker blocked on a hung server (HTTP has no way to interrupt a read from another
thread) would hold the process for up to a whole request timeout. These workers are daemons:
the process exits at once, and results already written are intact because writing is the
caller's thread.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, List, Optional, Tuple


class DaemonPool:
    """``submit`` work to ``size`` daemon threads; ``shutdown`` never waits for a hung call.

    Parameters
    ----------
    size : int
    name : str
        Thread name prefix.
    """

    def __init__(self, size: int, name: str = "waste-client"):
        self.size = size
        self._queue: "queue.SimpleQueue[Optional[Tuple[Future, Callable[..., Any], tuple]]]" = queue.SimpleQueue()
        self._threads: List[threading.Thread] = []
        for i in range(size):
            thread = threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._closed = False

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                future.set_exception(exc)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on a worker.

        Returns
        -------
        concurrent.futures.Future
        """
        if self._closed:
            raise RuntimeError("the pool is shut down")
        future: Future = Future()
        self._queue.put((future, fn, args))
        return future

    def shutdown(self, wait: bool = True, cancel: bool = True) -> None:
        """Stop the workers once the work queued before is done (or cancelled).

        Parameters
        ----------
        wait : bool
            Wait for the running calls to end.
        cancel : bool
            Cancel the queued work that has not started.
        """
        self._closed = True
        while cancel:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
