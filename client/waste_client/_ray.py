"""The Ray Data engine of the bulk scorer (``--engine ray``).

An engine only turns source identities into results; listing, resume, the
output's identity header, the lock and the writer stay in the scorer's driver,
so every exactly-once guarantee lives in one place whichever engine runs.

The pipeline, per window of identities taken lazily from the driver::

    ray.data.from_items(identities)                      the listing, passed in
      .map_batches(_ClassifyActor, actors in a pool)     each actor: read bytes where it
                                                         runs (local or object store),
                                                         send them to the Triton servers
      .iter_batches()                                    results stream back to the driver

Faults are Ray's job, as its batch-inference examples leave them: Ray Data
creates its actors with ``max_restarts=-1`` and ``max_task_retries=-1``, so an
actor killed mid-batch is restarted and its batch sent again (results of a
failed attempt never reach the driver). A Triton server that goes away is the
client's job: every actor holds one :class:`~waste_client.Classifier` over
all URLs, whose retries move a failed request to the next URL. Should a whole
window fail anyway (the cluster itself lost), the identities without a result
are run again, and :meth:`RayEngine.results` raises only when a window makes
no progress several times in a row, so each identity is yielded at least once
or the run stops with an error the driver reports (its rerun resumes).
"""

from __future__ import annotations

import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._client import Classifier
from ._engine import DEFAULT_BATCH_SIZE, DEFAULT_IN_FLIGHT, Outcome, Pair, classify_chunk
from ._errors import ClassifierError, to_classifier_error
from ._prediction import Prediction
from ._settings import DEFAULT_TOP_K, UNSURE_OFF, ClientSettings, resolve

logger = logging.getLogger(__name__)

#: Actors in the pool. Measured on one 2-core box against one server (`python -m
#: benchmarks.scorer_defaults`, BENCHMARKS.md "The scorer's engines and speed options"): 2 actors
#: x 4 in flight within 3% of the best point (1 x 2), 4 actors 12-23% slower (they take the
#: server's cores); two actors also keep the job moving while Ray replaces a killed one. On a
#: cluster, scale with the servers (docs/SCALING.md). ``in_flight`` (requests outstanding per
#: actor) and ``batch_size`` (photos per request) mean what they mean for the local engine and
#: share its defaults.
DEFAULT_ACTORS = 2
#: Most identities per Ray Data pipeline: bounds the driver's memory on ten million
#: sources (a few tens of MB per window); each window starts its actors again
#: (seconds), so windows are large: 10^7 sources take 53 of them.
DEFAULT_WINDOW = 200_000
#: The first window: its results come back soon after listing starts, even from a
#: slowly listed object store; each next window is ten times larger up to ``window``.
FIRST_WINDOW = 1_000
#: CPUs Ray reserves per actor: an actor mostly waits on the network; the
#: image work is done by the Triton servers.
DEFAULT_ACTOR_CPUS = 0.25
#: A window that returns nothing this many times in a row stops the run.
MAX_FAILED_PASSES = 3
#: Seconds a local Ray's GCS may take to start (Ray's default: 30; its own choice for a slow
#: RocksDB-backed GCS: 120).
LOCAL_START_WAIT_S = 120
#: Tries at starting a local Ray. Ray waits a fixed 30 s for a new raylet to register with its GCS,
#: with no knob; on a loaded 2-core CI machine a start has run out of it, where trying again is
#: all a user would do.
LOCAL_START_ATTEMPTS = 2

