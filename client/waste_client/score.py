"""Bulk scoring of photos into a resumable CSV / JSON Lines file: the driver.

The library half of ``python -m waste_client score``; the command line
(:mod:`waste_client.cli`) only parses options, prints and picks the exit code.

The driver owns everything that makes a job exactly-once: listing (:mod:`._sources`), the
shard filter, the output's identity header and lock, resume and de-duplication, and the
writer (:mod:`._results`). An engine (:mod:`._engine`, or the Ray engine) only turns
identities into predictions or errors.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from tqdm import tqdm

from ._client import Classifier
from ._engine import DEFAULT_BATCH_SIZE, Engine, LocalEngine
from ._errors import ClassifierError
from ._identity import parse_shard, shard_of
from ._labels_report import LabelReport, build_label_report
from ._report import format_table, per_image_table
from ._results import UNSURE, ResultWriter, error_row, make_header, prediction_row
from ._settings import ENV_VARS, UNSURE_FROM_MODEL, ClientSettings
from ._sources import iter_sources, source_id

logger = logging.getLogger(__name__)


@dataclass
class ScoreSummary:
    """What one scoring run did.

    Attributes
    ----------
    out : str
        The output file.
    found : int
        Photos listed (in this shard).
    skipped : int
        Photos already in the output (resume), not sent again.
    scored : int
        Rows written by this run (``ok + errors``).
    ok, errors : int
    transient : int
        Error rows of this run that the next run retries (server away, timeouts).
    unsure : int
        Rows of this run labelled ``unsure`` (best score below ``min_score``).
    min_score : float or None
        The "not sure" threshold applied (the header's); None: no row is labelled ``unsure``.
    min_score_from : str
        Where it came from: ``"model"`` (the model's own, as the client read it),
        ``"--min-score"``, or the ``WASTE_UNSURE_THRESHOLD`` variable.
    labels : collections.Counter
        Rows of this run per label.
    repaired : int
        Torn or duplicate rows dropped from the existing output.
    retried : int
        Error rows of earlier runs dropped so that this run scores them again.
    other_shards : int
        Photos listed that belong to other shards.
    elapsed : float
        Seconds from the start of listing to the last row.
    rows : list of dict
        This run's first rows, as many as ``keep_rows`` asked for.
    report : LabelReport or None
        Accuracy against the folder names, when the source is a labelled folder.
    sources : list of str
        The output's sources (its header's), this run's among them.
    """

    out: str = ""
    found: int = 0
    skipped: int = 0
    scored: int = 0
    ok: int = 0
    errors: int = 0
    transient: int = 0
    unsure: int = 0
    min_score: Optional[float] = None
    min_score_from: str = "--min-score"
    labels: Counter = field(default_factory=Counter)
    repaired: int = 0
    retried: int = 0
    other_shards: int = 0
    elapsed: float = 0.0
    rows: List[Dict[str, Any]] = field(default_factory=list)
    report: Optional[LabelReport] = None
    sources: List[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        """float: Rows written per second."""
        return self.scored / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> Dict[str, Any]:
        """The summary as plain JSON-ready data (``--json``).

        Returns
        -------
        dict
        """
        data = {
            "out": self.out,
            "found": self.found,
            "skipped": self.skipped,
            "scored": self.scored,
            "ok": self.ok,
            "errors": self.errors,
            "transient_errors": self.transient,
            "unsure": self.unsure,
            "min_score": self.min_score,
            "min_score_from": self.min_score_from,
            "labels": dict(sorted(self.labels.items())),
            "repaired": self.repaired,
            "retried": self.retried,
            "other_shards": self.other_shards,
            "elapsed_s": round(self.elapsed, 3),
            "images_per_s": round(self.images_per_s, 2),
        }
        if self.report is not None:
            data["labelled_folders"] = self.report.as_dict()
        return data

    def table(self) -> str:
        """The summary as a text table (counts per label, errors, throughput).

        Returns
        -------
        str
        """
        body = [(label, n) for label, n in sorted(self.labels.items()) if label != UNSURE]
        if self.unsure:
            body.append((f"({UNSURE}: below the threshold)", self.unsure))
        body += [
            ("(errors)", self.errors),
            ("(scored this run)", self.scored),
            ("(skipped, already done)", self.skipped),
        ]
        if self.other_shards:
            body.append(("(other shards)", self.other_shards))
        text = format_table(("label", "images"), body, "lr")
        lines = [text, f"{self.scored} images in {self.elapsed:.2f} s = {self.images_per_s:.1f} images/s",
                 self.threshold_line()]
        if self.transient:
            lines.append(f"{self.transient} row(s) failed transiently (server away or slow): "
                         "run the same command again to retry them")
        return "\n".join(lines)

    def threshold_line(self) -> str:
        """The summary's line on the "not sure" threshold: its value and where it came from.

        Returns
        -------
        str
        """
        value = "none" if self.min_score is None else f"{self.min_score:.4g}"
        return f'"{UNSURE}" threshold: {value} (from: {self.min_score_from})'


def unsure_origin(settings: ClientSettings, option_given: bool = False) -> str:
    """Where a job's "not sure" threshold comes from, for its summary.

    Parameters
    ----------
    settings : ClientSettings
        The settings the threshold was resolved with.
    option_given : bool
        The command line's ``--min-score`` was given (it overrides the environment).

    Returns
    -------
    str
        ``"--min-score"``, ``"model"`` or ``"WASTE_UNSURE_THRESHOLD"``.
    """
    if option_given:
        return "--min-score"
    if settings.unsure_threshold == UNSURE_FROM_MODEL:
        return "model"
    return ENV_VARS["unsure_threshold"]


def wait_until_ready(classifier: Classifier, wait_s: float, poll_s: float = 0.5) -> None:
    """Block until the server and model are ready, at most ``wait_s`` seconds.

    Parameters
    ----------
    classifier : Classifier
    wait_s : float
    poll_s : float

    Raises
    ------
    ClassifierError
        ``UNAVAILABLE`` when it is still not ready after ``wait_s``.
    """
    deadline = time.monotonic() + wait_s
    while not classifier.is_ready():
        reason = getattr(classifier, "readiness_error", None)
        if reason is not None and not reason.transient:
            raise reason  # a refused key or an untrusted certificate: waiting changes nothing
        if time.monotonic() >= deadline:
            raise ClassifierError(
                f"model {classifier.model!r} is not ready on {','.join(classifier.urls)} "
                f"({classifier.protocol})" + (f": {reason.message}" if reason is not None else ""),
                "UNAVAILABLE",
            )
        time.sleep(poll_s)


def score(
    engine: Engine,
    out: str,
    *,
    source: Optional[str] = None,
    files_from: Optional[str] = None,
    model: str,
    model_version: str = "",
    top_k: int = 3,
    min_score: Optional[float] = None,
    min_score_from: str = "--min-score",
    shard: Optional[str] = None,
    follow_symlinks: bool = False,
    retry_errors: bool = False,
    append_source: bool = False,
    labels_from_folders: Optional[bool] = None,
    progress: bool = True,
    keep_rows: int = 0,
    on_row: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> ScoreSummary:
    """Score every photo of a source into ``out``, each exactly once across runs.

    Listing streams into the engine (the first request goes out while listing goes on).
    Each row reaches the operating system as soon as its answer arrives, before it counts
    as done, so a killed run loses at most the requests in flight and running the same
    command again continues where it stopped. A photo that fails becomes an error row and
    the run goes on; rows of transient failures are scored again by the next run.

    Parameters
    ----------
    engine : Engine
        Turns identities into results (:class:`waste_client._engine.LocalEngine`, the Ray
        engine); used as is, not closed.
    out : str
        ``.csv`` or ``.jsonl`` output (see :mod:`waste_client._results`).
    source : str, optional
        Folder, file or URL (:func:`waste_client._sources.iter_sources`).
    files_from : str, optional
        A list of paths/URLs, ``"-"`` for standard input.
    model, model_version : str
        Recorded in the header (the engine's client decides what is asked).
    top_k : int
    min_score : float, optional
        Label ``unsure`` below this best score (None: never); recorded in the header, so a rerun
        with another threshold is refused. The command line passes the model's threshold as the
        client resolves it (:meth:`waste_client.Classifier.unsure_threshold`) unless
        ``--min-score`` is given.
    min_score_from : str
        Where ``min_score`` came from, for the summary (:func:`unsure_origin`).
    shard : str, optional
        ``"I/N"``: score only the identities of shard I of N.
    follow_symlinks : bool
    retry_errors : bool
        Also score again the photos of permanent error rows.
    append_source : bool
        Add this source to an output written for another source (same model and options).
    labels_from_folders : bool, optional
        Report accuracy against the top-level folder names; None decides by itself (when
        every top-level folder is a class name).
    progress : bool
        tqdm bar on stderr (listed so far, scored).
    keep_rows : int
        Keep up to this many of this run's rows in the summary.
    on_row : callable, optional
        Called with each row after it is written.

    Returns
    -------
    ScoreSummary

    Raises
    ------
    ClassifierError
        ``FILE_NOT_FOUND`` for a missing source, ``INVALID_ARGUMENT`` for a bad output name
        or an output of another job, ``FAILED_PRECONDITION`` when another scorer writes it.
    """
    shard_index, shard_count = parse_shard(shard) if shard else (0, 1)
    header = make_header([source_id(source, files_from)], model, model_version, top_k, min_score,
                         shard)
    summary = ScoreSummary(out=out, min_score=min_score, min_score_from=min_score_from)
    start = time.perf_counter()
    # A missing folder or prefix fails here, before an output file is created for it.
    listing = iter_sources(source, files_from, follow_symlinks)
    first = next(listing, None)
    listed = itertools.chain([] if first is None else [first], listing)
    with ResultWriter(out, header, retry_errors=retry_errors, append_source=append_source) as writer:
        summary.repaired = writer.existing.dropped
        summary.retried = writer.existing.retried
        if writer.existing.rows or summary.retried:
            logger.info("resuming %s: %d photo(s) done, %d error row(s) to score again", out,
                        writer.existing.rows, summary.retried)
        if summary.repaired:
            logger.warning("%s: dropped %d torn or duplicate row(s) left by an earlier run", out,
                           summary.repaired)
        done = writer.existing.done
        bar = tqdm(total=0, unit="img", disable=not progress, leave=False, dynamic_ncols=True)
        queued: Set[str] = set()

        def todo() -> Iterator[str]:
            for identity in listed:
                if shard_count > 1 and shard_of(identity, shard_count) != shard_index:
                    summary.other_shards += 1
                    continue
                summary.found += 1
                if identity in done:
                    summary.skipped += 1
                elif identity not in queued:  # listed twice (e.g. in --files-from): once
                    queued.add(identity)
                    bar.total += 1
                    bar.set_postfix(listed=summary.found, refresh=False)
                    yield identity

        try:
            for identity, outcome in engine.results(todo()):
                if identity in done:  # an engine's repeat: written once
                    continue
                row = _row(identity, outcome, model, min_score, summary)
                writer.write(row)
                done.add(identity)
                summary.scored += 1
                if len(summary.rows) < keep_rows:
                    summary.rows.append(row)
                if on_row is not None:
                    on_row(row)
                bar.update(1)
        finally:
            bar.close()
            summary.elapsed = time.perf_counter() - start
        sources = summary.sources = list(writer.header["sources"])
    if labels_from_folders is not False and files_from is None:
        summary.report = build_label_report(out, sources, force=bool(labels_from_folders))
    return summary


def _row(identity: str, outcome: Any, model: str, min_score: Optional[float],
         summary: ScoreSummary) -> Dict[str, Any]:
    if isinstance(outcome, ClassifierError):
        summary.errors += 1
        summary.transient += outcome.transient
        return error_row(identity, outcome, model)
    row = prediction_row(identity, outcome, min_score)
    summary.ok += 1
    summary.unsure += row["label"] == UNSURE
    summary.labels[row["label"]] += 1
    return row


def score_folder(
    folder: str,
    classifier: Classifier,
    out: str,
    in_flight: int = 4,
    top_k: int = 3,
    batch_size: int = DEFAULT_BATCH_SIZE,
    follow_symlinks: bool = False,
    retry_errors: bool = False,
    progress: bool = True,
    keep_rows: int = 0,
    on_row: Optional[Callable[[Dict[str, Any]], None]] = None,
    **options: Any,
) -> ScoreSummary:
    """Score a folder (or URL) with a :class:`Classifier` in this process: :func:`score` with a
    :class:`waste_client._engine.LocalEngine`.

    Parameters
    ----------
    folder : str
    classifier : Classifier
        Used as is and not closed.
    out : str
    in_flight : int
        Requests outstanding at once.
    top_k : int
    batch_size : int
        Photos per request.
    follow_symlinks, retry_errors, progress, keep_rows, on_row
        As in :func:`score`.
    **options
        Further keywords of :func:`score` (``min_score``, ``shard``, ...). Without ``min_score``
        the classifier's threshold applies (:meth:`waste_client.Classifier.unsure_threshold`: the
        model's own by default), as on the command line.

    Returns
    -------
    ScoreSummary

    Raises
    ------
    ClassifierError
        As :func:`score`; also when the model's threshold is to be read and no server answers
        (before the output is touched: its header must record the threshold).
    """
    if "min_score" not in options:
        options["min_score"] = classifier.unsure_threshold()
        options.setdefault("min_score_from", unsure_origin(classifier.settings))
    engine = LocalEngine(classifier, top_k=top_k, in_flight=in_flight, batch_size=batch_size)
    try:
        return score(engine, out, source=folder, model=classifier.model,
                     model_version=classifier.version, top_k=top_k,
                     follow_symlinks=follow_symlinks, retry_errors=retry_errors,
                     progress=progress, keep_rows=keep_rows, on_row=on_row, **options)
    finally:
        engine.close()


def render_report(summary: ScoreSummary, per_image: bool) -> str:
    """The text the command prints at the end.

    Parameters
    ----------
    summary : ScoreSummary
    per_image : bool
        Put the per-image table first (of the rows kept with ``keep_rows``).

    Returns
    -------
    str
    """
    parts = []
    if per_image and summary.rows:
        root = summary.sources[0] if len(summary.sources) == 1 else ""
        parts.append(per_image_table(summary.rows, root))
    if summary.repaired:
        parts.append(f"repaired the output: dropped {summary.repaired} torn/duplicate row(s)")
    if summary.retried:
        parts.append(f"scored again {summary.retried} photo(s) whose earlier row was an error "
                     "(transient, or --retry-errors)")
    parts.append(summary.table())
    if summary.report is not None:
        parts.append(summary.report.text())
    return "\n\n".join(parts)
