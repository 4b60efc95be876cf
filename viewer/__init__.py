"""tetriszmq's viewer: relays a trainer's ZeroMQ stream to browsers over WebSocket."""
