"""The 12 bins, in the index order of every model's output: defined once in `contract`."""
from contract import CLASSES

__all__ = ["CLASSES"]
