"""tetriszmq: train a Tetris agent and watch it learn, live, over ZeroMQ.

``from tetriszmq import StreamCallback`` streams any stable-baselines3 run. It is
imported on first use, so the ``tetriszmq`` command does not load SB3 and torch
for ``ctl`` or ``keys``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["StreamCallback"]

if TYPE_CHECKING:
    from tetriszmq.stream.callback import StreamCallback


def __getattr__(name: str) -> Any:
    if name == "StreamCallback":
        from tetriszmq.stream.callback import StreamCallback

        return StreamCallback
    raise AttributeError(f"module 'tetriszmq' has no attribute {name!r}")
