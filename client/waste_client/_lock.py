"""One writer per output file: an advisory lock beside it.

``results.csv`` is guarded by ``results.csv.lock``, locked with ``flock``. The kernel drops
the lock when its process ends, however it ends (SIGKILL included), so a killed scorer never
blocks the next run; the file itself stays (removing a lock file races with a process
that is opening it) and holds the holder's pid and host, for the refusal message.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from typing import Any, Optional

from ._errors import ClassifierError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)


class OutputLock:
    """An exclusive, non-blocking lock on ``path + ".lock"``.

    Parameters
    ----------
    path : str
        The output file the lock guards.

    Raises
    ------
    ClassifierError
        ``FAILED_PRECONDITION`` from :meth:`acquire` when another process holds it.
    """

    def __init__(self, path: str):
        self.path = path
        self.lock_path = path + ".lock"
        self._fd: Optional[int] = None

    def acquire(self) -> "OutputLock":
        """Take the lock at once or refuse.

        Returns
        -------
        OutputLock
            ``self``.

        Raises
        ------
        ClassifierError
            ``FAILED_PRECONDITION`` naming the process that holds the lock.
        """
        if fcntl is None:  # pragma: no cover
            logger.warning("no file locking on this platform: run one scorer per output file")
            return self
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise ClassifierError(
                f"another scorer is writing {self.path} ({holder}); wait for it to finish, "
                "or score into another --out",
                "FAILED_PRECONDITION",
            ) from None
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (the lock file stays). Safe to call twice.

        Returns
        -------
        None
        """
        fd, self._fd = self._fd, None
        if fd is not None:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
