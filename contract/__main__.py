"""`python -m contract` (`make contract`): rewrite the client's pinned copy from this package.

The client installs alone, so `client/waste_client/_contract.py` repeats `contract/__init__.py`
below its marker line; this writes that copy, and tests/test_contract.py fails when it is stale.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "contract" / "__init__.py"
COPY = ROOT / "client" / "waste_client" / "_contract.py"
SOURCE_MARKER = "# Everything below this line is repeated verbatim in client/waste_client/_contract.py.\n"
COPY_MARKER = "# Everything below this line is repeated verbatim from contract/__init__.py.\n"


def synced_copy(source: str, copy: str) -> str:
    """The client copy's text with everything below its marker replaced by the source's body."""
    head, marker, body = source.partition(SOURCE_MARKER)
    copy_head, copy_marker, _ = copy.partition(COPY_MARKER)
    if not marker or not copy_marker:
        raise ValueError("a marker line is missing in contract/__init__.py or the client copy")
    return copy_head + COPY_MARKER + body


def main() -> int:
    text = synced_copy(SOURCE.read_text(), COPY.read_text())
    if text == COPY.read_text():
        print(f"{COPY.relative_to(ROOT)} is up to date")
        return 0
    COPY.write_text(text)
    print(f"wrote {COPY.relative_to(ROOT)}; check its imports (above the marker) still cover the body")
    return 0


if __name__ == "__main__":
    sys.exit(main())
