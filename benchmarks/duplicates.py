"""A bulk job with exact duplicate photos, and Triton's response-cache counters over it.

`stage_with_duplicates` writes a folder where `share` of the files repeat another file's bytes
under another name; `salt` is appended to every file so that each measuring round sends bytes the
server's cache has not seen yet (JPEG and PNG decoders ignore data after the image's end marker,
so the photos and their classification are unchanged). `cache_counts` reads the per-model hit and
miss counters of a server started with `--cache-config` (`TritonServer(cache_bytes=...)`).

The cache key is the whole request: a duplicate sent in a request of several photos hits only if
the same photos come together again, so the cache pays with one photo per request
(`--batch-size 1`), which the rows measure beside the scorer's default.
"""
from __future__ import annotations

import random
import re
import urllib.request
from pathlib import Path

_CACHE = re.compile(r'^nv_cache_num_(hits|misses)_per_model\{model="([^"]+)",version="[^"]*"\} ([0-9.eE+-]+)$')


def duplicate_count(originals: int, share: float) -> int:
    """Copies to add so that `share` of the resulting job are duplicates."""
    if not 0 <= share < 1:
        raise ValueError("share must be in [0, 1)")
    return round(originals * share / (1 - share))


def stage_with_duplicates(paths: list[Path], dest, share: float = 0.1, seed: int = 0,
                          salt: bytes = b"") -> list[Path]:
    """Copy `paths` into `dest` plus duplicates (same bytes, other names).

    Parameters
    ----------
    paths : list of Path
        The distinct photos.
    dest : path
        The job's folder (``orig/`` and ``dup/`` inside).
    share : float
        Fraction of the job that repeats another file (``duplicate_count``).
    seed : int
        Which photos are repeated, and the job's order.
    salt : bytes
        Appended to every file (see the module docstring).

    Returns
    -------
    list of Path
        The staged files, shuffled so the duplicates are spread through the job as in a real folder.
    """
    dest = Path(dest)
    rng = random.Random(seed)
    staged = []
    for i, path in enumerate(paths):
        target = dest / "orig" / f"{i:05d}_{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes() + salt)
        staged.append(target)
    originals = list(staged)
    for n in range(duplicate_count(len(paths), share)):
        source = rng.choice(originals)
        target = dest / "dup" / f"{n:05d}_{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        staged.append(target)
    rng.shuffle(staged)
    return staged


def parse_cache_counts(text: str) -> dict:
    """{model: {"hits": n, "misses": n}} from Triton's Prometheus text."""
    out: dict = {}
    for line in text.splitlines():
        match = _CACHE.match(line)
        if match:
            kind, model, value = match.groups()
            out.setdefault(model, {"hits": 0.0, "misses": 0.0})[kind] = float(value)
    return out


def cache_counts(metrics_url: str) -> dict:
    """`parse_cache_counts` of a running server's /metrics."""
    with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=5) as response:
        return parse_cache_counts(response.read().decode())


def settled_counts(metrics_url: str, interval: float = 0.1, timeout: float = 2.0) -> dict:
    """`cache_counts` once two readings `interval` apart agree: a request's counters are updated as
    it is released, which may trail its response (and so the scorer's exit) by a moment."""
    import time

    counts = cache_counts(metrics_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(interval)
        again = cache_counts(metrics_url)
        if again == counts:
            break
        counts = again
    return counts


def cache_delta(before: dict, after: dict, model: str) -> dict:
    """Hits and misses of `model` between two readings, and the hit share of its lookups."""
    b, a = before.get(model, {}), after.get(model, {})
    hits = a.get("hits", 0.0) - b.get("hits", 0.0)
    misses = a.get("misses", 0.0) - b.get("misses", 0.0)
    lookups = hits + misses
    return {"hits": int(hits), "misses": int(misses), "hit_share": hits / lookups if lookups else 0.0}


def duplicate_job(servers, model: str, paths: list[Path], workdir, key: str, what: str, *,
                  share: float = 0.1, args=(), round_salt: bytes = b"") -> tuple:
    """The scorer command on a job with `share` duplicates.

    Parameters
    ----------
    servers : list of TritonServer
        The first one's cache counters are read.
    model : str
        The ensemble.
    paths : list of Path
        The distinct photos.
    workdir : path
        Where the job's folder is staged.
    key, what : str
        The row's key and description.
    share : float
        Fraction of duplicates.
    args : sequence of str
        Scorer options (``--batch-size 1`` for one photo per request).
    round_salt : bytes
        Must differ between rounds on one server (see the module docstring).

    Returns
    -------
    (Row, list of dict)
        `scorer_command`'s row with params "cache" (hits, misses, hit share) and "duplicates",
        and the per-model counter deltas.
    """
    from benchmarks.raw_loop import scorer_command

    folder = Path(workdir) / f"dup-{key}-{round_salt.hex() or 'plain'}"
    staged = stage_with_duplicates(paths, folder, share, salt=round_salt)
    before = cache_counts(servers[0].metrics_url)
    row, delta = scorer_command(servers, model, folder, key, what, args, images=len(staged))
    row.params["cache"] = cache_delta(before, settled_counts(servers[0].metrics_url), model)
    row.params["duplicates"] = duplicate_count(len(paths), share)
    return row, delta
