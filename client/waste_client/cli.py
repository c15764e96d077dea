"""Command line: ``python -m waste_client score ...`` (also installed as ``waste-score``).

Thin on purpose: parse options, call :mod:`waste_client.score`, print, and turn errors into
a message and an exit code here and nowhere else. Logging is configured here only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from typing import Any, Iterator, List, Optional

from . import DEFAULT_TOP_K, __version__
from ._client import Classifier
from ._settings import UNSURE_OFF, add_connection_arguments, settings_from_args
from ._engine import DEFAULT_BATCH_SIZE, DEFAULT_IN_FLIGHT, LocalEngine
from ._ray import DEFAULT_ACTORS
from ._errors import ClassifierError
from .score import render_report, score, unsure_origin, wait_until_ready

EXIT_OK, EXIT_ERROR_ROWS, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_INTERRUPTED = 130
# Below this many images the per-image table is printed unless --no-table.
AUTO_TABLE_MAX = 50

EXIT_CODES = """\
exit codes:
  0    every row is a prediction
  1    finished, with error rows (see the error column; transient ones are retried by a rerun)
  2    usage error: bad option, missing source, an output of another job or in use
  3    server unreachable or model not ready (after --wait), or the engine (Ray) or the
       source's store unreachable
  130  interrupted (rows written so far are kept; run again to resume)

