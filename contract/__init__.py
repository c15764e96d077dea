"""The serving contract: every fact a producer and a consumer of the model repository must agree on.

This module is the one source (docs/CONTRACT.md explains each fact). Everything on the server
side imports from here: the repository writer (export/model_repository.py), training, the app,
the load tests and the benchmarks. Three copies cannot import it and are pinned equal to it by
tests/test_contract.py, so a change here that forgets one fails CI:

- `client/waste_client/_contract.py`: the client installs alone (`pip install ./client`);
  `make contract` (`python -m contract`) rewrites it from this file;
- `model_repository/preprocess/1/imaging.py`: loads inside NVIDIA's Triton container, where
  only NumPy and Pillow exist (INPUT_SIZE, PAD_VALUE, ALLOWED_FORMATS, MAX_IMAGE_BYTES);
- every `config.pbtxt` and `labels.txt`: Triton reads them; export/model_repository.py writes them
  from these facts.

Only literals and tiny name helpers live here (standard library only), so the client copy is this
file below its imports, verbatim.
"""
from __future__ import annotations

import hashlib
import os

# Everything below this line is repeated verbatim in client/waste_client/_contract.py.

#: The 12 bins, in the index order of every model's output.
CLASSES = (
    "battery", "biological", "brown-glass", "cardboard", "clothes", "green-glass",
    "metal", "paper", "plastic", "shoes", "trash", "white-glass",
)
NUM_CLASSES = len(CLASSES)
#: File beside every classifier/ensemble config naming the outputs (one class per line, index order).
LABELS_FILE = "labels.txt"

#: Side of the square model input (pixels); the only input size of the repository.
INPUT_SIZE = 224
#: RGB channels of the model input (UINT8, NHWC).
CHANNELS = 3
#: Letterbox padding and the background transparent pixels are composited on.
PAD_VALUE = 114

#: Encoded image formats the server decodes (Pillow format names) and the file extensions that
#: carry them; MPO is the multi-picture JPEG some phones write under `.jpg`.
IMAGE_FORMATS = {
    "JPEG": (".jpg", ".jpeg"),
    "MPO": (),
    "PNG": (".png",),
    "WEBP": (".webp",),
    "BMP": (".bmp",),
    "GIF": (".gif",),
    "TIFF": (".tif", ".tiff"),
}
ALLOWED_FORMATS = frozenset(IMAGE_FORMATS)
IMAGE_EXTENSIONS = frozenset(ext for exts in IMAGE_FORMATS.values() for ext in exts)
#: Largest encoded image the server accepts; the client refuses bigger files before sending.
MAX_IMAGE_BYTES = 32 * 1024 * 1024

#: The production model (an ensemble); `<name>_int8` is its quantised twin.
DEFAULT_MODEL = "effnet_lite0"
#: Suffixes of the models written for a classifier `<name>` (export/model_repository.py).
CLASSIFIER_SUFFIX = "_classifier"
TTA_SUFFIX = "_tta"
INT8_SUFFIX = "_int8"
#: Largest batch every model accepts (the batch dimension is implicit in each config).
MAX_BATCH_SIZE = 64
#: Beside each exported version's model file: the export's record, whose "sha256" names the file.
EXPORT_RECORD = "export.json"
#: The "not sure" threshold of a classifier version: the key in its export record, and the config
#: parameter (a string) of every ensemble serving that version, which clients read.
UNSURE_THRESHOLD = "unsure_threshold"

#: Ensemble tensors: what clients send and read.
ENSEMBLE_INPUT = "image_bytes"
ENSEMBLE_OUTPUT = "probabilities"
#: Classifier tensors: UINT8 [INPUT_SIZE, INPUT_SIZE, CHANNELS] in, FP32 [NUM_CLASSES] softmax out.
CLASSIFIER_INPUT = "classifier_input"
CLASSIFIER_OUTPUT = "classifier_output"

#: Shared models every classifier's ensembles use, and their tensors.
PREPROCESS_MODEL = "preprocess"
PREPROCESS_INPUT = "preprocess_input"
PREPROCESS_OUTPUT = "preprocess_output"
TTA_FLIP_MODEL = "tta_flip"
TTA_FLIP_INPUT = "tta_flip_input"
TTA_FLIP_OUTPUT = "tta_flip_output"
TTA_MEAN_MODEL = "tta_mean"
TTA_MEAN_INPUTS = ("tta_mean_input_0", "tta_mean_input_1")
TTA_MEAN_OUTPUT = "tta_mean_output"
SHARED_MODELS = (PREPROCESS_MODEL, TTA_FLIP_MODEL, TTA_MEAN_MODEL)


def classifier_model(name: str) -> str:
    """Name of the ONNX classifier behind the ensemble `name`.

    Parameters
    ----------
    name : str
        Ensemble name, e.g. ``"effnet_lite0"``.

    Returns
    -------
    str
        ``"effnet_lite0_classifier"`` for ``"effnet_lite0"``.
    """
    return f"{name}{CLASSIFIER_SUFFIX}"


def tta_model(name: str) -> str:
    """Name of the test-time-augmentation ensemble of `name` (``"effnet_lite0_tta"``)."""
    return f"{name}{TTA_SUFFIX}"


def int8_model(name: str) -> str:
    """Name of the quantised twin of `name` (``"effnet_lite0_int8"``)."""
    return f"{name}{INT8_SUFFIX}"


def is_image_name(name: str) -> bool:
    """Tell whether a file name has one of the IMAGE_EXTENSIONS (case-insensitive).

    Parameters
    ----------
    name : str
        A file name or path.

    Returns
    -------
    bool
    """
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def file_sha256(path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks: the digest an export record holds.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    str
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
