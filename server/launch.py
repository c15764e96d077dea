"""Run the bundled tritonserver on a model repository: `TritonServer` for tests, `python -m server.launch`.

`python -m server.launch` serves in the foreground with ports from HTTP_PORT / GRPC_PORT /
METRICS_PORT (8000/8001/8002), the repository from MODEL_REPOSITORY (`model_repository`), the bind
address from HOST (127.0.0.1; a container sets 0.0.0.0) and the response cache's size in bytes from
RESPONSE_CACHE_BYTES (0, the default: no cache).

With the supervisor (on in `python -m server.launch`), a dead tritonserver or Python stub is
restarted with exponential backoff until it is healthy again; after RESTART_ATTEMPTS (5) failed
attempts in a row the launcher exits with code 3, so systemd or Kubernetes restarts the whole
thing instead of it sitting there with no server. tritonserver gets SIGTERM when the launcher dies,
even by SIGKILL (PR_SET_PDEATHSIG), so it is never orphaned.

tritonserver 2.51 has no flag limiting the request size, so the limits live in the preprocess
model: imaging.MAX_BYTES (32 MiB encoded) and imaging.MAX_PIXELS (40 megapixels).
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from contract import file_sha256
from server.backend_dir import TRITON_DIST, prepare_backend_dir, server_env, tritonserver_binary

logger = logging.getLogger(__name__)

#: Exit code of `python -m server.launch` when the supervisor gave up (1: did not start at all).
EXIT_GAVE_UP = 3


class TritonServerError(RuntimeError):
    """The server did not become ready; the message ends with the tail of its log."""


_GIVEN_PORTS: set = set()
_GIVEN_LOCK = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free right now (tritonserver itself cannot bind port 0 and report it).

    Never one this process handed out before: the OS may offer a port again as soon as the probe
    socket closes, and a server's three ports (or two servers started together) must differ.
    """
    with _GIVEN_LOCK:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
            if port not in _GIVEN_PORTS:
                _GIVEN_PORTS.add(port)
                return port
    raise OSError("no free port that this process has not handed out already")


