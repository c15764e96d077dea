"""Bulk scoring of a folder of images into a resumable CSV / JSON Lines file.

The library half of ``python -m waste_client score``; the command line
(:mod:`waste_client.cli`) only parses options, prints and picks the exit code.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from tqdm import tqdm

from ._client import Classifier
from ._errors import ClassifierError
from ._report import format_table, per_image_table
from ._results import ResultWriter, error_row, prediction_row
from ._walk import list_images


@dataclass
class ScoreSummary:
    """What one scoring run did.

    Attributes
    ----------
    found : int
        Images found in the folder.
    skipped : int
        Images already in the output file (resume), not sent again.
    scored : int
        Rows written by this run (``ok + errors``).
    ok, errors : int
    labels : collections.Counter
        Rows of this run per predicted label.
    repaired : int
        Torn or duplicate rows dropped from the existing output.
    elapsed : float
        Seconds spent sending, excluding the folder walk.
    rows : list of dict
        This run's first rows, as many as ``keep_rows`` asked for.
    """

    found: int = 0
    skipped: int = 0
    scored: int = 0
    ok: int = 0
    errors: int = 0
    labels: Counter = field(default_factory=Counter)
    repaired: int = 0
    elapsed: float = 0.0
    rows: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        """float: Rows written per second of sending."""
        return self.scored / self.elapsed if self.elapsed > 0 else 0.0

    def table(self) -> str:
        """The summary as a text table (counts per label, errors, throughput).

        Returns
        -------
        str
        """
        body = [(label, n) for label, n in sorted(self.labels.items())]
        body += [
            ("(errors)", self.errors),
            ("(scored this run)", self.scored),
            ("(skipped, already done)", self.skipped),
        ]
        text = format_table(("label", "images"), body, "lr")
        return f"{text}\n{self.scored} images in {self.elapsed:.2f} s = {self.images_per_s:.1f} images/s"


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
        if time.monotonic() >= deadline:
            raise ClassifierError(
                f"model {classifier.model!r} is not ready on {','.join(classifier.urls)} "
                f"({classifier.protocol})",
                "UNAVAILABLE",
            )
        time.sleep(poll_s)


def score_folder(
    folder: str,
    classifier: Classifier,
    out: str,
    in_flight: int = 16,
    top_k: int = 3,
    follow_symlinks: bool = False,
    retry_errors: bool = False,
    progress: bool = True,
    keep_rows: int = 0,
    on_row: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> ScoreSummary:
    """Score every image under ``folder`` into ``out``, skipping what ``out`` already has.

    Each row is written and flushed as its answer arrives, so a killed run
    loses at most the requests in flight, and running again continues where
    it stopped (a torn last line is repaired, no path appears twice). An image
    that fails becomes an error row and the run goes on; transient server
    errors are retried by ``classifier`` (give it generous ``retries`` so a
    server restart only pauses the run).

    Parameters
    ----------
    folder : str
        Walked recursively, see :func:`waste_client._walk.iter_images`.
    classifier : Classifier
        Used as is and not closed.
    out : str
        ``.csv`` or ``.jsonl`` file; its ``path`` column is relative to ``folder``.
    in_flight : int
        Requests outstanding at once.
    top_k : int
        Classes kept per image in the ``top_k`` column.
    follow_symlinks : bool
        Follow links that lead out of ``folder``.
    retry_errors : bool
        Score again the paths whose existing row is an error row.
    progress : bool
        Show a tqdm progress bar on stderr.
    keep_rows : int
        Keep up to this many of this run's rows in the summary (for the
        per-image table); 0 keeps none.
    on_row : callable, optional
        Called with each row after it is written.

    Returns
    -------
    ScoreSummary

    Raises
    ------
    ClassifierError
        ``NOT_FOUND`` when ``folder`` is not a directory, ``INVALID_ARGUMENT``
        for a bad output name.
    """
    if not os.path.isdir(folder):
        raise ClassifierError(f"{folder!r} is not a directory", "NOT_FOUND")
    summary = ScoreSummary()
    with ResultWriter(out, retry_errors=retry_errors) as writer:
        summary.repaired = writer.existing.dropped
        paths = list_images(folder, follow_symlinks)
        summary.found = len(paths)
        todo = [p for p in paths if p not in writer.existing.done]
        summary.skipped = summary.found - len(todo)
        items = (os.path.join(folder, p) for p in todo)
        relpath = {os.path.join(folder, p): p for p in todo}
        start = time.perf_counter()
        with tqdm(total=len(todo), unit="img", disable=not progress, leave=False) as bar:
            for result in classifier.classify_many(items, top_k=top_k, max_in_flight=in_flight):
                path = relpath[result.item]
                if result.ok:
                    row = prediction_row(path, result.prediction)
                    summary.ok += 1
                    summary.labels[row["label"]] += 1
                else:
                    row = error_row(path, result.error, classifier.model)
                    summary.errors += 1
                writer.write(row)
                summary.scored += 1
                if len(summary.rows) < keep_rows:
                    summary.rows.append(row)
                if on_row is not None:
                    on_row(row)
                bar.update(1)
        summary.elapsed = time.perf_counter() - start
    return summary


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
        parts.append(per_image_table(summary.rows))
    if summary.repaired:
        parts.append(f"repaired the output: dropped {summary.repaired} torn/duplicate row(s)")
    parts.append(summary.table())
    return "\n\n".join(parts)
