"""Triton server launcher for the waste classifier (see docs/CONTRACT.md, "Server")."""

__all__ = ["TritonServer", "TritonServerError"]


def __getattr__(name):
    # Lazy, so `python -m server.launch` does not import server.launch twice (runpy warns then).
    if name in __all__:
        from server import launch

        return getattr(launch, name)
    raise AttributeError(f"module 'server' has no attribute {name!r}")
