"""Client library for the waste-photo classifier served by Triton.

Only re-exports; the code lives in the private modules.
"""

from ._aio import AsyncClassifier
from ._client import Classifier
from ._errors import ClassifierError
from ._prediction import ModelInfo, Prediction, Result
from ._retry import RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "AsyncClassifier",
    "Classifier",
    "ClassifierError",
    "ModelInfo",
    "Prediction",
    "Result",
    "RetryPolicy",
    "__version__",
]
