"""tetriszmq: train a Tetris agent and watch it learn, live, over ZeroMQ."""

__version__ = "0.1.0"
