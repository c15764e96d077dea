"""The scorer's output file: CSV or JSON Lines with an identity header, appended, resumable.

Layout (format 2)
-----------------
The first line records what produced the file (:data:`HEADER_KEY`: the format version, the
sources, model, requested model version, top-k, min-score and shard; ``min_score`` is the "not
sure" threshold the rows were labelled with, the model's own unless ``--min-score`` said otherwise,
null for none)::

    JSON Lines:  {"waste_score_results": 2, "sources": [...], "model": ..., ...}
    CSV:         # waste_score_results {"waste_score_results": 2, "sources": [...], ...}
                 path,label,score,top_k,model,version,error

then one row per photo, keyed by its identity (absolute path or URL, escaped by
:mod:`waste_client._identity`), so every row is one physical line. Read the CSV with
``pandas.read_csv(path, skiprows=1)``.

Resuming (:class:`ResultWriter`) keeps complete rows, refuses a file written by another job
(another source, model, top-k, ...), and drops, so that they are scored again: a torn last
line, duplicates, rows of transient failures, and with ``retry_errors`` every error row.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from ._errors import ClassifierError
from ._identity import escape, unescape
from ._lock import OutputLock
from ._prediction import Prediction

logger = logging.getLogger(__name__)

COLUMNS = ("path", "label", "score", "top_k", "model", "version", "error")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
#: Key of the header record; its value is the version of this file layout.
HEADER_KEY = "waste_score_results"
FORMAT_VERSION = 2
#: Header fields that must match for a run to resume a file (sources are checked apart).
JOB_FIELDS = ("model", "model_version", "top_k", "min_score", "shard")
#: The label written instead of a class when the best score is below the job's threshold
#: (``min_score``: the model's own, or ``--min-score``).
UNSURE = "unsure"
#: Seconds between fsyncs: every row reaches the operating system when written (a killed
#: process loses nothing written); an fsync per row would cost more than the scoring.
FSYNC_EVERY_S = 2.0


def output_format(path: str) -> str:
    """Pick the format from the output file's extension.

    Parameters
    ----------
    path : str

    Returns
    -------
    str
        ``"csv"`` or ``"jsonl"``.

    Raises
    ------
    ClassifierError
        ``INVALID_ARGUMENT`` for another extension.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ClassifierError(f"output {path!r} must end in .csv or .jsonl", "INVALID_ARGUMENT")
    return FORMATS[ext]


def _one_line(text: str) -> str:
    # A row must stay one physical line: that is what makes a torn row detectable.
    return " ".join(str(text).split())


def prediction_row(identity: str, prediction: Prediction, min_score: Optional[float] = None) -> Dict[str, Any]:
    """The output row of a classified photo.

    Parameters
    ----------
    identity : str
    prediction : Prediction
    min_score : float, optional
        Below this best score the label is :data:`UNSURE` (score and top-k stay).

    Returns
    -------
    dict
        Keys are :data:`COLUMNS`; ``top_k`` is a list of ``[label, score]``.
    """
    unsure = min_score is not None and prediction.score < min_score
    return {
        "path": identity,
        "label": UNSURE if unsure else prediction.label,
        "score": prediction.score,
        "top_k": [[label, score] for label, score in prediction.top_k],
        "model": prediction.model,
        "version": prediction.version,
        "error": "",
    }


def error_row(identity: str, error: ClassifierError, model: str) -> Dict[str, Any]:
    """The output row of a photo that failed.

    Parameters
    ----------
    identity : str
    error : ClassifierError
    model : str

    Returns
    -------
    dict
        ``error`` is ``"STATUS: message"``, the prediction columns are empty.
    """
    return {
        "path": identity,
        "label": "",
        "score": None,
        "top_k": [],
        "model": model,
        "version": "",
        "error": _one_line(f"{error.status}: {error.message}"),
    }


def error_status(error: str) -> str:
    """The status of an ``error`` column (``"UNAVAILABLE: ..."`` -> ``"UNAVAILABLE"``).

    Parameters
    ----------
    error : str

    Returns
    -------
    str
    """
    return error.split(":", 1)[0].strip()


