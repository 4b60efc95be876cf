"""The streaming pipeline: everything that speaks the wire protocol, for any SB3 run.

`StreamCallback` in anyone's ``learn()``; the `Broker` process that owns the
trainer's sockets; the protocol both sides import; the late joiner's history;
the journal; the control client; CURVE security; atomic checkpoints.

Nothing here imports the Tetris side (`tetriszmq.tetris`, `tetriszmq.agents`):
a test holds that boundary, so streaming works with any gymnasium environment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["StreamCallback"]

if TYPE_CHECKING:
    from tetriszmq.stream.callback import StreamCallback


def __getattr__(name: str) -> Any:
    """`StreamCallback` on first use: the relay, ``ctl`` and ``keys`` need no SB3 or torch."""
    if name == "StreamCallback":
        from tetriszmq.stream.callback import StreamCallback

        return StreamCallback
    raise AttributeError(f"module 'tetriszmq.stream' has no attribute {name!r}")