# Identities travel as bytes: Arrow stores only valid UTF-8 strings, and a
# local name that is not (carried with os.fsdecode's surrogateescape) must
# come back to the driver unchanged.
_ENCODING = ("utf-8", "surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode(*_ENCODING)


def _decode(data: Any) -> str:
    return bytes(data).decode(*_ENCODING)


class _ClassifyActor:
    """One Ray Data actor: a client to the Triton servers, reused for every batch.

    Parameters
    ----------
    settings : ClientSettings
        Resolved in the driver (its options and ``WASTE_*`` environment), so every actor
        talks to the same servers the same way whatever its node's environment says.
    top_k, in_flight, batch_size, max_bytes : int
        As :class:`RayEngine`.
    """

    def __init__(self, settings: ClientSettings, top_k: int, in_flight: int, batch_size: int,
                 max_bytes: int):
        self.top_k, self.batch_size, self.max_bytes = top_k, batch_size, max_bytes
        self.classifier = Classifier(settings=settings.replace(concurrency=in_flight))
        self.pool = ThreadPoolExecutor(in_flight, thread_name_prefix="waste-ray")

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Score one batch of identities; every identity gets exactly one row back.

        Parameters
        ----------
        batch : dict
            ``{"identity": array of bytes}``: up to ``in_flight`` requests' worth.

        Returns
        -------
        dict of np.ndarray
            Columns ``identity``, ``label``, ``score``, ``top_k`` (JSON),
            ``model``, ``version``, ``unsure``, ``threshold`` (NaN: none), ``status``
            (empty when ok), ``message`` (bytes, as an error message may carry a
            non-UTF-8 name).
        """
        identities = [_decode(b) for b in batch["identity"]]
        chunks = [identities[i:i + self.batch_size] for i in range(0, len(identities), self.batch_size)]
        pairs: List[Pair] = []
        for part in self.pool.map(self._score_chunk, chunks):
            pairs.extend(part)
        return _to_columns(pairs)

    def _score_chunk(self, identities: List[str]) -> List[Pair]:
        try:
            return classify_chunk(self.classifier, identities, self.top_k, self.max_bytes)
        except Exception as exc:  # noqa: BLE001 - never lose a chunk's photos
            error = to_classifier_error(exc)
            return [(identity, error) for identity in identities]


def _to_columns(pairs: List[Pair]) -> Dict[str, np.ndarray]:
    names = ("identity", "label", "score", "top_k", "model", "version", "unsure", "threshold", "status", "message")
    rows: Dict[str, list] = {name: [] for name in names}
    for identity, outcome in pairs:
        if isinstance(outcome, Prediction):
            threshold = math.nan if outcome.threshold is None else outcome.threshold
            values = (_encode(identity), outcome.label, outcome.score, json.dumps(outcome.top_k),
                      outcome.model, outcome.version, outcome.unsure, threshold, "", b"")
        else:
            values = (_encode(identity), "", 0.0, "[]", "", "", False, math.nan, outcome.status,
                      _encode(outcome.message))
        for name, value in zip(names, values):
            rows[name].append(value)
    return {k: np.array(v, dtype=np.float64 if k in ("score", "threshold") else object) for k, v in rows.items()}


def _from_columns(batch: Dict[str, np.ndarray]) -> Iterator[Pair]:
    for i, raw in enumerate(batch["identity"]):
        identity = _decode(raw)
        status = str(batch["status"][i])
        if status:
            yield identity, ClassifierError(_decode(batch["message"][i]), status)
        else:
            pairs = [(str(label), float(score)) for label, score in json.loads(batch["top_k"][i])]
            threshold = float(batch["threshold"][i])
            yield identity, Prediction(str(batch["label"][i]), float(batch["score"][i]), pairs,
                                       str(batch["model"][i]), str(batch["version"][i]), identity,
                                       bool(batch["unsure"][i]), None if math.isnan(threshold) else threshold)


def _stop_half_started_node(exc: BaseException) -> None:
    """Stop the processes of a local Ray whose start failed part-way.

    `ray.init` raises from inside the node's constructor, so the node never becomes Ray's global
    one and `ray.shutdown` does not know it; its GCS and raylet would live on until this process
    exits (Ray's reaper), beside the next attempt's. The half-built node is the ``self`` of a
    frame in the traceback.
    """
    try:
        from ray._private.node import Node
    except ImportError:  # pragma: no cover - a Ray without the module: the reaper cleans up at exit
        return
    tb = exc.__traceback__
    while tb is not None:
        node = tb.tb_frame.f_locals.get("self")
        if isinstance(node, Node):
            try:
                node.kill_all_processes(check_alive=False, allow_graceful=False)
            except Exception:  # noqa: BLE001 - best effort; the reaper still stops them at exit
                logger.debug("could not stop a half-started Ray node", exc_info=True)
            return
        tb = tb.tb_next


class RayEngine:
    """Score identities on a Ray cluster (or a local Ray) with a pool of client actors.

    Parameters
    ----------
    urls : str or sequence of str, optional
        Triton servers (``host:port``), all given to every actor; default from ``settings``
        or ``$WASTE_URL``.
    protocol, model : str, optional
        Default from ``settings`` or the ``WASTE_*`` environment.
    top_k : int
    actors : int
        Actors in the pool (Ray Data ``ActorPoolStrategy(size=actors)``).
    in_flight : int
        Requests outstanding at once per actor.
    batch_size : int
        Photos per request; an actor call gets ``in_flight * batch_size`` identities.
    max_bytes : int, optional
        Larger sources become ``INVALID_ARGUMENT`` results without being read; default
        ``settings.max_bytes`` (what the server accepts).
    ray_address : str, optional
        Cluster to join; default ``$RAY_ADDRESS``, and without it a local Ray is started
        for this engine and stopped by :meth:`close`. When Ray is already initialised in
        this process, that connection is used as it is.
    settings : ClientSettings, optional
        Connection settings (TLS, auth, retries...); None reads the ``WASTE_*`` environment
        of this process. Resolved here and shipped to the actors as they are, except that a
        ``"model"`` ``unsure_threshold`` is first read here, on the driver, once
        (:meth:`unsure_threshold`), and the actors get the number: every actor marks
        predictions against the same threshold, and none asks the server for it.
    window : int
        Most identities per Ray Data pipeline (see :data:`DEFAULT_WINDOW`; the first
        pipelines are smaller, :data:`FIRST_WINDOW`).
    actor_cpus : float
        CPUs Ray reserves per actor.
    verbose : bool
        Let Ray show its logs and progress bars (quiet otherwise).
    **client_options
        Any other field of :class:`ClientSettings` (``version``, ``timeout``, ``retries``, ...).

    Raises
    ------
    ClassifierError
        ``INVALID_ARGUMENT`` for a bad option, ``FAILED_PRECONDITION`` when Ray Data is not
        installed (``pip install 'waste-client[ray]'``), ``UNAVAILABLE`` when Ray cannot be
        started or joined.
    """

    def __init__(self, urls: Union[str, Sequence[str], None] = None, protocol: Optional[str] = None,
                 model: Optional[str] = None, top_k: int = DEFAULT_TOP_K, actors: int = DEFAULT_ACTORS,
                 in_flight: int = DEFAULT_IN_FLIGHT, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_bytes: Optional[int] = None, ray_address: Optional[str] = None, *,
                 settings: Optional[ClientSettings] = None, window: int = DEFAULT_WINDOW,
                 actor_cpus: float = DEFAULT_ACTOR_CPUS, verbose: bool = False, **client_options: Any):
        self.settings = resolve(settings, urls, dict(protocol=protocol, model=model, **client_options))
        max_bytes = self.settings.max_bytes if max_bytes is None else max_bytes
        for name, value in (("actors", actors), ("in_flight", in_flight), ("batch_size", batch_size),
                            ("window", window), ("top_k", top_k), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ClassifierError(f"{name} must be a positive int, not {value!r}", "INVALID_ARGUMENT")
        # A client built here checks the settings once, in the driver, instead of in every
        # actor (where a bad option would fail each restart again).
        Classifier(settings=self.settings).close()
        self.top_k, self.actors, self.in_flight, self.batch_size = top_k, actors, in_flight, batch_size
        self.max_bytes, self.window, self.actor_cpus = max_bytes, window, actor_cpus
        self.verbose = verbose
        # A one-tuple once resolved: None is a resolved value too (the model has no threshold).
        self._threshold: Optional[Tuple[Optional[float]]] = None
        self._ray = _import_ray()
        self._owns_ray = False
        self._restore_quiet: Any = None
        try:
            self._connect(ray_address)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "RayEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _connect(self, address: Optional[str]) -> None:
        ray = self._ray
        self._restore_quiet = _quiet_ray_data(ray, self.verbose)
        if ray.is_initialized():
            logger.info("using the Ray connection already open in this process")
            return
        address = address or os.environ.get("RAY_ADDRESS") or None
        options: Dict[str, Any] = {
            "logging_level": logging.INFO if self.verbose else logging.ERROR,
            "log_to_driver": self.verbose,
            # The actors run the driver's own copy of this package (Ray ships it), so nodes
            # carrying another waste-client version cannot disagree with the driver.
            "runtime_env": {"py_modules": [_package()]},
        }
        try:
            if address:
                ray.init(address=address, **options)
            else:
                # Ray gives its new GCS 30 s to publish its port; on a loaded 2-core machine its
                # 40 MB binary once took longer and the job failed before it began. A user's
                # own RAY_gcs_server_port_wait_time_s still wins.
                os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(LOCAL_START_WAIT_S))
                self._start_local(options)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
            where = address or "a local Ray"
            raise ClassifierError(f"cannot start or join Ray ({where}): {exc}", "UNAVAILABLE") from exc
        self._owns_ray = True
        _cluster_errors_to_log(ray)
        logger.info("Ray %s: %s", "joined" if address else "started locally",
                    ray.cluster_resources())

    def _start_local(self, options: Dict[str, Any]) -> None:
        ray = self._ray
        for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
            try:
                # "local", not None: None would join a cluster `ray start` left on this machine.
                ray.init(address="local", include_dashboard=False, **options)
                return
            except Exception as exc:  # noqa: BLE001 - as in _connect
                _stop_half_started_node(exc)
                ray.shutdown()
                if attempt == LOCAL_START_ATTEMPTS:
                    raise
                logger.warning("starting a local Ray failed (%s); trying again (%d of %d)", exc, attempt + 1,
                               LOCAL_START_ATTEMPTS)

    def unsure_threshold(self) -> Optional[float]:
        """The "not sure" threshold the actors apply, resolved on the driver the first time.

        Returns
        -------
        float or None
            As :meth:`waste_client.Classifier.unsure_threshold` of these settings.

        Raises
        ------
        ClassifierError
            When the server cannot be reached to read the model's threshold.
        """
        if self._threshold is None:
            with Classifier(settings=self.settings) as classifier:
                self._threshold = (classifier.unsure_threshold(),)
        return self._threshold[0]

    def _actor_settings(self) -> ClientSettings:
        threshold = self.unsure_threshold()
        return self.settings.replace(unsure_threshold=UNSURE_OFF if threshold is None else threshold)

    def results(self, identities: Iterable[str]) -> Iterator[Pair]:
        """Score ``identities``; yield ``(identity, Prediction or ClassifierError)`` as they finish.

        ``identities`` is consumed lazily, one window at a time, so listing and
        scoring overlap. Every identity is yielded at least once (a rare repeat
        after a fault is the driver's to drop), in no particular order.

        Parameters
        ----------
        identities : iterable of str
            Absolute paths or URLs, as :func:`waste_client._sources.iter_sources` gives them.

        Yields
        ------
        (str, Prediction or ClassifierError)

        Raises
        ------
        ClassifierError
            ``UNAVAILABLE`` when Ray fails a window :data:`MAX_FAILED_PASSES`
            times in a row without returning any result.
        """
        source = iter(identities)
        size = min(FIRST_WINDOW, self.window)
        settings: Optional[ClientSettings] = None
        while True:
            window = list(islice(source, size))
            if not window:
                return
            if settings is None:
                settings = self._actor_settings()
            yield from self._run_window(window, settings)
            size = min(size * 10, self.window)

    def _run_window(self, window: List[str], settings: ClientSettings) -> Iterator[Pair]:
        missing = set(window)
        failed_passes = 0
        while missing:
            todo = [i for i in window if i in missing]
            returned = 0
            try:
                for identity, outcome in self._pipeline(todo, settings):
                    returned += 1
                    missing.discard(identity)
                    yield identity, outcome
                if missing:
                    logger.warning("Ray returned no result for %d identities; running them again", len(missing))
            except self._ray.exceptions.RayError as exc:  # a lost node, an actor past its restarts...
                logger.warning("Ray pipeline failed after %d results (%s); running the other %d again",
                               returned, exc, len(missing))
                last = exc
            else:
                last = None
            failed_passes = 0 if returned else failed_passes + 1
            if failed_passes >= MAX_FAILED_PASSES:
                reason = f": {last}" if last is not None else ""
                raise ClassifierError(f"the Ray pipeline failed {failed_passes} times in a row without "
                                      f"a result{reason}", "UNAVAILABLE")

    def _pipeline(self, identities: List[str], settings: ClientSettings) -> Iterator[Pair]:
        ray = self._ray
        per_call = self.in_flight * self.batch_size
        # One block per actor call: results reach the driver (and its file) call by call,
        # and an actor killed mid-job costs Ray only its few queued calls.
        blocks = math.ceil(len(identities) / per_call)
        ds = ray.data.from_items([{"identity": _encode(i)} for i in identities], override_num_blocks=blocks)
        ds = ds.map_batches(
            _ClassifyActor,
            fn_constructor_kwargs={
                "settings": settings, "top_k": self.top_k, "in_flight": self.in_flight,
                "batch_size": self.batch_size, "max_bytes": self.max_bytes,
            },
            compute=ray.data.ActorPoolStrategy(size=self.actors),
            batch_size=per_call,
            batch_format="numpy",
            num_cpus=self.actor_cpus,
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            yield from _from_columns(batch)

    def close(self) -> None:
        """Stop the local Ray this engine started (a joined cluster stays up). Safe to call twice.

        Ray Data's progress settings and the Ray loggers' levels are put back as they were.

        Returns
        -------
        None
        """
        if self._owns_ray:
            self._owns_ray = False
            self._ray.shutdown()
        restore, self._restore_quiet = self._restore_quiet, None
        if restore is not None:
            restore()


def _package() -> str:
    import waste_client

    return os.path.dirname(os.path.abspath(waste_client.__file__))


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - the engine needs the Data library, not only core
    except ImportError:
        raise ClassifierError("the Ray engine needs Ray Data: pip install 'waste-client[ray]'",
                              "FAILED_PRECONDITION") from None
    return ray


def _cluster_errors_to_log(ray: Any) -> None:
    """Send the cluster's error messages for this job (a worker died...) to logging.

    Ray's driver prints them on stdout whatever ``log_to_driver`` says, where they would
    corrupt the scorer's ``--json`` output; Ray 2.60 offers no option for it, so the one
    function its listener thread calls is replaced (and left alone if it ever moves).
    """
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    if not callable(getattr(worker, "print_to_stdstream", None)):
        return

    def to_log(data: Dict[str, Any], ignore_prefix: bool = False) -> None:
        for line in data.get("lines", ()):
            logger.warning("Ray (%s): %s", data.get("pid", "?"), line)

    worker.print_to_stdstream = to_log


def _quiet_ray_data(ray: Any, verbose: bool) -> Any:
    """Keep Ray Data's progress bars, banners and logs off unless ``verbose``; return the undo."""
    ctx = ray.data.DataContext.get_current()
    loggers = [logging.getLogger(name) for name in ("ray", "ray.data")]
    saved = (ctx.enable_progress_bars, ctx.print_on_execution_start, [lg.level for lg in loggers])

    def restore() -> None:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved[0], saved[1]
        for lg, level in zip(loggers, saved[2]):
            lg.setLevel(level)

    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    if not verbose:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        # Ray's C++ core logs notices at error level to this process's stderr (e.g. that
        # actor constructor arguments live in the object store); a failure that matters
        # reaches us as an exception anyway. Read when Ray starts in this process.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    return restore
