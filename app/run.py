"""`make app`: start the Streamlit app against a running server.

    .venv/bin/python -m app.run                       # WASTE_URL / WASTE_PROTOCOL, as the scorer
    .venv/bin/python -m app.run --server-url H:8000   # another server
    make app DEV=1                                    # `make dev-serve` + the app on its `dev` model

The app is a client: it neither writes models nor starts servers (docs/ARCHITECTURE.md). The
server is `make serve`; a random-weight demo repository is `make dev-repository`, written by
export/model_repository.py and served by `make dev-serve`. When nothing answers, the app starts
anyway and its page says the server is unreachable.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.logic import DEFAULT_MAX_UPLOAD_MB, DEFAULT_MODEL, DEFAULT_URL, load_settings

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "app" / "streamlit_app.py"


def streamlit_command(server_url: str, model: str, *, port: int = 8501, address: str = "127.0.0.1",
                      protocol: str = "http", python: str = sys.executable,
                      max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB) -> list[str]:
    """The `streamlit run` command line (public so the Dockerfile and the tests use the same flags)."""
    return [
        python, "-m", "streamlit", "run", str(SCRIPT),
        f"--server.address={address}", f"--server.port={port}", "--server.headless=true",
        # Streamlit's own cap (200 MB by default) for every uploader; the page sets the same one.
        f"--server.maxUploadSize={max_upload_mb}",
        # The page reports every failure itself; a traceback is never what a person should see.
        "--client.showErrorDetails=false", "--client.toolbarMode=viewer",
        "--browser.gatherUsageStats=false",
        "--", f"--server-url={server_url}", f"--model={model}", f"--protocol={protocol}",
    ]


def server_answers(url: str, protocol: str = "http") -> bool:
    """True when a Triton server answers at ``url`` (any state of its models)."""
    from waste_client import Classifier, ClassifierError

    try:
        with Classifier(url, protocol=protocol, model="", timeout=3, retries=0) as clf:
            clf.models()
        return True
    except ClassifierError:
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.run", description=__doc__.split("\n")[0])
    parser.add_argument("--server-url", default=None,
                        help=f"host:port of the server (env WASTE_URL; default: {DEFAULT_URL} for gRPC)")
    parser.add_argument("--protocol", default=None, choices=("http", "grpc"),
                        help="env WASTE_PROTOCOL (default: grpc)")
    parser.add_argument("--model", default=None, help=f"default model (WASTE_MODEL, {DEFAULT_MODEL})")
    parser.add_argument("--port", type=int, default=int(os.environ.get("APP_PORT", "8501")))
    parser.add_argument("--address", default=os.environ.get("APP_ADDRESS", "127.0.0.1"))
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="wait up to this long for the server to answer (a server started alongside)")
    args = parser.parse_args(argv)
    try:
        # The page resolves its server the same way (load_settings), so both agree.
        settings = load_settings([*(["--server-url", args.server_url] if args.server_url else []),
                                  *(["--protocol", args.protocol] if args.protocol else [])])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    url, protocol, max_upload_mb = settings.server_url, settings.protocol, settings.max_upload_mb
    model = args.model or os.environ.get("WASTE_MODEL") or DEFAULT_MODEL
    deadline = time.monotonic() + args.wait
    while not server_answers(url, protocol) and time.monotonic() < deadline:
        time.sleep(0.5)
    if not server_answers(url, protocol):
        print(f"note: no server answers at {url}; start one with `make serve` (or `make app DEV=1` "
              "for a random-weight demo model)", file=sys.stderr)
    command = streamlit_command(url, model, port=args.port, address=args.address,
                                protocol=protocol, max_upload_mb=max_upload_mb)
    print(f"app: http://{args.address}:{args.port}  (server {url}, model {model}); Ctrl-C to stop",
          flush=True)
    app = subprocess.Popen(command, cwd=ROOT)
    signal.signal(signal.SIGTERM, lambda *_: app.send_signal(signal.SIGINT))
    try:
        return app.wait()
    except KeyboardInterrupt:
        app.send_signal(signal.SIGINT)
        return app.wait()


if __name__ == "__main__":
    sys.exit(main())
