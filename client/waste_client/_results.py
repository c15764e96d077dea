"""The scorer's output file: CSV or JSON Lines, appended row by row, resumable."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, TextIO

from ._errors import ClassifierError
from ._prediction import Prediction

COLUMNS = ("path", "label", "score", "top_k", "model", "version", "error")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


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
        raise ClassifierError(
            f"output {path!r} must end in .csv or .jsonl", "INVALID_ARGUMENT"
        )
    return FORMATS[ext]


def _one_line(text: str) -> str:
    # A row must stay one physical line: that is what makes a torn row detectable.
    return " ".join(str(text).split())


def prediction_row(path: str, prediction: Prediction) -> Dict[str, Any]:
    """The output row of a classified image.

    Parameters
    ----------
    path : str
    prediction : Prediction

    Returns
    -------
    dict
        Keys are :data:`COLUMNS`; ``top_k`` is a list of ``[label, score]``.
    """
    return {
        "path": path,
        "label": prediction.label,
        "score": prediction.score,
        "top_k": [[label, score] for label, score in prediction.top_k],
        "model": prediction.model,
        "version": prediction.version,
        "error": "",
    }


def error_row(path: str, error: ClassifierError, model: str) -> Dict[str, Any]:
    """The output row of an image that failed.

    Parameters
    ----------
    path : str
    error : ClassifierError
    model : str

    Returns
    -------
    dict
        ``error`` is ``"STATUS: message"``, the prediction columns are empty.
    """
    return {
        "path": path,
        "label": "",
        "score": None,
        "top_k": [],
        "model": model,
        "version": "",
        "error": _one_line(f"{error.status}: {error.message}"),
    }


@dataclass
class ExistingResults:
    """What a previous run left in the output file.

    Attributes
    ----------
    done : set of str
        Paths that have a row and are skipped.
    rows : int
        Complete rows kept.
    errors : int
        Kept rows that are error rows.
    dropped : int
        Torn or unreadable rows removed from the file.
    """

    done: Set[str] = field(default_factory=set)
    rows: int = 0
    errors: int = 0
    dropped: int = 0


def _parse_lines(fmt: str, lines: List[str]) -> List[Optional[Dict[str, Any]]]:
    """Parse complete lines; None for a line that is not a valid row."""
    rows: List[Optional[Dict[str, Any]]] = []
    if fmt == "jsonl":
        for line in lines:
            try:
                row = json.loads(line)
                rows.append(row if isinstance(row, dict) and "path" in row else None)
            except ValueError:
                rows.append(None)
        return rows
    for line in lines:
        values = next(csv.reader([line]), [])
        rows.append(dict(zip(COLUMNS, values)) if len(values) == len(COLUMNS) else None)
    return rows


class ResultWriter:
    """Append rows to a CSV or JSON Lines file, one flushed line per row.

    Opening an existing file resumes it: complete rows are kept and their paths
    reported in :attr:`existing`; a torn last line (a run killed mid-write) is
    cut off. Every :meth:`write` is flushed, so a killed run loses at most the
    rows that were still in flight.

    Parameters
    ----------
    path : str
        ``.csv`` or ``.jsonl`` file; created (with parent folders) if missing.
    retry_errors : bool
        Drop the existing error rows so that those paths are scored again.

    Raises
    ------
    ClassifierError
        ``INVALID_ARGUMENT`` for an unknown extension or a CSV with another header.
    """

    def __init__(self, path: str, retry_errors: bool = False):
        self.path = path
        self.format = output_format(path)
        self.existing = self._repair(retry_errors)
        self._file: TextIO = open(path, "a", encoding="utf-8", newline="")
        if self.format == "csv" and self._file.tell() == 0:
            self._write_line(",".join(COLUMNS))

    def _repair(self, retry_errors: bool) -> ExistingResults:
        existing = ExistingResults()
        if not os.path.exists(self.path):
            parent = os.path.dirname(self.path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            return existing
        with open(self.path, "rb") as f:
            raw = f.read()
        # Only the last line can be torn: every row is written as one line by one writer.
        complete, _, tail = raw.rpartition(b"\n")
        if tail.strip():
            existing.dropped += 1
        lines = complete.decode("utf-8", errors="replace").split("\n") if complete else []
        lines = [line.rstrip("\r") for line in lines]
        header = None
        if self.format == "csv" and lines:
            header, lines = lines[0], lines[1:]
            if header != ",".join(COLUMNS):
                raise ClassifierError(
                    f"{self.path} is not a results file of this scorer (header {header!r})",
                    "INVALID_ARGUMENT",
                )
        kept: List[str] = []
        for line, row in zip(lines, _parse_lines(self.format, lines)):
            if not line.strip():
                continue
            if row is None or row["path"] in existing.done:
                existing.dropped += 1
                continue
            is_error = bool(row.get("error"))
            if is_error and retry_errors:
                continue
            existing.done.add(row["path"])
            existing.rows += 1
            existing.errors += is_error
            kept.append(line)
        if len(kept) != len(lines) or tail.strip():
            self._rewrite(([header] if header is not None else []) + kept)
        return existing

    def _rewrite(self, lines: List[str]) -> None:
        # Write beside and rename: a crash during repair leaves the old file whole.
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _write_line(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()

    def write(self, row: Dict[str, Any]) -> None:
        """Append one row and flush it to the operating system.

        Parameters
        ----------
        row : dict
            From :func:`prediction_row` or :func:`error_row`.

        Returns
        -------
        None
        """
        if self.format == "jsonl":
            self._write_line(json.dumps({k: row[k] for k in COLUMNS}, ensure_ascii=False))
            return
        values = dict(row)
        values["top_k"] = json.dumps(row["top_k"]) if row["top_k"] else ""
        values["score"] = "" if row["score"] is None else repr(float(row["score"]))
        values["path"] = _one_line(row["path"]) if "\n" in row["path"] else row["path"]
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow([values[k] for k in COLUMNS])
        self._write_line(buf.getvalue())

    def close(self) -> None:
        """Close the file.

        Returns
        -------
        None
        """
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_results(path: str) -> List[Dict[str, Any]]:
    """Read a results file back (complete rows only), e.g. in tests.

    Parameters
    ----------
    path : str

    Returns
    -------
    list of dict
        Keys are :data:`COLUMNS`. CSV values are strings, except ``top_k``
        which is decoded back to a list.
    """
    fmt = output_format(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")[:-1]  # the last piece is "" or a torn line
    if fmt == "csv":
        lines = lines[1:]
    rows = [r for r in _parse_lines(fmt, [l.rstrip("\r") for l in lines if l.strip()]) if r is not None]
    if fmt == "csv":
        for r in rows:
            r["top_k"] = json.loads(r["top_k"]) if r["top_k"] else []
    return rows
