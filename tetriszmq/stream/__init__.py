"""The streaming pipeline: everything that speaks the wire protocol, for any SB3 run.

`StreamCallback` in anyone's ``learn()``; the `Broker` thread that owns the
trainer's sockets; the protocol both sides import; the late joiner's history;
the journal; the control client; CURVE security; atomic checkpoints.

Nothing here imports the Tetris side (`tetriszmq.tetris`, `tetriszmq.agents`):
a test holds that boundary, so streaming works with any gymnasium environment.
"""

from tetriszmq.stream.callback import StreamCallback

__all__ = ["StreamCallback"]
