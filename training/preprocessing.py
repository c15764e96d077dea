"""The server's own preprocessing, imported from the model repository so training and evaluation cannot drift from it.

Triton loads `model_repository/preprocess/1/imaging.py` beside that model's `model.py`; the
repository must stay self-contained for NVIDIA's container, so the module lives there and is
imported here by path instead of being copied.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

IMAGING_PATH = Path(__file__).resolve().parent.parent / "model_repository" / "preprocess" / "1" / "imaging.py"


def _load():
    name = "waste_server_imaging"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, IMAGING_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


imaging = _load()
