"""Labelled-folder report: when a source's top-level folders name the true classes, check the
service against them (accuracy, per-class precision and recall, a confusion matrix).

The report is computed from the whole output file (rows of earlier runs included), so a
resumed job reports on everything it scored. Error rows are not evaluated (they are counted
apart); ``unsure`` rows count as not correct and get their own column.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ._contract import CLASSES
from ._report import format_table
from ._results import UNSURE, iter_results

logger = logging.getLogger(__name__)


@dataclass
class LabelReport:
    """Accuracy of an output against its folders' names.

    Attributes
    ----------
    classes : list of str
        Rows of the confusion matrix (true labels), in the model's class order.
    predicted : list of str
        Its columns (``unsure`` last when present).
    matrix : list of list of int
        ``matrix[i][j]``: photos of true class ``classes[i]`` labelled ``predicted[j]``.
    errors : int
        Error rows under labelled folders (not evaluated).
    csv_path, png_path : str
        Where the confusion matrix was written.
    """

    classes: List[str]
    predicted: List[str]
    matrix: List[List[int]]
    errors: int = 0
    csv_path: str = ""
    png_path: str = ""
    per_class: Dict[str, Dict[str, float]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """int: Photos evaluated."""
        return sum(map(sum, self.matrix))

    @property
    def correct(self) -> int:
        """int: Photos whose label is their folder's name."""
        col = {name: j for j, name in enumerate(self.predicted)}
        return sum(row[col[name]] for name, row in zip(self.classes, self.matrix) if name in col)

    @property
    def accuracy(self) -> float:
        """float: ``correct / total``."""
        return self.correct / self.total if self.total else 0.0

    def as_dict(self) -> Dict[str, Any]:
        """JSON-ready form (``--json``).

        Returns
        -------
        dict
        """
        return {
            "evaluated": self.total,
            "accuracy": round(self.accuracy, 4),
            "errors_not_evaluated": self.errors,
            "per_class": self.per_class,
            "confusion_csv": self.csv_path,
            "confusion_png": self.png_path,
        }

    def text(self) -> str:
        """The report as text: accuracy, then precision and recall per class.

        Returns
        -------
        str
        """
        body = [
            (name, m["support"], f"{m['precision']:.3f}", f"{m['recall']:.3f}")
            for name, m in self.per_class.items()
        ]
        table = format_table(("class (folder)", "photos", "precision", "recall"), body, "lrrr")
        head = (f"labelled folders: accuracy {self.accuracy:.4f} ({self.correct}/{self.total})"
                + (f", {self.errors} error row(s) not evaluated" if self.errors else ""))
        return f"{head}\n{table}\nconfusion matrix: {self.csv_path}, {self.png_path}"


def _true_label(identity: str, roots: Sequence[str]) -> Tuple[bool, Optional[str]]:
    """(under a root, its top-level folder or None when it sits directly in the root)."""
    for root in roots:
        prefix = root.rstrip("/") + "/"
        if identity.startswith(prefix):
            parts = identity[len(prefix):].split("/")
            return True, (parts[0] if len(parts) > 1 else None)
    return False, None


def build_label_report(out: str, sources: Sequence[str], force: bool = False) -> Optional[LabelReport]:
    """Build the report for an output file and write its confusion matrix beside it.

    Parameters
    ----------
    out : str
        The output file (CSV or JSON Lines).
    sources : sequence of str
        Its sources (folder paths or URL prefixes), from the header.
    force : bool
        Report even when some top-level folders are not class names (``--labels-from-folders``);
        otherwise a report is made only when every photo sits in a folder named after a class.

    Returns
    -------
    LabelReport or None
        None when the source is not a labelled folder or nothing could be evaluated.
    """
    pairs: List[Tuple[str, str]] = []
    errors = 0
    for row in iter_results(out):
        _, truth = _true_label(row["path"], sources)
        if truth is None or (truth not in CLASSES and not force):
            if force:
                continue
            return None
        if row["error"]:
            errors += 1
        else:
            pairs.append((truth, row["label"]))
    if not pairs:
        return None
    truths = {t for t, _ in pairs}
    preds = {p for _, p in pairs}
    classes = [c for c in CLASSES if c in truths] + sorted(truths - set(CLASSES))
    predicted = [c for c in CLASSES if c in preds or c in truths]
    predicted += sorted(preds - set(predicted) - {UNSURE}) + ([UNSURE] if UNSURE in preds else [])
    counts = Counter(pairs)
    matrix = [[counts[(t, p)] for p in predicted] for t in classes]
    report = LabelReport(classes, predicted, matrix, errors)
    pred_totals = Counter(p for _, p in pairs)
    true_totals = Counter(t for t, _ in pairs)
    for name in classes:
        tp = counts[(name, name)]
        report.per_class[name] = {
            "support": true_totals[name],
            "precision": round(tp / pred_totals[name], 4) if pred_totals[name] else 0.0,
            "recall": round(tp / true_totals[name], 4) if true_totals[name] else 0.0,
        }
    stem = os.path.splitext(out)[0]
    report.csv_path = stem + ".confusion.csv"
    report.png_path = stem + ".confusion.png"
    _write_csv(report)
    _write_png(report)
    return report


def _write_csv(report: LabelReport) -> None:
    with open(report.csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted"] + report.predicted)
        for name, row in zip(report.classes, report.matrix):
            writer.writerow([name] + row)


def _write_png(report: LabelReport, cell: int = 44) -> None:
    # Pillow only (already a client dependency): no plotting stack for one picture.
    from PIL import Image, ImageDraw

    label_w = 8 * max(len(n) for n in report.classes + report.predicted) + 16
    width = label_w + cell * len(report.predicted)
    height = label_w + cell * len(report.classes) + 24
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((4, 4), f"accuracy {report.accuracy:.4f} ({report.correct}/{report.total}); "
                      "rows: folder, columns: label", fill="black")
    # Column names, written vertically: a rotated strip per name.
    for j, name in enumerate(report.predicted):
        strip = Image.new("RGB", (label_w - 8, cell), "white")
        ImageDraw.Draw(strip).text((4, cell // 2 - 6), name, fill="black")
        img.paste(strip.rotate(90, expand=True), (label_w + j * cell, 24))
    for i, (name, row) in enumerate(zip(report.classes, report.matrix)):
        y = label_w + 24 + i * cell
        draw.text((4, y + cell // 2 - 6), name, fill="black")
        total = sum(row) or 1
        for j, count in enumerate(row):
            x = label_w + j * cell
            share = count / total
            shade = int(255 - 200 * share)
            draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=(shade, shade, 255))
            if count:
                draw.text((x + 6, y + cell // 2 - 6), str(count), fill="white" if share > 0.5 else "black")
    img.save(report.png_path)
