"""Where the scorer's photos come from: local folders, lists of paths, object stores.

Two functions are the whole interface (the Ray engine uses them too):

- :func:`iter_sources` streams identities (absolute local paths, or full URLs such as
  ``s3://bucket/key``), listing lazily, so the first request can go out while listing goes on;
- :func:`read_source` reads one identity's bytes, checking the size before reading.

Object stores go through fsspec (``pip install 'waste-client[s3]'``, or ``[gcs]``, ``[azure]``),
imported only when a URL is used, so the plain client does not need it. Credentials come from
each store's standard environment (for S3 the ``AWS_*`` variables, ``AWS_ENDPOINT_URL`` for an
S3-compatible store), never from variables of ours.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import IO, Any, Iterator, Optional, Tuple

from ._contract import MAX_IMAGE_BYTES, is_image_name
from ._errors import ClassifierError

logger = logging.getLogger(__name__)

#: Largest photo read; a bigger file becomes an error row without being read.
MAX_BYTES = MAX_IMAGE_BYTES


def is_url(spec: str) -> bool:
    """Tell whether ``spec`` names a remote location (``scheme://...``) rather than a local path.

    Parameters
    ----------
    spec : str

    Returns
    -------
    bool
    """
    scheme, sep, _ = spec.partition("://")
    return bool(sep) and scheme.isascii() and scheme.replace("+", "").isalnum() and scheme != "file"


def _local(spec: str) -> str:
    if spec.startswith("file://"):
        spec = spec[len("file://"):]
    return os.path.abspath(os.path.expanduser(spec))


@functools.lru_cache(maxsize=None)
def _filesystem(protocol: str) -> Any:
    # One filesystem per protocol and process: fsspec builds clients (and reads credentials) once.
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ClassifierError(
            f"reading {protocol}:// needs fsspec: pip install 'waste-client[s3]' (or [gcs], [azure])",
            "INVALID_ARGUMENT",
        ) from exc
    try:
        return fsspec.filesystem(protocol)
    except (ImportError, ValueError) as exc:
        raise ClassifierError(
            f"cannot open {protocol}:// URLs: {exc} (install the matching extra, e.g. "
            "'waste-client[s3]')",
            "INVALID_ARGUMENT",
        ) from exc


def _split_url(url: str) -> Tuple[Any, str, str]:
    protocol = url.partition("://")[0]
    fs = _filesystem(protocol)
    # http(s) filesystems want the whole URL; the others a path without the scheme.
    path = url if protocol in ("http", "https") else fs._strip_protocol(url)
    return fs, protocol, path


# -- listing -------------------------------------------------------------------------------------

def _iter_local(root: str, follow_symlinks: bool) -> Iterator[str]:
    from ._walk import iter_images

    if os.path.isfile(root):
        yield root
        return
    if not os.path.isdir(root):
        raise ClassifierError(f"{root!r} is neither a folder nor a file", "FILE_NOT_FOUND")
    for relative in iter_images(root, follow_symlinks):
        yield os.path.join(root, relative)


def _iter_s3_flat(fs: Any, path: str) -> Iterator[dict]:
    """Stream an S3 prefix page by page (one flat listing, no per-folder round trips)."""
    from fsspec.asyn import sync

    bucket, _, prefix = path.partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    pages = fs._iterdir(bucket, delimiter="", prefix=prefix)
    while True:
        try:
            yield sync(fs.loop, pages.__anext__)
        except StopAsyncIteration:
            return


def _iter_remote(url: str) -> Iterator[str]:
    fs, protocol, path = _split_url(url)
    if protocol in ("http", "https"):
        yield url  # a web server has no listing: one URL is one photo
        return
    if fs.isfile(path):
        yield f"{protocol}://{path}"
        return
    if protocol in ("s3", "s3a") and hasattr(fs, "_iterdir"):
        listed = 0
        try:
            for info in _iter_s3_flat(fs, path):
                listed += 1
                if info.get("type") == "file" and is_image_name(info["name"]):
                    yield f"{protocol}://{info['name']}"
        except FileNotFoundError as exc:  # no such bucket
            raise ClassifierError(f"{url} does not exist: {exc}", "FILE_NOT_FOUND") from exc
        if not listed:
            # A prefix with no object is what a typo looks like: say so rather than score nothing.
            raise ClassifierError(f"no object under {url}", "FILE_NOT_FOUND")
        return
    # Elsewhere fsspec's walk lists folder by folder: the first folder's photos go out while
    # the next folders are listed.
    found = False
    for dirpath, dirnames, filenames in fs.walk(path):
        found = True
        dirnames.sort()
        for name in sorted(filenames):
            if is_image_name(name):
                yield f"{protocol}://{dirpath.rstrip('/')}/{name}"
    if not found:
        raise ClassifierError(f"{url} does not exist", "FILE_NOT_FOUND")


def _open_list(files_from: str) -> IO[bytes]:
    if files_from == "-":
        return sys.stdin.buffer
    return open(files_from, "rb")


def _iter_list(files_from: str) -> Iterator[str]:
    stream = _open_list(files_from)
    try:
        # Bytes in, os.fsdecode out: a listed name that is not UTF-8 still names its file.
        for raw in stream:
            line = raw.rstrip(b"\n").rstrip(b"\r")
            if not line.strip():
                continue
            text = os.fsdecode(line)
            yield text if is_url(text) else _local(text)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def iter_sources(
    spec: Optional[str] = None,
    files_from: Optional[str] = None,
    follow_symlinks: bool = False,
) -> Iterator[str]:
    """Stream the identities of the photos to score, listing lazily.

    Parameters
    ----------
    spec : str, optional
        A local folder (walked recursively, image extensions only, stable order), a local
        file, an object-store prefix or object (``s3://bucket/prefix``, ``gs://``, ``az://``;
        image extensions only) or an ``http(s)://`` URL of one photo.
    files_from : str, optional
        A file with one local path or URL per line (``"-"``: standard input), taken as listed
        (no extension filter: a listed file that is not an image becomes an error row). Read
        as bytes, so names that are not UTF-8 work. Given with ``spec``, both are streamed.
    follow_symlinks : bool
        Local folders: follow links that lead out of the folder.

    Yields
    ------
    str
        Identities: absolute local paths (``os.fsdecode`` form) or full URLs.

    Raises
    ------
    ClassifierError
        ``FILE_NOT_FOUND`` for a folder or prefix that does not exist, ``INVALID_ARGUMENT``
        when neither ``spec`` nor ``files_from`` is given or a URL's scheme is not installed.
    """
    if spec is None and files_from is None:
        raise ClassifierError("give a folder, a URL or --files-from", "INVALID_ARGUMENT")
    if spec is not None:
        if is_url(spec):
            yield from _iter_remote(spec)
        else:
            yield from _iter_local(_local(spec), follow_symlinks)
    if files_from is not None:
        yield from _iter_list(files_from)


def source_id(spec: Optional[str] = None, files_from: Optional[str] = None) -> str:
    """The canonical name of a source, as recorded in an output file's header.

    Parameters
    ----------
    spec : str, optional
    files_from : str, optional

    Returns
    -------
    str
        An absolute path or URL; ``files-from:PATH`` (``files-from:-`` for standard input)
        for a list; both joined by ``" + "`` when both are given.
    """
    parts = []
    if spec is not None:
        parts.append(spec.rstrip("/") if is_url(spec) else _local(spec))
    if files_from is not None:
        parts.append("files-from:" + (files_from if files_from == "-" else _local(files_from)))
    return " + ".join(parts)


# -- reading -------------------------------------------------------------------------------------

def _too_large(identity: str, size: int, max_bytes: int) -> ClassifierError:
    return ClassifierError(
        f"{identity} is {size} bytes, over the limit of {max_bytes} bytes", "INVALID_ARGUMENT"
    )


def _read_local(path: str, max_bytes: int) -> bytes:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise _too_large(path, size, max_bytes)
            data = f.read(max_bytes + 1)
    except FileNotFoundError as exc:
        raise ClassifierError(f"no such file: {path}", "FILE_NOT_FOUND") from exc
    except IsADirectoryError as exc:
        raise ClassifierError(f"{path} is a folder, not a photo", "INVALID_ARGUMENT") from exc
    except PermissionError as exc:
        raise ClassifierError(f"cannot read {path}: permission denied", "PERMISSION_DENIED") from exc
    except OSError as exc:
        # An I/O error of a share that went away: worth trying again on the next run.
        raise ClassifierError(f"cannot read {path}: {exc}", "UNAVAILABLE") from exc
    if len(data) > max_bytes:  # grew after the size check
        raise _too_large(path, len(data), max_bytes)
    return data


def _read_remote(url: str, max_bytes: int) -> bytes:
    fs, _, path = _split_url(url)
    try:
        with fs.open(path, "rb") as f:
            size = getattr(f, "size", None)
            if size is not None and size > max_bytes:
                raise _too_large(url, size, max_bytes)
            # Bounded even when the store did not say the size (a web server without a length).
            data = f.read(max_bytes + 1)
    except ClassifierError:
        raise
    except FileNotFoundError as exc:
        raise ClassifierError(f"no such object: {url}", "FILE_NOT_FOUND") from exc
    except PermissionError as exc:
        raise ClassifierError(f"cannot read {url}: permission denied", "PERMISSION_DENIED") from exc
    except Exception as exc:  # noqa: BLE001 - network, throttling, a store restarting
        raise ClassifierError(f"cannot read {url}: {type(exc).__name__}: {exc}", "UNAVAILABLE") from exc
    if len(data) > max_bytes:
        raise _too_large(url, len(data), max_bytes)
    return data


def read_source(identity: str, max_bytes: int = MAX_BYTES) -> bytes:
    """Read one photo's bytes, refusing one over ``max_bytes`` before reading it.

    Parameters
    ----------
    identity : str
        From :func:`iter_sources`.
    max_bytes : int
        Size limit; defaults to what the server accepts.

    Returns
    -------
    bytes

    Raises
    ------
    ClassifierError
        ``FILE_NOT_FOUND`` (missing), ``INVALID_ARGUMENT`` (over the limit, naming it; a
        folder), ``PERMISSION_DENIED``, or ``UNAVAILABLE`` for an I/O or network failure that
        may pass (retried on the scorer's next run).
    """
    if is_url(identity):
        return _read_remote(identity, max_bytes)
    return _read_local(identity, max_bytes)
