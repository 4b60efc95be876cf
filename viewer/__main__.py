"""The ``tetriszmq-viewer`` command: serve a trainer's live stream to browsers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
from urllib.parse import urlsplit

from aiohttp import web

from viewer.app import Settings, create_app
from viewer.fanout import Limits
from viewer.hub import HubSettings

TOKEN_ENV = "TETRISZMQ_TOKEN"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        ctl = args.ctl or default_ctl(args.trainer)
    except ValueError as exc:
        print(f"tetriszmq-viewer: {exc}", file=sys.stderr)
        return 2
    settings = Settings(
        hub=HubSettings(trainer=args.trainer, ctl=ctl, history=args.history, offline_after=args.offline_after),
        limits=Limits(send_timeout=args.send_timeout),
        host=args.host, port=args.port,
        token=args.token or os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(18),
    )
    logging.basicConfig(level=logging.WARNING, format="tetriszmq-viewer: %(message)s")
    try:
        asyncio.run(_serve(settings))
    except OSError as exc:
        print(f"tetriszmq-viewer: cannot serve on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tetriszmq-viewer",
                                     description="Watch a tetriszmq trainer live in the browser.")
    parser.add_argument("--trainer", default="tcp://127.0.0.1:5555", help="the trainer's PUB endpoint")
    parser.add_argument("--ctl", help="the trainer's control (REP) endpoint; default: --trainer's port + 1")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1 only)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--token", help=f"control token (default: ${TOKEN_ENV}, else random per start)")
    parser.add_argument("--history", type=int, default=20_000, help="episodes and metrics kept for late joiners")
    parser.add_argument("--offline-after", type=float, default=3.0,
                        help="seconds without a message before the trainer is shown offline")
    parser.add_argument("--send-timeout", type=float, default=10.0,
                        help="seconds a browser may read nothing before it is disconnected")
    return parser


def default_ctl(trainer: str) -> str:
    """The control endpoint next to a ``tcp://host:port`` stream endpoint, as the trainer's defaults pair them."""
    parts = urlsplit(trainer)
    if parts.scheme != "tcp" or parts.port is None:
        raise ValueError(f"cannot guess the control endpoint of {trainer}; pass --ctl")
    return f"tcp://{parts.netloc.rsplit(':', 1)[0]}:{parts.port + 1}"


async def _serve(settings: Settings) -> None:
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        _announce(settings, runner.addresses[0][1])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def _announce(settings: Settings, port: int) -> None:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    hub = settings.hub
    print(f"tetriszmq-viewer: trainer {hub.trainer}, control {hub.ctl}\n"
          f"  open http://{host}:{port}/#token={settings.token}\n"
          f"  control token: {settings.token} (without it the page is read-only)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
