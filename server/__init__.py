"""Triton server launcher for the waste classifier (see docs/CONTRACT.md, "Server")."""
from server.launch import TritonServer, TritonServerError

__all__ = ["TritonServer", "TritonServerError"]
