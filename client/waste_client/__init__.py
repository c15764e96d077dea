"""Client library for the waste-photo classifier served by Triton.

Only re-exports; the code lives in the private modules.
"""

from ._aio import AsyncClassifier
from ._client import Classifier
from ._errors import ClassifierError
from ._prediction import ModelInfo, Prediction, Result
from ._retry import RetryPolicy
from ._settings import DEFAULT_TOP_K, ClientSettings, add_connection_arguments, settings_from_args
from ._version import __version__

__all__ = [
    "AsyncClassifier",
    "Classifier",
    "ClassifierError",
    "ClientSettings",
    "DEFAULT_TOP_K",
    "ModelInfo",
    "Prediction",
    "Result",
    "RetryPolicy",
    "__version__",
    "add_connection_arguments",
    "settings_from_args",
]
