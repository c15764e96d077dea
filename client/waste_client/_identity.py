"""A photo's identity in the scorer: how it is written to an output file and how jobs are split.

An identity is a ``str``: an absolute local path or a full URL (``s3://bucket/key``). Local
names that are not valid UTF-8 (old NAS shares) are carried the way Python's ``os`` functions
carry them, with ``os.fsdecode`` (surrogateescape), so ``open(identity)`` reads the same file.

The escaping (the one definition, documented in client/README.md)
-----------------------------------------------------------------
In the ``path`` column of CSV and JSON Lines, an identity is written with these characters as
``%XX`` (two upper-case hex digits of the byte):

- ``%`` itself (``%25``), so that the escaping can be undone;
- the control characters U+0000-U+001F and U+007F (CR is ``%0D``, LF ``%0A``), so that every
  row stays one physical line: that is what lets a torn last row be detected and cut;
- each byte of a name that is not valid UTF-8 (carried as U+DC80-U+DCFF by surrogateescape).

Everything else is written as is, in UTF-8: commas, quotes and leading spaces are the CSV
writer's business (it quotes them), not the identity's. :func:`unescape` gives back the exact
identity, so a resumed run recognises every name, whatever bytes it holds.
"""

from __future__ import annotations

import hashlib
import re
from typing import Tuple

from ._errors import ClassifierError

_ESCAPED = re.compile(r"[%\x00-\x1f\x7f\udc80-\udcff]")
_HEX = re.compile(rb"%([0-9A-Fa-f]{2})")


def _escape_char(match: "re.Match[str]") -> str:
    ch = match.group(0)
    code = ord(ch)
    # surrogateescape carries byte 0xXY as U+DCXY: write the original byte.
    return f"%{code - 0xDC00 if code >= 0xDC80 else code:02X}"


def escape(identity: str) -> str:
    """Write an identity as one line of valid UTF-8 (see the module docstring).

    Parameters
    ----------
    identity : str
        An absolute path (possibly with surrogate-escaped bytes) or a URL.

    Returns
    -------
    str
        The escaped form; equal to ``identity`` for ordinary names.

    Examples
    --------
    >>> escape("/photos/a\\nb%.jpg")
    '/photos/a%0Ab%25.jpg'
    """
    return _ESCAPED.sub(_escape_char, identity)


def unescape(text: str) -> str:
    """Undo :func:`escape`.

    Parameters
    ----------
    text : str
        A ``path`` value read from an output file.

    Returns
    -------
    str
        The identity, with surrogate-escaped bytes where the name was not UTF-8.
    """
    if "%" not in text:
        return text
    raw = _HEX.sub(lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "surrogateescape")


def parse_shard(text: str) -> Tuple[int, int]:
    """Parse ``"I/N"`` (``0 <= I < N``).

    Parameters
    ----------
    text : str

    Returns
    -------
    (int, int)
        ``(index, count)``.

    Raises
    ------
    ClassifierError
        ``INVALID_ARGUMENT`` for anything else.
    """
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise ClassifierError(
            f"shard {text!r} must be I/N with 0 <= I < N, e.g. 0/3", "INVALID_ARGUMENT"
        )
    return index, count


def shard_of(identity: str, count: int) -> int:
    """The shard (``0 .. count-1``) an identity belongs to.

    A hash of the identity's bytes (BLAKE2b, not Python's per-process ``hash``), so every
    machine computes the same split: N scorers given ``I/N`` for I = 0..N-1 share a job with
    no overlap and no gap, provided they see the same identities (the same URLs, or local
    files mounted at the same absolute path).

    Parameters
    ----------
    identity : str
    count : int

    Returns
    -------
    int
    """
    digest = hashlib.blake2b(identity.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count