def is_transient_error(error: str) -> bool:
    """Tell whether an ``error`` column records a failure that may pass (retried on resume).

    Parameters
    ----------
    error : str

    Returns
    -------
    bool
        True for the client's transient statuses (server away, timeouts, connection lost).
    """
    return bool(error) and ClassifierError("", error_status(error)).transient


def make_header(
    sources: List[str],
    model: str,
    model_version: str = "",
    top_k: int = 3,
    min_score: Optional[float] = None,
    shard: Optional[str] = None,
) -> Dict[str, Any]:
    """The header record of a new output file.

    Parameters
    ----------
    sources : list of str
        Canonical source names (:func:`waste_client._sources.source_id`).
    model, model_version : str
        The model asked for; ``""`` is the server's choice of version.
    top_k : int
    min_score : float, optional
    shard : str, optional
        ``"I/N"``.

    Returns
    -------
    dict
    """
    from . import __version__

    return {
        HEADER_KEY: FORMAT_VERSION,
        "sources": list(sources),
        "model": model,
        "model_version": str(model_version),
        "top_k": int(top_k),
        "min_score": min_score,
        "shard": shard,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scorer": __version__,
    }


def _header_line(fmt: str, header: Dict[str, Any]) -> str:
    text = json.dumps(header)  # ASCII: a source name that is not UTF-8 survives as \\udcXX
    return text if fmt == "jsonl" else f"# {HEADER_KEY} {text}"


def _parse_header(fmt: str, line: str) -> Optional[Dict[str, Any]]:
    if fmt == "csv":
        prefix = f"# {HEADER_KEY} "
        if not line.startswith(prefix):
            return None
        line = line[len(prefix):]
    try:
        header = json.loads(line)
    except ValueError:
        return None
    return header if isinstance(header, dict) and HEADER_KEY in header else None


def format_row(fmt: str, row: Dict[str, Any]) -> str:
    """One row as one line of the file (no newline).

    Parameters
    ----------
    fmt : {"csv", "jsonl"}
    row : dict

    Returns
    -------
    str
    """
    values = dict(row)
    values["path"] = escape(row["path"])
    if fmt == "jsonl":
        return json.dumps({k: values[k] for k in COLUMNS}, ensure_ascii=False)
    values["top_k"] = json.dumps(row["top_k"]) if row["top_k"] else ""
    values["score"] = "" if row["score"] is None else repr(float(row["score"]))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([values[k] for k in COLUMNS])
    return buf.getvalue()


def parse_row(fmt: str, line: str) -> Optional[Dict[str, Any]]:
    """Parse one line written by :func:`format_row`; None if it is not a row.

    Parameters
    ----------
    fmt : {"csv", "jsonl"}
    line : str

    Returns
    -------
    dict or None
        ``path`` is the identity (unescaped); CSV values are strings except ``top_k``.
    """
    if fmt == "jsonl":
        try:
            row = json.loads(line)
        except ValueError:
            return None
        if not isinstance(row, dict) or not isinstance(row.get("path"), str) or HEADER_KEY in row:
            return None
    else:
        values = next(csv.reader([line]), [])
        if len(values) != len(COLUMNS):
            return None
        row = dict(zip(COLUMNS, values))
        try:
            row["top_k"] = json.loads(row["top_k"]) if row["top_k"] else []
        except ValueError:
            return None
    row["path"] = unescape(row["path"])
    return row


@dataclass
class ExistingResults:
    """What a previous run left in the output file.

    Attributes
    ----------
    done : set of str
        Identities that have a row and are skipped.
    rows : int
        Complete rows kept.
    errors : int
        Kept rows that are (permanent) error rows.
    dropped : int
        Torn, unreadable or duplicate rows removed from the file.
    retried : int
        Error rows removed so that their photos are scored again: transient failures, and
        every error row with ``retry_errors``.
    """

    done: Set[str] = field(default_factory=set)
    rows: int = 0
    errors: int = 0
    dropped: int = 0
    retried: int = 0


def _lines(path: str) -> Iterator[Tuple[str, bool]]:
    """Yield (line without newline, complete) for each line; only the last can be incomplete."""
    with open(path, "rb") as f:
        for raw in f:
            complete = raw.endswith(b"\n")
            yield raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8", "replace"), complete


