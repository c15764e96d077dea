"""`make app`: start the Streamlit app against a server, starting a local server first if needed.

    .venv/bin/python -m app.run                       # 127.0.0.1:8000, or a local server if none answers
    .venv/bin/python -m app.run --server-url H:8000   # an existing server, used as given
    .venv/bin/python -m app.run --dev                 # local server with a random-weight `dev` model

A local server is started only when no URL is given (option or WASTE_SERVER_URL) and nothing
answers on the default one; it serves `model_repository/` on 8000/8001/8002 like `make serve`, and is
stopped with the app.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from app.logic import DEFAULT_MAX_UPLOAD_MB, DEFAULT_MODEL, DEFAULT_URL, load_settings

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "app" / "streamlit_app.py"
MODEL_REPOSITORY = ROOT / "model_repository"
#: Models of the committed repository that every classifier's ensembles need.
SHARED_MODELS = ("preprocess", "tta_flip", "tta_mean")


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


def write_dev_repository(target: Path) -> Path:
    """A repository with the shared models and a random-weight classifier `dev` (for demos, tests)."""
    from export.model_repository import write_dev_classifier, write_model_configs

    for name in SHARED_MODELS:
        shutil.copytree(MODEL_REPOSITORY / name, target / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    write_dev_classifier(target, "dev")
    write_model_configs(target, "dev")
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.run", description=__doc__.split("\n")[0])
    parser.add_argument("--server-url", default=os.environ.get("WASTE_SERVER_URL"),
                        help=f"host:port of the server (default: {DEFAULT_URL}, else a local one)")
    parser.add_argument("--protocol", default=os.environ.get("WASTE_PROTOCOL", "http"),
                        choices=("http", "grpc"))
    parser.add_argument("--model", default=None, help=f"default model (WASTE_MODEL, {DEFAULT_MODEL})")
    parser.add_argument("--port", type=int, default=int(os.environ.get("APP_PORT", "8501")))
    parser.add_argument("--address", default=os.environ.get("APP_ADDRESS", "127.0.0.1"))
    parser.add_argument("--dev", action="store_true",
                        help="start the local server on a random-weight `dev` model")
    args = parser.parse_args(argv)
    try:
        max_upload_mb = load_settings([]).max_upload_mb
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    url = args.server_url
    model = args.model or os.environ.get("WASTE_MODEL") or ("dev" if args.dev else DEFAULT_MODEL)
    server = None
    scratch = None
    if url is None:
        url = DEFAULT_URL
        if args.dev or not server_answers(url, args.protocol):
            from server.launch import TritonServer, TritonServerError

            repository = MODEL_REPOSITORY
            if args.dev:
                scratch = tempfile.mkdtemp(prefix="waste-dev-repo-")
                repository = write_dev_repository(Path(scratch))
            elif not (MODEL_REPOSITORY / f"{model}_classifier").is_dir():
                print(f"note: {MODEL_REPOSITORY}/{model}_classifier is missing; the app will say so "
                      "(use --dev for a random-weight demo model)", file=sys.stderr)
            # Ports 0 with --dev: a demo must not collide with a `make serve` already on 8000.
            ports = (0, 0, 0) if args.dev else (8000, 8001, 8002)
            server = TritonServer(repository, *ports, strict=False)
            print(f"starting a local Triton server on {repository} ...", flush=True)
            try:
                server.start()
            except TritonServerError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            url = server.http_url if args.protocol == "http" else server.grpc_url
            print(f"server ready at {url} (log: {server.log_path()})", flush=True)

    command = streamlit_command(url, model, port=args.port, address=args.address,
                                protocol=args.protocol, max_upload_mb=max_upload_mb)
    print(f"app: http://{args.address}:{args.port}  (server {url}, model {model}); Ctrl-C to stop",
          flush=True)
    app = subprocess.Popen(command, cwd=ROOT)
    signal.signal(signal.SIGTERM, lambda *_: app.send_signal(signal.SIGINT))
    try:
        return app.wait()
    except KeyboardInterrupt:
        app.send_signal(signal.SIGINT)
        return app.wait()
    finally:
        if server is not None:
            server.stop()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
