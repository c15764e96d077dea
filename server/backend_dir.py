"""Locate the tritonserver shipped in the nvidia-pytriton wheel and assemble its backend directory.

The wheel's `backends/` holds only the python backend, and its stub lives apart, one per Python
version. Triton wants one directory with `python/` (libtriton_python.so, the stub, the utils module)
and, for our stand-ins, `onnxruntime/model.py` and `openvino/model.py` with the `standin_common.py`
they share. That directory is built once per content under a cache
directory, never inside the repository.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytriton

#: Root of the wheel's Triton distribution (bin/, backends/, caches/, python_backend_stubs/).
TRITON_DIST = Path(pytriton.__file__).resolve().parent / "tritonserver"
#: Shared libraries the wheel's tritonserver and stub are linked against.
TRITON_LIBS = Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs"
BACKENDS = Path(__file__).resolve().parent / "backends"
#: Our stand-in onnxruntime backend (a Python-based backend).
ONNXRUNTIME_BACKEND = BACKENDS / "onnxruntime" / "model.py"
#: Our stand-in openvino backend (a Python-based backend on the `openvino` runtime).
OPENVINO_BACKEND = BACKENDS / "openvino" / "model.py"


def tritonserver_binary() -> Path:
    """Path of the tritonserver executable bundled with nvidia-pytriton."""
    return TRITON_DIST / "bin" / "tritonserver"


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/waste-triton` (default `~/.cache/waste-triton`)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "waste-triton"


def _stub_path() -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = TRITON_DIST / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise FileNotFoundError(f"nvidia-pytriton has no python backend stub for Python {version}")
    return stub


def _sources() -> dict[str, Path]:
    python_dir = TRITON_DIST / "backends" / "python"
    return {
        "python/libtriton_python.so": python_dir / "libtriton_python.so",
        "python/triton_python_backend_utils.py": python_dir / "triton_python_backend_utils.py",
        "python/triton_python_backend_stub": _stub_path(),
        "onnxruntime/model.py": ONNXRUNTIME_BACKEND,
        "openvino/model.py": OPENVINO_BACKEND,
        "standin_common.py": BACKENDS / "standin_common.py",
    }


def prepare_backend_dir(root: Path | None = None) -> Path:
    """Return a backend directory for `--backend-directory`, building it if needed.

    The directory name is a hash of every source file, so editing the stand-in backend or changing
    Python version yields a fresh directory and a stale one is never served. Building happens in a
    temporary sibling then a rename, so concurrent test sessions never see a half-copied directory.
    """
    sources = _sources()
    digest = hashlib.sha256()
    for rel, path in sorted(sources.items()):
        digest.update(rel.encode())
        digest.update(path.read_bytes())
    root = Path(root) if root is not None else cache_root()
    target = root / f"backends-{digest.hexdigest()[:16]}"
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".backends-", dir=root))
    try:
        for rel, path in sources.items():
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        os.replace(staging, target)
    except OSError:
        # Another process won the rename; its directory has identical content.
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():
            raise
    return target


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver: the wheel's libraries, and this venv for the python stubs."""
    env = dict(os.environ if base is None else base)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(TRITON_LIBS), env.get("LD_LIBRARY_PATH", "")) if p)
    # The stub embeds the system libpython; putting this interpreter's bin first and its
    # site-packages on PYTHONPATH makes numpy, Pillow and onnxruntime of this venv importable there.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    site_dirs = [p for p in sys.path if p.endswith("site-packages")]
    env["PYTHONPATH"] = os.pathsep.join(site_dirs + [p for p in [env.get("PYTHONPATH", "")] if p])
    return env
