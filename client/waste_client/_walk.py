"""Finding the images of a folder for the bulk scorer."""

from __future__ import annotations

import os
from typing import Iterator, List, Set

from ._contract import IMAGE_EXTENSIONS, is_image_name

__all__ = ["IMAGE_EXTENSIONS", "is_image_name", "iter_images", "list_images"]


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def iter_images(root: str, follow_symlinks: bool = False) -> Iterator[str]:
    """Yield the image files under ``root``, recursively, in a stable order.

    Selection is by extension only: a ``.jpg`` that is not an image is
    yielded too and becomes an error row, so that it is reported, not hidden.

    Parameters
    ----------
    root : str
        The folder to walk.
    follow_symlinks : bool
        False (default): symbolic links that lead out of ``root`` are skipped
        and linked directories are not entered. True: links are followed
        wherever they lead (each real directory is visited once, so a link
        loop ends).

    Yields
    ------
    str
        Paths relative to ``root``, with ``/`` separators; the scorer's output
        and its resume logic use this form.
    """
    real_root = os.path.realpath(root)
    seen_dirs: Set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks):
        if follow_symlinks:
            real_dir = os.path.realpath(dirpath)
            if real_dir in seen_dirs:
                dirnames[:] = []
                continue
            seen_dirs.add(real_dir)
        dirnames.sort()
        for name in sorted(filenames):
            if not is_image_name(name):
                continue
            full = os.path.join(dirpath, name)
            if not follow_symlinks and os.path.islink(full):
                if not _inside(os.path.realpath(full), real_root):
                    continue
            if not os.path.isfile(full):  # dangling link, socket, ...
                continue
            yield os.path.relpath(full, root).replace(os.sep, "/")


def list_images(root: str, follow_symlinks: bool = False) -> List[str]:
    """Return :func:`iter_images` as a list.

    Parameters
    ----------
    root : str
    follow_symlinks : bool

    Returns
    -------
    list of str
    """
    return list(iter_images(root, follow_symlinks))