def _describe_mismatch(path: str, old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    return [
        f"{key} {old.get(key)!r} there, {new.get(key)!r} now"
        for key in JOB_FIELDS
        if old.get(key) != new.get(key)
    ]


class ResultWriter:
    """Append rows to a CSV or JSON Lines output, as the only writer of that file.

    Opening takes the output's lock (:class:`waste_client._lock.OutputLock`), checks the
    header against this job, and repairs the file (see the module docstring); the
    identities already done are in :attr:`existing`.

    Parameters
    ----------
    path : str
        ``.csv`` or ``.jsonl``; created (with parent folders) if missing.
    header : dict
        This job's header (:func:`make_header`).
    retry_errors : bool
        Score again every photo whose row is an error row (transient ones always are).
    append_source : bool
        Accept a file written for other sources (same model and options) and add this job's
        sources to its header.

    Raises
    ------
    ClassifierError
        ``INVALID_ARGUMENT`` for an unknown extension, a file that is not a results file of
        this scorer (format 2), or one written by another job; ``FAILED_PRECONDITION`` when
        another scorer holds the lock.
    """

    def __init__(self, path: str, header: Dict[str, Any], retry_errors: bool = False,
                 append_source: bool = False):
        self.path = path
        self.format = output_format(path)
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._lock = OutputLock(path).acquire()
        try:
            self.header, self.existing = self._resume(dict(header), retry_errors, append_source)
            self._file = open(path, "a", encoding="utf-8", errors="backslashreplace", newline="")
            if self._file.tell() == 0:
                self._write_lines(self._head_lines(self.header))
        except BaseException:
            self._lock.release()
            raise
        self._synced = time.monotonic()

    def _head_lines(self, header: Dict[str, Any]) -> List[str]:
        lines = [_header_line(self.format, header)]
        if self.format == "csv":
            lines.append(",".join(COLUMNS))
        return lines

    def _resume(self, header: Dict[str, Any], retry_errors: bool,
                append_source: bool) -> Tuple[Dict[str, Any], ExistingResults]:
        existing = ExistingResults()
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            return header, existing
        old = self._check_header(header, append_source)
        if old is None:  # only a torn header: a run killed before its first row
            self._rewrite(header, keep=None)
            return header, existing
        added = [s for s in header["sources"] if s not in old["sources"]]
        merged = dict(old, sources=old["sources"] + added)

        drop: Set[int] = set()
        for number, (line, row, complete) in enumerate(self._rows()):
            if row is None or not complete or row["path"] in existing.done:
                drop.add(number)
                existing.dropped += bool(line.strip())
                continue
            error = row.get("error") or ""
            if error and (retry_errors or is_transient_error(error)):
                drop.add(number)
                existing.retried += 1
                continue
            existing.done.add(row["path"])
            existing.rows += 1
            existing.errors += bool(error)
        if drop or added:
            self._rewrite(merged, keep=lambda number: number not in drop)
        return merged, existing

    def _check_header(self, header: Dict[str, Any], append_source: bool) -> Optional[Dict[str, Any]]:
        first, complete = next(_lines(self.path))
        old = _parse_header(self.format, first)
        if old is None:
            if not complete:  # the only line, torn: nothing else was written
                return None
            raise ClassifierError(
                f"{self.path} is not a results file of this scorer's format {FORMAT_VERSION} "
                "(no identity header: written by an older scorer, or something else); "
                "score into a new --out",
                "INVALID_ARGUMENT",
            )
        if old[HEADER_KEY] != FORMAT_VERSION:
            raise ClassifierError(
                f"{self.path} has format {old[HEADER_KEY]}, this scorer writes {FORMAT_VERSION}; "
                "score into a new --out",
                "INVALID_ARGUMENT",
            )
        differs = _describe_mismatch(self.path, old, header)
        if differs:
            # Since the threshold defaults to the model's, an output of an older default (none)
            # or of another model version meets this; say which option sets it.
            hint = (" (min_score is the 'unsure' threshold: --min-score sets it, 0 for none)"
                    if old.get("min_score") != header.get("min_score") else "")
            raise ClassifierError(
                f"{self.path} was written by another job ({'; '.join(differs)}); rows of "
                f"different models or options must not mix: score into a new --out{hint}",
                "INVALID_ARGUMENT",
            )
        new_sources = [s for s in header["sources"] if s not in old["sources"]]
        if new_sources and not append_source:
            raise ClassifierError(
                f"{self.path} holds results of {', '.join(map(repr, old['sources']))}, not of "
                f"{', '.join(map(repr, new_sources))}: score into a new --out, or add "
                "--append-source to add this source to the same file",
                "INVALID_ARGUMENT",
            )
        return old

    def _rows(self) -> Iterator[Tuple[str, Optional[Dict[str, Any]], bool]]:
        lines = _lines(self.path)
        next(lines)  # the header
        if self.format == "csv":
            column_line = next(lines, None)
            if column_line is not None and column_line[0] != ",".join(COLUMNS):
                raise ClassifierError(f"{self.path}: unexpected column line {column_line[0]!r}",
                                      "INVALID_ARGUMENT")
        for line, complete in lines:
            yield line, (parse_row(self.format, line) if line.strip() else None), complete

    def _rewrite(self, header: Dict[str, Any], keep: Any) -> None:
        # Beside and rename, under the lock: a crash mid-repair leaves the old file whole, and
        # no other scorer can be appending to the file that is replaced.
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write("".join(line + "\n" for line in self._head_lines(header)))
            if os.path.exists(self.path) and keep is not None:
                for number, (line, _, _) in enumerate(self._rows() if self._has_header() else ()):
                    if keep(number):
                        f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _has_header(self) -> bool:
        first, _ = next(_lines(self.path), ("", False))
        return _parse_header(self.format, first) is not None

    def _write_lines(self, lines: Iterable[str]) -> None:
        self._file.write("".join(line + "\n" for line in lines))
        self._file.flush()

    def write(self, row: Dict[str, Any]) -> None:
        """Append one row; see :meth:`write_many`.

        Parameters
        ----------
        row : dict

        Returns
        -------
        None
        """
        self.write_many([row])

    def write_many(self, rows: List[Dict[str, Any]]) -> None:
        """Append rows and hand them to the operating system in one write.

        Once this returns, a killed process loses none of them; an fsync follows at most
        :data:`FSYNC_EVERY_S` later (and at :meth:`close`) against a power loss.

        Parameters
        ----------
        rows : list of dict
            From :func:`prediction_row` or :func:`error_row`.

        Returns
        -------
        None
        """
        if not rows:
            return
        self._write_lines(format_row(self.format, row) for row in rows)
        now = time.monotonic()
        if now - self._synced >= FSYNC_EVERY_S:
            os.fsync(self._file.fileno())
            self._synced = now

    def close(self) -> None:
        """Flush, fsync, close the file and release the lock. Safe to call twice.

        Returns
        -------
        None
        """
        file = getattr(self, "_file", None)
        if file is not None and not file.closed:
            try:
                file.flush()
                os.fsync(file.fileno())
            finally:
                file.close()
        self._lock.release()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_header(path: str) -> Dict[str, Any]:
    """The header record of an output file.

    Parameters
    ----------
    path : str

    Returns
    -------
    dict

    Raises
    ------
    ClassifierError
        ``INVALID_ARGUMENT`` when the file has none.
    """
    fmt = output_format(path)
    first, _ = next(_lines(path), ("", False))
    header = _parse_header(fmt, first)
    if header is None:
        raise ClassifierError(f"{path} has no results header", "INVALID_ARGUMENT")
    return header


def iter_results(path: str) -> Iterator[Dict[str, Any]]:
    """Stream the complete rows of an output file.

    Parameters
    ----------
    path : str

    Yields
    ------
    dict
        Keys are :data:`COLUMNS`; ``path`` is the identity (unescaped), ``top_k`` a list.
    """
    fmt = output_format(path)
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        return
    if _parse_header(fmt, first[0]) is None:
        raise ClassifierError(f"{path} has no results header", "INVALID_ARGUMENT")
    for line, complete in lines:
        if not complete or not line.strip() or (fmt == "csv" and line == ",".join(COLUMNS)):
            continue
        row = parse_row(fmt, line)
        if row is not None:
            yield row


def read_results(path: str) -> List[Dict[str, Any]]:
    """Read an output file's complete rows back, e.g. in tests.

    Parameters
    ----------
    path : str

    Returns
    -------
    list of dict
        See :func:`iter_results`.
    """
    return list(iter_results(path))
