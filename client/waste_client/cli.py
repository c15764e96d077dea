"""Command line: ``python -m waste_client score ...`` (also installed as ``waste-score``).

Thin on purpose: parse options, call :mod:`waste_client.score`, print, and turn
errors into a message and an exit code here and nowhere else.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from ._client import Classifier
from ._contract import DEFAULT_MODEL
from ._errors import ClassifierError
from .score import render_report, score_folder, wait_until_ready

EXIT_OK, EXIT_ERROR_ROWS, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130
# Below this many images the per-image table is printed unless --no-table.
AUTO_TABLE_MAX = 50


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of the ``score`` command on ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser

    Returns
    -------
    None
    """
    parser.add_argument("folder", help="folder of images, walked recursively")
    parser.add_argument("--url", default=os.environ.get("WASTE_URL", "localhost:8001"),
                        help="server host:port, or several comma-separated (default: $WASTE_URL or localhost:8001)")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--model-version", default="", help="default: the server's choice")
    parser.add_argument("--out", default="results.csv", help="results.csv or results.jsonl (appended, resumable)")
    parser.add_argument("--in-flight", type=int, default=16, help="requests outstanding at once")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--follow-symlinks", action="store_true", help="follow links that lead out of FOLDER")
    parser.add_argument("--retry-errors", action="store_true", help="score again the paths of existing error rows")
    table = parser.add_mutually_exclusive_group()
    table.add_argument("--table", dest="table", action="store_true", default=None, help="print a per-image table")
    table.add_argument("--no-table", dest="table", action="store_false")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per attempt")
    # 40 retries with backoff capped at 5 s wait about 1.5 min on average:
    # enough for a server restart to pause the job instead of failing rows.
    parser.add_argument("--retries", type=int, default=40, help="retries of a transient server error")
    parser.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the server at start")


def run_score(args: argparse.Namespace) -> int:
    """Run the ``score`` command; return its exit code.

    Parameters
    ----------
    args : argparse.Namespace

    Returns
    -------
    int
        0 all rows ok, 1 some error rows, 2 usage error or server unreachable,
        130 interrupted.
    """
    if args.in_flight < 1 or args.top_k < 1:
        print("error: --in-flight and --top-k must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    keep = sys.maxsize if args.table else (0 if args.table is False else AUTO_TABLE_MAX + 1)
    try:
        with Classifier(
            args.url,
            protocol=args.protocol,
            model=args.model,
            version=args.model_version,
            timeout=args.timeout,
            retries=args.retries,
            concurrency=args.in_flight,
        ) as classifier:
            wait_until_ready(classifier, args.wait)
            summary = score_folder(
                args.folder,
                classifier,
                args.out,
                in_flight=args.in_flight,
                top_k=args.top_k,
                follow_symlinks=args.follow_symlinks,
                retry_errors=args.retry_errors,
                progress=not args.no_progress,
                keep_rows=keep,
            )
    except ClassifierError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"interrupted; rows written so far are in {args.out}, run again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
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
    parser = argparse.ArgumentParser(prog="python -m waste_client", description="Waste-photo classifier client")
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="classify every image of a folder into a CSV/JSONL file")
    add_score_arguments(score)
    score.set_defaults(func=run_score)
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
    parser = argparse.ArgumentParser(prog="waste-score", description="Classify every image of a folder")
    add_score_arguments(parser)
    return run_score(parser.parse_args(argv))
