"""The ``tetriszmq-viewer`` command: serve every run (run folders, live trainers) to browsers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from tetriszmq.cli import client_curve, client_curve_arguments
from tetriszmq.stream.relay import side
from tetriszmq.stream.security import SecurityError, is_loopback
from viewer.app import TOKEN, Settings, create_app
from viewer.fanout import Limits
from viewer.hub import HubSettings, check_endpoints
from viewer.runs import RunsSettings

TOKEN_ENV = "TETRISZMQ_TOKEN"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        trainers = trainer_endpoints(args.trainer or [], args.ctl)
        check_endpoints(*(endpoint for pair in trainers for endpoint in pair))
        relay = side(args.relay, "--relay") if args.relay else None
        curve = client_curve(args)
        check_host(args.host, args.insecure)
        token = check_token(args.token or os.environ.get(TOKEN_ENV) or new_token())
    except ValueError as exc:  # SecurityError included
        print(f"tetriszmq-viewer: {exc}", file=sys.stderr)
        return 2
    hub = HubSettings(trainer="", ctl="", history=args.history, offline_after=args.offline_after, curve=curve)
    settings = Settings(
        runs=RunsSettings(roots=tuple(Path(p) for p in args.runs or ["runs"]), trainers=tuple(trainers), relay=relay,
                          hub=hub),
        limits=Limits(send_timeout=args.send_timeout, snapshot_rate=args.snapshot_rate * 1e6),
        host=args.host, port=args.port, token=token, allow_origins=frozenset(args.allow_origin or ()),
    )
    logging.basicConfig(level=logging.WARNING, format="tetriszmq-viewer: %(message)s")
    logging.getLogger("aiohttp.server").addFilter(_drop_client_faults)
    try:
        asyncio.run(_serve(settings))
    except OSError as exc:
        print(f"tetriszmq-viewer: cannot serve on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 2
    return 0


def _drop_client_faults(record: logging.LogRecord) -> bool:
    """Keep aiohttp's tracebacks for our own bugs, not for requests that failed through the client's fault.

    A request that was not valid HTTP already got its 400, and a client that left is gone; logging a
    traceback for each would let anyone who can connect fill the viewer's log.
    """
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, (HttpProcessingError, ConnectionError))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tetriszmq-viewer",
                                     description="Watch tetriszmq runs, live and finished, in the browser.")
    parser.add_argument("--runs", action="append", metavar="DIR",
                        help="a folder of run directories (repeatable; default: runs): every run in it is shown, "
                        "and a trainer started in it is followed live")
    parser.add_argument("--trainer", action="append", metavar="PUB[,CTL]",
                        help="a live trainer not under --runs (repeatable): its PUB endpoint, and its control "
                        "(REP) endpoint after a comma (default: PUB's port + 1)")
    parser.add_argument("--ctl", help="the control endpoint of a single --trainer (as --trainer PUB,CTL)")
    parser.add_argument("--relay", metavar="STREAM[,CONTROL]",
                        help="a relay's viewers side (tetriszmq relay --viewers): every trainer behind it is a live "
                        "run (CONTROL default: STREAM's port + 1)")
    parser.add_argument("--allow-origin", action="append", metavar="ORIGIN",
                        help="another site (e.g. https://dash.example.org) whose pages may use /ws and "
                        "/api/control (repeatable; * for any); default: this viewer's own page only")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default: 127.0.0.1 only; anything else needs --insecure)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--insecure", action="store_true",
                        help="allow a --host beyond loopback: the page is plain HTTP, readable by anyone who can "
                        "reach it")
    client_curve_arguments(parser)
    parser.add_argument("--token", help=f"control token (default: ${TOKEN_ENV}, else random per start)")
    parser.add_argument("--history", type=int, default=20_000, help="episodes and metrics kept for late joiners")
    parser.add_argument("--offline-after", type=float, default=3.0,
                        help="seconds without a message before the trainer is shown offline")
    parser.add_argument("--send-timeout", type=float, default=10.0,
                        help="seconds a browser may read nothing before it is disconnected")
    parser.add_argument("--snapshot-rate", type=_positive, default=Limits.snapshot_rate / 1e6,
                        help="MB per second of snapshots (the history a browser gets when it connects), all "
                        "browsers together (default %(default)g)")
    return parser


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def new_token() -> str:
    """A random control token in hex: 128 bits, and never a leading ``-`` that a shell's ``--token X`` would
    take for an option."""
    return secrets.token_hex(16)


def check_token(token: str) -> str:
    """Refuse a token that an ``Authorization: Bearer`` header cannot carry (RFC 6750's b64token)."""
    if not TOKEN.fullmatch(token):
        raise ValueError("the control token may hold only letters, digits and - . _ ~ + / (then = padding), "
                         "as an 'Authorization: Bearer' header carries it")
    return token


def trainer_endpoints(trainers: list[str], ctl: str | None) -> list[tuple[str, str]]:
    """``(pub, ctl)`` of each ``--trainer PUB[,CTL]``; ``--ctl`` goes with a single ``--trainer PUB``."""
    if ctl is not None and (len(trainers) != 1 or "," in trainers[0]):
        raise ValueError("--ctl goes with exactly one --trainer PUB; for several, write --trainer PUB,CTL")
    pairs = []
    for trainer in trainers:
        pub, _, own = trainer.partition(",")
        if not (own or ctl):
            check_endpoints(pub)  # a PUB that is no endpoint at all is the problem, not the missing --ctl
        pairs.append((pub, own or ctl or default_ctl(pub)))
    return pairs


def default_ctl(trainer: str) -> str:
    """The control endpoint next to a ``tcp://host:port`` stream endpoint, as the trainer's defaults pair them."""
    parts = urlsplit(trainer)
    if parts.scheme != "tcp" or parts.port is None:
        raise ValueError(f"cannot guess the control endpoint of {trainer}; pass --ctl")
    return f"tcp://{parts.netloc.rsplit(':', 1)[0]}:{parts.port + 1}"


def check_host(host: str, insecure: bool) -> None:
    """Refuse to serve the page beyond loopback unless ``insecure``; then warn."""
    if is_loopback(f"tcp://[{host}]:0" if ":" in host else f"tcp://{host}:0"):
        return
    where = host or "every address"
    if not insecure:
        raise SecurityError(
            f"refusing to serve on {where}: the page is plain HTTP, so anyone who can reach it could watch the run, "
            "and the control token would cross the network unencrypted. Keep the default 127.0.0.1 and use an "
            "SSH tunnel (ssh -L 8080:127.0.0.1:8080 host), or pass --insecure.")
    print(f"tetriszmq-viewer: WARNING: serving on {where} over plain HTTP (--insecure): anyone who can reach it "
          "can watch the run; control still needs the token, which travels unencrypted", file=sys.stderr)


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
    runs = settings.runs
    trainers = "".join(f"\n  trainer {pub}, control {ctl}" for pub, ctl in runs.trainers)
    if runs.relay is not None:
        trainers += f"\n  relay {runs.relay.stream}, control {runs.relay.control}"
    folders = ", ".join(str(root) if root.is_dir() else f"{root} (not there yet: its runs appear once it is made)"
                        for root in runs.roots)  # a typo in --runs is otherwise an empty page, unexplained
    print(f"tetriszmq-viewer: runs in {folders}{trainers}\n"
          f"  open http://{host}:{port}/#token={settings.token}\n"
          f"  control token: {settings.token} (without it the page is read-only)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