The output's first line records source, model, top-k and format; a rerun with the same
output resumes and scores every photo exactly once. See client/README.md."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default in its help (when it has a meaningful one), the epilog as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, "", argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of the ``score`` command on ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser

    Returns
    -------
    None
    """
    parser.add_argument("source", nargs="?",
                        help="folder (walked recursively), file, s3:// gs:// az:// prefix, or http(s):// URL")
    parser.add_argument("--files-from", metavar="FILE",
                        help="also score the paths/URLs listed in FILE, one per line ('-': stdin)")
    # 40 retries with backoff capped at 5 s wait about 1.5 min on average:
    # enough for a server restart to pause the job instead of failing rows.
    add_connection_arguments(parser, retries=40)
    parser.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the server at start")

    job = parser.add_argument_group("job")
    job.add_argument("--out", default="results.csv", help="results.csv or results.jsonl (resumable)")
    job.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="classes kept per photo")
    job.add_argument("--min-score", type=float, default=None,
                     help="label 'unsure' when the best score is below this (top-k stays in the row); "
                          "default: the model's own threshold (its config's unsure_threshold, from "
                          "export.json), or env WASTE_UNSURE_THRESHOLD; 0: never")
    job.add_argument("--shard", metavar="I/N", help="score only shard I of N (split by identity)")
    job.add_argument("--follow-symlinks", action="store_true", help="follow links that lead out of the folder")
    job.add_argument("--retry-errors", action="store_true",
                     help="also score again the photos of permanent error rows (transient ones always are)")
    job.add_argument("--append-source", action="store_true",
                     help="add this source to an output written for another source")
    labels = job.add_mutually_exclusive_group()
    labels.add_argument("--labels-from-folders", dest="labels_from_folders", action="store_true", default=None,
                        help="report accuracy against the top-level folder names (default: when they are all class names)")
    labels.add_argument("--no-labels-report", dest="labels_from_folders", action="store_false")

    speed = parser.add_argument_group("engine")
    speed.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: threads in this process; ray: a Ray cluster (pip install 'waste-client[ray]')")
    speed.add_argument("--in-flight", type=int, default=DEFAULT_IN_FLIGHT,
                       help="requests outstanding at once (per actor with --engine ray)")
    speed.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                       help="photos per request (see BENCHMARKS.md)")
    speed.add_argument("--actors", type=int, default=DEFAULT_ACTORS,
                       help="--engine ray: classifier actors (measured on one server; scale them with the servers: "
                            "docs/SCALING.md)")
    speed.add_argument("--ray-address", default=None, help="--engine ray: cluster address (default: start Ray locally)")

    show = parser.add_argument_group("output on the terminal")
    table = show.add_mutually_exclusive_group()
    table.add_argument("--table", dest="table", action="store_true", default=None,
                       help=f"print a per-image table (default: when at most {AUTO_TABLE_MAX} scored)")
    table.add_argument("--no-table", dest="table", action="store_false")
    show.add_argument("--no-progress", action="store_true", help="no progress bar (also off when stderr is not a terminal)")
    show.add_argument("--json", action="store_true", help="print the summary as JSON on stdout, nothing else")
    verbosity = show.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    parser.add_argument("--version", action="version", version=f"waste-client {__version__}")


@contextlib.contextmanager
def _logging_configured(args: argparse.Namespace) -> Iterator[None]:
    """Configure logging for one command and put the previous configuration back after it.

    ``main`` is also called in-process (tests, a program embedding the scorer): a level left on
    ``waste_client._retry`` would silence that process's retry warnings from then on.
    """
    root, retry = logging.getLogger(), logging.getLogger("waste_client._retry")
    saved = (list(root.handlers), root.level, retry.level)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # The client logs each retry at WARNING: in a bulk job a restart would flood the log.
        retry.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in saved[0]:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(saved[1])
        retry.setLevel(saved[2])


def _make_engine(args: argparse.Namespace, classifier: Classifier, min_score: Optional[float]) -> Any:
    if args.engine == "local":
        # The same classifier: it keeps the threshold it resolved, so its predictions agree with min_score.
        return LocalEngine(classifier, top_k=args.top_k, in_flight=args.in_flight,
                           batch_size=args.batch_size, max_bytes=classifier.settings.max_bytes)
    try:
        from ._ray import RayEngine
    except ImportError as exc:
        raise ClassifierError(f"--engine ray needs Ray: pip install 'waste-client[ray]' ({exc})",
                              "INVALID_ARGUMENT") from exc
    # The threshold resolved here travels to the actors as a number: none of them reads the config.
    s = classifier.settings.replace(unsure_threshold=UNSURE_OFF if min_score is None else min_score)
    return RayEngine(s.urls, s.protocol, s.model, args.top_k, actors=args.actors, in_flight=args.in_flight,
                     batch_size=args.batch_size, max_bytes=s.max_bytes, ray_address=args.ray_address,
                     verbose=args.verbose, settings=s)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    if args.json:
        print(json.dumps({"error": message, "exit_code": code}))
    return code


def run_score(args: argparse.Namespace) -> int:
    """Run the ``score`` command; return its exit code.

    Parameters
    ----------
    args : argparse.Namespace

    Returns
    -------
    int
        See :data:`EXIT_CODES`.
    """
    with _logging_configured(args):
        return _run_score(args)


def _run_score(args: argparse.Namespace) -> int:
    if args.source is None and args.files_from is None:
        return _fail(args, "give a folder, file or URL to score, or --files-from", EXIT_USAGE)
    if min(args.in_flight, args.top_k, args.batch_size, args.actors) < 1:
        return _fail(args, "--in-flight, --top-k, --batch-size and --actors must be >= 1", EXIT_USAGE)
    keep = sys.maxsize if args.table else (0 if args.table is False else AUTO_TABLE_MAX + 1)
    progress = not (args.no_progress or args.quiet or args.json) and sys.stderr.isatty()
    engine = None
    # --min-score 0 means "never unsure": no threshold at all, so the header records none.
    unsure = None if args.min_score is None else (UNSURE_OFF if args.min_score == 0 else args.min_score)
    try:
        settings = settings_from_args(args, concurrency=args.in_flight, unsure_threshold=unsure)
        with Classifier(settings=settings) as classifier:
            try:
                wait_until_ready(classifier, args.wait)
            except ClassifierError as exc:
                return _fail(args, str(exc), EXIT_UNREACHABLE)
            # Resolved once, before the header is written: the header records the number applied.
            min_score = classifier.unsure_threshold()
            engine = _make_engine(args, classifier, min_score)
            summary = score(
                engine, args.out, source=args.source, files_from=args.files_from,
                model=settings.model, model_version=settings.version, top_k=args.top_k,
                min_score=min_score, min_score_from=unsure_origin(settings, args.min_score is not None),
                shard=args.shard, follow_symlinks=args.follow_symlinks,
                retry_errors=args.retry_errors, append_source=args.append_source,
                labels_from_folders=args.labels_from_folders, progress=progress, keep_rows=keep,
            )
    except ClassifierError as exc:
        # A transient failure outside any one photo (a local Ray that cannot start, a pipeline
        # that keeps failing, a store that stops answering while listing) is "unreachable":
        # running again later can succeed. Anything else is the command's own fault.
        return _fail(args, str(exc), EXIT_UNREACHABLE if exc.transient else EXIT_USAGE)
    except OSError as exc:
        return _fail(args, str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        print(f"interrupted; rows written so far are in {args.out}, run again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if engine is not None:
            engine.close()
    if args.json:
        print(json.dumps(summary.as_dict()))
    elif not args.quiet:
        per_image = bool(args.table) or (args.table is None and summary.scored <= AUTO_TABLE_MAX)
        print(render_report(summary, per_image))
        print(f"results: {args.out}")
    return EXIT_ERROR_ROWS if summary.errors else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m waste_client`` parser with its subcommands.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(prog="python -m waste_client", description="Waste-photo classifier client",
                                     epilog=EXIT_CODES, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"waste-client {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    score_parser = sub.add_parser("score", help="classify every photo of a source into a CSV/JSONL file",
                                  description="Classify every photo of a folder, list or object-store prefix.",
                                  epilog=EXIT_CODES, formatter_class=_Formatter)
    add_score_arguments(score_parser)
    score_parser.set_defaults(func=run_score)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m waste_client``.

    Parameters
    ----------
    argv : list of str, optional
        Defaults to ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit code.
    """
    args = build_parser().parse_args(argv)
    return args.func(args)


def score_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``waste-score`` console script (= ``python -m waste_client score``).

    Parameters
    ----------
    argv : list of str, optional

    Returns
    -------
    int
    """
    parser = argparse.ArgumentParser(prog="waste-score", description="Classify every photo of a source",
                                     epilog=EXIT_CODES, formatter_class=_Formatter)
    add_score_arguments(parser)
    return run_score(parser.parse_args(argv))
