"""`make demo`: start the real Triton server, score a folder with the bulk scorer, print the results, stop.

    python -m scripts.demo [FOLDER] [--model NAME] [--out results.csv]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from contract import DEFAULT_MODEL
from server.launch import TritonServer, TritonServerError
from waste_client.cli import score_main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default="samples/garbage12")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--repo", default="model_repository")
    parser.add_argument("--out", help="results file (.csv or .jsonl); default: a fresh temporary file")
    args = parser.parse_args(argv)
    out = args.out or str(Path(tempfile.mkdtemp(prefix="waste-demo-")) / "results.csv")
    print(f"starting tritonserver on {args.repo} ...", flush=True)
    try:
        with TritonServer(args.repo) as server:
            print(f"ready: gRPC {server.grpc_url}, HTTP {server.http_url}; scoring {args.folder}", flush=True)
            rc = score_main([args.folder, "--url", server.grpc_url, "--model", args.model, "--out", out,
                             "--table", "--in-flight", "16"])
    except TritonServerError as err:
        print(f"demo: the server did not start:\n{err}", file=sys.stderr)
        return 2
    print(f"results written to {out}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