class TritonServer:
    """tritonserver as a subprocess on `model_repository`, usable as a context manager.

    Parameters
    ----------
    model_repository : str or Path
        Triton model repository, loaded whole (`--model-control-mode=none`).
    http_port, grpc_port, metrics_port : int
        0 picks a free port.
    host : str
        Address all three endpoints bind to; 127.0.0.1 keeps a dev server off the network.
    strict : bool
        True: start() succeeds only if every model loads (the server exits on a failed model).
        False: the server stays up with the models that loaded, as `python -m server.launch` wants.
    timeout : float
        Seconds start() waits for readiness.
    log_verbose : int
        tritonserver `--log-verbose` level (1 shows every batch the schedulers form).
    extra_args : tuple of str
        More tritonserver flags, appended last so they override ours.
    keep_log : bool
        Keep the server log file after stop() (`log_path()`); tests leave it False.
    cache_bytes : int
        Size of Triton's `local` response cache (`--cache-config local,size=N`), allocated in CPU
        memory at start and shared by every model whose config enables `response_cache`; 0: none.
    supervise : bool
        Watch the server and its Python backend stubs and restart tritonserver (same ports) when
        either dies. tritonserver 2.51 neither restarts a dead stub nor reports the model unready
        (triton-inference-server/server#8604), so without this one crashed stub fails every later
        request of its model while the health endpoints still say ready. The supervisor thread
        owns the process: it starts it (with PR_SET_PDEATHSIG, so tritonserver gets SIGTERM when
        the launcher dies) and restarts it; `gave_up` is set after `restart_attempts` failures.
    restart_attempts : int
        Failed (re)start attempts in a row after which the supervisor gives up.
    restart_backoff : float
        Seconds before the second attempt, doubled after each failure up to `restart_backoff_max`.
    """

    def __init__(self, model_repository, http_port: int = 0, grpc_port: int = 0,
                 metrics_port: int = 0, host: str = "127.0.0.1", *, strict: bool = True,
                 timeout: float = 120.0, log_verbose: int = 0, extra_args: tuple[str, ...] = (),
                 keep_log: bool = False, supervise: bool = False, cache_bytes: int = 0,
                 restart_attempts: int = 5, restart_backoff: float = 1.0,
                 restart_backoff_max: float = 30.0):
        self.model_repository = Path(model_repository).resolve()
        self.host = host
        self.strict = strict
        self.timeout = timeout
        self.log_verbose = log_verbose
        self.extra_args = tuple(extra_args)
        self.keep_log = keep_log
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.supervise = supervise
        self.cache_bytes = int(cache_bytes)
        self.restarts = 0
        self.restart_attempts = max(1, int(restart_attempts))
        self.restart_backoff = float(restart_backoff)
        self.restart_backoff_max = float(restart_backoff_max)
        #: Why the supervisor gave up (after `restart_attempts` failures in a row), or None.
        self.gave_up: str | None = None
        self._up = threading.Event()  # the supervisor's first launch succeeded or it gave up
        self._process: subprocess.Popen | None = None
        self._log = None
        self._stubs: dict[int, str] = {}
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.host}:{self.metrics_port}"

    def command(self, backend_dir: Path) -> list[str]:
        """The tritonserver command line (public so the Makefile/Docker docs can show it)."""
        return [
            str(tritonserver_binary()),
            f"--model-repository={self.model_repository}",
            "--model-control-mode=none",
            f"--backend-directory={backend_dir}",
            f"--cache-directory={TRITON_DIST / 'caches'}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            # CPU-only box: no pinned/CUDA pools, no GPU metrics, so no CUDA probing at start.
            "--pinned-memory-pool-byte-size=0",
            "--cuda-memory-pool-byte-size=0:0",
            "--allow-gpu-metrics=false",
            # Latency quantiles (p50..p99.9) per model: the p95 alert and dashboard need them
            # (monitoring/, docs/OPERATIONS.md); 2.51 exports only cumulative counters otherwise.
            "--metrics-config=summary_latencies=true",
            f"--exit-on-error={'true' if self.strict else 'false'}",
            f"--strict-readiness={'true' if self.strict else 'false'}",
            # Bounded shutdown: in-flight requests get 10 s, then the process exits anyway.
            "--exit-timeout-secs=10",
            f"--log-verbose={self.log_verbose}",
            *([f"--cache-config=local,size={self.cache_bytes}"] if self.cache_bytes > 0 else []),
            *self.extra_args,
        ]

    def start(self) -> "TritonServer":
        """Start tritonserver and return once it answers ready; raise TritonServerError otherwise.

        Supervised, the first start is retried like a restart, so start() raises only once the
        supervisor gave up.
        """
        if self._process is not None or self._watcher is not None:
            raise TritonServerError("server already started")
        if not self.model_repository.is_dir():
            raise TritonServerError(f"model repository {self.model_repository} does not exist")
        # A file, not a pipe: nobody drains a pipe while the server runs and a full pipe blocks it.
        self._log = tempfile.NamedTemporaryFile(prefix="tritonserver-", suffix=".log", delete=False)
        self._stopping.clear()
        if self.supervise:
            self.gave_up = None
            self._up.clear()
            self._watcher = threading.Thread(target=self._supervise, name="triton-supervisor", daemon=True)
            self._watcher.start()
            self._up.wait()
            if self.gave_up is not None:
                reason = self.gave_up
                self.stop()
                raise TritonServerError(reason)
            return self
        try:
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, parent_death_signal: bool = False) -> None:
        parent = os.getpid()

        def bind_to_parent() -> None:
            # In the child, before exec: the kernel sends SIGTERM when the thread that forked us
            # (the supervisor) ends, which includes the launcher being SIGKILLed. Triton shuts
            # down gracefully on SIGTERM and its stubs follow it.
            if _LIBC is not None:
                _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
            if os.getppid() != parent:  # the launcher died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)

        self._process = subprocess.Popen(
            self.command(prepare_backend_dir()), stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=server_env(), start_new_session=True,
            preexec_fn=bind_to_parent if parent_death_signal else None)
        self._wait_ready()
        self._stubs = {pid: _stub_model(pid) for pid in _stub_pids(self._process.pid)}

    def _fault(self) -> str | None:
        """Why the running server can no longer answer every model, or None."""
        process = self._process
        if process is None:
            return "tritonserver is not running"
        code = process.poll()
        if code is not None:
            return f"tritonserver exited with code {code}"
        for pid, model in sorted(self._stubs.items()):
            state = _proc_state(pid)
            if state is None or state in "ZX":
                return f"the Python backend stub of model {model!r} (pid {pid}) died"
        return None

    def _backoff(self, failures: int) -> float:
        return min(self.restart_backoff_max, self.restart_backoff * 2 ** max(0, failures - 1))

    def _supervise(self) -> None:
        """The supervisor thread: start, watch, restart with backoff, give up after N failures.

        Every exception is logged and handled: one while checking the server is retried after a
        backoff without touching a server that may be fine (N in a row: give up); one while
        starting it is a failed attempt. Nothing else ends this thread but stop(). It also stops
        the server itself, because tritonserver's parent-death signal is tied to this thread.
        """
        failures, check_errors, first = 0, 0, True
        try:
            while not self._stopping.is_set():
                try:
                    reason = None if first else self._fault()
                    check_errors = 0
                except Exception as exc:  # noqa: BLE001 - a watcher that dies silently is the bug
                    check_errors += 1
                    logger.exception("checking tritonserver failed (%d of %d in a row)",
                                     check_errors, self.restart_attempts)
                    if check_errors >= self.restart_attempts:
                        self.gave_up = f"gave up after {check_errors} failed checks in a row: {exc}"
                        logger.critical("%s", self.gave_up)
                        return
                    self._stopping.wait(self._backoff(check_errors))
                    continue
                try:
                    if reason is None and not first:
                        self._stopping.wait(0.5)
                        continue
                    if reason is not None:
                        if failures == 0:
                            self.restarts += 1
                            logger.warning("%s; restarting tritonserver (restart %d)", reason, self.restarts)
                        self._terminate()
                    self._launch(parent_death_signal=True)
                    if not first:
                        logger.warning("tritonserver ready again after %d failed attempt(s)", failures)
                    failures, first = 0, False
                    self._up.set()
                except Exception as exc:  # noqa: BLE001 - a watcher that dies silently is the bug
                    if self._stopping.is_set():
                        break
                    failures += 1
                    first = False
                    logger.error("tritonserver (re)start attempt %d of %d failed: %s",
                                 failures, self.restart_attempts, exc,
                                 exc_info=not isinstance(exc, TritonServerError))
                    try:
                        self._terminate()
                    except Exception:  # noqa: BLE001
                        logger.exception("could not stop the failed tritonserver")
                    if failures >= self.restart_attempts:
                        self.gave_up = (f"gave up after {failures} failed attempts in a row to start "
                                        f"tritonserver; last error: {exc}")
                        logger.critical("%s", self.gave_up.splitlines()[0])
                        return
                    delay = self._backoff(failures)
                    logger.info("next attempt in %.1f s", delay)
                    self._stopping.wait(delay)
        finally:
            self._up.set()
            try:
                self._terminate()
            except Exception:  # noqa: BLE001
                logger.exception("could not stop tritonserver")

    def _wait_ready(self) -> None:
        # Strict: /ready means every model loaded. Non-strict: endpoints come up only after the
        # initial load in `none` mode, so /live already means "loading finished".
        path = "/v2/health/ready" if self.strict else "/v2/health/live"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.supervise and self._stopping.is_set():
                raise TritonServerError("stopped while starting")
            code = self._process.poll()
            if code is not None:
                raise TritonServerError(
                    f"tritonserver exited with code {code} before becoming ready\n{self._failure_log()}")
            if _http_ok(f"http://{self.http_url}{path}"):
                return
            time.sleep(0.2)
        raise TritonServerError(
            f"tritonserver not ready after {self.timeout:.0f} s\n{self._failure_log()}")

    def _failure_log(self) -> str:
        # The reason a model failed sits above the long model/backend tables, far from the tail.
        lines = self.log_tail(100000).splitlines()
        errors = [line for line in lines if line[:1] == "E" and "CudaDriverHelper" not in line]
        tail = "\n".join(lines[-15:])
        return "errors in the server log:\n" + "\n".join(errors[:20]) + f"\n--- log tail ---\n{tail}"

    def stop(self) -> None:
        """Stop the server (SIGINT, Triton's graceful shutdown; SIGKILL after 20 s) and wait for it."""
        self._stopping.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=60)
            self._watcher = None
        self._terminate()
        if self._log is not None and not self._log.closed:
            self._log.close()
            if not self.keep_log:
                # Tests start many servers; start() already put the tail in any error it raised.
                Path(self._log.name).unlink(missing_ok=True)

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                # The whole session: python stub processes must not outlive the server.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process is not None:
            # Stubs of a dead server (or orphans of a dead stub's model) must not linger.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_path(self) -> Path | None:
        return Path(self._log.name) if self._log is not None else None

    def log_tail(self, lines: int = 40) -> str:
        """Last `lines` lines of the server log (for error messages)."""
        if self._log is None or not Path(self._log.name).exists():
            return ""
        if not self._log.closed:
            self._log.flush()
        text = Path(self._log.name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def model_states(self) -> list[dict]:
        """The repository index: [{"name", "version", "state", "reason"}, ...]."""
        request = urllib.request.Request(f"http://{self.http_url}/v2/repository/index",
                                         data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


_PR_SET_PDEATHSIG = 1
try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
    _LIBC.prctl  # noqa: B018 - Linux only; elsewhere no parent-death signal
except (OSError, AttributeError):
    _LIBC = None


def _proc_state(pid: int) -> str | None:
    """The one-letter state of a process (R, S, Z, ...), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _stub_model(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return Path(args[1].decode()).parent.parent.name
    except (OSError, IndexError):
        return ""


def child_pids(pid: int, needle: bytes) -> list[int]:
    """Processes whose parent is `pid` and whose command line contains `needle` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _stub_pids(server_pid: int) -> list[int]:
    """Python backend stub processes whose parent is the tritonserver `server_pid`."""
    return child_pids(server_pid, b"triton_python_backend_stub")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def model_report(server: TritonServer) -> list[tuple[str, str, str]]:
    """(model, state, reason) for every model directory of the repository, sorted by name.

    A directory Triton skipped (no version directory) is absent from its index, and a model that
    failed often has an empty reason there; both get the first matching error line of the log.
    """
    index = {m["name"]: m for m in server.model_states()}
    names = sorted({p.parent.name for p in server.model_repository.glob("*/config.pbtxt")} | set(index))
    errors = [line for line in server.log_tail(100000).splitlines() if line.startswith("E")]
    report = []
    for name in names:
        entry = index.get(name, {})
        state = entry.get("state") or "FAILED"
        reason = entry.get("reason", "")
        if state != "READY" and not reason:
            reason = next((line.split("] ", 1)[-1] for line in errors if f"'{name}'" in line
                           or f'"{name}"' in line or f"{name}/" in line), "see the server log")
        report.append((name, state, reason[:300]))
    return report


def verify_exports(model_repository) -> list[str]:
    """Check every `<model>/<version>/export.json` "sha256" against the model file beside it.

    Returns one line per problem (empty: all match or nothing recorded). The stand-in backend
    refuses such a version at load; NVIDIA's native onnxruntime backend would serve it, so
    `python -m server.launch` runs this first and says which model is affected.
    """
    problems = []
    for record in sorted(Path(model_repository).glob("*/*/export.json")):
        version_dir = record.parent
        try:
            expected = json.loads(record.read_text()).get("sha256")
        except (OSError, ValueError) as exc:
            problems.append(f"{version_dir.parent.name} v{version_dir.name}: unreadable {record.name}: {exc}")
            continue
        if not expected:
            continue
        files = [p for p in version_dir.iterdir() if p.is_file() and p.name != "export.json"]
        model_file = next((p for p in files if p.name == "model.onnx"), files[0] if len(files) == 1 else None)
        if model_file is None:
            problems.append(f"{version_dir.parent.name} v{version_dir.name}: export.json but no model file")
            continue
        actual = file_sha256(model_file)
        if actual != expected:
            problems.append(f"{version_dir.parent.name} v{version_dir.name}: {model_file.name} sha256 "
                            f"{actual[:16]}... does not match export.json {expected[:16]}...")
    return problems


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    """Serve in the foreground until Ctrl-C / SIGTERM; exit 3 when the supervisor gives up."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s supervisor: %(message)s")
    repository = os.environ.get("MODEL_REPOSITORY", "model_repository")
    server = TritonServer(
        repository,
        http_port=int(os.environ.get("HTTP_PORT", "8000")),
        grpc_port=int(os.environ.get("GRPC_PORT", "8001")),
        metrics_port=int(os.environ.get("METRICS_PORT", "8002")),
        host=os.environ.get("HOST", "127.0.0.1"),
        strict=False,
        keep_log=True,
        supervise=True,
        cache_bytes=int(os.environ.get("RESPONSE_CACHE_BYTES", "0")),
        restart_attempts=int(os.environ.get("RESTART_ATTEMPTS", "5")),
        timeout=float(os.environ.get("START_TIMEOUT", "120")),
    )
    # SIGTERM (docker stop, make's kill) takes the same graceful path as Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    for problem in verify_exports(repository):
        print(f"SHA256 MISMATCH {problem}: this version must not be served", file=sys.stderr, flush=True)
    try:
        server.start()
    except TritonServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_GAVE_UP if server.gave_up else 1
    except KeyboardInterrupt:
        server.stop()
        return 0
    try:
        print(f"model repository: {server.model_repository}")
        print(f"HTTP    http://{server.http_url}\ngRPC    {server.grpc_url}\n"
              f"metrics http://{server.metrics_url}/metrics")
        try:
            report = model_report(server)
        except OSError as exc:  # the server died right after starting: the supervisor handles it
            print(f"could not list the models: {exc}", file=sys.stderr)
            report = []
        failed = 0
        for name, state, reason in report:
            failed += state != "READY"
            print(f"  {state:<11} {name}" + (f"  ({reason})" if reason else ""))
        print(f"{'all models ready' if not failed else f'{failed} model(s) not ready'}; "
              f"server log: {server.log_path()}; Ctrl-C to stop", flush=True)
        # The supervisor restarts a dead server; this loop ends on Ctrl-C / SIGTERM or when the
        # supervisor gave up, and then with a non-zero code so whatever runs us restarts us.
        while server.gave_up is None:
            time.sleep(0.5)
        print(f"error: {server.gave_up}\n{server.log_tail()}", file=sys.stderr)
        return EXIT_GAVE_UP
    except KeyboardInterrupt:
        print("stopping tritonserver", flush=True)
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
