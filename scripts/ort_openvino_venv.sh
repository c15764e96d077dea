#!/usr/bin/env bash
# A separate venv with ONNX Runtime's OpenVINO execution provider, for the benchmark's ORT+OpenVINO
# row (benchmarks/runtimes.py). Separate because the PyPI wheel onnxruntime-openvino installs the
# same `onnxruntime` package as onnxruntime: in the main venv it would replace the ONNX Runtime that
# the server's stand-in backend, export and the tests use.
#   scripts/ort_openvino_venv.sh [DEST]      (default .venv-ort-openvino; the bench looks there, or
#                                             at $WASTE_ORT_OPENVINO_PYTHON)
set -euo pipefail
dest="${1:-.venv-ort-openvino}"
python="${PYTHON:-python3}"
if [ ! -x "$dest/bin/python" ]; then
    "$python" -m venv "$dest"
fi
# numpy pinned like the main venv (pixels are exchanged as .npy); psutil for the CPU meter.
"$dest/bin/pip" install -q "onnxruntime-openvino" "numpy==1.26.4" "psutil"
"$dest/bin/python" -c "import onnxruntime as ort; assert 'OpenVINOExecutionProvider' in ort.get_available_providers(), ort.get_available_providers(); print('onnxruntime', ort.__version__, ort.get_available_providers())"
