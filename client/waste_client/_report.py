"""Plain-text tables for the scorer's report."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """Render rows as an aligned text table.

    Parameters
    ----------
    headers : sequence of str
    rows : sequence of sequences
        Values are converted with ``str``.
    align : str, optional
        One character per column, ``"l"`` or ``"r"``; left by default.

    Returns
    -------
    str
        Lines joined with ``\\n``, no trailing newline.
    """
    cells = [[str(h) for h in headers]] + [[str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = (align or "").ljust(len(headers), "l")

    def line(row: List[str]) -> str:
        parts = [v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(row, widths, align)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def per_image_table(rows: Sequence[Dict[str, Any]], root: str = "") -> str:
    """Table of path, label, score (or the error) for each scored image.

    Parameters
    ----------
    rows : sequence of dict
        Scorer output rows.
    root : str, optional
        A source folder or prefix; paths under it are shown relative to it.

    Returns
    -------
    str
    """
    from ._identity import escape

    prefix = root.rstrip("/") + "/" if root else ""
    body = []
    for r in sorted(rows, key=lambda r: r["path"]):
        path = r["path"][len(prefix):] if prefix and r["path"].startswith(prefix) else r["path"]
        path = escape(path)  # a name with a newline must not break the table
        if r["error"]:
            body.append((path, "ERROR", "", r["error"][:80]))
        else:
            body.append((path, r["label"], f"{float(r['score']):.4f}", ""))
    return format_table(("path", "label", "score", "error"), body, "llrl")
