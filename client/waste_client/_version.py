"""The package version: the one in client/pyproject.toml, read from the installed metadata."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("waste-client")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
