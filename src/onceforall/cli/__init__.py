"""The `ofa` command: a thin layer of option parsing over `onceforall.workflow`."""

from onceforall.allocator import reuse_freed_memory
from onceforall.cli import latency, search, specialize, train  # noqa: F401  (they register the commands)
from onceforall.cli.common import app


@app.callback()
def main() -> None:
    """Once-for-All command-line tool."""
    reuse_freed_memory()  # CPU training steps stop re-faulting their buffers (onceforall/allocator.py)


__all__ = ["app"]
